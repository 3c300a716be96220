package integration

import (
	"context"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/reconcile"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// reconciler bridges s and returns a Reconciler over the bridge's session,
// served with reconcile.Handle, that knows our occupant JID in room.
func reconciler(t *testing.T, s *stream.Stream, r *muc.Room) *reconcile.Reconciler {
	t.Helper()
	b, err := bridge.New(s)
	if err != nil {
		t.Fatal(err)
	}
	rec := reconcile.New(b.Session(), func(room jid.JID) (jid.JID, bool) {
		if r == nil || !room.Equal(r.Addr()) {
			return jid.JID{}, false
		}
		return r.OccupantJID(), true
	})
	served := make(chan error, 1)
	go func() { served <- b.Session().Serve(mux.New(stanza.NSClient, reconcile.Handle(rec))) }()
	t.Cleanup(func() {
		b.Close()
		<-served
	})
	return rec
}

// reflections records the origin-ids of the groupchat messages a stream
// receives from one occupant, by id.
type reflections struct {
	mu     sync.Mutex
	origin map[string]string
}

func newReflections(s *stream.Stream, occupant jid.JID) *reflections {
	r := &reflections{origin: make(map[string]string)}
	s.HandleElement(func(el *stream.Element) {
		if el.Name().Local != "message" || el.Attr("type") != "groupchat" || el.Attr("from") != occupant.String() {
			return
		}
		ids := readIDs(el)
		r.mu.Lock()
		r.origin[ids.ID] = ids.OriginID
		r.mu.Unlock()
	})
	return r
}

// originID waits for the reflection of the message id and returns its
// origin-id.
func (r *reflections) originID(t *testing.T, id string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		r.mu.Lock()
		o, ok := r.origin[id]
		r.mu.Unlock()
		if ok && o != "" {
			return o
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reflection of %s with an origin-id", id)
		}
	}
}

// decisions runs Decide and returns the decisions by key.
func decisions(t *testing.T, rec *reconcile.Reconciler, msgs []reconcile.Uncertain, anchors []reconcile.Anchor) map[string]reconcile.Decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ds, err := rec.Decide(ctx, msgs, anchors, reconcile.ResendIfAbsent)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	out := make(map[string]reconcile.Decision, len(ds))
	for _, d := range ds {
		out[d.Key] = d
		t.Logf("%s: %v (%s)", d.Key, d.Outcome, d.Reason)
	}
	return out
}

func wantOutcome(t *testing.T, d reconcile.Decision, o reconcile.Outcome) {
	t.Helper()
	if d.Outcome != o {
		t.Errorf("%s: %v (%s), want %v", d.Key, d.Outcome, d.Reason, o)
	}
}

