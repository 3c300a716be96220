package chat

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/internal/elementtest"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// FuzzHandle hands an arbitrary stanza from an arbitrary sender to a
// matcher with three messages pending (two to bob's bare JID, one to
// carol's phone). No input may panic or leave a goroutine running after
// Close, and a tracker may move only on valid proof from the addressee's
// account: DELIVERED_TO_RECIPIENT on a receipt or received marker for its
// id, SEEN_BY_RECIPIENT on a displayed or acknowledged marker for it or a
// later message to the same address, ERROR on an error reply carrying its
// id from the addressee or its server.
//
// Run it with: go test -fuzz=FuzzHandle ./chat
func FuzzHandle(f *testing.F) {
	seeds := []string{
		"<message from='bob@example.net/phone' id='x'><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
		"<message from='BOB@Example.NET/laptop' id='m2'><received xmlns='urn:xmpp:receipts'/></message>",
		"<message from='bob@example.net/phone'><displayed xmlns='urn:xmpp:chat-markers:0' id='m2'/></message>",
		"<message from='carol@example.net/desk'><acknowledged xmlns='urn:xmpp:chat-markers:0' id='m3'/></message>",
		"<message from='mallory@example.net/x'><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
		"<message from='bob@example.net/phone' type='error' id='m1'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
		"<message from='example.net' type='error' id='m3'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
		"<message from='bob@example.net' type='error' id='m3'/>",
		"<message><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
		"<message from='bob@example.net/a'><x><received xmlns='urn:xmpp:receipts' id='m1'/></x></message>",
		"<message from='bob@example.net/a'><received xmlns='urn:xmpp:chat-markers:0' id='m1'/><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/></message>",
		"<presence from='bob@example.net/a'/>",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	type sent struct {
		to    jid.JID
		after []string // later messages to the same address
	}
	messages := map[string]sent{
		"m1": {jid.MustParse("bob@example.net"), []string{"m2"}},
		"m2": {jid.MustParse("bob@example.net"), nil},
		"m3": {jid.MustParse("carol@example.net/phone"), nil},
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		el, err := elementtest.Parse(b)
		if err != nil {
			return
		}
		m := NewMatcher()
		trackers := map[string]*tracking.MessageTracker{}
		for _, id := range []string{"m1", "m2", "m3"} {
			tr := tracking.NewMessageTracker(tracking.WithID(id))
			if err := m.Track(messages[id].to, id, tr); err != nil {
				t.Fatal(err)
			}
			trackers[id] = tr
		}
		m.Handle(el)
		from, fromErr := jid.Parse(el.Attr("from"))
		isMessage := el.Name().Local == "message"
		for id, tr := range trackers {
			to := messages[id].to
			fromAccount := fromErr == nil && from.Bare().Equal(to.Bare())
			switch st := tr.State(); st {
			case tracking.InTransit:
			case tracking.DeliveredToRecipient:
				if !isMessage || el.Attr("type") == "error" || !fromAccount || !proves(el, "received", id) {
					t.Fatalf("%s delivered by %s", id, b)
				}
			case tracking.SeenByRecipient:
				ok := false
				for _, later := range append([]string{id}, messages[id].after...) {
					ok = ok || proves(el, "displayed", later)
				}
				if !isMessage || el.Attr("type") == "error" || !fromAccount || !ok {
					t.Fatalf("%s seen by %s", id, b)
				}
			case tracking.Error:
				server := fromErr == nil && from.String() == to.Domain().String()
				if !isMessage || el.Attr("type") != "error" || el.Attr("id") != id || !(fromAccount || server) {
					t.Fatalf("%s moved to ERROR by %s", id, b)
				}
			default:
				t.Fatalf("%s moved to %v by %s", id, st, b)
			}
		}
		m.Close()
		if left := elementtest.Goroutines("xmpptrack/chat.", time.Second); len(left) > 0 {
			t.Fatalf("goroutines of the matcher left after Close:\n%s", strings.Join(left, "\n\n"))
		}
	})
}

// proves reports whether a direct child of el is a receipt or marker of the
// given kind ("received": a XEP-0184 receipt or a received marker;
// "displayed": a displayed or acknowledged marker) for id.
func proves(el *stream.Element, kind, id string) bool {
	depth := 0
	for _, tok := range el.Tokens() {
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				got := ""
				for _, a := range t.Attr {
					if a.Name.Local == "id" && a.Name.Space == "" {
						got = a.Value
					}
				}
				switch {
				case t.Name.Space == NSReceipts && t.Name.Local == "received" && kind == "received":
					if got == id || (got == "" && el.Attr("id") == id) {
						return true
					}
				case t.Name.Space == NSMarkers && got == id:
					if kind == "received" && t.Name.Local == "received" ||
						kind == "displayed" && (t.Name.Local == "displayed" || t.Name.Local == "acknowledged") {
						return true
					}
				}
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return false
}
