package run

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Target is where a Runner sends its messages; *muc.Room is one.
type Target interface {
	SendTrackedMessage(ctx context.Context, body string, opts ...muc.SendOption) (*tracking.MessageTracker, error)
}

// Config says what a Runner sends.
type Config struct {
	// N is the number of messages.
	N int
	// Window is how many messages may await their outcome at once; zero or
	// less means all of them.
	Window int
	// Body is the body template: "%d" is replaced by the message's index,
	// counted from 0.
	Body string
	// Timeout is each message's tracking timeout, after which it is
	// TIMED_OUT. Zero or less leaves the target's default.
	Timeout time.Duration
	// Resumptions, if set, reports how many times the stream resumed its
	// session so far; the summary and the progress show it.
	Resumptions func() int
}

// Outcome is how one message ended, as far as the run is concerned: the
// first of DELIVERED_TO_RECIPIENT or a final state.
type Outcome struct {
	Index int
	// ID is the message's stanza id, "" when it was never sent.
	ID    string
	State tracking.MessageState
	// Latency is the time from the send call to the outcome.
	Latency time.Duration
	// Err says why the message failed: the error reply, or why it could not
	// be sent. Nil for DELIVERED_TO_RECIPIENT.
	Err error
}

// Delivered reports whether the message reached DELIVERED_TO_RECIPIENT.
func (o Outcome) Delivered() bool { return o.State == tracking.DeliveredToRecipient }

// Progress is a snapshot of a run under way.
type Progress struct {
	Sent     int                           // messages handed to the target
	Done     int                           // messages with an outcome
	InFlight int                           // sent and awaiting their outcome
	States   map[tracking.MessageState]int // outcomes by state
	Elapsed  time.Duration                 // since the first send
	// Rate is outcomes per second since the first send.
	Rate        float64
	Resumptions int
}

// A Runner sends the messages of one run and collects their outcomes.
// Create it with New; a Runner runs once.
type Runner struct {
	target Target
	cfg    Config

	mu       sync.Mutex // guards the fields below
	started  time.Time
	sent     int
	states   map[tracking.MessageState]int
	outcomes []Outcome // delivered to the caller in order, then cleared
	done     int
	signal   chan struct{} // a value when outcomes has new entries
}

// New returns a Runner that sends to target as cfg says.
func New(target Target, cfg Config) *Runner {
	if cfg.Window <= 0 || cfg.Window > cfg.N {
		cfg.Window = cfg.N
	}
	if cfg.Body == "" {
		cfg.Body = "message %d"
	}
	return &Runner{
		target: target,
		cfg:    cfg,
		states: make(map[tracking.MessageState]int),
		signal: make(chan struct{}, 1),
	}
}

// Progress returns a snapshot of the run. It is safe to call from any
// goroutine while Run runs.
func (r *Runner) Progress() Progress {
	r.mu.Lock()
	p := Progress{
		Sent:     r.sent,
		Done:     r.done,
		InFlight: r.sent - r.done,
		States:   make(map[tracking.MessageState]int, len(r.states)),
	}
	for s, n := range r.states {
		p.States[s] = n
	}
	started := r.started
	r.mu.Unlock()
	if !started.IsZero() {
		p.Elapsed = time.Since(started)
		if p.Elapsed > 0 {
			p.Rate = float64(p.Done) / p.Elapsed.Seconds()
		}
	}
	if r.cfg.Resumptions != nil {
		p.Resumptions = r.cfg.Resumptions()
	}
	return p
}