// TestReconcileRoom asks Prosody's room archive about messages that alice
// sent with xmpptrack's room client, as if their fate were unknown: each is
// Delivered, and the archive id found is the stanza-id of its reflection.
// A message never sent is SafeToResend, since the archive holds alice's
// anchor (the reflection of a message before them), and Unknown when the
// anchor is one the archive never had. A copy of its ids that bob sends
// into the room does not make it Delivered for alice (it does for bob).
func TestReconcileRoom(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		alice := dialStream(t, srv, "alice", nil)
		bob := dialStream(t, srv, "bob", nil)
		room := roomJID(t, srv, "reconciled")
		_, r := join(t, alice, room, "alice")
		origins := newReflections(alice, r.OccupantJID()) // trackers do not tell origin-ids
		_, rb := join(t, bob, room, "bob")

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		type sent struct {
			msg      reconcile.Uncertain
			stanzaID string
			seen     time.Time
		}
		var all []sent
		for i := range 4 {
			at := time.Now()
			tr, err := r.SendTrackedMessage(ctx, "reconciled "+string(rune('a'+i)))
			if err != nil {
				t.Fatal(err)
			}
			if st, err := tr.Wait(ctx, tracking.DeliveredToRecipient); st != tracking.DeliveredToRecipient {
				t.Fatalf("message %d: %v (%v)", i, st, err)
			}
			resp := tr.Response()
			if resp == nil || resp.StanzaID == "" || !resp.StanzaIDBy.Equal(room) {
				t.Fatalf("message %d: reflection without the room's stanza-id: %+v", i, resp)
			}
			all = append(all, sent{
				msg: reconcile.Uncertain{Key: tr.ID(), ID: tr.ID(), OriginID: origins.originID(t, tr.ID()),
					To: room, Kind: reconcile.Groupchat, SentAt: at},
				stanzaID: resp.StanzaID,
				seen:     time.Now(),
			})
		}
		anchor := []reconcile.Anchor{{To: room, StanzaID: all[0].stanzaID, At: all[0].seen}}
		never := reconcile.Uncertain{Key: "never sent", ID: xstanza.NewID(), OriginID: xstanza.NewID(), To: room, Kind: reconcile.Groupchat, SentAt: time.Now()}

		// Bob sends a message with the ids of the one never sent.
		copies := newArrivals(alice, never.ID)
		if _, err := bob.Send(ctx, groupchatWithIDs(room, never.ID, never.OriginID, "a copy")); err != nil {
			t.Fatal(err)
		}
		copies.waitFrom(t, room.String()+"/bob", 10*time.Second)

		rec := reconciler(t, alice, r)
		msgs := []reconcile.Uncertain{never}
		for _, s := range all[1:] {
			msgs = append(msgs, s.msg)
		}
		ds := decisions(t, rec, msgs, anchor)
		for _, s := range all[1:] {
			d := ds[s.msg.Key]
			wantOutcome(t, d, reconcile.Delivered)
			if d.StanzaID != s.stanzaID {
				t.Errorf("%s: found as %q, want its reflection's stanza-id %q", d.Key, d.StanzaID, s.stanzaID)
			}
		}
		wantOutcome(t, ds[never.Key], reconcile.SafeToResend)

		// The copy is in the archive: asked as bob, the same ids are Delivered.
		ds = decisions(t, reconciler(t, bob, rb), []reconcile.Uncertain{never}, anchor)
		wantOutcome(t, ds[never.Key], reconcile.Delivered)

		ds = decisions(t, rec, msgs, []reconcile.Anchor{{To: room, StanzaID: "never-archived", At: all[0].seen}})
		wantOutcome(t, ds[never.Key], reconcile.Unknown)
		wantOutcome(t, ds[all[1].msg.Key], reconcile.Delivered)
	})
}

// TestReconcileChat asks alice's own archive (mod_mam, archiving every
// message) about one-to-one messages she sent to bob with xmpptrack's chat
// client: each is Accepted. A message never sent is SafeToResend when the
// archive holds the anchor (an earlier message of alice's to bob that the
// server acknowledged, by its origin-id), Unknown without it.
func TestReconcileChat(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own Prosody")
	}
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}, MAM: true, NoMUC: true})
	alice := dialStream(t, srv, "alice", nil)
	bob := dialStream(t, srv, "bob", nil)
	available(t, bob)
	bobJID := srv.JID("bob").Bare()
	chat := newChatClient(t, alice)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var msgs []reconcile.Uncertain
	var anchor reconcile.Anchor
	for i := range 3 {
		at := time.Now()
		tr, err := chat.SendTracked(ctx, bobJID, "to bob "+string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		if st, err := tr.Wait(ctx, tracking.DeliveredToServer); st != tracking.DeliveredToServer && st != tracking.DeliveredToRecipient {
			t.Fatalf("chat %d: %v (%v)", i, st, err)
		}
		// The chat client's id doubles as origin-id.
		if i == 0 {
			anchor = reconcile.Anchor{To: bobJID, OriginID: tr.ID(), At: time.Now()}
			continue
		}
		msgs = append(msgs, reconcile.Uncertain{Key: tr.ID(), ID: tr.ID(), OriginID: tr.ID(), To: bobJID, Kind: reconcile.Chat, SentAt: at})
	}
	never := reconcile.Uncertain{Key: "never sent", ID: xstanza.NewID(), OriginID: xstanza.NewID(), To: bobJID, Kind: reconcile.Chat, SentAt: time.Now()}
	msgs = append(msgs, never)

	rec := reconciler(t, alice, nil)
	ds := decisions(t, rec, msgs, []reconcile.Anchor{anchor})
	for _, m := range msgs[:len(msgs)-1] {
		wantOutcome(t, ds[m.Key], reconcile.Accepted)
	}
	wantOutcome(t, ds[never.Key], reconcile.SafeToResend)

	ds = decisions(t, rec, msgs, nil)
	wantOutcome(t, ds[never.Key], reconcile.Unknown)
	wantOutcome(t, ds[msgs[0].Key], reconcile.Accepted)
}

// readIDs reads the ids of a stanza from its start element and children.
func readIDs(el *stream.Element) xstanza.IDs {
	start, _ := el.Start()
	return xstanza.ReadIDs(start, el.Tokens())
}
