package muc_test

import (
	"fmt"
	"testing"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// parseElement reads one stanza from s as the stream's reader would.
func parseElement(tb testing.TB, s string) *stream.Element {
	tb.Helper()
	el, err := stream.ParseElement([]byte(s))
	if err != nil {
		tb.Fatalf("parsing %s: %v", s, err)
	}
	return el
}

// BenchmarkReflection measures matching a reflection to its message while
// many other messages are pending: the cost must not grow with their number.
// Each operation registers one message, as SendTrackedMessage does, and
// hands the client the room's reflection of it, so that the number of
// pending messages stays the same. "others" hands the client messages of
// other occupants, which the room must look at and ignore.
func BenchmarkReflection(b *testing.B) {
	const ring = 1024
	for _, n := range []int{1000, 10000, 100000} {
		c, r := muc.NewDetachedRoom(jid.MustParse(testRoom), testNick)
		for i := range n {
			r.TrackForTest(fmt.Sprintf("pending-id-%d", i), fmt.Sprintf("pending-origin-%d", i))
		}
		ids := make([]string, ring)
		origins := make([]string, ring)
		own := make([]*stream.Element, ring)
		others := make([]*stream.Element, ring)
		for i := range ring {
			ids[i], origins[i] = fmt.Sprintf("bench-id-%d", i), fmt.Sprintf("bench-origin-%d", i)
			msg := "<message from='%s' to='alice@example.test/r1' id='%s' type='groupchat' xml:lang='en'>" +
				"<body>benchmark message %d</body><origin-id xmlns='urn:xmpp:sid:0' id='%s'/>" +
				"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ'/>" +
				"<stanza-id xmlns='urn:xmpp:sid:0' by='" + testRoom + "' id='st-%d'/></message>"
			own[i] = parseElement(b, fmt.Sprintf(msg, testSelf, ids[i], i, origins[i], i))
			others[i] = parseElement(b, fmt.Sprintf(msg, testOther, ids[i], i, origins[i], i))
		}

		b.Run(fmt.Sprintf("pending=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			k := 0
			for b.Loop() {
				tr := r.TrackForTest(ids[k], origins[k])
				c.HandleForTest(own[k])
				if tr.State() != tracking.DeliveredToRecipient {
					b.Fatalf("message %d not matched: %v", k, tr.State())
				}
				k = (k + 1) % ring
			}
			if got := r.Pending(); got != n {
				b.Fatalf("wrong pending count: want=%d, got=%d", n, got)
			}
		})
		b.Run(fmt.Sprintf("others/pending=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			k := 0
			for b.Loop() {
				c.HandleForTest(others[k])
				k = (k + 1) % ring
			}
			if got := r.Pending(); got != n {
				b.Fatalf("wrong pending count: want=%d, got=%d", n, got)
			}
		})
	}
}
