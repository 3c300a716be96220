package bridge_test

import (
	"context"
	"crypto/tls"
	"fmt"

	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/stream"
)

// A mellium program adopts xmpptrack in a few lines: dial a managed stream
// instead of xmpp.DialClientSession, and take the session from a bridge.
// The rest of the program is unchanged, and every stanza it sends is
// acknowledged and survives a resumed connection.
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
	b, err := bridge.New(s)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	sess := b.Session()

	// From here on, mellium's API as usual.
	go sess.Serve(mux.New(stanza.NSClient, ping.Handle()))
	info, err := disco.GetInfo(ctx, "", jid.MustParse("conference.example.net"), sess)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(info.Identity)
}
