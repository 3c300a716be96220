package stream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	xstream "mellium.im/xmpp/stream"

	"github.com/xmpptrack/xmpptrack/sm"
)

// previous is what a new connection needs to resume a session.
type previous struct {
	id   string
	h    uint32 // our inbound count
	addr jid.JID
}

// negotiated is the outcome of stream negotiation on one connection.
type negotiated struct {
	sess *xmpp.Session
	// in is the connection negotiated on, with what the server sent after
	// the last element of the negotiation still in its buffer.
	in *bufConn
	// resumed is set when <resumed/> was received; h is its count.
	resumed bool
	h       uint32
	// refused is set when <resume/> was answered with <failed/>.
	refused *sm.Failed
	// enabled is set when stream management is on for a new session.
	enabled *sm.Enabled
	// enableErr is why stream management is off when the server offered it.
	enableErr error
	offered   bool
	// rtt is the round trip of the last stream management exchange, a first
	// estimate of the ack round trip.
	rtt time.Duration
}

// negotiate logs in on conn: STARTTLS when configured, SASL, then our own
// feature in bind's place, which resumes prev when given and otherwise binds
// a resource and enables stream management. It reads exactly one element for
// each stream management step, so that stanzas the server sends right after
// <resumed/> or <enabled/> stay in the connection's buffer for the reader
// (see bufConn).
func negotiate(ctx context.Context, cfg *Config, conn net.Conn, prev *previous) (*negotiated, error) {
	n := &negotiated{}
	in := newBufConn(conn)
	_, direct := conn.(*tls.Conn)
	var features []xmpp.StreamFeature
	// mellium takes only a *tls.Conn for secure (and then skips STARTTLS,
	// prohibited once secure); it sees our wrapper instead, so that on
	// direct TLS (XEP-0368) the stream leaves STARTTLS out itself.
	starttls := false
	if cfg.TLS != nil && !direct {
		st := xmpp.StartTLS(cfg.TLS)
		upgrade := st.Negotiate
		st.Negotiate = func(ctx context.Context, sess *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, error) {
			mask, rw, err := upgrade(ctx, sess, data)
			if c, ok := rw.(net.Conn); ok && err == nil {
				in = newBufConn(c)
				rw = in
				starttls = true
			}
			return mask, rw, err
		}
		features = append(features, st)
	}
	auth := saslFeature(cfg)
	if cfg.TLS == nil || direct {
		// mellium offers SASL only on a stream it knows is secured: on
		// direct TLS it is, without mellium knowing; without TLS the user
		// asked for plaintext (loopback tests).
		auth.Necessary &^= xmpp.Secure
	}
	features = append(features, auth, smBind(cfg, prev, n))
	sess, err := xmpp.NewSession(ctx, cfg.JID.Domain(), cfg.JID, in, 0,
		xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: features}
		}))
	if isSASLFailure(err) {
		return nil, fmt.Errorf("%w: %w", ErrAuth, err)
	}
	if err != nil {
		return nil, err
	}
	if !direct && !starttls && !cfg.AllowPlaintext {
		return nil, errors.New("stream: server did not secure the connection and plaintext is not allowed")
	}
	n.sess = sess
	n.in = in
	return n, nil
}

// bufConn is a connection read through a buffer that it offers as an
// io.ByteReader. encoding/xml reads such a reader byte by byte and keeps no
// buffer of its own, so mellium's decoder takes from the buffer only what it
// negotiates with; after negotiation the stream's reader goes on from the
// same buffer without losing what the server sent right after the last
// negotiation element (stanzas after <resumed/>, for example).
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func newBufConn(c net.Conn) *bufConn {
	return &bufConn{Conn: c, r: bufio.NewReader(c)}
}

// Read reads from the buffer, or directly into b when the buffer is empty
// and b larger.
func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// ReadByte reads one byte from the buffer.
func (c *bufConn) ReadByte() (byte, error) { return c.r.ReadByte() }

