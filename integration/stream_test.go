package integration

import (
	"context"
	"encoding/xml"
	"fmt"
	"sync"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
)

// dialStream logs user in over STARTTLS and returns the stream; it is closed
// when the test ends.
func dialStream(t testing.TB, srv server, user string, mod func(*stream.Config)) *stream.Stream {
	t.Helper()
	return dialStreamWithin(t, 20*time.Second, srv, user, mod)
}

// dialStreamWithin is dialStream with d for the first connection, for links
// slow enough to need more than dialStream's 20 s.
func dialStreamWithin(t testing.TB, d time.Duration, srv server, user string, mod func(*stream.Config)) *stream.Stream {
	t.Helper()
	cfg := stream.Config{
		JID:      srv.JID(user),
		Password: srv.Password(user),
		Addr:     srv.Addr(),
		TLS:      srv.TLSConfig(),
		Backoff:  stream.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.2},
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	s, err := stream.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", user, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// inbox collects the bodies of chat messages a stream receives.
type inbox struct {
	mu     sync.Mutex
	bodies []string
	ids    []string
	signal chan struct{}
}

func newInbox(s *stream.Stream) *inbox {
	in := &inbox{signal: make(chan struct{}, 1)}
	s.Handle(handlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		if start.Name.Local != "message" {
			return nil
		}
		msg := struct {
			stanza.Message
			Body string `xml:"body"`
		}{}
		if err := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(*start), r)).Decode(&msg); err != nil {
			return err
		}
		if msg.Body == "" {
			return nil
		}
		in.mu.Lock()
		in.bodies = append(in.bodies, msg.Body)
		in.ids = append(in.ids, msg.ID)
		in.mu.Unlock()
		select {
		case in.signal <- struct{}{}:
		default:
		}
		return nil
	}))
	return in
}

func (in *inbox) waitFor(t testing.TB, n int, d time.Duration) []string {
	t.Helper()
	var got []string
	waitUntil(t, in.signal, d, func() (bool, string) {
		in.mu.Lock()
		got = append([]string(nil), in.bodies...)
		in.mu.Unlock()
		return len(got) >= n, fmt.Sprintf("received %d of %d messages", len(got), n)
	})
	return got
}

// waitUntil calls check at once and after every signal until it reports
// true; after d it fails t with what check said last.
func waitUntil(t testing.TB, signal <-chan struct{}, d time.Duration, check func() (ok bool, status string)) {
	t.Helper()
	deadline := time.After(d)
	for {
		ok, status := check()
		if ok {
			return
		}
		select {
		case <-signal:
		case <-deadline:
			t.Fatal(status)
		}
	}
}

type handlerFunc func(xmlstream.TokenReadEncoder, *xml.StartElement) error

func (f handlerFunc) HandleXMPP(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	return f(r, start)
}

func chat(to jid.JID, body string) xml.TokenReader {
	return stanza.Message{To: to, Type: stanza.ChatMessage}.Wrap(
		xmlstream.Wrap(xmlstream.Token(xml.CharData(body)), xml.StartElement{Name: xml.Name{Local: "body"}}))
}

func TestStreamAcksMessagesToSelf(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "alice-pw"}})
		s := dialStream(t, srv, "alice", nil)
		in := newInbox(s)
		if !s.Stats().SMEnabled {
			t.Fatal("stream management not enabled against Prosody")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		const n = 50
		var toks []*stream.StanzaToken
		for i := 0; i < n; i++ {
			tok, err := s.Send(ctx, chat(s.Addr(), fmt.Sprintf("m%d", i)))
			if err != nil {
				t.Fatal(err)
			}
			toks = append(toks, tok)
		}
		for i, tok := range toks {
			st, err := tok.Wait(ctx)
			if st != stream.TokenAcked {
				t.Fatalf("token %d: %v %v", i, st, err)
			}
		}
		got := in.waitFor(t, n, 10*time.Second)
		for i := range n {
			if got[i] != fmt.Sprintf("m%d", i) {
				t.Fatalf("message %d: got %q", i, got[i])
			}
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("close: %v", err)
		}
	})
}

func pingPayload() xml.TokenReader {
	return xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: "urn:xmpp:ping", Local: "ping"}})
}
