package tracking_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/stream"
	. "github.com/xmpptrack/xmpptrack/tracking"
)

var allStates = []MessageState{
	InTransit, DeliveredToServer, DeliveredToRecipient, SeenByRecipient,
	Aborted, TimedOut, Closed, Error,
}

// allowed lists every permitted transition by name, written out by hand from
// the rules and independently of the package's table.
var allowed = map[string]bool{
	"IN_TRANSIT -> DELIVERED_TO_SERVER":             true,
	"IN_TRANSIT -> DELIVERED_TO_RECIPIENT":          true,
	"IN_TRANSIT -> SEEN_BY_RECIPIENT":               true,
	"IN_TRANSIT -> ABORTED":                         true,
	"IN_TRANSIT -> TIMED_OUT":                       true,
	"IN_TRANSIT -> CLOSED":                          true,
	"IN_TRANSIT -> ERROR":                           true,
	"DELIVERED_TO_SERVER -> DELIVERED_TO_RECIPIENT": true,
	"DELIVERED_TO_SERVER -> SEEN_BY_RECIPIENT":      true,
	"DELIVERED_TO_SERVER -> TIMED_OUT":              true,
	"DELIVERED_TO_SERVER -> CLOSED":                 true,
	"DELIVERED_TO_SERVER -> ERROR":                  true,
	"DELIVERED_TO_RECIPIENT -> SEEN_BY_RECIPIENT":   true,
}

var finalNames = map[string]bool{
	"SEEN_BY_RECIPIENT": true, "ABORTED": true, "TIMED_OUT": true, "CLOSED": true, "ERROR": true,
}

// forward ranks the states that may only move forward.
var forward = map[MessageState]int{InTransit: 0, DeliveredToServer: 1, DeliveredToRecipient: 2, SeenByRecipient: 3}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantState(t *testing.T, tr *MessageTracker, want MessageState) {
	t.Helper()
	if got := tr.State(); got != want {
		t.Errorf("state %v, want %v", got, want)
	}
}

func wantTos(t *testing.T, cs []Change, want ...MessageState) {
	t.Helper()
	var got []MessageState
	for _, c := range cs {
		got = append(got, c.To)
	}
	if !slices.Equal(got, want) {
		t.Errorf("changes to %v, want %v", got, want)
	}
}

func TestStates(t *testing.T) {
	names := []string{"IN_TRANSIT", "DELIVERED_TO_SERVER", "DELIVERED_TO_RECIPIENT", "SEEN_BY_RECIPIENT", "ABORTED", "TIMED_OUT", "CLOSED", "ERROR"}
	for i, s := range allStates {
		if s.String() != names[i] {
			t.Errorf("%d: String() = %q, want %q", i, s, names[i])
		}
		if s.IsFinal() != finalNames[names[i]] {
			t.Errorf("%v.IsFinal() = %v", s, s.IsFinal())
		}
	}
	if s := MessageState(42).String(); s != "MessageState(42)" {
		t.Errorf("unknown state: %q", s)
	}
	var zero MessageState
	if zero != InTransit {
		t.Error("zero value is not InTransit")
	}
	wantState(t, NewMessageTracker(), InTransit)
}

// recorder is an observer that keeps what it is told.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) observe(c Change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) get() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes)
}

// trackerIn returns a tracker that has moved from IN_TRANSIT straight to s,
// observed by a recorder.
func trackerIn(t *testing.T, s MessageState) (*MessageTracker, *recorder) {
	t.Helper()
	tr := NewMessageTracker()
	rec := &recorder{}
	tr.OnChange(rec.observe)
	if s != InTransit {
		must(t, tr.Transition(s, nil))
	}
	wantState(t, tr, s)
	return tr, rec
}

