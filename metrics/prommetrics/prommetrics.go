// Package prommetrics exports the metrics of an xmpptrack stream and of its
// room and chat clients to Prometheus (github.com/prometheus/client_golang).
//
// NewStream and NewTrackers return collectors; register them with a
// registry of your own. Nothing is registered globally, and the core
// packages do not import this one.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(
//		prommetrics.NewStream(s),
//		prommetrics.NewTrackers(rooms, "muc"),
//	)
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Counters and gauges are read from the source's Stats when Prometheus
// scrapes, so they always agree with Stats; the histograms
// (xmpptrack_stream_ack_rtt_seconds, xmpptrack_trackers_delivery_seconds)
// are filled by a hook from the moment the collector is made. Quantiles such
// as the p99 ack round trip come from the histogram:
//
//	histogram_quantile(0.99, rate(xmpptrack_stream_ack_rtt_seconds_bucket[5m]))
//
// The metrics, with the default namespace "xmpptrack":
//
//	xmpptrack_stream_connections_total           connections, the first included
//	xmpptrack_stream_resumptions_total           sessions resumed (XEP-0198)
//	xmpptrack_stream_resumptions_refused_total   resumptions refused with <failed/>
//	xmpptrack_stream_new_sessions_total          sessions started anew
//	xmpptrack_stream_disconnects_total           connections lost
//	xmpptrack_stream_dead_links_total            links taken for dead (unanswered ack request)
//	xmpptrack_stream_stanzas_{sent,acked,received}_total
//	xmpptrack_stream_{unacked,queued}_stanzas    queue depths now
//	xmpptrack_stream_oldest_unacked_seconds      age of the oldest unacknowledged stanza
//	xmpptrack_stream_ack_rtt_smoothed_seconds    smoothed ack round trip
//	xmpptrack_stream_dead_link_timeout_seconds   the dead-link timeout now
//	xmpptrack_stream_ack_rtt_seconds             histogram of ack round trips
//	xmpptrack_trackers_started_total{client}     trackers handed out
//	xmpptrack_trackers_active{client,state}      trackers under way, by state
//	xmpptrack_trackers_ended_total{client,state} trackers ended, by outcome
//	xmpptrack_trackers_delivered_total{client}   messages delivered to the recipient
//	xmpptrack_trackers_delivery_seconds{client}  histogram of the time to DELIVERED_TO_RECIPIENT
//
// # Concurrency
//
// Collect may run concurrently with everything else: it reads Stats, which
// is a locked copy. The histograms are safe for concurrent use; the hooks
// that fill them run on the stream's or the tracker's goroutines and only
// observe a number.
package prommetrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xmpptrack/xmpptrack/metrics"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Option configures a collector.
type Option func(*options)

type options struct {
	namespace string
	labels    prometheus.Labels
	buckets   []float64
}

func newOptions(opts []Option) options {
	o := options{namespace: "xmpptrack", buckets: metrics.Buckets()}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithNamespace sets the metrics' namespace, the first part of their names.
// Default "xmpptrack".
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithConstLabels adds labels to every metric of the collector, for
// example to tell several streams of one process apart.
func WithConstLabels(l prometheus.Labels) Option { return func(o *options) { o.labels = l } }

// WithBuckets sets the histogram bucket bounds, in seconds. Default
// metrics.Buckets.
func WithBuckets(b []float64) Option { return func(o *options) { o.buckets = b } }

// value is a metrics.Value with its Prometheus description.
type value[S any] struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	read func(S) float64
}

// describe makes the descriptions of vs, named namespace_subsystem_name,
// with a unit suffix and _total for counters.
func describe[S any](o options, subsystem string, labels prometheus.Labels, vs []metrics.Value[S]) []value[S] {
	out := make([]value[S], len(vs))
	for i, v := range vs {
		name := v.Name
		if v.Unit == "s" {
			name += "_seconds"
		}
		typ := prometheus.GaugeValue
		if v.Kind == metrics.Counter {
			name += "_total"
			typ = prometheus.CounterValue
		}
		out[i] = value[S]{
			desc: prometheus.NewDesc(prometheus.BuildFQName(o.namespace, subsystem, name), v.Help, nil, labels),
			typ:  typ,
			read: v.Read,
		}
	}
	return out
}

func collect[S any](ch chan<- prometheus.Metric, st S, vs []value[S]) {
	for _, v := range vs {
		ch <- prometheus.MustNewConstMetric(v.desc, v.typ, v.read(st))
	}
}

