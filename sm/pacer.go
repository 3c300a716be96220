package sm

import "time"

// PacerConfig sets the timing of a Pacer. Zero fields are not given defaults
// here: the stream fills them in.
type PacerConfig struct {
	// RequestEvery asks for an ack after this many stanzas even while an
	// earlier request is outstanding.
	RequestEvery int
	// RequestDelay asks for an ack once nothing more was written for this
	// long after stanzas were: one request per burst, not one per stanza.
	RequestDelay time.Duration
	// MaxUnacked is the bound of the unacked queue: a request goes out when
	// half of it is used, so that the writer is not left waiting.
	MaxUnacked int
	// AnswerDelay is how long an answer to the server's request may wait to
	// travel with the next stanzas written.
	AnswerDelay time.Duration
	// MinDead and MaxDead bound the dead-link timeout (see Pacer).
	MinDead, MaxDead time.Duration
	// Idle sends a request (a probe) when nothing was read for this long
	// and no request is outstanding; 0 sends none.
	Idle time.Duration
}

// Action is what a Pacer decides at one moment.
type Action struct {
	// Answer: write <a h/> now.
	Answer bool
	// Request: write <r/> now.
	Request bool
	// Dead: the link is dead; drop the connection.
	Dead bool
	// Wake is when to ask again at the latest, if nothing else happens.
	Wake time.Time
}

// maxOutstanding bounds the request times kept for round-trip samples. More
// requests than this in flight share the oldest times kept, which only makes
// the samples (and so the timeout) larger.
const maxOutstanding = 16

// Pacer decides, for one connection, when the client asks the server for an
// acknowledgement (<r/>), when it answers the server's requests (<a/>), when
// it probes an idle link, and when it takes a silent link for dead.
//
// It keeps a smoothed estimate of the ack round trip and its variance, as
// TCP does for its retransmission timeout (RFC 6298), from each request to
// the <a/> that answers it, seeded with a round trip of the negotiation. A
// link is dead when a request has been outstanding for the dead-link timeout
// (twice the estimate plus four times the variance, within MinDead and
// MaxDead) and nothing at all was read from the server meanwhile, or when a
// request has been outstanding for MaxDead whatever was read: a busy server
// that keeps sending is slow, not dead, but not forever.
//
// A Pacer does no I/O and reads no clock: the caller passes the time to
// every method, tells it what was read and written, and writes what Next
// decides. It is not safe for concurrent use.
type Pacer struct {
	cfg PacerConfig

	reqs      [maxOutstanding]time.Time // outstanding requests, oldest at head
	reqHead   int
	reqN      int
	sinceReq  int       // stanzas written since the last request
	wrote     bool      // stanzas were written since the last Next
	lastWrite time.Time // when stanzas were last written
	lastRead  time.Time // when anything was last read
	answerAt  time.Time // when the server asked; zero once answered
	force     bool      // request at the next opportunity, unacked or not
	confirmed bool      // an <a/> arrived

	srtt, rttvar time.Duration
	samples      int
}

// NewPacer returns a Pacer for a connection that starts at now. rtt is a
// round trip measured during negotiation (0 if none).
func NewPacer(cfg PacerConfig, now time.Time, rtt time.Duration) *Pacer {
	p := &Pacer{cfg: cfg, lastRead: now, lastWrite: now}
	if rtt > 0 {
		p.sample(rtt)
	}
	return p
}

// Wrote records that n stanzas were written at now.
func (p *Pacer) Wrote(now time.Time, n int) {
	if n <= 0 {
		return
	}
	p.sinceReq += n
	p.wrote = true
	p.lastWrite = now
}

// Read records that an element was read at now.
func (p *Pacer) Read(now time.Time) { p.lastRead = now }

// ServerRequested records an <r/> read at now.
func (p *Pacer) ServerRequested(now time.Time) {
	p.lastRead = now
	if p.answerAt.IsZero() {
		p.answerAt = now
	}
}

// Acked records an <a/> read at now; all tells whether it acknowledged
// everything sent. It takes a round-trip sample from the oldest outstanding
// request, which that <a/> answers. An <a/> that leaves nothing
// unacknowledged answers every request outstanding (a server may answer
// several requests at once). It returns the round trip sampled, with ok
// false when the <a/> answered no request (none was outstanding), so that
// the caller can keep statistics of its own.
func (p *Pacer) Acked(now time.Time, all bool) (rtt time.Duration, ok bool) {
	p.lastRead = now
	p.confirmed = true
	if p.reqN > 0 {
		rtt, ok = max(now.Sub(p.reqs[p.reqHead]), 0), true
		p.sample(rtt)
		p.reqHead = (p.reqHead + 1) % maxOutstanding
		p.reqN--
	}
	if all {
		p.reqN = 0
	}
	return rtt, ok
}

