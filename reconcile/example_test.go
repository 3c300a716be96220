package reconcile_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
)

// A program whose session was lost asks the room's archive about the
// messages it wrote and never saw acknowledged, before sending anything
// again. The anchor is the stanza-id of the last reflection of its own that
// it saw before them.
func Example() {
	ctx := context.Background()
	s, err := stream.Dial(ctx, stream.Config{
		JID:      jid.MustParse("alice@example.net"),
		Password: "secret",
		TLS:      &tls.Config{},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close(ctx)
	b, err := bridge.New(s, bridge.Only(reconcile.Results)) // archive results only
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()

	room := jid.MustParse("team@conference.example.net")
	r := reconcile.New(b.Session(), func(j jid.JID) (jid.JID, bool) {
		if !j.Equal(room) {
			return jid.JID{}, false
		}
		occupant, err := room.WithResource("alice")
		return occupant, err == nil
	})
	go b.Session().Serve(mux.New(stanza.NSClient, reconcile.Handle(r)))

	// From the program's own records (an outbox).
	sentAt := time.Now().Add(-time.Minute)
	ds, err := r.Decide(ctx, []reconcile.Uncertain{{
		Key: "42", ID: "m42", OriginID: "o42", To: room, Kind: reconcile.Groupchat, SentAt: sentAt,
	}}, []reconcile.Anchor{{
		To: room, StanzaID: "room-archive-id-of-41", At: sentAt.Add(-time.Second),
	}}, reconcile.ResendIfAbsent)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, d := range ds {
		switch d.Outcome {
		case reconcile.SafeToResend:
			fmt.Println(d.Key, "send again, same id and origin-id")
		case reconcile.Delivered, reconcile.Accepted:
			fmt.Println(d.Key, "delivered:", d.Reason)
		default:
			fmt.Println(d.Key, "closed:", d.Reason)
		}
	}
}