func TestTransitionTable(t *testing.T) {
	for _, from := range allStates {
		for _, to := range allStates {
			name := from.String() + " -> " + to.String()
			t.Run(name, func(t *testing.T) {
				tr, rec := trackerIn(t, from)
				before := tr.Changes()
				resp := &Response{StanzaID: "x"}
				err := tr.Transition(to, resp)
				if allowed[name] {
					must(t, err)
					wantState(t, tr, to)
					got := rec.get()
					if len(got) != len(before)+1 {
						t.Fatalf("observer saw %d changes, want %d", len(got), len(before)+1)
					}
					last := got[len(got)-1]
					if last.From != from || last.To != to || last.Response != resp || last.At.IsZero() {
						t.Errorf("change %+v", last)
					}
					if !slices.Equal(got, tr.Changes()) {
						t.Errorf("observer saw %v, history %v", got, tr.Changes())
					}
					return
				}
				if !errors.Is(err, ErrInvalidTransition) {
					t.Fatalf("error %v, want ErrInvalidTransition", err)
				}
				if errors.Is(err, ErrFinal) != from.IsFinal() {
					t.Errorf("errors.Is(%v, ErrFinal) = %v", err, !from.IsFinal())
				}
				var te *TransitionError
				if !errors.As(err, &te) || te.From != from || te.To != to {
					t.Errorf("error %#v, want a *TransitionError %v", err, name)
				}
				if !strings.Contains(err.Error(), name) {
					t.Errorf("error %q does not say %q", err, name)
				}
				wantState(t, tr, from)
				if !slices.Equal(before, tr.Changes()) || !slices.Equal(before, rec.get()) {
					t.Errorf("a rejected transition changed the history or was emitted")
				}
			})
		}
	}
}

func TestTransitionUnknownState(t *testing.T) {
	tr := NewMessageTracker()
	err := tr.Transition(MessageState(200), nil)
	if !errors.Is(err, ErrInvalidTransition) || errors.Is(err, ErrFinal) {
		t.Errorf("error %v", err)
	}
	wantState(t, tr, InTransit)
	if len(tr.Changes()) != 0 {
		t.Error("changed")
	}
}

func TestErrorMessages(t *testing.T) {
	tr := NewMessageTracker()
	must(t, tr.Transition(DeliveredToRecipient, nil))
	err := tr.Transition(InTransit, nil)
	if want := "tracking: DELIVERED_TO_RECIPIENT -> IN_TRANSIT: transition not allowed"; err.Error() != want {
		t.Errorf("%q, want %q", err, want)
	}
	must(t, tr.Close())
	err = tr.Close()
	if want := "tracking: DELIVERED_TO_RECIPIENT -> CLOSED: tracking has ended"; err.Error() != want {
		t.Errorf("%q, want %q", err, want)
	}
	tr = NewMessageTracker()
	must(t, tr.Close())
	err = tr.Close()
	if want := "tracking: CLOSED -> CLOSED: tracker is final"; err.Error() != want {
		t.Errorf("%q, want %q", err, want)
	}
	if !errors.Is(ErrFinal, ErrInvalidTransition) {
		t.Error("ErrFinal does not wrap ErrInvalidTransition")
	}
}

func TestResponseAndErr(t *testing.T) {
	tr := NewMessageTracker()
	if tr.Response() != nil || tr.Err() != nil {
		t.Fatal("new tracker with a response")
	}
	reflection := &Response{
		Message:  stanza.Message{ID: "m1", Type: stanza.GroupChatMessage},
		StanzaID: "s1", StanzaIDBy: jid.MustParse("room@muc.example"),
	}
	must(t, tr.Transition(DeliveredToServer, nil))
	if tr.Response() != nil {
		t.Error("response without a stanza")
	}
	must(t, tr.Transition(DeliveredToRecipient, reflection))
	must(t, tr.Transition(SeenByRecipient, nil))
	if tr.Response() != reflection {
		t.Errorf("Response() = %v, want the latest change that had one", tr.Response())
	}
	if tr.Err() != nil {
		t.Error("Err() on a tracker that is not ERROR")
	}

	serr := &stanza.Error{Type: stanza.Cancel, Condition: stanza.Forbidden}
	reply := &Response{Message: stanza.Message{ID: "m2", Type: stanza.ErrorMessage}, Error: serr}
	tr = NewMessageTracker()
	must(t, tr.Transition(DeliveredToServer, nil))
	must(t, tr.Transition(Error, reply))
	if tr.Err() != error(serr) || tr.Response() != reply {
		t.Errorf("Err() = %v, Response() = %v", tr.Err(), tr.Response())
	}

	// An error reply too late to count leaves Err nil.
	tr = NewMessageTracker()
	must(t, tr.Transition(DeliveredToRecipient, reflection))
	if tr.Transition(Error, reply) == nil || tr.Err() != nil || tr.Response() != reflection {
		t.Error("late error reply was not ignored")
	}

	// ERROR without a stanza: no parsed error.
	tr = NewMessageTracker()
	must(t, tr.Transition(Error, nil))
	if tr.Err() != nil {
		t.Error("Err() without a stanza")
	}
}

