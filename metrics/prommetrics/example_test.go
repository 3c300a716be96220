package prommetrics_test

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/xmpptrack/xmpptrack/metrics/prommetrics"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// scriptedStream stands in for a *stream.Stream, so that the example needs
// no server: its Stats are set by hand and its hooks told by hand.
type scriptedStream struct {
	stats stream.Stats
	hooks []stream.Hook
}

func (s *scriptedStream) Stats() stream.Stats { return s.stats }

func (s *scriptedStream) AddHook(h stream.Hook) func() {
	s.hooks = append(s.hooks, h)
	return func() {}
}

// Export a stream's metrics and a client's trackers to a private registry.
// In a program the sources are a *stream.Stream and a *muc.Client or
// *chat.Client; here a scripted stream and a tracking.Recorder stand in
// for them.
func Example() {
	s := &scriptedStream{stats: stream.Stats{Connections: 3, Resumptions: 2, Unacked: 4, OldestUnacked: 1500 * time.Millisecond}}
	var rooms tracking.Recorder // what a *muc.Client keeps

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prommetrics.NewStream(s),
		prommetrics.NewTrackers(&rooms, "muc"),
	)

	// The stream measures an ack round trip; a room reflects a message.
	for _, h := range s.hooks {
		h.AckRTT(4 * time.Millisecond)
	}
	tr := tracking.NewMessageTracker()
	rooms.Track(tr, time.Now())
	tr.Transition(tracking.DeliveredToRecipient, nil)
	tr.Close()

	// What a scrape of /metrics shows, in part.
	mfs, _ := reg.Gather()
	var b strings.Builder
	for _, mf := range mfs {
		expfmt.MetricFamilyToText(&b, mf)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		for _, name := range []string{
			"xmpptrack_stream_resumptions_total",
			"xmpptrack_stream_unacked_stanzas",
			"xmpptrack_stream_oldest_unacked_seconds",
			"xmpptrack_stream_ack_rtt_seconds_count",
			`xmpptrack_trackers_ended_total{client="muc",state="DELIVERED_TO_RECIPIENT"}`,
			"xmpptrack_trackers_delivery_seconds_count",
		} {
			if strings.HasPrefix(line, name) {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// xmpptrack_stream_ack_rtt_seconds_count 1
	// xmpptrack_stream_oldest_unacked_seconds 1.5
	// xmpptrack_stream_resumptions_total 2
	// xmpptrack_stream_unacked_stanzas 4
	// xmpptrack_trackers_delivery_seconds_count{client="muc"} 1
	// xmpptrack_trackers_ended_total{client="muc",state="DELIVERED_TO_RECIPIENT"} 1
}
