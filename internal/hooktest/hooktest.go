// Package hooktest holds a tracking.Hook that keeps what it is told, for the
// tests of the packages that call hooks and of the metrics adapters.
package hooktest

import (
	"slices"
	"sync"
	"time"

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
