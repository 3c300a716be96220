package chat_test

import (
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// These tests play a process restart with the scripted server: the outbox
// is what an earlier process left, and the server holds its session.

// chatStanza is a message to bob as the client writes it.
func chatStanza(id string) []byte {
	return []byte(fmt.Sprintf("<message type='chat' to='%s' id='%s'><body>%s</body><origin-id xmlns='urn:xmpp:sid:0' id='%s'/>"+
		"<request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>", bob, id, id, id))
}

// ackedBox is the outbox an earlier process left: a session S1 to resume,
// and a message to bob (m1) that the server acknowledged before the
// process ended, so it is not among the unacknowledged stanzas.
func ackedBox(t *testing.T) *outbox.Memory {
	t.Helper()
	box := outbox.NewMemory()
	err := box.Commit(outbox.Changes{
		Session: &outbox.Session{ResumeID: "S1", Addr: alice.String() + "/old", Max: time.Minute, Saved: time.Now(), Acked: 1},
		Messages: []outbox.Message{{Key: "m1", OriginID: "m1", To: bob.String(), Kind: outbox.Chat, Stanza: chatStanza("m1"),
			State: "DELIVERED_TO_SERVER", Written: true, SentAt: time.Now().Add(-time.Second)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// TestExpectReceiptFirst: a message the server acknowledged before the
// restart is expected before Connect, and the receipt that the resumed
// session brings as its very first stanza moves its tracker; nothing is
// written again, and the outbox records the outcome, still written.
func TestExpectReceiptFirst(t *testing.T) {
	w := newWorld(t, ackedBox(t), reconcile.ResendIfAbsent)
	w.attach(t)
	if n := len(w.s.Restored()); n != 0 {
		t.Fatalf("%d restored tokens, want none", n)
	}
	rec := w.record(t, "m1")
	tr, err := w.c.Expect(bob, "m1", rec.Stanza, rec.SentAt)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Transition(tracking.DeliveredToServer, nil); err != nil {
		t.Fatal(err)
	}
	w.srv.OnResume(func(r fakeserver.Resume) string {
		return fakeserver.Resumed(r.PrevID, 1) +
			fmt.Sprintf("<message from='%s/phone' to='%s/old' id='r1'><received xmlns='urn:xmpp:receipts' id='m1'/></message>", bob, alice)
	})
	c := w.connect(t)
	if c.Resume == nil {
		t.Fatal("the stream did not resume")
	}
	waitFor(t, tr, tracking.DeliveredToRecipient)
	c.NoStanza(t, 100*time.Millisecond)
	if r := w.waitRecord(t, "m1", "DELIVERED_TO_RECIPIENT"); !r.Written || !r.SentAt.Equal(rec.SentAt) {
		t.Fatalf("the outbox's last record of m1: %+v, want written at %v", r, rec.SentAt)
	}
	if _, err := w.c.Expect(bob, "m1", rec.Stanza, rec.SentAt); err == nil {
		// m1's tracking has not ended (a marker may come): still tracked.
		t.Fatal("expecting m1 twice: no error")
	}
}

// TestSetAnchorAfterRestart: a restored message whose session the server
// refuses is reconciled with the anchor the new process took from its
// outbox (SetAnchor): our archive holds the anchor and not the message, so
// it is sent again with the same id. Without the anchor, absence proves
// nothing and it ends CLOSED.
func TestSetAnchorAfterRestart(t *testing.T) {
	for _, anchored := range []bool{true, false} {
		t.Run(fmt.Sprintf("anchored=%t", anchored), func(t *testing.T) {
			box, b := restoredBox(t, "m2")
			w := newWorld(t, box, reconcile.ResendIfAbsent)
			w.attach(t)
			if anchored {
				w.c.SetAnchor(reconcile.Anchor{To: jid.MustParse(bob.String() + "/phone"), OriginID: "m1", At: time.Now().Add(-time.Minute)})
			}
			tr := w.follow(t, b)
			w.srv.OnResume(func(fakeserver.Resume) string { return fmt.Sprintf(refused, 0) })
			c := w.connect(t)
			a := serveAfterLoss(t, c, []string{"m1"}, nil)
			if !anchored {
				waitFor(t, tr, tracking.Closed)
				a.none(t, 100*time.Millisecond)
				return
			}
			if got := a.next(t); got.ID != "m2" || got.OriginID.ID != "m2" {
				t.Fatalf("sent again %+v, want m2 with its origin-id", got)
			}
			a.receipt(t, "m2")
			waitFor(t, tr, tracking.DeliveredToRecipient)
		})
	}
}
