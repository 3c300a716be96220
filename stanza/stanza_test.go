package stanza

import (
	"encoding/xml"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidText(t *testing.T) {
	for s, ok := range map[string]bool{
		"":                   true,
		"hello, world":       true,
		"tab\tnl\ncr\r":      true,
		"héllo ✓ 🎉":          true,
		"nul\x00":            false,
		"bell\x07":           false,
		"bad utf-8 \xff":     false,
		"\uFFFE":             false,
		"\xed\xa0\x80":       false, // an encoded surrogate
		"private \U0010FFFD": true,
	} {
		if ValidText(s) != ok {
			t.Errorf("ValidText(%q) = %v", s, !ok)
		}
	}
}

func TestAppendEscapedRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", "<a href='x'>&\"amp\"</a>", "cr\rlf\n", "tab\tin attribute\n", "héllo ✓"} {
		b := append([]byte("<x a='"), AppendEscaped(nil, s)...)
		b = append(b, "'>"...)
		b = AppendEscaped(b, s)
		b = append(b, "</x>"...)
		var v struct {
			A    string `xml:"a,attr"`
			Text string `xml:",chardata"`
		}
		if err := xml.Unmarshal(b, &v); err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		if v.A != s || v.Text != s {
			t.Errorf("%q: attribute %q, text %q", s, v.A, v.Text)
		}
	}
}

func TestReadIDs(t *testing.T) {
	const msg = `<message id='m1' from='room@muc/alice' type='groupchat'><body>hi</body>` +
		`<x><origin-id xmlns='urn:xmpp:sid:0' id='nested'/></x>` +
		`<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>` +
		`<stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='room@muc'/></message>`
	start, inner := tokens(t, msg)
	require.Equal(t, IDs{ID: "m1", OriginID: "o1", StanzaID: "s1", StanzaIDBy: "room@muc"}, ReadIDs(start, inner))
}

func TestError(t *testing.T) {
	const msg = `<message id='e1' type='error'><body>x</body><error type='cancel'>` +
		`<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>` +
		`<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>You are not in the room</text></error></message>`
	_, inner := tokens(t, msg)
	e, ok := Error(inner)
	if !ok {
		t.Fatal("no error found")
	}
	if e.Condition != "not-acceptable" || e.Type != "cancel" {
		t.Fatalf("parsed %+v", e)
	}
	if _, ok := Error(inner[:3]); ok {
		t.Fatal("found an error in a stanza without one")
	}
}

func TestNewIDUnique(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		id := NewID()
		if len(id) != 22 || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
}

// tokens reads an element into its start and the tokens that follow it.
func tokens(t *testing.T, s string) (xml.StartElement, []xml.Token) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	var start xml.StartElement
	var inner []xml.Token
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		if st, ok := tok.(xml.StartElement); ok && start.Name.Local == "" {
			start = st.Copy()
			continue
		}
		inner = append(inner, xml.CopyToken(tok))
	}
	return start, inner
}
