package muc_test

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/internal/elementtest"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// FuzzHandle hands an arbitrary stanza from an arbitrary sender to a room
// client with two messages pending. No input may panic or leave a goroutine
// of the client running after Close, and a tracker may move only on valid
// proof: DELIVERED_TO_RECIPIENT on a groupchat message from exactly our
// occupant JID (as XMPP compares JIDs) carrying the message's origin-id or
// id, ERROR on an error from the room carrying its id, CLOSED only on a
// presence (a removal from the room).
//
// Run it with: go test -fuzz=FuzzHandle ./muc
func FuzzHandle(f *testing.F) {
	seeds := []string{
		"<message from='room@muc.example/alice' type='groupchat' id='m1'><body>x</body><origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>",
		"<message from='Room@MUC.Example/alice' type='groupchat' id='zz'><origin-id xmlns='urn:xmpp:sid:0' id='o2'/></message>",
		"<message from='room@muc.example/Alice' type='groupchat' id='m1'/>",
		"<message from='room@muc.example/bob' type='groupchat' id='m1'><origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>",
		"<message from='room@muc.example/alice' type='chat' id='m1'/>",
		"<message from='other@muc.example/alice' type='groupchat' id='m1'/>",
		"<message from='room@muc.example' type='error' id='m2'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
		"<message from='room@muc.example/carol' type='error' id='m2'><error type='cancel'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
		"<presence from='room@muc.example/alice' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item role='none'/><status code='307'/><status code='110'/></x></presence>",
		"<presence from='room@muc.example/alice' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item nick='al'/><status code='303'/><status code='110'/></x></presence>",
		"<message from='room@muc.example/alice' type='groupchat' id='m1'><occupant-id xmlns='urn:xmpp:occupant-id:0' id='x'/><stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example' id='s'/></message>",
		"<message from='' type='groupchat'/>",
		"<message from='@@@/' type='groupchat' id='m1'/>",
		"<iq type='get' from='room@muc.example'/>",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	room := jid.MustParse("room@muc.example")
	f.Fuzz(func(t *testing.T, b []byte) {
		el, err := elementtest.Parse(b)
		if err != nil {
			return
		}
		c, r := muc.NewDetachedRoom(room, "alice")
		trackers := map[string]*tracking.MessageTracker{
			"m1": r.TrackForTest("m1", "o1"),
			"m2": r.TrackForTest("m2", "o2"),
		}
		c.HandleForTest(el)
		origin := map[string]string{"m1": "o1", "m2": "o2"}
		for id, tr := range trackers {
			st := tr.State()
			switch st {
			case tracking.InTransit:
			case tracking.DeliveredToRecipient:
				if el.Name().Local != "message" || el.Attr("type") != "groupchat" || !fromOccupant(el.Attr("from"), room, "alice") ||
					(el.Attr("id") != id && !hasOriginID(el, origin[id])) {
					t.Fatalf("%s delivered by %s", id, b)
				}
			case tracking.Error:
				from, err := jid.Parse(el.Attr("from"))
				if el.Attr("type") != "error" || err != nil || !from.Bare().Equal(room) || el.Attr("id") != id {
					t.Fatalf("%s moved to ERROR by %s", id, b)
				}
			case tracking.Closed:
				if el.Name().Local != "presence" {
					t.Fatalf("%s CLOSED by %s", id, b)
				}
			default:
				t.Fatalf("%s moved to %v by %s", id, st, b)
			}
		}
		c.Close()
		if left := elementtest.Goroutines("xmpptrack/muc.", time.Second); len(left) > 0 {
			t.Fatalf("goroutines of the room client left after Close:\n%s", strings.Join(left, "\n\n"))
		}
	})
}

func fromOccupant(from string, room jid.JID, nick string) bool {
	j, err := jid.Parse(from)
	return err == nil && j.Bare().Equal(room) && j.Resourcepart() == nick
}

// hasOriginID reports whether a child of el is <origin-id id='id'/>.
func hasOriginID(el *stream.Element, id string) bool {
	depth := 0
	for _, tok := range el.Tokens() {
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && t.Name == (xml.Name{Space: "urn:xmpp:sid:0", Local: "origin-id"}) {
				for _, a := range t.Attr {
					if a.Name.Local == "id" && a.Name.Space == "" && a.Value == id {
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
