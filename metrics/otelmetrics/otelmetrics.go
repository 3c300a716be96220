// Package otelmetrics exports the metrics of an xmpptrack stream and of its
// room and chat clients to OpenTelemetry (go.opentelemetry.io/otel/metric).
//
// RegisterStream and RegisterTrackers create their instruments on a Meter of
// yours, from the meter provider you set up; nothing is registered globally,
// and the core packages do not import this one.
//
//	meter := provider.Meter("github.com/xmpptrack/xmpptrack")
//	sreg, err := otelmetrics.RegisterStream(meter, s)
//	…
//	treg, err := otelmetrics.RegisterTrackers(meter, rooms, "muc")
//	…
//	defer sreg.Unregister()
//
// Counters and gauges are asynchronous instruments, observed from the
// source's Stats at each collection, so they agree with Stats; the
// histograms (xmpptrack.stream.ack_rtt and xmpptrack.trackers.delivery, in
// seconds) are recorded by a hook as things happen. The instruments, with
// the default prefix "xmpptrack":
//
//	xmpptrack.stream.connections            counter: connections, the first included
//	xmpptrack.stream.resumptions            counter: sessions resumed (XEP-0198)
//	xmpptrack.stream.resumptions_refused    counter: resumptions refused with <failed/>
//	xmpptrack.stream.new_sessions           counter: sessions started anew
//	xmpptrack.stream.disconnects            counter: connections lost
//	xmpptrack.stream.dead_links             counter: links taken for dead
//	xmpptrack.stream.stanzas_{sent,acked,received}   counters
//	xmpptrack.stream.{unacked,queued}_stanzas        gauges: queue depths
//	xmpptrack.stream.oldest_unacked         gauge (s): age of the oldest unacknowledged stanza
//	xmpptrack.stream.ack_rtt_smoothed       gauge (s): smoothed ack round trip
//	xmpptrack.stream.dead_link_timeout      gauge (s): the dead-link timeout
//	xmpptrack.stream.ack_rtt                histogram (s): ack round trips
//	xmpptrack.trackers.started              counter {client}
//	xmpptrack.trackers.active               gauge {client, state}: trackers under way
//	xmpptrack.trackers.ended                counter {client, state}: outcomes
//	xmpptrack.trackers.delivered            counter {client}
//	xmpptrack.trackers.delivery             histogram (s) {client}: time to DELIVERED_TO_RECIPIENT
//
// # Concurrency
//
// The callbacks read Stats, a locked copy, and may run concurrently with
// everything else. The hooks that record the histograms run on the
// stream's or the tracker's goroutines and only record a number.
package otelmetrics

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/xmpptrack/xmpptrack/metrics"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Option configures a registration.
type Option func(*options)

type options struct {
	prefix  string
	attrs   []attribute.KeyValue
	buckets []float64
}

