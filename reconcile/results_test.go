package reconcile_test

import (
	"testing"

	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
)

// TestResults: only a message carrying an archive result counts.
func TestResults(t *testing.T) {
	for raw, want := range map[string]bool{
		"<message xmlns='jabber:client' from='room@muc.example'><result xmlns='urn:xmpp:mam:2' queryid='q' id='1'/></message>": true,
		"<message xmlns='jabber:client' from='room@muc.example/n' type='groupchat'><body>hi</body></message>":                  false,
		"<message xmlns='jabber:client'><result xmlns='urn:xmpp:mam:1' id='1'/></message>":                                     false,
		"<iq xmlns='jabber:client' type='result' id='q'><fin xmlns='urn:xmpp:mam:2'/></iq>":                                    false,
	} {
		el, err := stream.ParseElement([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if got := reconcile.Results(el); got != want {
			t.Errorf("Results(%s) = %v, want %v", raw, got, want)
		}
	}
}
