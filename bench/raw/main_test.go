package main

import (
	"strings"
	"testing"
	"testing/iotest"
)

// TestSplit checks that the reader finds every top-level element, whole,
// however the bytes are cut into reads.
func TestSplit(t *testing.T) {
	const stream = `<message from='r@c/me' id='r000000000000000000003' type='groupchat'><body>a &gt; b</body><origin-id xmlns='urn:xmpp:sid:0' id='o3'/></message>` +
		`<presence from='r@c/me'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>` +
		`<a xmlns='urn:xmpp:sm:3' h='2'/>` + "\n" +
		`<message from='r@c' id='r000000000000000000004' type='error'><error type='cancel'><not-acceptable/></error></message>`
	wantNames := []string{"message", "presence", "a", "message"}
	for _, chunked := range []bool{false, true} {
		c := &client{buf: make([]byte, 0, 16), prefix: "r"}
		if chunked {
			c.r = iotest.OneByteReader(strings.NewReader(stream))
		} else {
			c.r = strings.NewReader(stream)
		}
		var names, els []string
		var indexes []int
		for len(names) < len(wantNames) {
			err := c.next(func(el []byte, name string) error {
				names = append(names, name)
				els = append(els, string(el))
				indexes = append(indexes, c.index(startTag(el)))
				return nil
			})
			if err != nil {
				t.Fatalf("after %v: %v", names, err)
			}
		}
		if strings.Join(names, " ") != strings.Join(wantNames, " ") || strings.Join(els, "") != strings.ReplaceAll(stream, "\n", "") {
			t.Fatalf("chunked %v: names %v, elements %q", chunked, names, els)
		}
		if indexes[0] != 3 || indexes[3] != 4 || indexes[1] != -1 {
			t.Fatalf("indexes %v", indexes)
		}
		if c.h != 3 {
			t.Fatalf("counted %d stanzas, want 3", c.h)
		}
	}
}
