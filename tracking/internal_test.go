package tracking

import (
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
