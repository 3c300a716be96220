package main_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	xstanza "mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/outbox/boltstore"
	"github.com/xmpptrack/xmpptrack/stream"
)

// startContact connects user, the addressee of a chat job, to the server
// at addr (the server's, or a proxy's): it answers every receipt request and
// counts the bodies it receives from the sender.
func startContact(t *testing.T, srv servers.Server, addr, user, password, from string) *watcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// A link the test freezes for a few seconds is not dead.
	s, err := stream.Dial(ctx, stream.Config{JID: srv.JID(user), Password: password, Addr: addr, TLS: srv.TLSConfig(), AckTimeout: 10 * time.Second})
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
// With records uncertain, the link is frozen too, the outbox then says
// that nothing acknowledged them (as when a process dies between the
// acknowledgement and its record, or after a lost session), and it holds
// a record of one more message, written (the process died while it was
// in the batch) but never received by the server: our archive (Prosody's
// mod_mam) must decide, anchored on the latest message the records show
// the server took. It holds the acknowledged ones, which then wait for
// their receipts (bob's link thaws a little later), and shows the last one
// absent, which is sent again, once.
func TestOutboxChatSenderDies(t *testing.T) {
	for _, tc := range []struct {
		name              string
		freeze, uncertain bool
	}{{"receipts flowing", false, false}, {"receipts held", true, false}, {"records uncertain", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := prosody.StartTB(t, prosody.Options{Users: chatUsers, MAM: true})
			chatJobCrash(t, srv, tc.freeze, tc.uncertain)
		})
	}
}

// TestOutboxChatSenderDiesEjabberd is TestOutboxChatSenderDies with
// receipts held, against ejabberd, which acknowledges differently. Its user
// archives are off in the harness, and nothing here asks them.
func TestOutboxChatSenderDiesEjabberd(t *testing.T) {
	k, err := servers.Lookup(servers.Ejabberd)
	if err != nil {
		t.Fatal(err)
	}
	chatJobCrash(t, k.StartTB(t, servers.Options{Users: chatUsers}), true, false)
}

var chatUsers = map[string]string{"alice": "alice-pw", "bob": "bob-pw"}

// chatJobCrash runs a chat job of alice's to bob on srv, kills it a third
// of the way through (with bob's link frozen just before if freeze; with
// the records then made uncertain if uncertain), and checks that the job
// run again ends with every index delivered once.
func chatJobCrash(t *testing.T, srv servers.Server, freeze, uncertain bool) {
	t.Helper()
	const n = 300
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

	var stall func()
	if freeze {
		stall = func() {
			p.Stall()
			time.Sleep(300 * time.Millisecond) // the window fills with acknowledged messages
		}
	}
	killAfter(t, bin, n/3, stall, args...)
	if uncertain {
		unsettle(t, file, srv.JID("bob").String(), strings.ReplaceAll(body, "%d", strconv.Itoa(n-1)), n-1)
		thaw := time.AfterFunc(time.Second, p.Unstall)
		t.Cleanup(func() { thaw.Stop() })
	} else {
		p.Unstall()
	}
	continueJob(t, bin, n, file, func(t *testing.T) { bob.check(t, body, n) }, args...)
}

// unsettle rewrites the outbox file of a killed chat job: the messages it
// records as acknowledged by the server (DELIVERED_TO_SERVER) become
// IN_TRANSIT, and index, which was never sent, gets a record that says it
// was written, with the stanza the job would have sent to to.
func unsettle(t *testing.T, file, to, body string, index int) {
	t.Helper()
	box, err := boltstore.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close()
	st, err := box.Load()
	if err != nil {
		t.Fatal(err)
	}
	key := st.Meta["job"] + "-" + strconv.Itoa(index)
	var changed []outbox.Message
	for _, m := range st.Messages {
		if m.Key == key {
			t.Fatalf("index %d was sent before the kill", index)
		}
		if m.State == "DELIVERED_TO_SERVER" {
			m.State = "IN_TRANSIT"
			changed = append(changed, m)
		}
	}
	if len(changed) == 0 {
		t.Fatal("no message acknowledged and waiting for its receipt at the kill")
	}
	t.Logf("%d records made uncertain, and one of a message the server never had", len(changed))
	stanza := fmt.Sprintf("<message type='chat' to='%s' id='%s'><body>%s</body><origin-id xmlns='urn:xmpp:sid:0' id='%s'/>"+
		"<request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>", to, key, body, key)
	changed = append(changed, outbox.Message{Key: key, OriginID: key, To: to, Kind: outbox.Chat, Stanza: []byte(stanza),
		State: "IN_TRANSIT", Written: true, SentAt: time.Now()})
	if err := box.Commit(outbox.Changes{Messages: changed}); err != nil {
		t.Fatal(err)
	}
}
