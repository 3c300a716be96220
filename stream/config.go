package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/dial"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/sm"
)

// Errors reported by a Stream. Token errors and Stream.Err wrap them, so they
// can be tested with errors.Is.
var (
	// ErrClosed: the stream was closed by Close.
	ErrClosed = errors.New("stream: closed")
	// ErrQueueFull: Send in non-blocking mode found the queue full.
	ErrQueueFull = errors.New("stream: send queue is full")
	// ErrConnectionLost: the connection broke and the stanza could not be
	// recovered by resumption.
	ErrConnectionLost = errors.New("stream: connection lost")
	// ErrResumeRefused: the server refused to resume the previous session.
	ErrResumeRefused = errors.New("stream: resumption refused")
	// ErrAckTimeout: an ack request went unanswered and the server sent
	// nothing meanwhile, for longer than the dead-link timeout (see
	// Config.AckTimeout): the link is taken for dead.
	ErrAckTimeout = errors.New("stream: no answer to ack request")
	// ErrIQLost: SendIQ's request or its reply was lost with the session,
	// so no reply will come.
	ErrIQLost = errors.New("stream: IQ lost with the session")
	// ErrUnreadable: the server sent input that the stream could not read.
	// A connection lost to it is resumed like any other; when the same
	// stanza comes back on every resumption, the stream starts a new
	// session instead, and EventNewSession's Err wraps ErrUnreadable.
	ErrUnreadable = errors.New("stream: unreadable input from the server")
	// ErrProtocol: the server broke XEP-0198 (for example an h beyond what
	// was sent); the stream is closed for good.
	ErrProtocol = errors.New("stream: protocol violation by the server")
	// ErrAuth: the server refused the credentials (SASL failure, for
	// example a wrong password). Dial returns it; it is never retried.
	ErrAuth = errors.New("stream: authentication failed")
	// ErrSerialize: the stanza given to Send could not be serialised.
	ErrSerialize = errors.New("stream: cannot serialise stanza")
)

