package run

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/internal/report"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Target is where a Runner sends its messages: a room (Room) or the
// addressee of one-to-one messages (Chat).
type Target interface {
	// Send sends message index (counted from 0) and returns its tracker. A
	// positive timeout is the message's tracking timeout; zero or less
	// leaves the target's default.
	Send(ctx context.Context, index int, body string, timeout time.Duration) (*tracking.MessageTracker, error)
	// Proof names what shows that the recipient has a message, for the
	// error of a message TIMED_OUT, e.g. "reflection from the room".
	Proof() string
}

// MUCRoom is what Room needs of a room; *muc.Room is one.
type MUCRoom interface {
	SendTrackedMessage(ctx context.Context, body string, opts ...muc.SendOption) (*tracking.MessageTracker, error)
}

// Room returns the Target that sends groupchat messages to r.
func Room(r MUCRoom) Target { return roomTarget{r} }

type roomTarget struct{ r MUCRoom }

func (t roomTarget) Send(ctx context.Context, _ int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
	if timeout > 0 {
		return t.r.SendTrackedMessage(ctx, body, muc.Timeout(timeout))
	}
	return t.r.SendTrackedMessage(ctx, body)
}

func (roomTarget) Proof() string { return "reflection from the room" }

// Chat returns the Target that sends one-to-one chat messages to to through
// c (chat.Client.SendTracked: a XEP-0184 receipt request and a XEP-0333
// markable in each).
func Chat(c *chat.Client, to jid.JID) Target { return chatTarget{c, to} }

type chatTarget struct {
	c  *chat.Client
	to jid.JID
}

func (t chatTarget) Send(ctx context.Context, _ int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
	if timeout > 0 {
		return t.c.SendTracked(ctx, t.to, body, chat.Timeout(timeout))
	}
	return t.c.SendTracked(ctx, t.to, body)
}

func (chatTarget) Proof() string { return "delivery receipt" }

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
	//
	// With a Goal beyond DeliveredToRecipient, Timeout also bounds the wait
	// for the Goal: a message delivered to the recipient but still short of
	// the Goal when Timeout has passed since its send ends there, at
	// DELIVERED_TO_RECIPIENT, and its tracker is closed. Without a Timeout
	// such a message waits until the run's context ends.
	Timeout time.Duration
	// Goal is the state each message is followed to: its outcome is the
	// first of Goal or a final state. DeliveredToServer,
	// DeliveredToRecipient and SeenByRecipient are goals; zero means
	// DeliveredToRecipient.
	Goal tracking.MessageState
	// Resumptions, if set, reports how many times the stream resumed its
	// session so far; the summary and the progress show it.
	Resumptions func() int
	// Stream, if set, returns the stream's statistics, which the summary
	// carries (Summary.Stream) as they are at the end of the run.
	Stream func() stream.Stats
	// Known holds the outcomes of messages, by index, that this run does
	// not send: established by an earlier run of the same job (Earlier set)
	// or decided before the run (from the server's archive). Run reports
	// them first and counts them in the summary.
	Known map[int]Outcome
}

