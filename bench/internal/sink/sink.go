// Package sink is a tiny scripted XMPP server that swallows stanzas: it
// negotiates a client stream (SASL PLAIN that accepts any password,
// resource binding, XEP-0198 stream management), lets the client join any
// room at once, and from then on reads and discards everything. It never
// acknowledges a stanza and never reflects a message, so every tracked
// message a client sends it stays in flight: what the benchmark of the
// memory per message in flight needs.
//
// It is not an XMPP server: it routes nothing and keeps nothing, so that
// the memory it uses does not grow with what it swallows.
package sink

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

const nsSM = "urn:xmpp:sm:3"

// Server accepts client connections on 127.0.0.1.
type Server struct {
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	errs   []error
	closed bool
}

// Listen starts a server.
func Listen() (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	s := &Server{ln: ln}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Dial connects to the server; it fits stream.Config.Dial.
func (s *Server) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.ln.Addr().String())
}

// Close stops the server and closes every connection. It returns the first
// error a connection met before the close, if any.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.mu.Unlock()
	s.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) > 0 {
		return s.errs[0]
	}
	return nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, nc)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := serve(nc); err != nil {
				s.mu.Lock()
				if !s.closed {
					s.errs = append(s.errs, err)
				}
				s.mu.Unlock()
			}
			nc.Close()
		}()
	}
}

// serve negotiates one connection, answers <enable/> and room joins, and
// discards the rest.
func serve(nc net.Conn) error {
	bind := xmpp.BindCustom(func(origin jid.JID, _ string) (jid.JID, error) {
		return origin.Bare().WithResource("sink")
	})
	smFeature := xmpp.StreamFeature{
		Name:      xml.Name{Space: nsSM, Local: "sm"},
		Necessary: xmpp.Authn,
		List: func(ctx context.Context, e xmlstream.TokenWriter, start xml.StartElement) (bool, error) {
			if err := e.EncodeToken(start); err != nil {
				return false, err
			}
			return false, e.EncodeToken(start.End())
		},
		Parse: func(ctx context.Context, d *xml.Decoder, start *xml.StartElement) (bool, interface{}, error) {
			return false, nil, d.Skip()
		},
		Negotiate: func(ctx context.Context, sess *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, error) {
			return 0, nil, nil
		},
	}
	features := []xmpp.StreamFeature{
		xmpp.SASLServer(func(*sasl.Negotiator) bool { return true }, sasl.Plain),
		bind,
		smFeature,
	}
	// The connection counts as secure so that SASL is offered without TLS.
	sess, err := xmpp.ReceiveSession(context.Background(), nc, xmpp.Secure, xmpp.NewNegotiator(
		func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: features}
		}))
	if err != nil {
		return fmt.Errorf("sink: negotiation: %w", err)
	}
	r := sess.TokenReader()
	defer r.Close()
	w := sess.Conn()
	for {
		tok, err := r.Token()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return nil // the client went away
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		var answer string
		switch {
		case start.Name.Space == nsSM && start.Name.Local == "enable":
			answer = "<enabled xmlns='urn:xmpp:sm:3' id='sink' resume='true' max='600'/>"
		case start.Name.Local == "presence":
			to := attr(start, "to")
			if strings.Contains(to, "/") && attr(start, "type") == "" {
				answer = "<presence from='" + to + "' id='" + attr(start, "id") + "'>" +
					"<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/>" +
					"<status code='110'/></x></presence>"
			}
		}
		if err := xmlstream.Skip(r); err != nil {
			return nil
		}
		if answer != "" {
			if _, err := io.WriteString(w, answer); err != nil {
				return err
			}
		}
	}
}

func attr(start xml.StartElement, local string) string {
	for _, a := range start.Attr {
		if a.Name.Local == local && a.Name.Space == "" {
			return a.Value
		}
	}
	return ""
}
