package tracking

import (
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

func TestTimerReleased(t *testing.T) {
	for _, to := range []MessageState{DeliveredToRecipient, SeenByRecipient, Aborted, Closed, Error} {
		tr := NewMessageTracker(WithTimeout(time.Hour))
		if tr.timer == nil {
			t.Fatal("no timer armed")
		}
		if err := tr.Transition(to, nil); err != nil {
			t.Fatal(err)
		}
		if tr.timer != nil {
			t.Errorf("timer kept at %v", to)
		}
	}
	tr := NewMessageTracker(WithTimeout(time.Hour))
	tr.SetDeadline(time.Time{})
	if tr.timer != nil {
		t.Error("timer kept after the deadline was removed")
	}
	tr = NewMessageTracker(WithTimeout(time.Millisecond))
	<-tr.Done()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.timer != nil {
		t.Error("timer kept after it fired")
	}
}

func TestTableHasNoFinalRows(t *testing.T) {
	for from, tos := range next {
		if MessageState(from).IsFinal() && len(tos) > 0 {
			t.Errorf("final state %v has transitions", MessageState(from))
		}
	}
}

func TestSize(t *testing.T) {
	t.Logf("sizeof(MessageTracker) = %d bytes", unsafe.Sizeof(MessageTracker{}))
}

// TestTimersRelease: a tracker on Timers leaves the heap when it is
// delivered, final, disarmed or fired.
func TestTimersRelease(t *testing.T) {
	var ts Timers
	for _, to := range []MessageState{DeliveredToRecipient, SeenByRecipient, Aborted, Closed, Error} {
		tr := NewMessageTracker(WithTimers(&ts), WithTimeout(time.Hour))
		if len(ts.heap) != 1 || tr.slot != 1 {
			t.Fatalf("%d deadlines, slot %d after arming, want 1 and 1", len(ts.heap), tr.slot)
		}
		if err := tr.Transition(to, nil); err != nil {
			t.Fatal(err)
		}
		if len(ts.heap) != 0 || tr.slot != 0 {
			t.Errorf("deadline kept at %v", to)
		}
	}
	tr := NewMessageTracker(WithTimers(&ts), WithTimeout(time.Hour))
	tr.SetTimeout(time.Minute) // replaces it
	if len(ts.heap) != 1 {
		t.Errorf("%d deadlines after re-arming, want 1", len(ts.heap))
	}
	tr.SetDeadline(time.Time{})
	if len(ts.heap) != 0 {
		t.Error("deadline kept after it was removed")
	}
	tr = NewMessageTracker(WithTimers(&ts), WithTimeout(time.Millisecond))
	<-tr.Done()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.heap) != 0 || tr.slot != 0 {
		t.Error("deadline kept after it fired")
	}
}

// TestTimersMany: trackers on one Timers, with deadlines in random order,
// some delivered before theirs: each of the others times out, never before
// its deadline; the delivered ones never do.
func TestTimersMany(t *testing.T) {
	var ts Timers
	const n = 2000
	rnd := rand.New(rand.NewPCG(1, 2))
	trackers := make([]*MessageTracker, n)
	deadlines := make([]time.Time, n)
	start := time.Now()
	for i := range trackers {
		deadlines[i] = start.Add(time.Duration(rnd.IntN(100)) * time.Millisecond)
		trackers[i] = NewMessageTracker(WithTimers(&ts))
		trackers[i].SetDeadline(deadlines[i])
	}
	delivered := make([]bool, n)
	for _, i := range rnd.Perm(n)[:n/2] {
		if trackers[i].Transition(DeliveredToRecipient, nil) == nil {
			delivered[i] = true
		}
	}
	for i, tr := range trackers {
		if delivered[i] {
			continue
		}
		select {
		case <-tr.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("tracker %d: still %v long after its deadline", i, tr.State())
		}
		cs := tr.Changes()
		last := cs[len(cs)-1]
		if last.To != TimedOut {
			t.Fatalf("tracker %d ended %v, want TIMED_OUT", i, last.To)
		}
		if last.At.Before(deadlines[i]) {
			t.Errorf("tracker %d timed out %v before its deadline", i, deadlines[i].Sub(last.At))
		}
	}
	time.Sleep(150 * time.Millisecond)
	for i, tr := range trackers {
		if delivered[i] && tr.State() != DeliveredToRecipient {
			t.Errorf("delivered tracker %d in %v", i, tr.State())
		}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.heap) != 0 {
		t.Errorf("%d deadlines left", len(ts.heap))
	}
}
