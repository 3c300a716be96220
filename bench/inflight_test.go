package bench

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/bench/internal/sink"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// inFlight is how many tracked messages BenchmarkInFlight holds in flight.
const inFlight = 100_000

// BenchmarkInFlight measures the memory each tracked groupchat message costs
// while it is in flight: the stanza kept for resending, its stream token,
// the tracker with its deadline and observer, and the room's index entries. It
// sends inFlight messages to the sink server, which never acknowledges nor
// reflects them, and reports the growth of the live heap per message
// (B/msg). Run it with -benchtime 1x: each iteration is a whole measurement.
func BenchmarkInFlight(b *testing.B) {
	for b.Loop() {
		perMsg := measureInFlight(b, inFlight)
		b.ReportMetric(perMsg, "B/msg")
	}
}

// TestInFlight checks the measurement on a few messages, so that the
// benchmark stays runnable.
func TestInFlight(t *testing.T) {
	if perMsg := measureInFlight(t, 1000); perMsg <= 0 {
		t.Fatalf("%v bytes per message in flight", perMsg)
	}
}

func measureInFlight(tb testing.TB, n int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, room := sinkRoom(ctx, tb, 2*n, 2*n)

	var err error
	trackers := make([]*tracking.MessageTracker, n)
	before := liveHeap()
	for i := range trackers {
		trackers[i], err = room.SendTrackedMessage(ctx, "message "+strconv.Itoa(i))
		if err != nil {
			tb.Fatal(err)
		}
	}
	// Wait until the stream has written them all: each is then held only
	// for resending, as it would be while awaiting its reflection.
	for s.Stats().Queued > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	after := liveHeap()
	if st := s.Stats(); st.Unacked < n {
		tb.Fatalf("%d stanzas unacknowledged, want at least %d", st.Unacked, n)
	}
	if got := room.Pending(); got != n {
		tb.Fatalf("room holds %d pending messages, want %d", got, n)
	}
	for _, tr := range trackers {
		if st := tr.State(); st != tracking.InTransit {
			tb.Fatalf("tracker in %v, want IN_TRANSIT", st)
		}
	}
	runtime.KeepAlive(trackers)
	perMsg := float64(after-before) / float64(n)
	tb.Logf("%d messages in flight: live heap grew by %d bytes, %.0f bytes (%.2f KiB) per message",
		n, after-before, perMsg, perMsg/1024)
	return perMsg
}

// liveHeap returns the bytes of live heap objects after a full collection.
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkSendTracked measures the send path of one tracked groupchat
// message: Room.SendTrackedMessage, the stream's token and queue, and the
// writer, against the sink server, which swallows the stanzas. Each
// operation sends one message; the figures are per message. allocs/op and
// B/op include the sink's own parsing of the stanza, the same for every
// client: profile with -memprofile and ignore the sink's stacks for the
// client's alone.
func BenchmarkSendTracked(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, room := sinkRoom(ctx, b, 1<<30, 1<<16)
	const body = "a message of about the length of a chat line"
	// Tracking ends, as it would at the room's reflection, in batches
	// once the stream has written them, so that the measurement does not
	// grow with b.N.
	const batch = 1000
	trackers := make([]*tracking.MessageTracker, 0, batch)
	end := func() {
		for s.Stats().Queued > 0 {
			time.Sleep(100 * time.Microsecond)
		}
		for _, tr := range trackers {
			_ = tr.Close()
		}
		trackers = trackers[:0]
	}
	b.ReportAllocs()
	for b.Loop() {
		tr, err := room.SendTrackedMessage(ctx, body)
		if err != nil {
			b.Fatal(err)
		}
		if trackers = append(trackers, tr); len(trackers) == batch {
			end()
		}
	}
	end()
}

// sinkRoom joins a room of a sink server (which never acknowledges nor
// reflects) with a stream that holds maxUnacked stanzas unacknowledged and
// queues queueSize; all of it ends with tb.
func sinkRoom(ctx context.Context, tb testing.TB, maxUnacked, queueSize int) (*stream.Stream, *muc.Room) {
	tb.Helper()
	srv, err := sink.Listen()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { srv.Close() })
	s, err := stream.Dial(ctx, stream.Config{
		JID:            jid.MustParse("bench@sink.localhost"),
		Password:       "any",
		Dial:           srv.Dial,
		AllowPlaintext: true,
		Mechanisms:     []sasl.Mechanism{sasl.Plain},
		MaxUnacked:     maxUnacked,
		QueueSize:      queueSize,
		AckTimeout:     time.Hour,
		KeepAlive:      time.Hour,
	})
	if err != nil {
		tb.Fatal(err)
	}
	c := muc.NewClient(s, muc.WithTimeout(time.Hour))
	tb.Cleanup(func() {
		c.Close()
		closeCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s.Close(closeCtx)
	})
	room, err := c.Join(ctx, jid.MustParse("bench@conference.sink.localhost"), "bench")
	if err != nil {
		tb.Fatal(err)
	}
	return s, room
}
