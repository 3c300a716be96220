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
}

// Timeout overrides the client's default timeout for one message. Zero or
// less means no timeout.
func Timeout(d time.Duration) SendOption {
	return func(c *sendConfig) { c.timeout = d }
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

	closeOnce sync.Once
	remove    func()

	rec tracking.Recorder // counts the trackers handed out, for Stats
}

// NewClient attaches a client to s: from then on it reads every message the
// stream receives. Close detaches it.
func NewClient(s *stream.Stream, opts ...ClientOption) *Client {
	cfg := config{timeout: DefaultTimeout, unseenLimit: DefaultUnseenLimit}
	for _, o := range opts {
		o.applyClient(&cfg)
	}
	c := &Client{s: s, m: newMatcher(cfg), timeout: cfg.timeout, send: make(chan struct{}, 1)}
	c.remove = s.HandleElement(c.m.Handle)
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
	b := appendChat(make([]byte, 0, 240+len(addr)+len(content)), addr, id, content)

	t := tracking.NewMessageTracker(tracking.WithID(id))
	t.SetTimeout(cfg.timeout)
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
	if err := c.m.Track(to, id, t); err != nil {
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
	// A fresh tracker is bound once; Bind cannot fail here. A tracker that
	// ended meanwhile aborts the token.
	_ = t.Bind(tok)
	return t, nil
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
		c.remove()
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
	b = append(b, id...)
	b = append(b, "'>"...)
	b = append(b, content...)
	b = append(b, "<origin-id xmlns='"+xstanza.NSSID+"' id='"...)
	b = append(b, id...)
	return append(b, "'/><request xmlns='"+NSReceipts+"'/><markable xmlns='"+NSMarkers+"'/></message>"...)
}
