package otelmetrics_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/xmpptrack/xmpptrack/internal/hooktest"
	"github.com/xmpptrack/xmpptrack/metrics"
	"github.com/xmpptrack/xmpptrack/metrics/otelmetrics"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// collect reads every data point of r as "name{k=v,…}" → value; a
// histogram gives .count and .sum.
func collect(t *testing.T, r sdkmetric.Reader) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	key := func(name string, set attribute.Set) string {
		if set.Len() == 0 {
			return name
		}
		var kv []string
		for _, a := range set.ToSlice() {
			kv = append(kv, fmt.Sprintf("%s=%s", a.Key, a.Value.Emit()))
		}
		sort.Strings(kv)
		return name + "{" + strings.Join(kv, ",") + "}"
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Value)
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] = p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[key(m.Name+".count", p.Attributes)] = float64(p.Count)
					out[key(m.Name+".sum", p.Attributes)] = p.Sum
				}
			default:
				t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	return out
}

func check(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s missing (have %v)", k, got)
		} else if g != w {
			t.Errorf("%s = %v, want %v", k, g, w)
		}
	}
}

// TestStream checks the stream's instruments against the Stats they
// observe and the round-trip histogram against the hook's calls; after
// Unregister nothing more is recorded.
func TestStream(t *testing.T) {
	var src hooktest.Stream
	st := stream.Stats{Connections: 5, Resumptions: 3, ResumeRefused: 1, NewSessions: 1, Disconnects: 4, DeadLinks: 2,
		Sent: 70, Acked: 60, Received: 80, Unacked: 10, Queued: 2, OldestUnacked: 250 * time.Millisecond,
		AckRTT: 4 * time.Millisecond, DeadAfter: 3 * time.Second}
	src.SetStats(st)
	reader := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")
	reg, err := otelmetrics.RegisterStream(meter, &src, otelmetrics.WithAttributes(attribute.String("account", "alice")))
	if err != nil {
		t.Fatal(err)
	}
	src.AckRTT(2 * time.Millisecond)
	src.AckRTT(6 * time.Millisecond)
	l := "{account=alice}"
	check(t, collect(t, reader), map[string]float64{
		"xmpptrack.stream.connections" + l:         float64(st.Connections),
		"xmpptrack.stream.resumptions" + l:         float64(st.Resumptions),
		"xmpptrack.stream.resumptions_refused" + l: float64(st.ResumeRefused),
		"xmpptrack.stream.new_sessions" + l:        float64(st.NewSessions),
		"xmpptrack.stream.disconnects" + l:         float64(st.Disconnects),
		"xmpptrack.stream.dead_links" + l:          float64(st.DeadLinks),
		"xmpptrack.stream.stanzas_sent" + l:        float64(st.Sent),
		"xmpptrack.stream.stanzas_acked" + l:       float64(st.Acked),
		"xmpptrack.stream.stanzas_received" + l:    float64(st.Received),
		"xmpptrack.stream.unacked_stanzas" + l:     float64(st.Unacked),
		"xmpptrack.stream.queued_stanzas" + l:      float64(st.Queued),
		"xmpptrack.stream.oldest_unacked" + l:      st.OldestUnacked.Seconds(),
		"xmpptrack.stream.ack_rtt_smoothed" + l:    st.AckRTT.Seconds(),
		"xmpptrack.stream.dead_link_timeout" + l:   st.DeadAfter.Seconds(),
		"xmpptrack.stream.ack_rtt.count" + l:       2,
		"xmpptrack.stream.ack_rtt.sum" + l:         (2 * time.Millisecond).Seconds() + (6 * time.Millisecond).Seconds(),
	})
	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	if src.Hooks() != 0 {
		t.Fatalf("%d hooks left after Unregister", src.Hooks())
	}
	if _, ok := collect(t, reader)["xmpptrack.stream.connections"+l]; ok {
		t.Fatal("the stream is still observed after Unregister")
	}
}

// TestTrackers checks the trackers' instruments of two clients on one
// meter against their Recorders' Stats.
func TestTrackers(t *testing.T) {
	var rooms, chats tracking.Recorder
	reader := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")
	for name, r := range map[string]*tracking.Recorder{"muc": &rooms, "chat": &chats} {
		if _, err := otelmetrics.RegisterTrackers(meter, r, name); err != nil {
			t.Fatal(err)
		}
	}
	hooktest.Drive(t, &rooms, tracking.DeliveredToServer, tracking.DeliveredToRecipient)
	hooktest.Drive(t, &rooms, tracking.Error)
	hooktest.Drive(t, &rooms)
	hooktest.Drive(t, &chats, tracking.SeenByRecipient)
	hooktest.Drive(t, &chats, tracking.DeliveredToServer, tracking.Closed)

	got := collect(t, reader)
	for name, r := range map[string]*tracking.Recorder{"muc": &rooms, "chat": &chats} {
		st := r.Stats()
		want := map[string]float64{
			"xmpptrack.trackers.started{client=" + name + "}":        float64(st.Started),
			"xmpptrack.trackers.delivered{client=" + name + "}":      float64(st.Delivered),
			"xmpptrack.trackers.delivery.count{client=" + name + "}": float64(st.Delivered),
		}
		for _, s := range metrics.ActiveStates() {
			want[fmt.Sprintf("xmpptrack.trackers.active{client=%s,state=%s}", name, s)] = float64(st.Active[s])
		}
		for _, s := range metrics.OutcomeStates() {
			want[fmt.Sprintf("xmpptrack.trackers.ended{client=%s,state=%s}", name, s)] = float64(st.Ended[s])
		}
		check(t, got, want)
	}
	if got["xmpptrack.trackers.active{client=muc,state=DELIVERED_TO_RECIPIENT}"] != 1 ||
		got["xmpptrack.trackers.ended{client=chat,state=CLOSED}"] != 1 {
		t.Fatalf("the trackers are not where they were driven: %v", got)
	}
}
