package tracking

import (
	"sync"
	"time"

	"github.com/xmpptrack/xmpptrack/internal/notify"
	"github.com/xmpptrack/xmpptrack/internal/quantile"
)

// StateCounts counts trackers by state; index it with a MessageState, as in
// counts[tracking.Closed].
type StateCounts [numStates]uint64

// Stats is a snapshot of the trackers of one client (a room client, a chat
// client): see Recorder.
type Stats struct {
	// Started counts the trackers the client handed out.
	Started uint64
	// Active counts the trackers whose tracking has not ended, by their
	// state now: IN_TRANSIT, DELIVERED_TO_SERVER and, for one-to-one
	// messages that wait for a displayed marker, DELIVERED_TO_RECIPIENT.
	Active StateCounts
	// Ended counts the trackers whose tracking has ended, by the state it
	// ended in: their outcome. That is a final state, or
	// DELIVERED_TO_RECIPIENT for a tracker closed there (a room message at
	// its reflection, a one-to-one message never marked displayed).
	Ended StateCounts
	// Delivered counts the messages that reached the recipient
	// (DELIVERED_TO_RECIPIENT, or SEEN_BY_RECIPIENT straight away).
	// DeliveredP50 and DeliveredP99 are the median and the 99th percentile
	// (nearest rank) of the time each took, from the send call, over the
	// latest 256 of them; 0 before the first.
	Delivered                  uint64
	DeliveredP50, DeliveredP99 time.Duration
}

// A Hook learns of the trackers of a client as they progress, for metrics:
// an adapter counts outcomes and observes latencies into histograms of its
// own, while Stats gives the counts at any moment. Register one with the
// client's AddHook (or Recorder.AddHook); nothing is registered anywhere
// else.
//
// A hook runs where the tracker's observers run: on the goroutine that
// changed the tracker (the stream's callback goroutine for
// acknowledgements, reflections, receipts and markers; a timer's goroutine
// for a timeout; the caller's for Close or Abort), never with a tracker's
// or the client's lock held. It should be quick: it records a number and
// returns; the stream's callbacks wait for it.
type Hook interface {
	// Delivered is told that a message reached the recipient (see
	// Stats.Delivered), d after it was sent.
	Delivered(d time.Duration)
	// Ended is told that the tracking of a message ended in state (its
	// outcome, see Stats.Ended), d after it was sent.
	Ended(state MessageState, d time.Duration)
}

// A Recorder keeps the Stats of a set of trackers and tells its hooks of
// their progress. The room and chat clients each have one, behind their
// Stats and AddHook methods; a program that tracks messages by other means
// (a chat.Matcher of its own) may keep one too. The zero value is ready to
// use; a Recorder must not be copied after first use.
type Recorder struct {
	mu         sync.Mutex // guards the fields below
	stats      Stats
	deliveries quantile.Window // the latest times to delivery
	hooks      []*Hook         // copied on write
	// epoch is the origin of the send times kept per tracker: an offset
	// from it is 8 bytes, a time.Time 24. Set by the first Track.
	epoch time.Time
}

// Track counts t from now on, as a message sent at sent (the origin of its
// latencies). It observes t with OnChange: changes made before the call are
// counted too, in order.
func (r *Recorder) Track(t *MessageTracker, sent time.Time) {
	r.mu.Lock()
	if r.epoch.IsZero() {
		r.epoch = time.Now()
	}
	at := sent.Sub(r.epoch)
	r.stats.Started++
	r.stats.Active[InTransit]++
	r.mu.Unlock()
	t.OnChange(func(c Change) { r.observe(at, c) })
}

// observe counts one change of a tracker sent at epoch+sent, then tells the
// hooks, without the lock.
func (r *Recorder) observe(sent time.Duration, c Change) {
	delivered := c.From < DeliveredToRecipient && (c.To == DeliveredToRecipient || c.To == SeenByRecipient)
	r.mu.Lock()
	d := max(c.At.Sub(r.epoch)-sent, 0)
	r.stats.Active[c.From]--
	if c.Ended {
		r.stats.Ended[c.To]++
	} else {
		r.stats.Active[c.To]++
	}
	if delivered {
		r.stats.Delivered++
		r.deliveries.Add(d)
	}
	hooks := r.hooks
	r.mu.Unlock()
	for _, h := range hooks {
		if delivered {
			(*h).Delivered(d)
		}
		if c.Ended {
			(*h).Ended(c.To, d)
		}
	}
}

// Stats returns a snapshot of the counts: a copy, taken under the
// Recorder's lock, that the caller owns.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	st := r.stats
	w := r.deliveries // a copy: the percentiles are computed after unlocking
	r.mu.Unlock()
	p := w.Percentiles(50, 99)
	st.DeliveredP50, st.DeliveredP99 = p[0], p[1]
	return st
}

// AddHook registers h (see Hook) for the changes from now on; the returned
// function removes it, and may be called more than once.
func (r *Recorder) AddHook(h Hook) (remove func()) {
	p := &h
	r.mu.Lock()
	r.hooks = append(r.hooks[:len(r.hooks):len(r.hooks)], p)
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.hooks = notify.Without(r.hooks, p)
	}
}