// Stream collects the metrics of a stream. It is a prometheus.Collector.
type Stream struct {
	src    metrics.StreamSource
	values []value[stream.Stats]
	rtt    prometheus.Histogram
	remove func()
}

// NewStream returns a collector of src's metrics (src is usually a
// *stream.Stream) and registers a hook on src for the ack round-trip
// histogram. Register the collector with your registry; Close removes the
// hook.
func NewStream(src metrics.StreamSource, opts ...Option) *Stream {
	o := newOptions(opts)
	c := &Stream{
		src:    src,
		values: describe(o, "stream", o.labels, metrics.StreamValues()),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace:   o.namespace,
			Subsystem:   "stream",
			Name:        "ack_rtt_seconds",
			Help:        "Ack round trips: from an <r/> to the <a/> that answered it.",
			ConstLabels: o.labels,
			Buckets:     o.buckets,
		}),
	}
	c.remove = src.AddHook(histogramHook{c.rtt})
	return c
}

// histogramHook observes the durations a hook learns of in a histogram:
// the ack round trips as a stream.Hook, the times to delivery as a
// tracking.Hook.
type histogramHook struct{ h prometheus.Histogram }

// AckRTT implements stream.Hook.
func (h histogramHook) AckRTT(d time.Duration) { h.h.Observe(d.Seconds()) }

// Event implements stream.Hook.
func (histogramHook) Event(stream.Event) {}

// Delivered implements tracking.Hook.
func (h histogramHook) Delivered(d time.Duration) { h.h.Observe(d.Seconds()) }

// Ended implements tracking.Hook.
func (histogramHook) Ended(tracking.MessageState, time.Duration) {}

// Describe implements prometheus.Collector.
func (c *Stream) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.values {
		ch <- v.desc
	}
	c.rtt.Describe(ch)
}

// Collect implements prometheus.Collector: it reads the source's Stats once.
func (c *Stream) Collect(ch chan<- prometheus.Metric) {
	collect(ch, c.src.Stats(), c.values)
	c.rtt.Collect(ch)
}

// Close removes the collector's hook from its source; the collector goes on
// reporting Stats. It returns nil, and implements io.Closer.
func (c *Stream) Close() error {
	c.remove()
	return nil
}

// Trackers collects the metrics of a room or chat client. It is a
// prometheus.Collector.
type Trackers struct {
	src           metrics.TrackerSource
	values        []value[tracking.Stats]
	active, ended *prometheus.Desc
	delivery      prometheus.Histogram
	remove        func()
}

// NewTrackers returns a collector of src's metrics (src is usually a
// *muc.Client or a *chat.Client), with the label client=name on every
// metric, and registers a hook on src for the delivery-time histogram. The
// collectors of several clients can share a registry when their names
// differ. Close removes the hook.
func NewTrackers(src metrics.TrackerSource, name string, opts ...Option) *Trackers {
	o := newOptions(opts)
	labels := prometheus.Labels{"client": name}
	for k, v := range o.labels {
		labels[k] = v
	}
	fq := func(n string) string { return prometheus.BuildFQName(o.namespace, "trackers", n) }
	c := &Trackers{
		src:    src,
		values: describe(o, "trackers", labels, metrics.TrackerValues()),
		active: prometheus.NewDesc(fq("active"), "Trackers whose tracking goes on, by state.", []string{"state"}, labels),
		ended:  prometheus.NewDesc(fq("ended_total"), "Trackers whose tracking ended, by outcome.", []string{"state"}, labels),
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        fq("delivery_seconds"),
			Help:        "Time from the send call to DELIVERED_TO_RECIPIENT.",
			ConstLabels: labels,
			Buckets:     o.buckets,
		}),
	}
	c.remove = src.AddHook(histogramHook{c.delivery})
	return c
}

// Describe implements prometheus.Collector.
func (c *Trackers) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.values {
		ch <- v.desc
	}
	ch <- c.active
	ch <- c.ended
	c.delivery.Describe(ch)
}

// Collect implements prometheus.Collector: it reads the source's Stats once.
func (c *Trackers) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	collect(ch, st, c.values)
	for _, s := range metrics.ActiveStates() {
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(st.Active[s]), s.String())
	}
	for _, s := range metrics.OutcomeStates() {
		ch <- prometheus.MustNewConstMetric(c.ended, prometheus.CounterValue, float64(st.Ended[s]), s.String())
	}
	c.delivery.Collect(ch)
}

// Close removes the collector's hook from its source; the collector goes on
// reporting Stats. It returns nil, and implements io.Closer.
func (c *Trackers) Close() error {
	c.remove()
	return nil
}