// Outcome is how one message ended, as far as the run is concerned: the
// first of the run's goal state or a final state.
type Outcome struct {
	Index int
	// ID is the message's stanza id, "" when it was never sent.
	ID    string
	State tracking.MessageState
	// Reached says that State is the run's goal.
	Reached bool
	// Latency is the time from the send call to the outcome.
	Latency time.Duration
	// Err says why the message failed: the error reply, or why it could not
	// be sent, or that it fell short of the goal in time. Nil when the goal
	// was reached.
	Err error
	// Earlier says that an earlier run of the job established the outcome.
	Earlier bool
}

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
	// Goal is the run's goal state (Config.Goal).
	Goal tracking.MessageState
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
	known    int           // outcomes of Config.Known, counted in sent and done
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
	if cfg.Goal == tracking.InTransit {
		cfg.Goal = tracking.DeliveredToRecipient
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
		Goal:     r.cfg.Goal,
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
		return Summary{Summary: report.Summary{States: map[string]int{}}, Goal: r.cfg.Goal}, errors.New("run: no messages to send")
	}
	switch r.cfg.Goal {
	case tracking.DeliveredToServer, tracking.DeliveredToRecipient, tracking.SeenByRecipient:
	default:
		return Summary{Summary: report.Summary{States: map[string]int{}}, Goal: r.cfg.Goal}, fmt.Errorf("run: %v is not a goal", r.cfg.Goal)
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
			if o, ok := r.cfg.Known[i]; ok {
				o.Index = i
				o.Reached = meets(o.State, r.cfg.Goal)
				r.mu.Lock()
				r.sent++
				r.known++
				r.mu.Unlock()
				r.record(o)
				continue
			}
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
			tr, err := r.target.Send(ctx, i, body, r.cfg.Timeout)
			if err != nil {
				// Nothing was sent: the message never left.
				r.record(Outcome{Index: i, State: tracking.Aborted, Latency: time.Since(t0), Err: err})
				continue
			}
			trMu.Lock()
			trackers[i] = tr
			trMu.Unlock()
			r.follow(&flight{index: i, t0: t0, tr: tr})
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
			if _, known := r.cfg.Known[o.Index]; known {
				if onOutcome != nil {
					onOutcome(o)
				}
				continue
			}
			<-slots
			last = time.Now()
			trMu.Lock()
			delete(trackers, o.Index)
			trMu.Unlock()
			if o.Reached {
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
	sum.Goal = r.cfg.Goal
	for s := r.cfg.Goal; s <= tracking.SeenByRecipient; s++ {
		sum.Reached += states[s.String()]
	}
	if r.cfg.Resumptions != nil {
		sum.Resumptions = r.cfg.Resumptions()
	}
	if r.cfg.Stream != nil {
		sum.Stream = streamReport(r.cfg.Stream())
	}
	if stopped {
		return sum, fmt.Errorf("run: stopped: %w", ctx.Err())
	}
	return sum, nil
}

// meets reports whether a message in state s has met goal: s is the goal or
// a state past it on the way to the recipient (a message seen by the
// recipient was delivered to it, even when no receipt came first).
func meets(s, goal tracking.MessageState) bool {
	return s >= goal && s <= tracking.SeenByRecipient
}

// flight is one message sent and awaiting its outcome.
type flight struct {
	index int
	t0    time.Time
	tr    *tracking.MessageTracker
	done  atomic.Bool // the outcome is recorded
	// timer ends a message delivered to the recipient that falls short of
	// a goal beyond delivery in time; nil unless the goal is beyond it.
	timer *time.Timer
}

// follow watches a message's tracker until its outcome: the first change to
// the goal or beyond (a final state), or, for a goal beyond delivery to the
// recipient, the timeout after delivery.
func (r *Runner) follow(f *flight) {
	goal := r.cfg.Goal
	if goal > tracking.DeliveredToRecipient && r.cfg.Timeout > 0 {
		f.timer = time.AfterFunc(time.Until(f.t0.Add(r.cfg.Timeout)), func() { r.short(f, time.Now()) })
	}
	f.tr.OnChange(func(c tracking.Change) {
		switch {
		case c.To >= goal:
			o := Outcome{Index: f.index, ID: f.tr.ID(), State: c.To, Reached: meets(c.To, goal), Latency: c.At.Sub(f.t0)}
			if !o.Reached {
				o.Err = r.outcomeErr(c)
			}
			r.finish(f, o)
		case c.To == tracking.DeliveredToRecipient && f.timer != nil && c.At.Sub(f.t0) >= r.cfg.Timeout:
			// Delivered after the timer found it short of delivery; the
			// tracker's own timeout stops at delivery.
			r.short(f, c.At)
		}
	})
}

// short ends a message that is at DELIVERED_TO_RECIPIENT at the timeout,
// short of a goal beyond it, and closes its tracker: nothing will wait for
// it any more. A message not yet delivered is left to its tracker's own
// timeout.
func (r *Runner) short(f *flight, at time.Time) {
	if f.tr.State() != tracking.DeliveredToRecipient {
		return
	}
	err := fmt.Errorf("not %v before the timeout", r.cfg.Goal)
	// The tracker is closed before the outcome is recorded, so that once
	// Run has returned no tracker of its is left open.
	r.finish(f, Outcome{Index: f.index, ID: f.tr.ID(), State: tracking.DeliveredToRecipient, Latency: at.Sub(f.t0), Err: err},
		func() { _ = f.tr.Close() })
}

// finish records f's outcome o unless it has one already, and reports
// whether it did.
func (r *Runner) finish(f *flight, o Outcome, before ...func()) bool {
	if !f.done.CompareAndSwap(false, true) {
		return false
	}
	if f.timer != nil {
		f.timer.Stop()
	}
	for _, b := range before {
		b()
	}
	r.record(o)
	return true
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

// outcomeErr describes a final change short of the goal.
func (r *Runner) outcomeErr(c tracking.Change) error {
	if c.Response != nil && c.Response.Error != nil {
		return *c.Response.Error
	}
	switch c.To {
	case tracking.TimedOut:
		return fmt.Errorf("no %s before the timeout", r.target.Proof())
	case tracking.Closed:
		return errors.New("tracking given up: the connection was lost or the run ended")
	case tracking.Aborted:
		return errors.New("never sent")
	}
	return nil
}
