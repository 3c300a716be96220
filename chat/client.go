package chat

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"sync"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/reconcile"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// DefaultTimeout is how long a tracked message waits for delivery to the
// recipient unless WithTimeout or Timeout says otherwise.
const DefaultTimeout = 30 * time.Second

// DefaultUnseenLimit is how many delivered messages, across all addresses,
// are remembered while they wait for a displayed marker, unless
// WithUnseenLimit says otherwise.
const DefaultUnseenLimit = 1000

type config struct {
	timeout     time.Duration
	unseenLimit int
}

// ClientOption configures a Client.
type ClientOption interface{ applyClient(*config) }

// MatcherOption configures a Matcher, or the Matcher of a Client.
type MatcherOption interface {
	ClientOption
	applyMatcher(*config)
}

type clientOption func(*config)

func (o clientOption) applyClient(c *config) { o(c) }

type matcherOption func(*config)

func (o matcherOption) applyClient(c *config)  { o(c) }
func (o matcherOption) applyMatcher(c *config) { o(c) }

// WithTimeout sets the default time a message sent by a Client waits for
// delivery to the recipient before it is TIMED_OUT. Zero or less means no
// timeout.
func WithTimeout(d time.Duration) ClientOption {
	return clientOption(func(c *config) { c.timeout = d })
}

// WithUnseenLimit sets how many delivered messages, across all addresses,
// are remembered while they wait for a displayed marker (see the package
// documentation). Zero or less removes the limit: such messages are then
// kept until their tracker is final or the Client is closed.
func WithUnseenLimit(n int) MatcherOption {
	return matcherOption(func(c *config) { c.unseenLimit = n })
}

// SendOption configures one tracked message.
type SendOption func(*sendConfig)

type sendConfig struct {
	timeout time.Duration
	id      string
	idSet   bool // WithID was given, even with an empty id
}

// Timeout overrides the client's default timeout for one message. Zero or
// less means no timeout.
func Timeout(d time.Duration) SendOption {
	return func(c *sendConfig) { c.timeout = d }
}

// WithID sends the message with id instead of a new one, as its id and as
// its XEP-0359 origin-id (a message of the client carries one value in
// both): to send again, after a restart, a message whose earlier copy our
// archive does not hold (see package reconcile), so that a receiver that
// drops duplicates by origin-id can drop the copy, and a receipt for
// either copy moves the tracker. id must be non-empty text that XML allows
// (else ErrBadID), and not tracked by the client already (else
// ErrDuplicateID). Follow ignores it: a restored message keeps its token's
// id.
func WithID(id string) SendOption {
	return func(c *sendConfig) { c.id, c.idSet = id, true }
}

// A Client sends tracked one-to-one messages over one stream.
type Client struct {
	s       *stream.Stream
	m       *Matcher
	timeout time.Duration

	// send is held from Track to the stream's acceptance of a message, so
	// that the order of the messages to an address in the Matcher is the
	// order on the wire (displayed markers are cumulative). A channel, so
	// that waiting for it respects the caller's context.
	send chan struct{}

	// ctx ends when the client is closed: messages sent again after a
	// lost session stop waiting for the stream then.
	ctx    context.Context
	cancel context.CancelFunc

	closeOnce            sync.Once
	remove, removeEvents func()

	rec tracking.Recorder // counts the trackers handed out, for Stats

	// mu guards the fields below and the fields of each message that say
	// so.
	mu         sync.Mutex
	msgs       map[string]*message         // tracked, by id, until tracking ends
	anchors    map[string]reconcile.Anchor // by the contact's bare JID
	seq        uint64                      // messages tracked, for their order
	session    uint64                      // the latest new session (stream.Event.Session)
	reconciler *reconcile.Reconciler
	policy     reconcile.Policy
}