func TestChangesIsACopy(t *testing.T) {
	tr := NewMessageTracker()
	must(t, tr.Transition(DeliveredToServer, nil))
	c := tr.Changes()
	c[0].To = Error
	if tr.Changes()[0].To != DeliveredToServer {
		t.Error("Changes shares its slice")
	}
}

func TestOnChangeReplaysHistory(t *testing.T) {
	tr := NewMessageTracker()
	must(t, tr.Transition(DeliveredToServer, nil))
	must(t, tr.Transition(DeliveredToRecipient, nil))
	late := &recorder{}
	tr.OnChange(late.observe)
	if !slices.Equal(tr.Changes(), late.get()) {
		t.Errorf("late observer saw %v", late.get())
	}
	must(t, tr.Transition(SeenByRecipient, nil))
	wantTos(t, late.get(), DeliveredToServer, DeliveredToRecipient, SeenByRecipient)

	// On a final tracker, a new observer learns the whole history.
	final := &recorder{}
	tr.OnChange(final.observe)
	if !slices.Equal(tr.Changes(), final.get()) {
		t.Errorf("observer of a final tracker saw %v", final.get())
	}
	tr.OnChange(nil) // ignored
}

// checkChain reports whether cs is a history as the rules allow it.
func checkChain(t *testing.T, cs []Change) {
	t.Helper()
	prev := InTransit
	for i, c := range cs {
		switch {
		case c.From != prev:
			t.Fatalf("change %d: From %v, previous To %v", i, c.From, prev)
		case !allowed[c.From.String()+" -> "+c.To.String()]:
			t.Fatalf("change %d: %v -> %v not allowed", i, c.From, c.To)
		}
		if r, ok := forward[c.To]; ok && r <= forward[c.From] {
			t.Fatalf("change %d: %v -> %v not forward", i, c.From, c.To)
		}
		prev = c.To
	}
}

func TestConcurrentDrivers(t *testing.T) {
	const drivers = 300
	for round := range 20 {
		tr := NewMessageTracker()
		var (
			mu       sync.Mutex
			recs     []*recorder
			inFlight atomic.Int32
			overlap  atomic.Bool
		)
		observe := func() *recorder {
			rec := &recorder{}
			mu.Lock()
			recs = append(recs, rec)
			mu.Unlock()
			return rec
		}
		// One slow observer that checks it is never run concurrently.
		slow := observe()
		tr.OnChange(func(c Change) {
			if inFlight.Add(1) > 1 {
				overlap.Store(true)
			}
			slow.observe(c)
			runtime.Gosched()
			inFlight.Add(-1)
		})

		var wg sync.WaitGroup
		start := make(chan struct{})
		rng := rand.New(rand.NewPCG(uint64(round), 1))
		for i := range drivers {
			to := allStates[rng.IntN(len(allStates))]
			wg.Go(func() {
				<-start
				switch i % 50 {
				case 0:
					_ = tr.Close()
				case 1:
					// Registered mid-race; with the replay it still
					// sees the whole history.
					tr.OnChange(observe().observe)
				case 2:
					_, _ = tr.Wait(context.Background(), DeliveredToServer)
				default:
					if err := tr.Transition(to, nil); err != nil && !errors.Is(err, ErrInvalidTransition) {
						t.Errorf("error %v", err)
					}
				}
			})
		}
		close(start)
		wg.Wait()
		waitFor(t, tr.Done())

		if overlap.Load() {
			t.Error("callback ran concurrently with itself")
		}
		history := tr.Changes()
		checkChain(t, history)
		if len(history) == 0 || !tr.Ended() ||
			!(history[len(history)-1].To.IsFinal() || history[len(history)-1].To == DeliveredToRecipient) {
			t.Fatalf("history %v does not end final or closed at delivery", history)
		}
		wantState(t, tr, history[len(history)-1].To)
		if last := history[len(history)-1]; !last.To.IsFinal() {
			// Ended by Close at delivery: observers are told last.
			history = append(history, Change{From: last.To, To: last.To, Ended: true})
		}
		mu.Lock()
		for i, rec := range recs {
			got := rec.get()
			if n := len(got); n > 0 && !got[n-1].To.IsFinal() {
				got[n-1].At = time.Time{}
			}
			if !slices.Equal(got, history) {
				t.Errorf("observer %d saw %v, history %v", i, got, history)
			}
		}
		mu.Unlock()
	}
}