// RequestNow makes the next Next send a request even with nothing
// unacknowledged, for example to confirm a resumed connection.
func (p *Pacer) RequestNow() { p.force = true }

// Confirmed reports whether any <a/> arrived on this connection.
func (p *Pacer) Confirmed() bool { return p.confirmed }

// RTT returns the smoothed round trip and its variance (zero before the
// first sample).
func (p *Pacer) RTT() (srtt, rttvar time.Duration) { return p.srtt, p.rttvar }

// DeadAfter returns the current dead-link timeout.
func (p *Pacer) DeadAfter() time.Duration {
	d := p.cfg.MaxDead
	if p.samples > 0 {
		d = 2 * (p.srtt + 4*p.rttvar)
	}
	if d < p.cfg.MinDead {
		d = p.cfg.MinDead
	}
	if d > p.cfg.MaxDead {
		d = p.cfg.MaxDead
	}
	return d
}

func (p *Pacer) sample(r time.Duration) {
	if r < 0 {
		r = 0
	}
	p.samples++
	if p.samples == 1 {
		p.srtt, p.rttvar = r, r/2
		return
	}
	diff := p.srtt - r
	if diff < 0 {
		diff = -diff
	}
	p.rttvar = (3*p.rttvar + diff) / 4
	p.srtt = (7*p.srtt + r) / 8
}

// Next decides what to write at now, given how many stanzas are
// unacknowledged, and records what it decided as done: the caller writes
// the answer and the request it asks for (or the connection is lost
// anyway). flush answers a pending request at once, as before closing. All
// the pacing rules are here:
//
//   - answer the server's request with the stanzas written since the last
//     call, or once it has waited AnswerDelay, or on flush;
//   - request an ack when RequestEvery stanzas went out since the last
//     request; or, with none outstanding, once the writer has been idle for
//     RequestDelay after writing, or when half of MaxUnacked is used; or
//     when asked to by RequestNow; or as a probe when nothing was read for
//     Idle;
//   - the link is dead as the type's documentation says.
func (p *Pacer) Next(now time.Time, unacked int, flush bool) Action {
	var a Action
	wrote := p.wrote
	p.wrote = false
	if !p.answerAt.IsZero() && (wrote || flush || now.Sub(p.answerAt) >= p.cfg.AnswerDelay) {
		a.Answer = true
		p.answerAt = time.Time{}
	}

	dead := p.DeadAfter()
	if p.reqN > 0 {
		oldest := p.reqs[p.reqHead]
		quiet := p.lastRead
		if quiet.Before(oldest) {
			quiet = oldest
		}
		if now.Sub(oldest) >= p.cfg.MaxDead || now.Sub(quiet) >= dead {
			a.Dead = true
			return a
		}
	}

	pending := unacked > 0 && p.sinceReq > 0
	switch {
	case p.force,
		pending && p.sinceReq >= p.cfg.RequestEvery,
		pending && p.reqN == 0 && (now.Sub(p.lastWrite) >= p.cfg.RequestDelay || 2*unacked >= p.cfg.MaxUnacked),
		p.reqN == 0 && p.cfg.Idle > 0 && now.Sub(p.lastRead) >= p.cfg.Idle:
		a.Request = true
		p.force = false
		p.sinceReq = 0
		if p.reqN < maxOutstanding {
			p.reqs[(p.reqHead+p.reqN)%maxOutstanding] = now
			p.reqN++
		}
		pending = false
	}

	// When to look again: the earliest moment any rule above can change
	// its mind if nothing else happens.
	var wake time.Time
	if p.reqN > 0 {
		oldest := p.reqs[p.reqHead]
		quiet := p.lastRead
		if quiet.Before(oldest) {
			quiet = oldest
		}
		wake = earliest(oldest.Add(p.cfg.MaxDead), quiet.Add(dead))
	} else if p.cfg.Idle > 0 {
		wake = p.lastRead.Add(p.cfg.Idle)
	} else {
		wake = now.Add(p.cfg.MaxDead)
	}
	if !p.answerAt.IsZero() {
		wake = earliest(wake, p.answerAt.Add(p.cfg.AnswerDelay))
	}
	if pending && p.reqN == 0 {
		wake = earliest(wake, p.lastWrite.Add(p.cfg.RequestDelay))
	}
	a.Wake = wake
	return a
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
