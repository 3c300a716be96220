package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/stream"
)

// BenchmarkSendToAck measures the stream's throughput from Send to ACKED
// against the real Prosody on loopback (STARTTLS, stream management on):
// each iteration is one chat message to the sender's own full JID, and the
// benchmark ends when the last token is acknowledged.
func BenchmarkSendToAck(b *testing.B) {
	srv := prosody.StartTB(b, prosody.Options{Users: map[string]string{"alice": "a-pw"}})
	s := dialStream(b, srv, "alice", func(c *stream.Config) {
		c.MaxUnacked = 500
		c.QueueSize = 500
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	to := s.Addr()
	bodies := make([]string, 64)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("benchmark message %d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var last *stream.StanzaToken
	for i := 0; i < b.N; i++ {
		tok, err := s.Send(ctx, chat(to, bodies[i%len(bodies)]))
		if err != nil {
			b.Fatal(err)
		}
		last = tok
	}
	if st, err := last.Wait(ctx); st != stream.TokenAcked {
		b.Fatalf("last token %v: %v", st, err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acked/s")
}
