package run

import (
	"context"
	"errors"
	"fmt"
	"github.com/xmpptrack/xmpptrack/internal/report"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// fakeRoom answers each message after a short delay, by the rule its
// answer function gives for the body; nil leaves the message unanswered.
type fakeRoom struct {
	answer   func(body string) *tracking.MessageState
	n        atomic.Int64
	inFlight atomic.Int64
	maxIn    atomic.Int64
}

func (f *fakeRoom) SendTrackedMessage(ctx context.Context, body string, opts ...muc.SendOption) (*tracking.MessageTracker, error) {
	if body == "refuse" {
		return nil, errors.New("stream closed")
	}
	i := f.n.Add(1)
	tr := tracking.NewMessageTracker(tracking.WithID("id-" + strconv.FormatInt(i, 10)))
	in := f.inFlight.Add(1)
	for {
		m := f.maxIn.Load()
		if in <= m || f.maxIn.CompareAndSwap(m, in) {
			break
		}
	}
	tr.OnChange(func(c tracking.Change) {
		if c.To >= tracking.DeliveredToRecipient {
			f.inFlight.Add(-1)
		}
	})
	if to := f.answer(body); to != nil {
		time.AfterFunc(time.Duration(i%3)*time.Millisecond, func() {
			var r *tracking.Response
			if *to == tracking.Error {
				r = &tracking.Response{Error: &stanza.Error{Condition: stanza.NotAcceptable}}
			}
			tr.Transition(*to, r)
		})
	}
	return tr, nil
}

func state(s tracking.MessageState) *tracking.MessageState { return &s }

func TestRun(t *testing.T) {
	room := &fakeRoom{answer: func(body string) *tracking.MessageState {
		if body == "m 7" {
			return state(tracking.Error)
		}
		return state(tracking.DeliveredToRecipient)
	}}
	r := New(Room(room), Config{N: 100, Window: 5, Body: "m %d"})
	var mu sync.Mutex
	seen := make(map[int]Outcome)
	sum, err := r.Run(t.Context(), func(o Outcome) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := seen[o.Index]; dup {
			t.Errorf("two outcomes for message %d", o.Index)
		}
		seen[o.Index] = o
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 100 || sum.Sent != 100 {
		t.Fatalf("%d outcomes, %d sent", len(seen), sum.Sent)
	}
	if m := room.maxIn.Load(); m > 5 {
		t.Errorf("%d messages in flight at once, window 5", m)
	}
	if o := seen[7]; o.State != tracking.Error || o.Reached || o.Err == nil || o.ID == "" {
		t.Errorf("message 7: %+v", o)
	}
	if o := seen[8]; o.State != tracking.DeliveredToRecipient || !o.Reached || o.Err != nil {
		t.Errorf("message 8: %+v", o)
	}
	if sum.States["DELIVERED_TO_RECIPIENT"] != 99 || sum.States["ERROR"] != 1 || sum.Reached != 99 || sum.Goal != tracking.DeliveredToRecipient {
		t.Errorf("states %v", sum.States)
	}
	if sum.MsgsPerS <= 0 || sum.P99Ms < sum.P50Ms {
		t.Errorf("summary %+v", sum)
	}
}

func TestRunTimeoutAndSendError(t *testing.T) {
	room := &fakeRoom{answer: func(string) *tracking.MessageState { return nil }}
	r := New(Room(room), Config{N: 3, Window: 0, Body: "refuse"})
	sum, err := r.Run(t.Context(), nil)
	if err != nil || sum.States["ABORTED"] != 3 {
		t.Fatalf("send errors: %v, %v", sum.States, err)
	}
	// Unanswered messages end at their timeout; the fake room ignores the
	// option, so the runner's own context ends them instead.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	r = New(Room(room), Config{N: 20, Window: 4})
	sum, err = r.Run(ctx, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if sum.Sent != 4 || sum.States["CLOSED"] != 4 {
		t.Fatalf("sent %d, states %v: want the 4 in flight CLOSED", sum.Sent, sum.States)
	}
}

// step is one change of a scripted message: to state, after a delay since
// the previous step.
type step struct {
	to    tracking.MessageState
	after time.Duration
}

// scripted is a Target that moves each message through the steps its
// script gives for the body, and keeps the trackers.
type scripted struct {
	script func(body string) []step
	mu     sync.Mutex
	byBody map[string]*tracking.MessageTracker
}

func (f *scripted) Send(ctx context.Context, _ int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
	tr := tracking.NewMessageTracker(tracking.WithID("id-" + body))
	f.mu.Lock()
	if f.byBody == nil {
		f.byBody = make(map[string]*tracking.MessageTracker)
	}
	f.byBody[body] = tr
	f.mu.Unlock()
	steps := f.script(body)
	go func() {
		for _, s := range steps {
			time.Sleep(s.after)
			var r *tracking.Response
			if s.to == tracking.Error {
				r = &tracking.Response{Error: &stanza.Error{Condition: stanza.ServiceUnavailable}}
			}
			tr.Transition(s.to, r)
		}
	}()
	return tr, nil
}

func (f *scripted) Proof() string { return "receipt" }

func (f *scripted) tracker(body string) *tracking.MessageTracker {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byBody[body]
}

// TestRunGoalSeen follows messages to SEEN_BY_RECIPIENT: a message seen
// reaches the goal, one delivered but never seen ends at
// DELIVERED_TO_RECIPIENT at the timeout (also when its delivery comes after
// the timeout), and a final state short of the goal ends it too.
func TestRunGoalSeen(t *testing.T) {
	const timeout = time.Second
	ms := time.Millisecond
	target := &scripted{script: func(body string) []step {
		switch body {
		case "m 0", "m 3", "m 6":
			return []step{{tracking.DeliveredToServer, ms}, {tracking.DeliveredToRecipient, ms}, {tracking.SeenByRecipient, 10 * ms}}
		case "m 1", "m 4":
			return []step{{tracking.DeliveredToServer, ms}, {tracking.DeliveredToRecipient, ms}}
		case "m 2":
			return []step{{tracking.Error, ms}}
		case "m 5":
			// Delivered after the timeout: its tracker has no timeout of
			// its own here, so the runner ends it at delivery.
			return []step{{tracking.DeliveredToServer, ms}, {tracking.DeliveredToRecipient, timeout + 300*ms}}
		case "m 7":
			return []step{{tracking.SeenByRecipient, ms}}
		}
		return nil
	}}
	r := New(target, Config{N: 8, Window: 3, Body: "m %d", Timeout: timeout, Goal: tracking.SeenByRecipient})
	outcomes := make(map[int]Outcome)
	sum, err := r.Run(t.Context(), func(o Outcome) {
		if _, dup := outcomes[o.Index]; dup {
			t.Errorf("two outcomes for message %d", o.Index)
		}
		outcomes[o.Index] = o
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range outcomes {
		switch i {
		case 0, 3, 6, 7:
			if o.State != tracking.SeenByRecipient || !o.Reached || o.Err != nil {
				t.Errorf("message %d: %+v, want SEEN_BY_RECIPIENT", i, o)
			}
		case 1, 4, 5:
			if o.State != tracking.DeliveredToRecipient || o.Reached || o.Err == nil ||
				o.Err.Error() != "not SEEN_BY_RECIPIENT before the timeout" || o.Latency < timeout {
				t.Errorf("message %d: %+v, want DELIVERED_TO_RECIPIENT short of the goal at the timeout", i, o)
			}
			// Closed at delivery: tracking ended, the delivery is kept.
			if tr := target.tracker(fmt.Sprintf("m %d", i)); tr.State() != tracking.DeliveredToRecipient || !tr.Ended() {
				t.Errorf("message %d: tracker %v (ended %v) after its outcome, want DELIVERED_TO_RECIPIENT, ended", i, tr.State(), tr.Ended())
			}
		case 2:
			if o.State != tracking.Error || o.Reached || o.Err == nil {
				t.Errorf("message 2: %+v", o)
			}
		}
	}
	if len(outcomes) != 8 {
		t.Fatalf("%d outcomes, want 8", len(outcomes))
	}
	want := map[string]int{"SEEN_BY_RECIPIENT": 4, "DELIVERED_TO_RECIPIENT": 3, "ERROR": 1}
	if !maps.Equal(sum.States, want) || sum.Reached != 4 || sum.Goal != tracking.SeenByRecipient {
		t.Errorf("summary %+v, want states %v and 4 reached", sum, want)
	}
}

// TestRunTimedOutError checks the error of a message TIMED_OUT: it names the
// target's proof of delivery.
func TestRunTimedOutError(t *testing.T) {
	room := &fakeRoom{answer: func(string) *tracking.MessageState { return state(tracking.TimedOut) }}
	var got Outcome
	if _, err := New(Room(room), Config{N: 1}).Run(t.Context(), func(o Outcome) { got = o }); err != nil {
		t.Fatal(err)
	}
	if got.State != tracking.TimedOut || got.Err == nil || got.Err.Error() != "no reflection from the room before the timeout" {
		t.Errorf("outcome %+v", got)
	}
	if _, err := New(Room(room), Config{N: 1, Goal: tracking.Error}).Run(t.Context(), nil); err == nil {
		t.Error("ERROR accepted as a goal")
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i))
	}
	if p := report.Percentile(ds, 50); p != 50 {
		t.Errorf("p50 %d", p)
	}
	if p := report.Percentile(ds, 99); p != 99 {
		t.Errorf("p99 %d", p)
	}
	if p := report.Percentile(nil, 99); p != 0 {
		t.Errorf("empty %d", p)
	}
}

// TestRunSeenMeetsDeliveredGoal (issue 10, defect 15): a peer that sends
// only displayed markers moves trackers straight to SEEN_BY_RECIPIENT; with
// the goal DELIVERED_TO_RECIPIENT they have met it, and their latencies
// count.
func TestRunSeenMeetsDeliveredGoal(t *testing.T) {
	room := &fakeRoom{answer: func(string) *tracking.MessageState { return state(tracking.SeenByRecipient) }}
	sum, err := New(Room(room), Config{N: 20, Window: 5, Body: "m %d"}).Run(t.Context(), func(o Outcome) {
		if !o.Reached || o.Err != nil {
			t.Errorf("message %d: %+v, want the goal met", o.Index, o)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Reached != 20 || sum.States["SEEN_BY_RECIPIENT"] != 20 {
		t.Fatalf("reached %d, states %v; want 20 reached", sum.Reached, sum.States)
	}
	if sum.P50Ms <= 0 || sum.P99Ms < sum.P50Ms {
		t.Fatalf("latencies p50 %v p99 %v, want the 20 messages counted", sum.P50Ms, sum.P99Ms)
	}
}

// TestRunKnown: outcomes known before the run (an earlier run's, or decided
// from the archive) are reported, counted in the summary, and never sent.
func TestRunKnown(t *testing.T) {
	ms := time.Millisecond
	target := &scripted{script: func(string) []step {
		return []step{{tracking.DeliveredToServer, ms}, {tracking.DeliveredToRecipient, ms}}
	}}
	known := map[int]Outcome{
		1: {ID: "earlier-1", State: tracking.DeliveredToRecipient, Earlier: true},
		3: {ID: "earlier-3", State: tracking.Closed, Err: errors.New("the archive cannot vouch")},
	}
	r := New(target, Config{N: 5, Window: 2, Body: "m %d", Timeout: time.Second, Known: known})
	outcomes := make(map[int]Outcome)
	sum, err := r.Run(t.Context(), func(o Outcome) { outcomes[o.Index] = o })
	if err != nil {
		t.Fatal(err)
	}
	if len(outcomes) != 5 {
		t.Fatalf("%d outcomes, want one per index: %v", len(outcomes), outcomes)
	}
	for _, i := range []int{1, 3} {
		if target.tracker(fmt.Sprintf("m %d", i)) != nil {
			t.Errorf("message %d was sent although its outcome was known", i)
		}
		if o := outcomes[i]; o.ID != known[i].ID || o.State != known[i].State {
			t.Errorf("outcome %d = %+v, want the known %+v", i, o, known[i])
		}
	}
	if !outcomes[1].Earlier || !outcomes[1].Reached || outcomes[3].Reached {
		t.Errorf("known outcomes: %+v, %+v", outcomes[1], outcomes[3])
	}
	if sum.Sent != 5 || sum.Reached != 4 || sum.States["CLOSED"] != 1 {
		t.Errorf("summary %+v, want 5 sent, 4 delivered, 1 closed", sum.Summary)
	}
}