func waitFor(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting")
	}
}

func TestWait(t *testing.T) {
	later := func(f func()) {
		go func() {
			time.Sleep(5 * time.Millisecond)
			f()
		}()
	}
	for _, tc := range []struct {
		name   string
		drive  func(*MessageTracker)
		target MessageState
		want   MessageState
	}{
		{"already there", func(*MessageTracker) {}, InTransit, InTransit},
		{"target reached", func(tr *MessageTracker) {
			later(func() { _ = tr.Transition(DeliveredToServer, nil) })
		}, DeliveredToServer, DeliveredToServer},
		{"jumped past target", func(tr *MessageTracker) {
			later(func() { _ = tr.Transition(DeliveredToRecipient, nil) })
		}, DeliveredToServer, DeliveredToRecipient},
		{"through a lower state", func(tr *MessageTracker) {
			later(func() {
				_ = tr.Transition(DeliveredToServer, nil)
				time.Sleep(5 * time.Millisecond)
				_ = tr.Transition(SeenByRecipient, nil)
			})
		}, DeliveredToRecipient, SeenByRecipient},
		{"final instead", func(tr *MessageTracker) {
			later(func() { _ = tr.Transition(Error, nil) })
		}, DeliveredToRecipient, Error},
		{"final target, other final", func(tr *MessageTracker) {
			later(func() {
				_ = tr.Transition(DeliveredToServer, nil)
				_ = tr.Close()
			})
		}, SeenByRecipient, Closed},
		{"final target, tracking ended at delivery", func(tr *MessageTracker) {
			later(func() {
				_ = tr.Transition(DeliveredToRecipient, nil)
				_ = tr.Close()
			})
		}, SeenByRecipient, DeliveredToRecipient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewMessageTracker()
			tc.drive(tr)
			s, err := tr.Wait(context.Background(), tc.target)
			if err != nil || s != tc.want {
				t.Errorf("Wait = %v, %v; want %v", s, err, tc.want)
			}
		})
	}

	t.Run("ctx cancelled", func(t *testing.T) {
		tr := NewMessageTracker()
		must(t, tr.Transition(DeliveredToServer, nil))
		ctx, cancel := context.WithCancel(context.Background())
		later(cancel)
		s, err := tr.Wait(ctx, DeliveredToRecipient)
		if !errors.Is(err, context.Canceled) || s != DeliveredToServer {
			t.Errorf("Wait = %v, %v", s, err)
		}
	})
	t.Run("ctx deadline", func(t *testing.T) {
		tr := NewMessageTracker()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		defer cancel()
		s, err := tr.Wait(ctx, DeliveredToServer)
		if !errors.Is(err, context.DeadlineExceeded) || s != InTransit {
			t.Errorf("Wait = %v, %v", s, err)
		}
	})
	t.Run("many waiters", func(t *testing.T) {
		tr := NewMessageTracker()
		var wg sync.WaitGroup
		for i := range 50 {
			target := allStates[i%4]
			wg.Go(func() {
				s, err := tr.Wait(context.Background(), target)
				if err != nil || !(s.IsFinal() || s >= target) {
					t.Errorf("Wait(%v) = %v, %v", target, s, err)
				}
			})
		}
		for _, s := range []MessageState{DeliveredToServer, DeliveredToRecipient, SeenByRecipient} {
			time.Sleep(time.Millisecond)
			must(t, tr.Transition(s, nil))
		}
		wg.Wait()
	})
}

func TestDone(t *testing.T) {
	tr := NewMessageTracker()
	done := tr.Done()
	if tr.Done() != done {
		t.Error("Done returns a new channel each time")
	}
	must(t, tr.Transition(DeliveredToRecipient, nil))
	select {
	case <-done:
		t.Fatal("Done closed before a final state")
	default:
	}
	must(t, tr.Transition(SeenByRecipient, nil))
	waitFor(t, done)

	// Asked for only after the tracker is final.
	tr = NewMessageTracker()
	must(t, tr.Close())
	waitFor(t, tr.Done())
}

