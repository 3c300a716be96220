package chat

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// DefaultTimeout is how long a tracked message waits for delivery to the
// recipient unless WithTimeout or Timeout says otherwise.
const DefaultTimeout = 30 * time.Second

// DefaultUnseenLimit is how many messages per address are remembered, once
// delivered to the recipient, while they wait for a displayed marker, unless
// WithUnseenLimit says otherwise.
const DefaultUnseenLimit = 1000

type config struct {
	timeout     time.Duration
	unseenLimit int
}

func newConfig(opts []Option) config {
	cfg := config{timeout: DefaultTimeout, unseenLimit: DefaultUnseenLimit}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// Option configures a Client or a Matcher.
type Option func(*config)

// WithTimeout sets the default time a message sent by a Client waits for
// delivery to the recipient before it is TIMED_OUT. Zero or less disables
// the timeout. A Matcher ignores it: its trackers come with their own.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithUnseenLimit sets how many messages per address are remembered once
// delivered to the recipient, waiting for a displayed marker (see the package
// documentation). Zero or less removes the limit: such messages are then
// kept until their tracker is final.
func WithUnseenLimit(n int) Option { return func(c *config) { c.unseenLimit = n } }

// SendOption configures one tracked message.
type SendOption func(*sendConfig)

type sendConfig struct {
	timeout time.Duration
}

// Timeout overrides the client's default timeout for one message. Zero or
// less disables it.
func Timeout(d time.Duration) SendOption {
	return func(c *sendConfig) { c.timeout = d }
}

// A Client sends tracked one-to-one messages over one stream.
type Client struct {
	s       *stream.Stream
	m       *Matcher
	timeout time.Duration

	closeOnce sync.Once
	remove    func()
}

// NewClient attaches a client to s: from then on it reads every message the
// stream receives. Close detaches it.
func NewClient(s *stream.Stream, opts ...Option) *Client {
	cfg := newConfig(opts)
	c := &Client{s: s, m: newMatcher(cfg), timeout: cfg.timeout}
	c.remove = s.HandleElement(c.m.Handle)
	return c
}

// SendTracked sends body to to in a message of type chat and returns the
// tracker of the message (see the package documentation). The error is that
// of the stream's send, or ErrInvalidText or ErrClosed: on error no tracker
// is returned and nothing was sent.
func (c *Client) SendTracked(ctx context.Context, to jid.JID, body string, opts ...SendOption) (*tracking.MessageTracker, error) {
	if to.Domainpart() == "" {
		return nil, errors.New("chat: send: no address")
	}
	addr := to.String()
	if !xstanza.ValidText(body) {
		return nil, fmt.Errorf("chat: send to %s: body: %w", addr, ErrInvalidText)
	}
	cfg := sendConfig{timeout: c.timeout}
	for _, o := range opts {
		o(&cfg)
	}
	id := xstanza.NewID()
	b := appendChat(make([]byte, 0, 240+len(addr)+len(body)), addr, id, body)

	t := tracking.NewMessageTracker(tracking.WithID(id))
	if err := c.m.Track(to, id, t); err != nil {
		return nil, fmt.Errorf("chat: send to %s: %w", addr, err)
	}
	if cfg.timeout > 0 {
		t.SetTimeout(cfg.timeout)
	}
	tok, err := c.s.SendBytes(ctx, id, b)
	if err != nil {
		// CLOSED makes the matcher forget it.
		_ = t.Close()
		return nil, fmt.Errorf("chat: send to %s: %w", addr, err)
	}
	// A fresh tracker is bound once; Bind cannot fail here.
	_ = t.Bind(tok)
	return t, nil
}

// Pending returns how many sent messages the client remembers, and for how
// many distinct addresses (see Matcher.Pending).
func (c *Client) Pending() (messages, peers int) { return c.m.Pending() }

// Close detaches the client from its stream and ends every remembered
// tracker CLOSED. It sends nothing.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		c.remove()
		c.m.Close()
	})
}

// appendChat appends to b the message SendTracked sends: to addr, with id
// as its id and origin-id.
func appendChat(b []byte, addr, id, body string) []byte {
	b = append(b, "<message type='chat' to='"...)
	b = xstanza.AppendEscaped(b, addr)
	b = append(b, "' id='"...)
	b = append(b, id...)
	b = append(b, "'><body>"...)
	b = xstanza.AppendEscaped(b, body)
	b = append(b, "</body><origin-id xmlns='"+xstanza.NSSID+"' id='"...)
	b = append(b, id...)
	return append(b, "'/><request xmlns='"+NSReceipts+"'/><markable xmlns='"+NSMarkers+"'/></message>"...)
}
