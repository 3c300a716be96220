// Package notify delivers state changes to observers one at a time, in the
// order they happened, without holding the owner's lock while an observer
// runs.
//
// Both stream tokens and message trackers change state from several
// goroutines (the stream's reader and writer, timers, the user) and promise
// their observers that every change is seen exactly once and in order. A
// Serial is the small piece of machinery behind that promise: the owner queues
// events under its own lock, and whichever goroutine finds no delivery in
// progress delivers the queue after unlocking. An observer that causes another
// change (for example by closing a tracker from its callback) does not recurse:
// the new event is queued and delivered by the loop that is already running.
//
// A Settler lets the owner learn, with its lock held, when every observer has
// seen an event: owners wake their waiters (Wait, Done) there, so that a
// waiter never runs ahead of the observers.
package notify

import "sync"

// Serial queues events for a set of observers. Its zero value is ready to use.
// Every method must be called with the owner's lock held, except Deliver.
type Serial[E any] struct {
	// Settler, if set, is told with the owner's lock held once every
	// observer has seen an emitted event, in the order of Emit: by Emit
	// itself when there is nobody to tell and nothing queued, otherwise by
	// Deliver. An interface rather than a func, so that an owner can be its
	// own Settler without a closure to allocate.
	Settler Settler[E]

	observers []func(E)
	pending   []delivery[E]
	head      int
	running   bool
}

// A Settler learns that every observer has seen an event (see Serial).
type Settler[E any] interface {
	Settled(E)
}

type delivery[E any] struct {
	event  E
	to     []func(E)
	settle bool // an emitted change, not the replay of Subscribe
}

// Len reports how many observers are registered.
func (s *Serial[E]) Len() int { return len(s.observers) }

// Emit queues e for every observer registered now. It reports whether the
// caller must call Deliver after releasing its lock.
func (s *Serial[E]) Emit(e E) bool {
	if len(s.observers) == 0 && !s.running {
		if s.Settler != nil {
			s.Settler.Settled(e)
		}
		return false
	}
	return s.queue(delivery[E]{event: e, to: s.observers, settle: true})
}

// Subscribe registers f and queues initial for f alone, so that f first learns
// the state at the time it subscribed and then every later change. It reports
// whether the caller must call Deliver after releasing its lock.
func (s *Serial[E]) Subscribe(f func(E), initial E) bool {
	// Copy on write: deliveries already queued keep the slice they were
	// queued with, so f never sees an event from before it subscribed.
	obs := make([]func(E), len(s.observers), len(s.observers)+1)
	copy(obs, s.observers)
	s.observers = append(obs, f)
	return s.queue(delivery[E]{event: initial, to: s.observers[len(s.observers)-1:]})
}

// Drop unregisters every observer; events already queued are still delivered.
// Owners call it once they reach a final state, so that observers do not keep
// them (or what they reference) alive.
func (s *Serial[E]) Drop() { s.observers = nil }

func (s *Serial[E]) queue(d delivery[E]) bool {
	s.pending = append(s.pending, d)
	if s.running {
		return false
	}
	s.running = true
	return true
}

// Deliver runs the queued deliveries until none is left. mu is the owner's
// lock; Deliver must be called without it held, and only when Emit or
// Subscribe asked for it.
func (s *Serial[E]) Deliver(mu sync.Locker) {
	var done delivery[E] // delivered, not yet settled
	for {
		mu.Lock()
		if done.settle && s.Settler != nil {
			s.Settler.Settled(done.event)
		}
		done = delivery[E]{}
		if s.head == len(s.pending) {
			clear(s.pending)
			s.pending = s.pending[:0]
			s.head = 0
			s.running = false
			mu.Unlock()
			return
		}
		d := s.pending[s.head]
		s.pending[s.head] = delivery[E]{}
		s.head++
		mu.Unlock()
		for _, f := range d.to {
			f(d.event)
		}
		done = d
	}
}

// Without returns a new slice of the elements of xs other than x. Owners
// keep their lists of observers, handlers and hooks copy-on-write with it,
// so that a delivery in progress keeps the slice it read.
func Without[T comparable](xs []T, x T) []T {
	out := make([]T, 0, len(xs))
	for _, y := range xs {
		if y != x {
			out = append(out, y)
		}
	}
	return out
}