// TestTimeout runs the timeouts on a timer of the tracker's own, and on
// Timers shared by many trackers.
func TestTimeout(t *testing.T) {
	t.Run("own timer", func(t *testing.T) { testTimeout(t, nil) })
	t.Run("Timers", func(t *testing.T) { testTimeout(t, &Timers{}) })
}

func testTimeout(t *testing.T, ts *Timers) {
	NewMessageTracker := func(opts ...Option) *MessageTracker {
		return NewMessageTracker(append([]Option{WithTimers(ts)}, opts...)...)
	}
	t.Run("fires", func(t *testing.T) {
		tr := NewMessageTracker()
		rec := &recorder{}
		tr.OnChange(rec.observe)
		tr.SetTimeout(10 * time.Millisecond)
		waitFor(t, tr.Done())
		wantState(t, tr, TimedOut)
		wantTos(t, rec.get(), TimedOut)
	})
	t.Run("fires after the server has it", func(t *testing.T) {
		tr := NewMessageTracker(WithTimeout(10 * time.Millisecond))
		must(t, tr.Transition(DeliveredToServer, nil))
		waitFor(t, tr.Done())
		wantState(t, tr, TimedOut)
	})
	t.Run("not after delivery to the recipient", func(t *testing.T) {
		tr := NewMessageTracker(WithTimeout(10 * time.Millisecond))
		must(t, tr.Transition(DeliveredToRecipient, nil))
		time.Sleep(40 * time.Millisecond)
		wantState(t, tr, DeliveredToRecipient)
		// Arming it again now does nothing either.
		tr.SetTimeout(time.Millisecond)
		tr.SetDeadline(time.Now().Add(-time.Hour))
		time.Sleep(10 * time.Millisecond)
		wantState(t, tr, DeliveredToRecipient)
		must(t, tr.Transition(SeenByRecipient, nil))
	})
	t.Run("deadline in the past", func(t *testing.T) {
		tr := NewMessageTracker()
		rec := &recorder{}
		tr.OnChange(rec.observe)
		tr.SetDeadline(time.Now().Add(-time.Second))
		wantState(t, tr, TimedOut) // at once
		wantTos(t, rec.get(), TimedOut)
		tr.SetTimeout(0) // final: nothing happens
		wantTos(t, tr.Changes(), TimedOut)
	})
	t.Run("replaced", func(t *testing.T) {
		tr := NewMessageTracker(WithTimeout(5 * time.Millisecond))
		tr.SetDeadline(time.Now().Add(time.Hour))
		time.Sleep(30 * time.Millisecond)
		wantState(t, tr, InTransit)
		tr.SetTimeout(5 * time.Millisecond)
		waitFor(t, tr.Done())
		wantState(t, tr, TimedOut)
	})
	t.Run("removed", func(t *testing.T) {
		tr := NewMessageTracker(WithTimeout(5 * time.Millisecond))
		tr.SetDeadline(time.Time{})
		time.Sleep(30 * time.Millisecond)
		wantState(t, tr, InTransit)
	})
	t.Run("racing a delivery", func(t *testing.T) {
		for range 200 {
			tr := NewMessageTracker(WithTimeout(time.Millisecond))
			time.Sleep(time.Millisecond)
			err := tr.Transition(DeliveredToRecipient, nil)
			checkChain(t, tr.Changes())
			switch {
			case err == nil:
				wantState(t, tr, DeliveredToRecipient)
			case errors.Is(err, ErrFinal):
				wantState(t, tr, TimedOut)
			default:
				t.Fatal(err)
			}
		}
	})
}