// ConnectionState is that of the TLS connection below, for mellium's
// channel binding.
func (c *bufConn) ConnectionState() tls.ConnectionState {
	if tc, ok := c.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// nsChannelBinding is XEP-0440's stream feature, by which a server says
// which channel bindings it supports.
const nsChannelBinding = "urn:xmpp:sasl-cb:0"

// saslFeature is SASL with cfg's mechanisms, except that on TLS 1.3 the
// channel-binding (-PLUS) ones are left out unless the server advertises
// its channel bindings (XEP-0440). There a -PLUS mechanism binds with
// tls-exporter (RFC 9266), which a server that does not say so may not
// support: ejabberd 23.01 offers SCRAM-SHA-*-PLUS and then refuses the
// binding ("Invalid channel binding"), so no login would ever succeed.
// On TLS 1.2 they bind with tls-unique, which such servers support.
func saslFeature(cfg *Config) xmpp.StreamFeature {
	auth := xmpp.SASL("", cfg.Password, cfg.Mechanisms...)
	var unbound []sasl.Mechanism
	for _, m := range cfg.Mechanisms {
		if !strings.HasSuffix(m.Name, "-PLUS") {
			unbound = append(unbound, m)
		}
	}
	if len(unbound) == 0 || len(unbound) == len(cfg.Mechanisms) {
		return auth
	}
	withPlus := auth.Negotiate
	withoutPlus := xmpp.SASL("", cfg.Password, unbound...).Negotiate
	auth.Negotiate = func(ctx context.Context, sess *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, error) {
		_, advertised := sess.Feature(nsChannelBinding)
		if sess.ConnectionState().Version >= tls.VersionTLS13 && !advertised {
			return withoutPlus(ctx, sess, data)
		}
		return withPlus(ctx, sess, data)
	}
	return auth
}

// isSASLFailure reports whether err is the server's SASL <failure/>.
// mellium returns it as an error of an internal type that can write itself
// as XML: that element tells.
func isSASLFailure(err error) bool {
	var x interface {
		error
		TokenReader() xml.TokenReader
	}
	if !errors.As(err, &x) {
		return false
	}
	tok, err := x.TokenReader().Token()
	start, ok := tok.(xml.StartElement)
	return err == nil && ok && start.Name == xml.Name{Space: "urn:ietf:params:xml:ns:xmpp-sasl", Local: "failure"}
}

var bindName = xml.Name{Space: "urn:ietf:params:xml:ns:xmpp-bind", Local: "bind"}

// smBind takes the place of resource binding, the last feature a client
// negotiates, so that stream management is set up before the first stanza.
func smBind(cfg *Config, prev *previous, n *negotiated) xmpp.StreamFeature {
	bind := xmpp.BindResource()
	return xmpp.StreamFeature{
		Name:       bindName,
		Necessary:  xmpp.Authn,
		Prohibited: xmpp.Ready,
		Parse: func(ctx context.Context, d *xml.Decoder, start *xml.StartElement) (bool, interface{}, error) {
			return true, nil, d.Skip()
		},
		Negotiate: func(ctx context.Context, sess *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, error) {
			_, n.offered = sess.Feature(sm.NS)
			useSM := n.offered && !cfg.DisableSM
			if useSM && prev != nil {
				sentAt := time.Now()
				if _, err := sess.Conn().Write(sm.AppendResume(nil, prev.id, prev.h)); err != nil {
					return 0, nil, err
				}
				start, failed, err := readSMAnswer(sess, "resumed")
				n.rtt = time.Since(sentAt)
				if err != nil {
					return 0, nil, err
				}
				if failed == nil {
					r, err := sm.ParseResumed(start)
					if err != nil {
						return 0, nil, err
					}
					n.resumed, n.h = true, r.H
					sess.UpdateAddr(prev.addr)
					return xmpp.Ready, nil, nil
				}
				n.refused = failed
			}
			if _, _, err := bind.Negotiate(ctx, sess, data); err != nil {
				return 0, nil, fmt.Errorf("stream: bind: %w", err)
			}
			if !useSM {
				return xmpp.Ready, nil, nil
			}
			sentAt := time.Now()
			if _, err := sess.Conn().Write(sm.AppendEnable(nil, true, 0)); err != nil {
				return 0, nil, err
			}
			start, failed, err := readSMAnswer(sess, "enabled")
			n.rtt = time.Since(sentAt)
			if err != nil {
				return 0, nil, err
			}
			if failed != nil {
				n.enableErr = failed
				return xmpp.Ready, nil, nil
			}
			e, err := sm.ParseEnabled(start)
			if err != nil {
				return 0, nil, err
			}
			n.enabled = &e
			return xmpp.Ready, nil, nil
		},
	}
}

// readSMAnswer reads exactly one element: the expected one (its start is
// returned), <failed/> (parsed), or a stream error.
func readSMAnswer(sess *xmpp.Session, want string) (xml.StartElement, *sm.Failed, error) {
	r := sess.TokenReader()
	defer r.Close()
	var start xml.StartElement
	for {
		tok, err := r.Token()
		if err != nil {
			return start, nil, err
		}
		if s, ok := tok.(xml.StartElement); ok {
			start = s
			break
		}
	}
	switch {
	case start.Name.Space == xstream.NS && start.Name.Local == "error":
		var e xstream.Error
		if err := xml.NewTokenDecoder(r).DecodeElement(&e, &start); err != nil {
			return start, nil, err
		}
		return start, nil, e
	case sm.Is(start, "failed"):
		f, err := sm.ParseFailed(start, r)
		return start, &f, err
	case sm.Is(start, want):
		return start, nil, skipElement(r)
	default:
		return start, nil, fmt.Errorf("%w: expected <%s/>, got <%s xmlns=%q>", ErrProtocol, want, start.Name.Local, start.Name.Space)
	}
}

// skipElement reads the rest of an element whose start was just read.
func skipElement(r xml.TokenReader) error {
	depth := 1
	for depth > 0 {
		tok, err := r.Token()
		if err != nil {
			return err
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return nil
}

// errDial marks a failure to open a connection: always worth another try.
var errDial = errors.New("dial")

// goingAwayDelay is the least wait before reconnecting after the server said
// it is shutting down or sent us to another host.
const goingAwayDelay = 2 * time.Second

// goingAway reports whether err is the stream error <system-shutdown/> or
// <see-other-host/>. Such a server may still accept logins for a while
// (ejabberd 23.01 does for about a second after <system-shutdown/>), and a
// session there is lost with whatever it acknowledged: reconnect only after
// goingAwayDelay.
func goingAway(err error) bool {
	var se xstream.Error
	return errors.As(err, &se) && (se.Err == "system-shutdown" || se.Err == "see-other-host")
}

// transient reports whether a connection error is worth another attempt: the
// network failed, as opposed to the server refusing us (SASL, bind, a stream
// error other than a shutdown).
func transient(err error) bool {
	var se xstream.Error
	if errors.As(err, &se) {
		switch se.Err {
		case "system-shutdown", "see-other-host", "connection-timeout", "reset", "internal-server-error", "remote-connection-failed":
			return true
		}
		return false
	}
	var ne net.Error
	var syn *xml.SyntaxError
	switch {
	case errors.Is(err, errDial), errors.As(err, &ne), errors.As(err, &syn),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, context.DeadlineExceeded):
		return true
	}
	return false
}
