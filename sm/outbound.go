package sm

import (
	"errors"
	"fmt"
)

// ErrHandledCountTooHigh is returned when the server acknowledges more
// stanzas than were sent.
var ErrHandledCountTooHigh = errors.New("sm: server acknowledged more stanzas than were sent")

// Outbound counts the stanzas sent on a stream management session and keeps
// those the server has not acknowledged yet, oldest first. T is whatever the
// stream needs to send a stanza again and to report its fate (for example the
// serialised bytes and a token).
//
// The zero value is an empty session. Outbound is not safe for concurrent use;
// the stream guards it with its own lock.
type Outbound[T any] struct {
	sent  uint32 // stanzas sent, mod 2^32
	acked uint32 // the h of the latest acknowledgement, mod 2^32
	q     ring[T]
}

// Sent records that item has been written as the next stanza of the stream.
func (o *Outbound[T]) Sent(item T) {
	o.sent++
	o.q.push(item)
}

// Ack applies an acknowledgement that the server has handled h stanzas in
// all, calling f for each newly acknowledged item in the order they were sent.
// It returns how many were acknowledged.
//
// The client knows exactly what it sent, so the only valid values of h are
// the latest acknowledgement (which acknowledges nothing) up to the number of
// stanzas sent. Any other h, including one "behind" the latest
// acknowledgement in the 32-bit counter, counts stanzas that the unacked
// queue cannot cover: Ack returns an error wrapping ErrHandledCountTooHigh
// and changes nothing. The cost is O(1) per acknowledged item.
func (o *Outbound[T]) Ack(h uint32, f func(T)) (int, error) {
	if err := o.Check(h); err != nil {
		return 0, err
	}
	n := h - o.acked // mod 2^32
	for i := uint32(0); i < n; i++ {
		item := o.q.pop()
		if f != nil {
			f(item)
		}
	}
	o.acked = h
	return int(n), nil
}

// Check returns an error wrapping ErrHandledCountTooHigh when h is not
// between the latest acknowledgement and the number of stanzas sent (mod
// 2^32), and nil otherwise.
func (o *Outbound[T]) Check(h uint32) error {
	if n := h - o.acked; n > uint32(o.q.len()) {
		return fmt.Errorf("%w: h=%d, sent=%d, acknowledged=%d", ErrHandledCountTooHigh, h, o.sent, o.acked)
	}
	return nil
}

// SentCount returns the number of stanzas sent, mod 2^32: the h the server
// should report once it has handled everything.
func (o *Outbound[T]) SentCount() uint32 { return o.sent }

// AckedCount returns the h of the latest acknowledgement.
func (o *Outbound[T]) AckedCount() uint32 { return o.acked }

// Len returns the number of stanzas sent and not yet acknowledged.
func (o *Outbound[T]) Len() int { return o.q.len() }

// Oldest returns the oldest unacknowledged item, and false when there is
// none. The stream reads it for the age of its oldest unacknowledged stanza.
func (o *Outbound[T]) Oldest() (T, bool) {
	if o.q.len() == 0 {
		var zero T
		return zero, false
	}
	return o.q.buf[o.q.head], true
}

// Unacked calls f for each unacknowledged item, oldest first. The stream
// uses it to write them again after a resumption.
func (o *Outbound[T]) Unacked(f func(T)) {
	o.q.each(f)
}

// Reset ends the session: counters go back to zero and the unacknowledged
// items are handed to f, oldest first, and forgotten.
func (o *Outbound[T]) Reset(f func(T)) {
	for o.q.len() > 0 {
		item := o.q.pop()
		if f != nil {
			f(item)
		}
	}
	o.q = ring[T]{}
	o.sent, o.acked = 0, 0
}

// Restore sets up a session that another process began: acked is the h of
// its latest acknowledgement, items the stanzas it wrote after that, in
// order. Nothing may have been sent on o before.
func (o *Outbound[T]) Restore(acked uint32, items []T) {
	o.q = ring[T]{}
	for _, it := range items {
		o.q.push(it)
	}
	o.acked = acked
	o.sent = acked + uint32(len(items))
}

// SetCounts starts the counters at the given values. It exists for tests of
// the 32-bit wrap; a stream starts at zero.
func (o *Outbound[T]) SetCounts(sent uint32) {
	o.sent, o.acked = sent, sent-uint32(o.q.len())
}

// ring is a FIFO queue in a growable circular buffer: push and pop are O(1)
// amortised and popped slots are cleared so the items can be collected.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		size := 2 * len(r.buf)
		if size == 0 {
			size = 16
		}
		buf := make([]T, size)
		k := copy(buf, r.buf[r.head:])
		copy(buf[k:], r.buf[:r.head])
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

func (r *ring[T]) pop() T {
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 {
		r.head = 0
		if len(r.buf) > 1024 {
			r.buf = nil // give back a queue that once was large
		}
	}
	return v
}

func (r *ring[T]) each(f func(T)) {
	for i := 0; i < r.n; i++ {
		f(r.buf[(r.head+i)%len(r.buf)])
	}
}