func TestClose(t *testing.T) {
	tr := NewMessageTracker(WithTimeout(10 * time.Millisecond))
	must(t, tr.Close())
	wantState(t, tr, Closed)
	if err := tr.Close(); !errors.Is(err, ErrFinal) {
		t.Errorf("second Close: %v, want ErrFinal", err)
	}
	time.Sleep(30 * time.Millisecond) // the released timer does not fire
	wantTos(t, tr.Changes(), Closed)

	// Closing a delivered tracker ends tracking and keeps the state: the
	// recipient has the message.
	tr, rec := trackerIn(t, DeliveredToRecipient)
	if tr.Ended() {
		t.Fatal("a delivered tracker reports that tracking has ended")
	}
	must(t, tr.Close())
	wantState(t, tr, DeliveredToRecipient)
	waitFor(t, tr.Done())
	if !tr.Ended() {
		t.Error("Ended() is false after Close")
	}
	// Observers are told of the end, which is no change of state and is
	// not in the history.
	wantTos(t, rec.get(), DeliveredToRecipient, DeliveredToRecipient)
	if got := rec.get(); got[0].Ended || !got[1].Ended || got[1].From != DeliveredToRecipient {
		t.Errorf("observer saw %+v", got)
	}
	wantTos(t, tr.Changes(), DeliveredToRecipient)
	late := &recorder{}
	tr.OnChange(late.observe)
	if got := late.get(); len(got) != 2 || !got[1].Ended {
		t.Errorf("a late observer saw %+v", got)
	}
	if err := tr.Close(); !errors.Is(err, ErrFinal) {
		t.Errorf("second Close: %v, want ErrFinal", err)
	}
	if err := tr.Transition(SeenByRecipient, nil); !errors.Is(err, ErrFinal) {
		t.Errorf("SEEN after the end of tracking: %v, want ErrFinal", err)
	}
	wantState(t, tr, DeliveredToRecipient)
	if st, err := tr.Wait(context.Background(), SeenByRecipient); st != DeliveredToRecipient || err != nil {
		t.Errorf("Wait(SEEN) after the end of tracking = %v, %v", st, err)
	}

	for _, s := range allStates {
		if !s.IsFinal() {
			continue
		}
		tr, rec := trackerIn(t, s)
		if err := tr.Close(); !errors.Is(err, ErrFinal) {
			t.Errorf("Close in %v: %v, want ErrFinal", s, err)
		}
		wantState(t, tr, s)
		wantTos(t, rec.get(), s)
	}
}

func TestCloseFromCallback(t *testing.T) {
	tr := NewMessageTracker()
	var (
		mu       sync.Mutex
		seen     []string
		closeErr error
	)
	log := func(who string, c Change) {
		mu.Lock()
		seen = append(seen, who+" "+c.To.String())
		mu.Unlock()
	}
	tr.OnChange(func(c Change) {
		log("first", c)
		if c.To == DeliveredToServer {
			closeErr = tr.Close()
			// The change is made at once and delivered later.
			wantState(t, tr, Closed)
		}
	})
	tr.OnChange(func(c Change) { log("second", c) })

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tr.Transition(DeliveredToServer, nil)
	}()
	waitFor(t, done)
	must(t, closeErr)
	want := []string{
		"first DELIVERED_TO_SERVER",
		"second DELIVERED_TO_SERVER",
		"first CLOSED",
		"second CLOSED",
	}
	if !slices.Equal(seen, want) {
		t.Errorf("observers saw %q, want %q", seen, want)
	}
}

func TestBindMapping(t *testing.T) {
	for _, tc := range []struct {
		tok  stream.TokenState
		want MessageState
	}{
		{stream.TokenQueued, InTransit},
		{stream.TokenSent, InTransit},
		{stream.TokenSentWithoutSM, InTransit},
		{stream.TokenAcked, DeliveredToServer},
		{stream.TokenAborted, Aborted},
		{stream.TokenDropped, Aborted},
		{stream.TokenFailed, Aborted},
		{stream.TokenDisconnected, Closed},
	} {
		t.Run(tc.tok.String(), func(t *testing.T) {
			// Bound while the token is already in the state...
			tr := NewMessageTracker()
			must(t, tr.Bind(&token{state: tc.tok}))
			wantState(t, tr, tc.want)

			// ...and bound before it gets there.
			tr = NewMessageTracker()
			tok := &token{}
			must(t, tr.Bind(tok))
			if tc.tok == stream.TokenAcked || tc.tok == stream.TokenDisconnected {
				tok.set(stream.TokenSent)
			}
			tok.set(tc.tok)
			wantState(t, tr, tc.want)
			for _, c := range tr.Changes() {
				if c.Response != nil {
					t.Errorf("token change with a response: %+v", c)
				}
			}
		})
	}
}

