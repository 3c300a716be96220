// Package quantile keeps the latest durations of a measurement in a fixed
// window, so that the stream and the room and chat clients can report a
// median and a 99th percentile in their Stats without unbounded memory.
package quantile

import (
	"math"
	"slices"
	"time"
)

// Size is how many of the latest samples a Window keeps.
const Size = 256

// Window keeps the latest Size samples. The zero value is empty and ready to
// use. It is not safe for concurrent use: its owner guards it with its own
// lock, copies it there (a Window is a plain value) and computes the
// percentiles on the copy, after unlocking.
type Window struct {
	buf  [Size]time.Duration
	n    int // samples kept, at most Size
	next int // where the next sample goes
}

// Add records d, forgetting the oldest sample when the window is full.
func (w *Window) Add(d time.Duration) {
	w.buf[w.next] = d
	w.next = (w.next + 1) % Size
	w.n = min(w.n+1, Size)
}

// Len returns how many samples the window holds.
func (w *Window) Len() int { return w.n }

// Percentiles returns the p-th percentiles (each 0 to 100) of the samples
// kept, by the nearest-rank method, all zero when the window is empty. It
// sorts a copy: w is passed by value.
func (w Window) Percentiles(ps ...float64) []time.Duration {
	s := w.buf[:w.n]
	slices.Sort(s)
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		out[i] = Percentile(s, p)
	}
	return out
}

// Percentile returns the p-th percentile (0 to 100) of sorted by the
// nearest-rank method, or 0 when sorted is empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}
