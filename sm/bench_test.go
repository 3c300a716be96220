package sm

import (
	"fmt"
	"testing"
)

type benchItem struct {
	b  []byte
	id string
}

// BenchmarkAck measures the cost of acknowledging one stanza with 1k, 10k
// and 100k stanzas unacknowledged, three ways:
//
//   - steady: the queue stays at its depth; each operation sends one stanza
//     and acknowledges the oldest (the send is timed with it);
//   - step=1: the queue is filled (untimed) and drained one <a/> per stanza;
//   - step=all: the queue is filled (untimed) and drained by one <a/>.
//
// ns/stanza is the time per acknowledged stanza. It must not grow with the
// depth: an acknowledgement costs O(1) per stanza. (Draining a queue that was
// just filled touches memory the cache no longer holds, which shows at 100k;
// the steady state shows the algorithm alone.)
func BenchmarkAck(b *testing.B) {
	item := &benchItem{b: []byte("<message/>"), id: "x"}
	for _, depth := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("unacked=%dk/steady", depth/1000), func(b *testing.B) {
			var o Outbound[*benchItem]
			for o.Len() < depth {
				o.Sent(item)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				o.Sent(item)
				if _, err := o.Ack(o.AckedCount()+1, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/stanza")
		})
		for _, step := range []int{1, 0} {
			name := fmt.Sprintf("unacked=%dk/step=", depth/1000)
			if step == 0 {
				name += "all"
			} else {
				name += fmt.Sprint(step)
			}
			b.Run(name, func(b *testing.B) {
				var o Outbound[*benchItem]
				fill := func() {
					for o.Len() < depth {
						o.Sent(item)
					}
				}
				fill()
				acked := 0
				b.ReportAllocs()
				b.ResetTimer()
				for acked < b.N {
					if o.Len() == 0 {
						b.StopTimer()
						fill()
						b.StartTimer()
					}
					n := step
					if n == 0 || n > o.Len() {
						n = o.Len()
					}
					if n > b.N-acked {
						n = b.N - acked
					}
					k, err := o.Ack(o.AckedCount()+uint32(n), nil)
					if err != nil || k != n {
						b.Fatalf("Ack: %d, %v; want %d", k, err, n)
					}
					acked += k
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(acked), "ns/stanza")
			})
		}
	}
}

// BenchmarkSentAck measures the steady state of a stream: one stanza sent
// and one acknowledged per operation, with 100 in flight.
func BenchmarkSentAck(b *testing.B) {
	item := &benchItem{b: []byte("<message/>"), id: "x"}
	var o Outbound[*benchItem]
	for i := 0; i < 100; i++ {
		o.Sent(item)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o.Sent(item)
		if _, err := o.Ack(o.AckedCount()+1, nil); err != nil {
			b.Fatal(err)
		}
	}
}