func TestBindTokenAfterDelivery(t *testing.T) {
	// A reflection or a receipt can beat the server's acknowledgement; the
	// ack, or the loss of the connection, that comes after it does not move
	// the tracker.
	for _, s := range []stream.TokenState{stream.TokenAcked, stream.TokenDisconnected} {
		tr := NewMessageTracker()
		tok := &token{}
		must(t, tr.Bind(tok))
		tok.set(stream.TokenSent)
		must(t, tr.Transition(DeliveredToRecipient, nil))
		tok.set(s)
		wantTos(t, tr.Changes(), DeliveredToRecipient)
	}

	// An ack for a tracker the server already has changes nothing.
	tr := NewMessageTracker()
	must(t, tr.Transition(DeliveredToServer, nil))
	must(t, tr.Bind(&token{state: stream.TokenAcked}))
	wantTos(t, tr.Changes(), DeliveredToServer)

	// Aborted after the server acknowledged it: not "never sent".
	tr = NewMessageTracker()
	must(t, tr.Transition(DeliveredToServer, nil))
	must(t, tr.Bind(&token{state: stream.TokenAborted}))
	wantState(t, tr, DeliveredToServer)
}

func TestLateTokenEventIgnored(t *testing.T) {
	for _, end := range []MessageState{Closed, TimedOut, Error, SeenByRecipient} {
		tr := NewMessageTracker()
		rec := &recorder{}
		tr.OnChange(rec.observe)
		tok := &token{}
		must(t, tr.Bind(tok))
		tok.set(stream.TokenSent)
		must(t, tr.Transition(end, nil))
		for _, s := range []stream.TokenState{stream.TokenAcked, stream.TokenDisconnected, stream.TokenFailed} {
			tok.set(s) // no panic, no error, no change
		}
		wantState(t, tr, end)
		wantTos(t, rec.get(), end)
	}
}

func TestBindOnce(t *testing.T) {
	tr := NewMessageTracker()
	must(t, tr.Bind(&token{}))
	if err := tr.Bind(&token{}); !errors.Is(err, ErrBound) {
		t.Errorf("second Bind: %v, want ErrBound", err)
	}
	if tr.Bind(nil) == nil {
		t.Error("Bind(nil) succeeded")
	}

	// A final tracker does not observe the token.
	tr = NewMessageTracker()
	must(t, tr.Close())
	tok := &token{}
	must(t, tr.Bind(tok))
	if len(tok.obs) != 0 {
		t.Error("a final tracker observes its token")
	}
	if err := tr.Bind(tok); !errors.Is(err, ErrBound) {
		t.Errorf("second Bind: %v, want ErrBound", err)
	}
}

// The tracker keeps no reference to its token: once the token is final and
// no longer referenced, it can be collected while the tracker lives on.
func TestTrackerDoesNotKeepToken(t *testing.T) {
	tr := NewMessageTracker()
	tok := &token{}
	must(t, tr.Bind(tok))
	tok.set(stream.TokenSent)
	tok.set(stream.TokenAcked)
	collected := make(chan struct{})
	runtime.AddCleanup(tok, func(ch chan struct{}) { close(ch) }, collected)
	tok = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		select {
		case <-collected:
			wantState(t, tr, DeliveredToServer)
			return
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("token not collected")
		}
	}
}

