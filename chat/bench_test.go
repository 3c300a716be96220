package chat

import (
	"fmt"
	"testing"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// BenchmarkReceipt measures matching one receipt, and the transition it
// causes, while n messages await theirs: the cost must not grow with n.
// The messages go to 100 peers; each receipt comes from the addressee.
func BenchmarkReceipt(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", n), func(b *testing.B) {
			peers := make([]jid.JID, 100)
			for i := range peers {
				peers[i] = jid.MustParse(fmt.Sprintf("peer%d@example.net", i))
			}
			ids := make([]string, n)
			froms := make([]string, len(peers))
			for i := range n {
				ids[i] = fmt.Sprintf("id-%d", i)
			}
			for i, p := range peers {
				froms[i] = p.String() + "/phone"
			}
			// The receipts, read before: as on a stream, the stanza
			// read is in the cache.
			els := make([]*stream.Element, n)
			for i := range n {
				els[i] = element(b, receipt(froms[i%len(froms)], ids[i]))
			}
			fill := func() *Matcher {
				m := NewMatcher(WithUnseenLimit(0))
				for i := range n {
					if err := m.Track(peers[i%len(peers)], ids[i], tracking.NewMessageTracker()); err != nil {
						b.Fatal(err)
					}
				}
				return m
			}
			m := fill()
			i := 0
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if i == n {
					b.StopTimer()
					m.Close()
					m = fill()
					i = 0
					b.StartTimer()
				}
				m.Handle(els[i])
				i++
			}
			b.StopTimer()
			m.Close()
		})
	}
}

// BenchmarkForeignReceipt measures ignoring a receipt for an id we do not
// track, the common case for a busy account.
func BenchmarkForeignReceipt(b *testing.B) {
	m := NewMatcher()
	for i := range 10_000 {
		if err := m.Track(jid.MustParse("bob@example.net"), fmt.Sprintf("id-%d", i), tracking.NewMessageTracker()); err != nil {
			b.Fatal(err)
		}
	}
	el := element(b, receipt("bob@example.net/phone", "unknown"))
	b.ReportAllocs()
	for b.Loop() {
		m.Handle(el)
	}
}
