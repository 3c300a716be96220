package stream

import (
	"time"

	"github.com/xmpptrack/xmpptrack/internal/notify"
)

// A Hook observes a stream's measurements as they happen, for metrics: an
// adapter counts events and observes round trips into histograms of its
// own, while Stats gives the counters and gauges at any moment. Register
// one with Stream.AddHook; nothing is registered anywhere else.
//
// Both methods run on the stream's callback goroutine, like every other
// callback (see the package documentation), one call at a time, in the
// order things happened, and never with the stream's lock held: the
// stream's reader, writer and reconnection go on while a hook runs, and a
// slow hook delays only the callbacks behind it. A hook should be quick: it
// records a number and returns.
type Hook interface {
	// AckRTT is told of each ack round trip measured: from an <r/> to the
	// <a/> that answered it.
	AckRTT(d time.Duration)
	// Event is told of each connection event, as an OnEvent listener is.
	// A dead link is an EventDisconnected whose Err wraps ErrAckTimeout;
	// a refused resumption an EventNewSession whose Err wraps
	// ErrResumeRefused.
	Event(ev Event)
}

// AddHook registers h (see Hook) from now on; the returned function removes
// it, and may be called more than once. A stream may have any number of
// hooks.
func (s *Stream) AddHook(h Hook) (remove func()) {
	p := &h
	s.mu.Lock()
	s.hooks = append(s.hooks[:len(s.hooks):len(s.hooks)], p)
	s.mu.Unlock()
	removeEvents := s.OnEvent(h.Event)
	return func() {
		removeEvents()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.hooks = notify.Without(s.hooks, p)
	}
}

// sampleRTTLocked records an ack round trip for Stats and returns the hooks
// to tell of it, after s.mu is released. Called with s.mu held.
func (s *Stream) sampleRTTLocked(d time.Duration) []*Hook {
	s.rtts.Add(d)
	s.stats.AckRTTSamples++
	return s.hooks
}