// NewClient attaches a client to s: from then on it reads every message the
// stream receives. Close detaches it.
func NewClient(s *stream.Stream, opts ...ClientOption) *Client {
	cfg := config{timeout: DefaultTimeout, unseenLimit: DefaultUnseenLimit}
	for _, o := range opts {
		o.applyClient(&cfg)
	}
	c := &Client{
		s: s, m: newMatcher(cfg), timeout: cfg.timeout, send: make(chan struct{}, 1),
		msgs:    make(map[string]*message),
		anchors: make(map[string]reconcile.Anchor),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.remove = s.HandleElement(c.m.Handle)
	c.removeEvents = s.OnEvent(c.streamEvent)
	return c
}

// SendTracked sends body to to in a message of type chat and returns the
// tracker of the message (see the package documentation). The error is that
// of the stream's send, or ErrInvalidText or ErrClosed: on error no tracker
// is returned and nothing was sent. While the stream's queue is full,
// SendTracked waits for room, for ctx, or for the end of the tracker (its
// timeout, Close, Abort): a tracker that ends first is returned with a nil
// error, and its message is never sent.
func (c *Client) SendTracked(ctx context.Context, to jid.JID, body string, opts ...SendOption) (*tracking.MessageTracker, error) {
	if !xstanza.ValidText(body) {
		return nil, fmt.Errorf("chat: send to %s: body: %w", to, ErrInvalidText)
	}
	b := make([]byte, 0, 32+len(body))
	b = append(b, "<body>"...)
	b = xstanza.AppendEscaped(b, body)
	b = append(b, "</body>"...)
	return c.sendTracked(ctx, to, b, opts)
}

// SendTrackedPayload sends a message of type chat whose content is payload
// (a body, or any elements the caller built) and tracks it like
// SendTracked. The message's to, type, id, origin-id, receipt request and
// markable element are added by the client.
func (c *Client) SendTrackedPayload(ctx context.Context, to jid.JID, payload xml.TokenReader, opts ...SendOption) (*tracking.MessageTracker, error) {
	var buf bytes.Buffer
	e := xml.NewEncoder(&buf)
	if payload != nil {
		if _, err := xmlstream.Copy(e, payload); err != nil {
			return nil, fmt.Errorf("chat: payload: %w", err)
		}
	}
	if err := e.Flush(); err != nil {
		return nil, fmt.Errorf("chat: payload: %w", err)
	}
	return c.sendTracked(ctx, to, buf.Bytes(), opts)
}

func (c *Client) sendTracked(ctx context.Context, to jid.JID, content []byte, opts []SendOption) (tr *tracking.MessageTracker, err error) {
	sent := time.Now()
	defer func() {
		if tr != nil {
			c.rec.Track(tr, sent)
		}
	}()
	if to.Domainpart() == "" {
		return nil, errors.New("chat: send: no address")
	}
	addr := to.String()
	cfg := sendConfig{timeout: c.timeout}
	for _, o := range opts {
		o(&cfg)
	}
	id := xstanza.NewID()
	if cfg.idSet {
		if cfg.id == "" || !xstanza.ValidText(cfg.id) {
			return nil, fmt.Errorf("chat: send to %s: WithID(%q): %w", addr, cfg.id, ErrBadID)
		}
		id = cfg.id
	}
	b := appendChat(make([]byte, 0, 240+len(addr)+len(content)), addr, id, content)

	t := tracking.NewMessageTracker(tracking.WithID(id))
	t.SetTimeout(cfg.timeout)
	m := newMessage(c, t, to, id, b, sent)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Stop waiting (for the send lock, for room in the queue) once the
	// tracker has ended.
	t.OnChange(func(ch tracking.Change) {
		if ch.Ended {
			cancel()
		}
	})
	select {
	case c.send <- struct{}{}:
	case <-sctx.Done():
		if t.Ended() {
			return t, nil
		}
		_ = t.Close()
		return nil, fmt.Errorf("chat: send to %s: %w", addr, ctx.Err())
	}
	if err := c.track(m); err != nil {
		<-c.send
		_ = t.Close()
		return nil, fmt.Errorf("chat: send to %s: %w", addr, err)
	}
	tok, err := c.s.SendBytes(sctx, id, b)
	<-c.send
	if err != nil {
		if t.Ended() {
			// The tracker ended while the queue was full: it says why,
			// and the message is never sent.
			return t, nil
		}
		// CLOSED makes the matcher forget it.
		_ = t.Close()
		return nil, fmt.Errorf("chat: send to %s: %w", addr, err)
	}
	// A tracker that ended meanwhile aborts the token.
	m.follow(tok)
	return t, nil
}

// Follow tracks a one-to-one message that an earlier process wrote and
// that the stream restored from its outbox (stream.Stream.Restored): tok is
// its token, to its addressee as sent, b its stanza and sentAt when it was
// first written, as the outbox recorded them (outbox.Message's To, Stanza
// and SentAt; its Key is tok's id, which is the message's origin-id too).
// The tracker follows tok, and a receipt, a marker or an error reply for the
// message moves it as for any message of the client. When the session could
// not be resumed, a client with a reconciler (SetReconciler) asks the
// archive about it as about any message lost with a session. Call Follow
// between stream.New and Connect, on a client made before Connect, so that
// neither the answers the resumed session brings nor the new session are
// missed. It returns an error wrapping ErrDuplicateID when the id is
// already tracked, ErrClosed after Close.
func (c *Client) Follow(tok *stream.StanzaToken, to jid.JID, b []byte, sentAt time.Time, opts ...SendOption) (*tracking.MessageTracker, error) {
	switch {
	case tok == nil:
		return nil, errors.New("chat: follow: nil token")
	case to.Domainpart() == "":
		return nil, fmt.Errorf("chat: follow %q: no address", tok.ID())
	case len(b) == 0:
		return nil, fmt.Errorf("chat: follow %q: no stanza", tok.ID())
	}
	cfg := sendConfig{timeout: c.timeout}
	for _, o := range opts {
		o(&cfg)
	}
	if sentAt.IsZero() {
		sentAt = time.Now()
	}
	t := tracking.NewMessageTracker(tracking.WithID(tok.ID()))
	t.SetTimeout(cfg.timeout)
	m := newMessage(c, t, to, tok.ID(), bytes.Clone(b), sentAt)
	c.send <- struct{}{}
	err := c.track(m)
	<-c.send
	if err != nil {
		_ = t.Close()
		return nil, fmt.Errorf("chat: follow: %w", err)
	}
	m.follow(tok)
	c.rec.Track(t, time.Now())
	return t, nil
}

// Expect tracks a one-to-one message that an earlier process wrote and
// that is no longer among the stanzas the stream restored (see Follow):
// the server acknowledged it before that process ended, or it was lost with
// a session the process had already given up. id is its id and origin-id,
// to its addressee as sent, b its stanza and sentAt when it was first
// written, as the outbox recorded them. The tracker starts IN_TRANSIT
// (move it on with its Transition when the outbox or the archive shows that
// the server has it), and a receipt, a marker or an error reply for the
// message moves it as for any message of the client. Nothing is written:
// the message has no token, cannot be aborted, and is not asked about when
// a session is lost. Call Expect between stream.New and Connect, on a
// client made before Connect, so that an answer the resumed session brings
// first is not missed. It returns an error wrapping ErrDuplicateID when id
// is already tracked, ErrClosed after Close.
func (c *Client) Expect(to jid.JID, id string, b []byte, sentAt time.Time, opts ...SendOption) (*tracking.MessageTracker, error) {
	switch {
	case id == "":
		return nil, errors.New("chat: expect: empty id")
	case to.Domainpart() == "":
		return nil, fmt.Errorf("chat: expect %q: no address", id)
	case len(b) == 0:
		return nil, fmt.Errorf("chat: expect %q: no stanza", id)
	}
	cfg := sendConfig{timeout: c.timeout}
	for _, o := range opts {
		o(&cfg)
	}
	if sentAt.IsZero() {
		sentAt = time.Now()
	}
	t := tracking.NewMessageTracker(tracking.WithID(id))
	t.SetTimeout(cfg.timeout)
	m := newMessage(c, t, to, id, bytes.Clone(b), sentAt)
	m.lost = true // written: it can no longer be aborted (not shared yet)
	c.send <- struct{}{}
	err := c.track(m)
	<-c.send
	if err != nil {
		_ = t.Close()
		return nil, fmt.Errorf("chat: expect: %w", err)
	}
	c.rec.Track(t, time.Now())
	return t, nil
}

// SetAnchor gives the client the anchor of the reconciliation of a's
// contact (a.To, compared as a bare JID): the origin-id of a message of ours
// to it, written before the messages that may later be lost, that the
// server took (see SetReconciler). The client keeps it until the server
// acknowledges a later message to that contact. A process that follows
// messages an earlier one wrote (Follow, Expect) sets it from its outbox's
// records before Connect, so that a refused resumption can be reconciled.
func (c *Client) SetAnchor(a reconcile.Anchor) {
	a.To = a.To.Bare()
	c.mu.Lock()
	c.anchors[a.To.String()] = a
	c.mu.Unlock()
}

// Pending returns how many sent messages the client remembers, and for how
// many distinct addresses (see Matcher.Pending).
func (c *Client) Pending() (messages, peers int) { return c.m.Pending() }

// Stats returns a snapshot of the trackers the client handed out: how many
// are under way, by state; how many ended, by outcome; the time from the
// send call to DELIVERED_TO_RECIPIENT (see tracking.Stats). A send that
// returned an error handed out no tracker and is not counted.
func (c *Client) Stats() tracking.Stats { return c.rec.Stats() }

// AddHook registers h to learn of the deliveries and outcomes of the
// client's trackers as they happen (see tracking.Hook for where it runs);
// the returned function removes it.
func (c *Client) AddHook(h tracking.Hook) (remove func()) { return c.rec.AddHook(h) }

// Close detaches the client from its stream and ends the tracking of every
// remembered message: undelivered ones end CLOSED (a queued one is not
// sent), delivered ones keep DELIVERED_TO_RECIPIENT. It sends nothing.
// Close the clients of a stream before the stream itself. Close always
// returns nil; it implements io.Closer.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.remove()
		c.removeEvents()
		c.m.Close()
	})
	return nil
}

// appendChat appends to b the message SendTracked sends: to addr, with id
// as its id and origin-id, and content (already serialised).
func appendChat(b []byte, addr, id string, content []byte) []byte {
	b = append(b, "<message type='chat' to='"...)
	b = xstanza.AppendEscaped(b, addr)
	b = append(b, "' id='"...)
	b = xstanza.AppendEscaped(b, id)
	b = append(b, "'>"...)
	b = append(b, content...)
	b = append(b, "<origin-id xmlns='"+xstanza.NSSID+"' id='"...)
	b = xstanza.AppendEscaped(b, id)
	return append(b, "'/><request xmlns='"+NSReceipts+"'/><markable xmlns='"+NSMarkers+"'/></message>"...)
}