// Config says how a Stream connects and behaves. Only JID, Password and
// (unless AllowPlaintext is set) TLS are required; every other field has a
// default: without Addr or Dial, the server is found in DNS.
type Config struct {
	// JID is the account. Its resourcepart is a hint that the server may
	// ignore.
	JID jid.JID
	// Password for SASL SCRAM.
	Password string
	// Addr is the server's host:port, used when Dial is nil. Empty: the
	// stream finds the server as XMPP clients do, from the SRV records of
	// the JID's domain (_xmpps-client._tcp for direct TLS, then
	// _xmpp-client._tcp), or else the domain itself on ports 5223 (direct
	// TLS) and 5222, and looks them up again for every reconnection; see
	// "Finding the server" in the package documentation.
	Addr string
	// Dial opens a new connection to the server. It is called for the first
	// connection and for every reconnection. Nil dials Addr over TCP, or,
	// when Addr is empty, what the JID's domain announces in DNS. A Dial
	// that returns a *tls.Conn connects with direct TLS: the stream does no
	// STARTTLS on it.
	Dial func(ctx context.Context) (net.Conn, error)
	// Resolver looks up the SRV records of the JID's domain and the
	// addresses of their targets when Addr and Dial are empty. Nil: the
	// system's resolver.
	Resolver *net.Resolver
	// DialTimeout bounds each attempt to connect to one address when the
	// stream dials by itself (Addr, or what DNS names; not a Dial of
	// yours), the TLS handshake of direct TLS included, so that an address
	// that never answers (a filtered port) leaves time to try the next one
	// DNS names. Default 10s.
	DialTimeout time.Duration
	// TLS configures STARTTLS, and direct TLS (XEP-0368) for servers that
	// announce it. It is required unless AllowPlaintext is set; ServerName
	// defaults to the JID's domain, and for direct TLS NextProtos to
	// "xmpp-client". Without TLS (AllowPlaintext), the stream tries no
	// direct TLS.
	TLS *tls.Config
	// AllowPlaintext lets the stream log in without TLS. Use it only on
	// loopback (tests, fault-injection proxies).
	AllowPlaintext bool
	// Mechanisms are the SASL mechanisms to offer, best first. Default: the
	// SCRAM family.
	Mechanisms []sasl.Mechanism
	// DisableSM turns stream management off even when the server offers it.
	// Tokens then end in TokenSentWithoutSM.
	DisableSM bool

	// MaxUnacked bounds the stanzas written but not yet acknowledged. The
	// writer waits (and asks for an ack) when the bound is reached.
	// Default 1000.
	MaxUnacked int
	// QueueSize bounds the stanzas accepted by Send but not yet written.
	// Default 1000.
	QueueSize int
	// NonBlocking makes Send return ErrQueueFull at once instead of waiting
	// for room.
	NonBlocking bool
	// RequestEvery asks for an ack after this many stanzas even while an
	// earlier request is outstanding. Default 100.
	RequestEvery int
	// RequestDelay asks for an ack once the writer has written nothing for
	// this long after writing stanzas: one request per burst, not one per
	// stanza. Default 5ms.
	RequestDelay time.Duration
	// AnswerDelay is how long an answer to the server's ack request may
	// wait to travel with the next stanzas written. Default 5ms.
	AnswerDelay time.Duration
	// AckTimeout is the longest an ack request may go unanswered before
	// the connection is taken for dead, whatever else the server sends; it
	// also bounds each reconnection attempt. Default 30s.
	//
	// A link is taken for dead sooner when a request goes unanswered and
	// nothing at all arrives for the dead-link timeout: twice the smoothed
	// ack round trip plus four times its variance, measured by the stream
	// as TCP measures its own (RFC 6298), and never less than
	// MinAckTimeout.
	AckTimeout time.Duration
	// MinAckTimeout is the floor of the dead-link timeout. Default 3s (or
	// AckTimeout, if less).
	MinAckTimeout time.Duration
	// KeepAlive sends an ack request (a whitespace keepalive without stream
	// management) when nothing was received for this long, so that a link
	// that died while idle is noticed before the next stanza waits on it.
	// Default 30s.
	KeepAlive time.Duration
	// Backoff paces reconnection attempts.
	Backoff Backoff
	// ResumeWindow caps how long the stream tries to resume before it gives up
	// and starts a new session; the server's max (from <enabled/>) caps it
	// further. Default 5m.
	ResumeWindow time.Duration

	// Outbox, if set, keeps the session durable across a restart of the
	// process: every stanza is committed to it, with the XEP-0198 state,
	// before its bytes reach the socket (one commit per batch the writer
	// writes), and Note adds the records of the layers above to the same
	// commits. Dial reads it first: if an earlier process left a session
	// there that the server may still hold, the first connection resumes it
	// and writes again what the server had not acknowledged (Restored). See
	// package outbox for what survives what.
	//
	// With an outbox, the inbound count the stream commits and acknowledges
	// to the server (<a h/>, <resume h/>) counts only the stanzas whose
	// handlers have returned, and only once committed, with every Note those
	// handlers made: an answer to the server's request commits first when
	// needed. The server therefore sends again, after a restart or a
	// resumption, what was read but not yet recorded; what was already
	// handled in this process is not handed to the handlers twice. The
	// acknowledgements lag behind the stanzas read by what is waiting for
	// its handlers, which XEP-0198 allows.
	Outbox outbox.Store
	// Logger receives debug and warning logs. Default: discard.
	Logger *slog.Logger

	// dialControl, if set, is the Control function of the dialer that
	// connects to what DNS announces: tests see each address it dials.
	dialControl func(network, address string, c syscall.RawConn) error
}