// Run sends the messages and calls onOutcome (which may be nil) once for
// each, in the order outcomes happen, on the calling goroutine. It returns
// once every message sent has its outcome.
//
// When ctx ends, Run sends nothing more and gives up tracking the messages
// still in flight, which end CLOSED; the summary then counts only the
// messages sent, and the error is ctx's.
func (r *Runner) Run(ctx context.Context, onOutcome func(Outcome)) (Summary, error) {
	if r.cfg.N <= 0 {
		return Summary{States: map[string]int{}}, errors.New("run: no messages to send")
	}
	var opts []muc.SendOption
	if r.cfg.Timeout > 0 {
		opts = append(opts, muc.Timeout(r.cfg.Timeout))
	}
	slots := make(chan struct{}, r.cfg.Window)
	sendDone := make(chan struct{})
	var (
		trMu     sync.Mutex
		trackers = make(map[int]*tracking.MessageTracker)
	)
	cpu0 := cpuTime()
	latencies := make([]time.Duration, 0, r.cfg.N)
	// The sender runs on its own goroutine so that outcomes are handed to
	// onOutcome as they happen.
	go func() {
		defer close(sendDone)
		for i := range r.cfg.N {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			if ctx.Err() != nil {
				return
			}
			body := strings.ReplaceAll(r.cfg.Body, "%d", strconv.Itoa(i))
			t0 := time.Now()
			r.mu.Lock()
			if r.started.IsZero() {
				r.started = t0
			}
			r.sent++
			r.mu.Unlock()
			tr, err := r.target.SendTrackedMessage(ctx, body, opts...)
			if err != nil {
				// Nothing was sent: the message never left.
				r.record(Outcome{Index: i, State: tracking.Aborted, Latency: time.Since(t0), Err: err})
				continue
			}
			trMu.Lock()
			trackers[i] = tr
			trMu.Unlock()
			once := false
			tr.OnChange(func(c tracking.Change) {
				if once || c.To < tracking.DeliveredToRecipient {
					return
				}
				once = true
				o := Outcome{Index: i, ID: tr.ID(), State: c.To, Latency: c.At.Sub(t0)}
				if c.To != tracking.DeliveredToRecipient {
					o.Err = outcomeErr(c)
				}
				r.record(o)
			})
		}
	}()

	var last time.Time
	sendDoneCh, ctxDone := (<-chan struct{})(sendDone), ctx.Done()
	stopped := false
	for {
		r.mu.Lock()
		batch := r.outcomes
		r.outcomes = nil
		r.mu.Unlock()
		for _, o := range batch {
			<-slots
			last = time.Now()
			trMu.Lock()
			delete(trackers, o.Index)
			trMu.Unlock()
			if o.Delivered() {
				latencies = append(latencies, o.Latency)
			}
			if onOutcome != nil {
				onOutcome(o)
			}
		}
		if sendDoneCh == nil {
			r.mu.Lock()
			finished := r.done == r.sent && len(r.outcomes) == 0
			r.mu.Unlock()
			if finished {
				break
			}
		}
		select {
		case <-r.signal:
		case <-sendDoneCh:
			sendDoneCh = nil
		case <-ctxDone:
			ctxDone, stopped = nil, true
			// Give up the messages still in flight once nothing more is
			// sent: they end CLOSED unless their outcome came first.
			<-sendDone
			sendDoneCh = nil
			trMu.Lock()
			for _, tr := range trackers {
				tr.Close()
			}
			trMu.Unlock()
		}
	}

	r.mu.Lock()
	started, sent := r.started, r.sent
	states := make(map[string]int, len(r.states))
	for s, n := range r.states {
		states[s.String()] = n
	}
	r.mu.Unlock()
	sum := summarize(sent, states, latencies, started, last, cpuTime()-cpu0)
	if r.cfg.Resumptions != nil {
		sum.Resumptions = r.cfg.Resumptions()
	}
	if stopped {
		return sum, fmt.Errorf("run: stopped: %w", ctx.Err())
	}
	return sum, nil
}

// record queues an outcome for Run's loop. It runs on whichever goroutine
// changed the tracker and never blocks.
func (r *Runner) record(o Outcome) {
	r.mu.Lock()
	r.outcomes = append(r.outcomes, o)
	r.states[o.State]++
	r.done++
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// outcomeErr describes a final change other than delivery.
func outcomeErr(c tracking.Change) error {
	if c.Response != nil && c.Response.Error != nil {
		return *c.Response.Error
	}
	switch c.To {
	case tracking.TimedOut:
		return errors.New("no reflection from the room before the timeout")
	case tracking.Closed:
		return errors.New("tracking given up: the connection was lost or the run ended")
	case tracking.Aborted:
		return errors.New("never sent")
	}
	return nil
}
