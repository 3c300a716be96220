package run

import (
	"context"
	"errors"
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
	r := New(room, Config{N: 100, Window: 5, Body: "m %d"})
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
	if o := seen[7]; o.State != tracking.Error || o.Err == nil || o.ID == "" {
		t.Errorf("message 7: %+v", o)
	}
	if sum.States["DELIVERED_TO_RECIPIENT"] != 99 || sum.States["ERROR"] != 1 {
		t.Errorf("states %v", sum.States)
	}
	if sum.MsgsPerS <= 0 || sum.P99Ms < sum.P50Ms {
		t.Errorf("summary %+v", sum)
	}
}

func TestRunTimeoutAndSendError(t *testing.T) {
	room := &fakeRoom{answer: func(string) *tracking.MessageState { return nil }}
	r := New(room, Config{N: 3, Window: 0, Body: "refuse"})
	sum, err := r.Run(t.Context(), nil)
	if err != nil || sum.States["ABORTED"] != 3 {
		t.Fatalf("send errors: %v, %v", sum.States, err)
	}
	// Unanswered messages end at their timeout; the fake room ignores the
	// option, so the runner's own context ends them instead.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	r = New(room, Config{N: 20, Window: 4})
	sum, err = r.Run(ctx, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if sum.Sent != 4 || sum.States["CLOSED"] != 4 {
		t.Fatalf("sent %d, states %v: want the 4 in flight CLOSED", sum.Sent, sum.States)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i))
	}
	if p := Percentile(ds, 50); p != 50 {
		t.Errorf("p50 %d", p)
	}
	if p := Percentile(ds, 99); p != 99 {
		t.Errorf("p99 %d", p)
	}
	if p := Percentile(nil, 99); p != 0 {
		t.Errorf("empty %d", p)
	}
}
