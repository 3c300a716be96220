package prommetrics_test

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/xmpptrack/xmpptrack/internal/hooktest"
	"github.com/xmpptrack/xmpptrack/metrics"
	"github.com/xmpptrack/xmpptrack/metrics/prommetrics"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// gather returns every sample of g as "name{label="value",…}" → value; a
// histogram gives its _count and _sum.
func gather(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(ls)
			key := func(suffix string) string {
				if len(ls) == 0 {
					return mf.GetName() + suffix
				}
				return mf.GetName() + suffix + "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key("")] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key("")] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key("_count")] = float64(m.GetHistogram().GetSampleCount())
				out[key("_sum")] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func check(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s missing", k)
		} else if g != w {
			t.Errorf("%s = %v, want %v", k, g, w)
		}
	}
}

// TestStream checks every metric of the stream collector against the
// Stats it reads, the round-trip histogram against the hook's calls, and
// the names against Prometheus' conventions.
func TestStream(t *testing.T) {
	var src hooktest.Stream
	st := stream.Stats{
		Connections: 7, Resumptions: 4, ResumeRefused: 1, NewSessions: 2, Disconnects: 6, DeadLinks: 3,
		Sent: 1000, Acked: 990, Received: 1200, Unacked: 10, Queued: 5,
		OldestUnacked: 1500 * time.Millisecond, AckRTT: 2 * time.Millisecond, DeadAfter: 3 * time.Second,
	}
	src.SetStats(st)
	c := prommetrics.NewStream(&src, prommetrics.WithConstLabels(prometheus.Labels{"account": "alice"}))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	src.AckRTT(3 * time.Millisecond)
	src.AckRTT(5 * time.Millisecond)

	l := `{account="alice"}`
	check(t, gather(t, reg), map[string]float64{
		"xmpptrack_stream_connections_total" + l:         float64(st.Connections),
		"xmpptrack_stream_resumptions_total" + l:         float64(st.Resumptions),
		"xmpptrack_stream_resumptions_refused_total" + l: float64(st.ResumeRefused),
		"xmpptrack_stream_new_sessions_total" + l:        float64(st.NewSessions),
		"xmpptrack_stream_disconnects_total" + l:         float64(st.Disconnects),
		"xmpptrack_stream_dead_links_total" + l:          float64(st.DeadLinks),
		"xmpptrack_stream_stanzas_sent_total" + l:        float64(st.Sent),
		"xmpptrack_stream_stanzas_acked_total" + l:       float64(st.Acked),
		"xmpptrack_stream_stanzas_received_total" + l:    float64(st.Received),
		"xmpptrack_stream_unacked_stanzas" + l:           float64(st.Unacked),
		"xmpptrack_stream_queued_stanzas" + l:            float64(st.Queued),
		"xmpptrack_stream_oldest_unacked_seconds" + l:    st.OldestUnacked.Seconds(),
		"xmpptrack_stream_ack_rtt_smoothed_seconds" + l:  st.AckRTT.Seconds(),
		"xmpptrack_stream_dead_link_timeout_seconds" + l: st.DeadAfter.Seconds(),
		"xmpptrack_stream_ack_rtt_seconds_count" + l:     2,
		"xmpptrack_stream_ack_rtt_seconds_sum" + l:       (3 * time.Millisecond).Seconds() + (5 * time.Millisecond).Seconds(),
	})
	// Stats are read at every scrape.
	st.Resumptions++
	src.SetStats(st)
	check(t, gather(t, reg), map[string]float64{"xmpptrack_stream_resumptions_total" + l: float64(st.Resumptions)})

	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	if src.Hooks() != 1 {
		t.Fatalf("%d hooks registered, want 1", src.Hooks())
	}
	c.Close()
	if src.Hooks() != 0 {
		t.Fatalf("%d hooks registered after Close, want 0", src.Hooks())
	}
}

// TestTrackers checks the tracker collectors of two clients in one
// registry against their Recorders' Stats.
func TestTrackers(t *testing.T) {
	var rooms, chats tracking.Recorder
	reg := prometheus.NewPedanticRegistry()
	mc := prommetrics.NewTrackers(&rooms, "muc")
	reg.MustRegister(mc, prommetrics.NewTrackers(&chats, "chat"))

	// A room ends tracking at the reflection.
	hooktest.Drive(t, &rooms, tracking.DeliveredToServer, tracking.DeliveredToRecipient).Close()
	hooktest.Drive(t, &rooms, tracking.DeliveredToServer, tracking.DeliveredToRecipient).Close()
	hooktest.Drive(t, &rooms, tracking.DeliveredToServer)
	hooktest.Drive(t, &rooms, tracking.TimedOut)
	hooktest.Drive(t, &chats, tracking.DeliveredToRecipient)
	hooktest.Drive(t, &chats, tracking.SeenByRecipient)
	hooktest.Drive(t, &chats)

	got := gather(t, reg)
	for name, r := range map[string]*tracking.Recorder{"muc": &rooms, "chat": &chats} {
		st := r.Stats()
		l := fmt.Sprintf(`client=%q`, name)
		want := map[string]float64{
			"xmpptrack_trackers_started_total{" + l + "}":          float64(st.Started),
			"xmpptrack_trackers_delivered_total{" + l + "}":        float64(st.Delivered),
			"xmpptrack_trackers_delivery_seconds_count{" + l + "}": float64(st.Delivered),
		}
		for _, s := range metrics.ActiveStates() {
			want[fmt.Sprintf("xmpptrack_trackers_active{%s,state=%q}", l, s)] = float64(st.Active[s])
		}
		for _, s := range metrics.OutcomeStates() {
			want[fmt.Sprintf("xmpptrack_trackers_ended_total{%s,state=%q}", l, s)] = float64(st.Ended[s])
		}
		check(t, got, want)
	}
	if got[`xmpptrack_trackers_ended_total{client="muc",state="DELIVERED_TO_RECIPIENT"}`] != 2 {
		t.Fatalf("the two reflected room messages are not counted: %v", got)
	}
	if problems, err := testutil.CollectAndLint(mc); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// TestConcurrentScrapes scrapes while trackers change and round trips are
// observed, for the race detector.
func TestConcurrentScrapes(t *testing.T) {
	var src hooktest.Stream
	var r tracking.Recorder
	reg := prometheus.NewRegistry()
	reg.MustRegister(prommetrics.NewStream(&src), prommetrics.NewTrackers(&r, "chat"))
	const n = 300
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			src.AckRTT(time.Duration(i) * time.Microsecond)
			tr := tracking.NewMessageTracker()
			r.Track(tr, time.Now())
			tr.Transition(tracking.SeenByRecipient, nil)
		}
	})
	for range 20 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	check(t, gather(t, reg), map[string]float64{
		"xmpptrack_stream_ack_rtt_seconds_count":                                  n,
		`xmpptrack_trackers_delivery_seconds_count{client="chat"}`:                n,
		`xmpptrack_trackers_ended_total{client="chat",state="SEEN_BY_RECIPIENT"}`: n,
	})
}