// pacer is the ack timing of a connection, for sm.Pacer.
func (c *Config) pacer() sm.PacerConfig {
	return sm.PacerConfig{
		RequestEvery: c.RequestEvery,
		RequestDelay: c.RequestDelay,
		MaxUnacked:   c.MaxUnacked,
		AnswerDelay:  c.AnswerDelay,
		MinDead:      c.MinAckTimeout,
		MaxDead:      c.AckTimeout,
		Idle:         c.KeepAlive,
	}
}

// Backoff is the delay between reconnection attempts: it starts at Min, is
// multiplied by 2 after each failed attempt up to Max, and each delay is
// shortened by a random fraction up to Jitter (0 to 1).
type Backoff struct {
	Min, Max time.Duration
	Jitter   float64
}

func (b Backoff) delay(attempt int) time.Duration {
	d := b.Min
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	if d > b.Max {
		d = b.Max
	}
	if b.Jitter > 0 {
		d -= time.Duration(rand.Float64() * b.Jitter * float64(d))
	}
	return d
}

func (c Config) withDefaults() Config {
	if c.MaxUnacked <= 0 {
		c.MaxUnacked = 1000
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 1000
	}
	if c.RequestEvery <= 0 {
		c.RequestEvery = 100
	}
	if c.RequestDelay <= 0 {
		c.RequestDelay = 5 * time.Millisecond
	}
	if c.AnswerDelay <= 0 {
		c.AnswerDelay = 5 * time.Millisecond
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 30 * time.Second
	}
	if c.MinAckTimeout <= 0 {
		c.MinAckTimeout = 3 * time.Second
	}
	c.MinAckTimeout = min(c.MinAckTimeout, c.AckTimeout)
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.Backoff.Min <= 0 {
		c.Backoff.Min = 100 * time.Millisecond
	}
	if c.Backoff.Max < c.Backoff.Min {
		c.Backoff.Max = 10 * time.Second
		if c.Backoff.Max < c.Backoff.Min {
			c.Backoff.Max = c.Backoff.Min
		}
	}
	if c.ResumeWindow <= 0 {
		c.ResumeWindow = 5 * time.Minute
	}
	if len(c.Mechanisms) == 0 {
		c.Mechanisms = []sasl.Mechanism{sasl.ScramSha256Plus, sasl.ScramSha1Plus, sasl.ScramSha256, sasl.ScramSha1}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.TLS != nil && c.TLS.ServerName == "" {
		c.TLS = c.TLS.Clone()
		c.TLS.ServerName = c.JID.Domainpart()
	}
	switch {
	case c.Dial != nil:
	case c.Addr != "":
		addr := c.Addr
		d := &net.Dialer{Timeout: c.DialTimeout}
		c.Dial = func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	default:
		c.Dial = c.lookupDial()
	}
	return c
}

// lookupDial returns a Dial function that finds the server of the JID's
// domain with mellium's dial package each time it is called: the SRV records
// of RFC 6120 §3.2.1 and XEP-0368, or the domain itself when it has none.
// Targets of _xmpps-client._tcp records are dialed with direct TLS, using
// c.TLS; without c.TLS none are tried.
func (c *Config) lookupDial() func(ctx context.Context) (net.Conn, error) {
	d := &dial.Dialer{NoTLS: c.TLS == nil}
	d.Resolver = c.Resolver
	d.Timeout = c.DialTimeout
	d.Control = c.dialControl
	if c.TLS != nil {
		d.TLSConfig = c.TLS.Clone()
		if len(d.TLSConfig.NextProtos) == 0 {
			d.TLSConfig.NextProtos = []string{"xmpp-client"}
		}
	}
	account := c.JID
	return func(ctx context.Context) (net.Conn, error) {
		conn, err := d.Dial(ctx, "tcp", account)
		if err != nil {
			return nil, fmt.Errorf("finding the server of %s: %w", account.Domainpart(), err)
		}
		return conn, nil
	}
}

// EventKind says what happened to the connection.
type EventKind uint8

// Kinds of Event.
const (
	// EventConnected: the first session is ready.
	EventConnected EventKind = iota
	// EventDisconnected: the connection broke; the stream will reconnect.
	EventDisconnected
	// EventResumed: a new connection resumed the previous session; nothing
	// was lost.
	EventResumed
	// EventNewSession: a new session replaced one that could not be resumed.
	// Stanzas the server had not acknowledged became TokenDisconnected; room
	// memberships and presence are gone and must be set up again.
	EventNewSession
	// EventClosed: the stream ended (Close, or a failure it cannot recover
	// from); Err says which.
	EventClosed
)

var eventNames = [...]string{"connected", "disconnected", "resumed", "new-session", "closed"}

// String returns a short name of the kind, e.g. "resumed".
func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Event is a change in the stream's connection.
type Event struct {
	Kind EventKind
	At   time.Time
	// Err is why the connection was lost, the resumption refused, or the
	// stream closed.
	Err error
	// Addr is the full JID the session is bound to.
	Addr jid.JID
	// Acked counts the stanzas acknowledged by <resumed/> or <failed/>,
	// Resent those written again after a resumption, and Lost those that
	// became TokenDisconnected.
	Acked, Resent, Lost int
	// Session numbers the sessions of the stream from 1; a resumed session
	// keeps its number, a new session has the next. StanzaToken.Session
	// tells in which session a stanza was written, so that a listener of
	// EventNewSession can tell stanzas of the lost session from those the
	// stream has already written in the new one.
	Session uint64
}

// Stats are counters of a stream's life, for logs and metrics.
type Stats struct {
	Connections  int // successful connections, the first included
	Resumptions  int // successful resumptions
	NewSessions  int // sessions started after a resumption failed or was not possible
	Disconnects  int // connections lost
	Sent         uint64
	Acked        uint64
	Received     uint64
	Unacked      int // now
	Queued       int // now
	Attempts     []Attempt
	LastErr      error
	SMEnabled    bool
	ResumeWindow time.Duration // the server's max, 0 if unknown
	// AckRTT is the smoothed ack round trip of the live connection, and
	// DeadAfter its dead-link timeout (see Config.AckTimeout); both 0 while
	// disconnected.
	AckRTT, DeadAfter time.Duration
	// OutboxCommits counts the commits to Config.Outbox (one per batch the
	// writer writes, and those of notes alone).
	OutboxCommits uint64

	// ResumeRefused counts the resumptions the server refused with
	// <failed/>; each was followed by a new session, also counted in
	// NewSessions.
	ResumeRefused int
	// DeadLinks counts the connections taken for dead because an ack
	// request went unanswered (ErrAckTimeout); they are counted in
	// Disconnects too.
	DeadLinks int
	// OldestUnacked is how long ago the oldest stanza written and not yet
	// acknowledged was first written (a stanza written again after a
	// resumption keeps its first time); 0 when none is.
	OldestUnacked time.Duration
	// AckRTTSamples counts the ack round trips measured (from an <r/> to
	// the <a/> that answered it), over every connection. AckRTTP50 and
	// AckRTTP99 are the median and the 99th percentile (nearest rank) of
	// the latest 256 of them; 0 before the first. Stream.AddHook learns of
	// every sample.
	AckRTTSamples        uint64
	AckRTTP50, AckRTTP99 time.Duration

	// What crossed the wire, over every connection after negotiation:
	// the bytes written (stanzas, stream management, keepalives), and
	// the stream management requests (<r/>) and answers (<a/>) written
	// and read.
	BytesWritten                  uint64
	RequestsSent, AnswersSent     uint64
	RequestsReceived, AnswersRead uint64
}

// Attempt records one reconnection attempt and its outcome.
type Attempt struct {
	At      time.Time
	Resume  bool   // whether it tried to resume
	Outcome string // "resumed", "new-session", "refused", "error"
	Err     error
}
