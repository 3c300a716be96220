package tracking

import "time"

// SetTimeout arms the tracker's timer: if the tracker has not reached
// DeliveredToRecipient or a final state when d has passed, it becomes
// TimedOut. A d of zero or less means no timeout, as everywhere in this
// module: it removes the timer. Calling SetTimeout or SetDeadline again
// replaces the deadline; on a tracker already at DeliveredToRecipient or
// beyond they do nothing.
func (t *MessageTracker) SetTimeout(d time.Duration) {
	if d <= 0 {
		t.SetDeadline(time.Time{})
		return
	}
	t.arm(d)
}

// SetDeadline is SetTimeout with an absolute time: a deadline in the past
// times the tracker out at once. The zero time removes the deadline.
func (t *MessageTracker) SetDeadline(deadline time.Time) {
	if deadline.IsZero() {
		t.mu.Lock()
		t.stopTimer()
		t.mu.Unlock()
		return
	}
	t.arm(time.Until(deadline))
}

func (t *MessageTracker) arm(d time.Duration) {
	t.mu.Lock()
	if t.state >= DeliveredToRecipient {
		t.mu.Unlock()
		return
	}
	t.stopTimer()
	if d <= 0 {
		a, _ := t.move(TimedOut, nil)
		t.mu.Unlock()
		a.run(&t.mu)
		return
	}
	if t.timers != nil {
		t.timers.add(t, time.Now().Add(d))
	} else {
		id := t.timerID
		t.timer = time.AfterFunc(d, func() { t.expire(id) })
	}
	t.mu.Unlock()
}

// stopTimer stops and releases the armed timer, if any, and makes sure a
// timer that is already firing does nothing. t.mu must be held.
func (t *MessageTracker) stopTimer() {
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	if t.timers != nil {
		t.timers.remove(t)
	}
	t.timerID++
}

// expire runs when the timer armed with id fires.
func (t *MessageTracker) expire(id uint32) {
	t.mu.Lock()
	if id != t.timerID {
		// Replaced or stopped after it had started firing.
		t.mu.Unlock()
		return
	}
	a, _ := t.move(TimedOut, nil)
	t.mu.Unlock()
	a.run(&t.mu)
}