func newOptions(opts []Option) options {
	o := options{prefix: "xmpptrack", buckets: metrics.Buckets()}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithPrefix sets the first part of the instruments' names. Default
// "xmpptrack".
func WithPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// WithAttributes adds attributes to every measurement, for example to tell
// several streams of one process apart.
func WithAttributes(kv ...attribute.KeyValue) Option {
	return func(o *options) { o.attrs = append(o.attrs, kv...) }
}

// WithBuckets sets the histograms' bucket bounds, in seconds. Default
// metrics.Buckets.
func WithBuckets(b []float64) Option { return func(o *options) { o.buckets = b } }

// Registration is what RegisterStream and RegisterTrackers registered: the
// callback of the asynchronous instruments and the hook of the histogram.
type Registration struct {
	reg    metric.Registration
	remove func()
}

// Unregister removes the callback from the meter and the hook from the
// source. It returns the meter's error, if any.
func (r *Registration) Unregister() error {
	r.remove()
	if err := r.reg.Unregister(); err != nil {
		return fmt.Errorf("otelmetrics: unregister: %w", err)
	}
	return nil
}

// observable is a metrics.Value with its instrument.
type observable[S any] struct {
	counter metric.Int64ObservableCounter
	gauge   metric.Float64ObservableGauge
	read    func(S) float64
}

// instruments creates the asynchronous instruments of vs, named
// prefix.group.name.
func instruments[S any](m metric.Meter, name string, vs []metrics.Value[S]) ([]observable[S], []metric.Observable, error) {
	out := make([]observable[S], len(vs))
	all := make([]metric.Observable, len(vs))
	for i, v := range vs {
		var err error
		out[i].read = v.Read
		if v.Kind == metrics.Counter {
			out[i].counter, err = m.Int64ObservableCounter(name+"."+v.Name, metric.WithDescription(v.Help), metric.WithUnit(v.Unit))
			all[i] = out[i].counter
		} else {
			out[i].gauge, err = m.Float64ObservableGauge(name+"."+v.Name, metric.WithDescription(v.Help), metric.WithUnit(v.Unit))
			all[i] = out[i].gauge
		}
		if err != nil {
			return nil, nil, fmt.Errorf("otelmetrics: %s.%s: %w", name, v.Name, err)
		}
	}
	return out, all, nil
}

func observe[S any](o metric.Observer, st S, vs []observable[S], attrs metric.MeasurementOption) {
	for _, v := range vs {
		if v.counter != nil {
			o.ObserveInt64(v.counter, int64(v.read(st)), attrs)
		} else {
			o.ObserveFloat64(v.gauge, v.read(st), attrs)
		}
	}
}

// RegisterStream creates the instruments of a stream's metrics on m,
// observed from src (usually a *stream.Stream), and registers a hook on src
// for the round-trip histogram.
func RegisterStream(m metric.Meter, src metrics.StreamSource, opts ...Option) (*Registration, error) {
	o := newOptions(opts)
	name := o.prefix + ".stream"
	vs, all, err := instruments(m, name, metrics.StreamValues())
	if err != nil {
		return nil, err
	}
	rtt, err := m.Float64Histogram(name+".ack_rtt", metric.WithUnit("s"),
		metric.WithDescription("Ack round trips: from an <r/> to the <a/> that answered it."),
		metric.WithExplicitBucketBoundaries(o.buckets...))
	if err != nil {
		return nil, fmt.Errorf("otelmetrics: %s.ack_rtt: %w", name, err)
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(o.attrs...))
	return register(m, name, func(_ context.Context, obs metric.Observer) error {
		observe(obs, src.Stats(), vs, attrs)
		return nil
	}, all, func() func() { return src.AddHook(histogramHook{rtt, attrs}) })
}

// register registers f as the callback of insts, then the hook that
// addHook adds, and returns both as a Registration.
func register(m metric.Meter, name string, f metric.Callback, insts []metric.Observable, addHook func() (remove func())) (*Registration, error) {
	reg, err := m.RegisterCallback(f, insts...)
	if err != nil {
		return nil, fmt.Errorf("otelmetrics: %s: %w", name, err)
	}
	return &Registration{reg: reg, remove: addHook()}, nil
}

// histogramHook records the durations a hook learns of in a histogram: the
// ack round trips as a stream.Hook, the times to delivery as a
// tracking.Hook.
type histogramHook struct {
	h     metric.Float64Histogram
	attrs metric.MeasurementOption
}

func (h histogramHook) record(d time.Duration) {
	h.h.Record(context.Background(), d.Seconds(), h.attrs)
}

// AckRTT implements stream.Hook.
func (h histogramHook) AckRTT(d time.Duration) { h.record(d) }

// Event implements stream.Hook.
func (histogramHook) Event(stream.Event) {}

// Delivered implements tracking.Hook.
func (h histogramHook) Delivered(d time.Duration) { h.record(d) }

// Ended implements tracking.Hook.
func (histogramHook) Ended(tracking.MessageState, time.Duration) {}

// RegisterTrackers creates the instruments of a room or chat client's
// metrics on m, observed from src (usually a *muc.Client or a *chat.Client)
// with the attribute client=client, and registers a hook on src for the
// delivery-time histogram.
func RegisterTrackers(m metric.Meter, src metrics.TrackerSource, client string, opts ...Option) (*Registration, error) {
	o := newOptions(opts)
	name := o.prefix + ".trackers"
	vs, all, err := instruments(m, name, metrics.TrackerValues())
	if err != nil {
		return nil, err
	}
	active, err := m.Int64ObservableGauge(name+".active", metric.WithUnit("{message}"),
		metric.WithDescription("Trackers whose tracking goes on, by state."))
	if err != nil {
		return nil, fmt.Errorf("otelmetrics: %s.active: %w", name, err)
	}
	ended, err := m.Int64ObservableCounter(name+".ended", metric.WithUnit("{message}"),
		metric.WithDescription("Trackers whose tracking ended, by outcome."))
	if err != nil {
		return nil, fmt.Errorf("otelmetrics: %s.ended: %w", name, err)
	}
	delivery, err := m.Float64Histogram(name+".delivery", metric.WithUnit("s"),
		metric.WithDescription("Time from the send call to DELIVERED_TO_RECIPIENT."),
		metric.WithExplicitBucketBoundaries(o.buckets...))
	if err != nil {
		return nil, fmt.Errorf("otelmetrics: %s.delivery: %w", name, err)
	}
	base := append([]attribute.KeyValue{attribute.String("client", client)}, o.attrs...)
	attrs := metric.WithAttributeSet(attribute.NewSet(base...))
	byState := func(s tracking.MessageState) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(append(base[:len(base):len(base)], attribute.String("state", s.String()))...))
	}
	var activeAttrs, endedAttrs [len(tracking.StateCounts{})]metric.MeasurementOption
	for _, s := range metrics.ActiveStates() {
		activeAttrs[s] = byState(s)
	}
	for _, s := range metrics.OutcomeStates() {
		endedAttrs[s] = byState(s)
	}
	return register(m, name, func(_ context.Context, obs metric.Observer) error {
		st := src.Stats()
		observe(obs, st, vs, attrs)
		for _, s := range metrics.ActiveStates() {
			obs.ObserveInt64(active, int64(st.Active[s]), activeAttrs[s])
		}
		for _, s := range metrics.OutcomeStates() {
			obs.ObserveInt64(ended, int64(st.Ended[s]), endedAttrs[s])
		}
		return nil
	}, append(all, active, ended), func() func() { return src.AddHook(histogramHook{delivery, attrs}) })
}
