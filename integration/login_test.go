package integration

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/xml"
	"errors"
	"net"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
)

// dialSession connects to srv and negotiates STARTTLS, SCRAM and resource
// binding for user, with password pass.
func dialSession(ctx context.Context, k servers.Kind, srv server, user, pass string) (*xmpp.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", srv.Addr())
	if err != nil {
		return nil, err
	}
	addr := srv.JID(user)
	s, err := xmpp.NewSession(ctx, addr.Domain(), addr, conn, 0, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
		return xmpp.StreamConfig{Features: []xmpp.StreamFeature{
			xmpp.StartTLS(srv.TLSConfig()),
			xmpp.SASL("", pass, scramMechanisms(k)...),
			xmpp.BindResource(),
		}}
	}))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// scramMechanisms are the SASL mechanisms a raw mellium session offers to a
// server of kind k. ejabberd 23.01 offers SCRAM-*-PLUS but refuses the
// tls-exporter binding mellium uses on TLS 1.3 ("Invalid channel binding"):
// against it, only the mechanisms without channel binding (the stream
// makes the same choice by itself; TestStreamAcksMessagesToSelf shows it).
func scramMechanisms(k servers.Kind) []sasl.Mechanism {
	if k.Name == servers.Ejabberd {
		return []sasl.Mechanism{sasl.ScramSha256, sasl.ScramSha1}
	}
	return []sasl.Mechanism{sasl.ScramSha256Plus, sasl.ScramSha256, sasl.ScramSha1Plus, sasl.ScramSha1}
}

// chatMessage is a received message with its body.
type chatMessage struct {
	stanza.Message
	Body string `xml:"body"`
}

func TestLoginMessageSelf(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := sharedServerOf(t, k)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()

		s, err := dialSession(ctx, k, srv, "alice", srv.Password("alice"))
		if err != nil {
			t.Fatalf("logging in: %v", err)
		}
		defer s.Conn().Close()
		defer s.Close()

		if s.State()&xmpp.Secure == 0 {
			t.Fatal("session is not secure")
		}
		if tls := s.ConnectionState(); !tls.HandshakeComplete || len(tls.VerifiedChains) == 0 {
			t.Fatalf("TLS not verified: handshake %v, %d verified chains", tls.HandshakeComplete, len(tls.VerifiedChains))
		}
		me := s.LocalAddr()
		if !me.Bare().Equal(srv.JID("alice")) || me.Resourcepart() == "" {
			t.Fatalf("bound %s, want alice@localhost/RESOURCE", me)
		}

		received := make(chan chatMessage, 1)
		served := make(chan error, 1)
		go func() {
			served <- s.Serve(xmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
				if start.Name.Local != "message" {
					return nil
				}
				// r holds what follows the start element.
				d := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(*start), r))
				var m chatMessage
				if err := d.Decode(&m); err != nil {
					return err
				}
				select {
				case received <- m:
				default:
					t.Errorf("unexpected second message: %+v", m)
				}
				return nil
			}))
		}()
		// Serve must have returned before the test ends.
		defer func() {
			s.Close()
			s.Conn().Close()
			<-served
		}()

		// Messages to a bare JID go to available resources: be one.
		if err := s.Send(ctx, stanza.Presence{}.Wrap(nil)); err != nil {
			t.Fatalf("sending presence: %v", err)
		}
		id := "login-" + rand.Text()
		body := "hello, me (" + id + ")"
		msg := stanza.Message{ID: id, To: srv.JID("alice"), Type: stanza.ChatMessage}.Wrap(
			xmlstream.Wrap(xmlstream.Token(xml.CharData(body)), xml.StartElement{Name: xml.Name{Local: "body"}}),
		)
		if err := s.Send(ctx, msg); err != nil {
			t.Fatalf("sending message: %v", err)
		}

		select {
		case m := <-received:
			if m.ID != id || m.Body != body {
				t.Errorf("received id %q body %q, want id %q body %q", m.ID, m.Body, id, body)
			}
			if m.Type != stanza.ChatMessage {
				t.Errorf("received type %q, want chat", m.Type)
			}
			if !m.From.Bare().Equal(srv.JID("alice")) {
				t.Errorf("received from %s, want alice", m.From)
			}
		case err := <-served:
			served <- err // for the deferred wait
			t.Fatalf("stream ended before the message came back: %v", err)
		case <-ctx.Done():
			t.Fatalf("message not received: %v", ctx.Err())
		}
	})
}

func TestLoginWrongPassword(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := sharedServerOf(t, k)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()

		s, err := dialSession(ctx, k, srv, "alice", "not-"+srv.Password("alice"))
		if err == nil {
			s.Close()
			s.Conn().Close()
			t.Fatal("logged in with a wrong password")
		}
	})
}

// TestDialWrongPassword: the stream reports a refused login as ErrAuth, which
// a caller can test for, and does not retry it.
func TestDialWrongPassword(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := sharedServerOf(t, k)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := stream.Dial(ctx, stream.Config{
			JID:      srv.JID("alice"),
			Password: "not-" + srv.Password("alice"),
			Addr:     srv.Addr(),
			TLS:      srv.TLSConfig(),
		})
		if err == nil {
			s.Close(ctx)
			t.Fatal("logged in with a wrong password")
		}
		if !errors.Is(err, stream.ErrAuth) {
			t.Fatalf("Dial with a wrong password: %v, want ErrAuth", err)
		}
	})
}

// TestTLSVerification checks that the client really verifies the server's
// certificate: with no trusted CA the handshake fails.
func TestTLSVerification(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := sharedServerOf(t, k)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()

		cfg := srv.TLSConfig()
		if cfg.InsecureSkipVerify {
			t.Fatal("TLSConfig skips verification")
		}
		if cfg.ServerName != "localhost" {
			t.Errorf("ServerName %q, want localhost", cfg.ServerName)
		}
		cfg.RootCAs = x509.NewCertPool()

		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		addr := srv.JID("alice")
		s, err := xmpp.NewSession(ctx, addr.Domain(), addr, conn, 0, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: []xmpp.StreamFeature{
				xmpp.StartTLS(cfg),
				xmpp.SASL("", srv.Password("alice"), sasl.ScramSha1),
				xmpp.BindResource(),
			}}
		}))
		if err == nil {
			s.Close()
			t.Fatal("TLS handshake succeeded without a trusted CA")
		}
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("want an unknown authority error, got %v", err)
		}
	})
}
