// Package hooktest holds a tracking.Hook that keeps what it is told and a
// scripted stream, for the tests of the packages that call hooks and of the
// metrics adapters.
package hooktest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/internal/notify"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Trackers is a tracking.Hook that records every call. Its zero value is
// ready to use; it is safe for concurrent use.
type Trackers struct {
	// During, if set, runs at the start of every call: a test reads the
	// Stats there, which deadlocks if the hook runs under the lock that
	// guards them.
	During func()

	mu        sync.Mutex
	delivered []time.Duration
	ended     tracking.StateCounts
	calls     int
}

// Delivered implements tracking.Hook.
func (h *Trackers) Delivered(d time.Duration) {
	h.during()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delivered = append(h.delivered, d)
	h.calls++
}

// Ended implements tracking.Hook.
func (h *Trackers) Ended(s tracking.MessageState, _ time.Duration) {
	h.during()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ended[s]++
	h.calls++
}

func (h *Trackers) during() {
	if h.During != nil {
		h.During()
	}
}

// Seen returns the latencies of the deliveries, in the order told, the
// endings counted by state, and the number of calls.
func (h *Trackers) Seen() (delivered []time.Duration, ended tracking.StateCounts, calls int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.delivered), h.ended, h.calls
}

// Stream is a scripted stream for the metrics adapters (a
// metrics.StreamSource): the test sets its Stats and plays its hooks' calls
// by hand. It is safe for concurrent use.
type Stream struct {
	mu    sync.Mutex
	stats stream.Stats
	hooks []*stream.Hook
}

// SetStats sets what Stats returns.
func (s *Stream) SetStats(st stream.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = st
}

// Stats returns what SetStats set.
func (s *Stream) Stats() stream.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// AddHook registers h; the returned function removes it.
func (s *Stream) AddHook(h stream.Hook) (remove func()) {
	p := &h
	s.mu.Lock()
	s.hooks = append(s.hooks, p)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.hooks = notify.Without(s.hooks, p)
	}
}

// Hooks returns how many hooks are registered.
func (s *Stream) Hooks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.hooks)
}

// AckRTT tells every hook of a round trip d.
func (s *Stream) AckRTT(d time.Duration) {
	s.mu.Lock()
	hooks := s.hooks
	s.mu.Unlock()
	for _, h := range hooks {
		(*h).AckRTT(d)
	}
}

// Drive tracks a new tracker with r and moves it through states, failing
// the test on a transition the tracker refuses. It returns the tracker.
func Drive(t testing.TB, r *tracking.Recorder, states ...tracking.MessageState) *tracking.MessageTracker {
	t.Helper()
	tr := tracking.NewMessageTracker()
	r.Track(tr, time.Now())
	for _, s := range states {
		if err := tr.Transition(s, nil); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}