// TestWaitAfterObservers: Wait and Done return only once every observer has
// been told of the change, so that what an observer does is visible to the
// waiter.
func TestWaitAfterObservers(t *testing.T) {
	tr := NewMessageTracker()
	var seen atomic.Int32
	tr.OnChange(func(c Change) {
		time.Sleep(20 * time.Millisecond)
		seen.Add(1)
	})
	go tr.Transition(DeliveredToRecipient, nil)
	if st, err := tr.Wait(context.Background(), DeliveredToRecipient); st != DeliveredToRecipient || err != nil {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if seen.Load() != 1 {
		t.Fatal("Wait returned before the observer saw the change")
	}
	go tr.Transition(SeenByRecipient, nil)
	<-tr.Done()
	if seen.Load() != 2 {
		t.Fatal("Done closed before the observer saw the final change")
	}
}

// TestErrIsUntypedNil: Err returns a plain error, so that a tracker without
// an error gives a nil error interface, and the stanza error is reachable
// through errors.As and errors.Is.
func TestErrIsUntypedNil(t *testing.T) {
	tr := NewMessageTracker()
	var err error = tr.Err()
	if err != nil {
		t.Fatalf("Err() of a new tracker is a non-nil error: %#v", err)
	}
	must(t, tr.Transition(Error, &Response{}))
	if err = tr.Err(); err != nil {
		t.Fatalf("Err() of an error without a parsed error is a non-nil error: %#v", err)
	}
	tr = NewMessageTracker()
	serr := &stanza.Error{Type: stanza.Cancel, Condition: stanza.NotAcceptable}
	must(t, tr.Transition(Error, &Response{Error: serr}))
	var se *stanza.Error
	if !errors.As(tr.Err(), &se) || se != serr {
		t.Fatalf("errors.As(Err()) = %v", tr.Err())
	}
	if !errors.Is(tr.Err(), stanza.Error{Condition: stanza.NotAcceptable}) {
		t.Fatal("errors.Is does not match the condition")
	}
}

// TestTimeoutZeroMeansNone: a timeout of zero or less means no timeout, as
// for the room and chat clients; only a deadline in the past times out at
// once.
func TestTimeoutZeroMeansNone(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		tr := NewMessageTracker(WithTimeout(d))
		wantState(t, tr, InTransit)
		tr = NewMessageTracker(WithTimeout(5 * time.Millisecond))
		tr.SetTimeout(d) // removes the armed one
		time.Sleep(30 * time.Millisecond)
		wantState(t, tr, InTransit)
	}
}

// TestEndedBeforeSentAbortsToken: a message whose tracking ended while it
// waited for the stream (its timeout ran out, it was closed or aborted) is
// never sent: binding the tracker aborts the token, and a tracker that ends
// while its token is queued aborts it.
func TestEndedBeforeSentAbortsToken(t *testing.T) {
	end := map[string]func(*MessageTracker){
		"timed out": func(tr *MessageTracker) { tr.SetDeadline(time.Now().Add(-time.Second)) },
		"closed":    func(tr *MessageTracker) { must(t, tr.Close()) },
		"aborted":   func(tr *MessageTracker) { must(t, tr.Abort()) },
	}
	for name, f := range end {
		t.Run(name+" before Bind", func(t *testing.T) {
			tr := NewMessageTracker()
			f(tr)
			tok := &token{}
			must(t, tr.Bind(tok))
			if tok.state != stream.TokenAborted {
				t.Fatalf("token %v, want ABORTED", tok.state)
			}
		})
		t.Run(name+" while queued", func(t *testing.T) {
			tr := NewMessageTracker()
			tok := &token{}
			must(t, tr.Bind(tok))
			f(tr)
			if tok.state != stream.TokenAborted {
				t.Fatalf("token %v, want ABORTED", tok.state)
			}
			if st := tr.State(); !st.IsFinal() || (name == "aborted" && st != Aborted) {
				t.Fatalf("tracker %v", st)
			}
		})
	}
	// Once written, ending the tracker leaves the token alone.
	tr := NewMessageTracker()
	tok := &token{}
	must(t, tr.Bind(tok))
	tok.set(stream.TokenSent)
	must(t, tr.Close())
	if tok.state != stream.TokenSent {
		t.Fatalf("token %v, want SENT", tok.state)
	}
}

// TestAbort: a tracked message still queued is aborted through its tracker;
// once written it cannot be.
func TestAbort(t *testing.T) {
	tr := NewMessageTracker()
	tok := &token{}
	must(t, tr.Bind(tok))
	must(t, tr.Abort())
	wantState(t, tr, Aborted)
	wantTos(t, tr.Changes(), Aborted)
	if err := tr.Abort(); !errors.Is(err, ErrFinal) {
		t.Errorf("second Abort: %v, want ErrFinal", err)
	}

	tr = NewMessageTracker()
	tok = &token{}
	must(t, tr.Bind(tok))
	tok.set(stream.TokenSent)
	if err := tr.Abort(); !errors.Is(err, stream.ErrNotQueued) {
		t.Errorf("Abort after the write: %v, want ErrNotQueued", err)
	}
	wantState(t, tr, InTransit)
	tok.set(stream.TokenAcked)
	if err := tr.Abort(); !errors.Is(err, stream.ErrNotQueued) {
		t.Errorf("Abort after the ack: %v, want ErrNotQueued", err)
	}
	wantState(t, tr, DeliveredToServer)
}
