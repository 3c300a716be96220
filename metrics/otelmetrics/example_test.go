package otelmetrics_test

import (
	"context"
	"fmt"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/xmpptrack/xmpptrack/metrics/otelmetrics"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Export a client's trackers to OpenTelemetry through a meter provider of
// your own; a manual reader shows what an exporter would receive. In a
// program the source is a *muc.Client or a *chat.Client (and
// RegisterStream takes the *stream.Stream); here a tracking.Recorder, which
// such a client keeps, stands in, so that no server is needed.
func Example() {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	meter := provider.Meter("github.com/xmpptrack/xmpptrack")

	var chats tracking.Recorder
	reg, err := otelmetrics.RegisterTrackers(meter, &chats, "chat")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer reg.Unregister()

	// One message is seen by its recipient, another times out.
	seen, lost := tracking.NewMessageTracker(), tracking.NewMessageTracker()
	chats.Track(seen, time.Now())
	chats.Track(lost, time.Now())
	seen.Transition(tracking.DeliveredToRecipient, nil)
	seen.Transition(tracking.SeenByRecipient, nil)
	lost.Transition(tracking.TimedOut, nil)

	var rm metricdata.ResourceMetrics
	reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				state, ok := p.Attributes.Value("state")
				switch {
				case !ok:
					fmt.Println(m.Name, p.Value)
				case p.Value > 0:
					fmt.Println(m.Name, state.Emit(), p.Value)
				}
			}
		case metricdata.Histogram[float64]:
			fmt.Println(m.Name, "count", d.DataPoints[0].Count)
		}
	}
	// Unordered output:
	// xmpptrack.trackers.started 2
	// xmpptrack.trackers.delivered 1
	// xmpptrack.trackers.ended SEEN_BY_RECIPIENT 1
	// xmpptrack.trackers.ended TIMED_OUT 1
	// xmpptrack.trackers.delivery count 1
}
