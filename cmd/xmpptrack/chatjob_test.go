package main_test

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	xstanza "mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
)

// startContact connects user, the addressee of a chat job, to the server
// at addr (the server's, or a proxy's): it answers every receipt request and
// counts the bodies it receives from the sender.
func startContact(t *testing.T, srv servers.Server, addr, user, password, from string) *watcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := stream.Dial(ctx, stream.Config{JID: srv.JID(user), Password: password, Addr: addr, TLS: srv.TLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{bodies: make(map[string]int)}
	r := chat.NewResponder(s, chat.WithMessages(func(m chat.Received) {
		if m.From.Localpart() != from {
			return
		}
		w.mu.Lock()
		w.bodies[m.Body]++
		w.mu.Unlock()
	}))
	// A server delivers a message to a bare JID only to a resource that
	// sent its presence.
	tok, err := s.Send(ctx, xstanza.Presence{}.Wrap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := tok.Wait(ctx); st != stream.TokenAcked {
		t.Fatalf("presence: %v (%v)", st, err)
	}
	t.Cleanup(func() {
		r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return w
}

// TestOutboxChatSenderDies (issue 12, test e: one-to-one): a chat job to
// bob is killed with SIGKILL a third of the way through and run again with
// the same outbox. Every index ends DELIVERED_TO_RECIPIENT (bob's receipt),
// bob received each body exactly once, and the finished job run again
// prints its lines and sends nothing.
//
// With receipts flowing, the second run mostly follows the stanzas the
// stream restored, through the resumed session. With bob's link frozen
// just before the kill, the server has acknowledged every message in
// flight and none has its receipt: the second run must expect those
// receipts (the stream restores nothing), and must not send them again.
//
// Prosody with mod_mam: our own archive decides what the records leave
// uncertain.
func TestOutboxChatSenderDies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		freeze bool
	}{{"receipts flowing", false}, {"receipts held", true}} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 300
			users := map[string]string{"alice": "alice-pw", "bob": "bob-pw"}
			srv := prosody.StartTB(t, prosody.Options{Users: users, MAM: true})
			p, err := faultproxy.New(srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			bob := startContact(t, srv, p.Addr(), "bob", "bob-pw", "alice")
			bin := build(t)
			file := filepath.Join(t.TempDir(), "chat.outbox")
			const body = "one-to-one %d"
			args := []string{"chat", "-addr", srv.Addr(), "-ca", srv.CAFile(), "-jid", srv.JID("alice").String(),
				"-password", "alice-pw", "-to", srv.JID("bob").String(), "-n", strconv.Itoa(n), "-window", "20",
				"-body", body, "-json", "-outbox", file}

			var freeze func()
			if tc.freeze {
				freeze = func() {
					p.Stall()
					time.Sleep(300 * time.Millisecond) // the window fills with acknowledged messages
				}
			}
			killAfter(t, bin, n/3, freeze, args...)
			p.Unstall()
			continueJob(t, bin, n, file, func(t *testing.T) { bob.check(t, body, n) }, args...)
		})
	}
}
