// Package metrics says what the metrics adapters read, for the packages
// that export an xmpptrack stream and its room and chat clients to a
// metrics system: metrics/prommetrics for Prometheus and metrics/otelmetrics
// for OpenTelemetry. It has no dependencies beyond xmpptrack's own, and the
// core packages import none of these.
//
// # What is measured
//
// A stream (stream.Stats, stream.Hook) gives connections, resumptions
// (succeeded and refused), new sessions, disconnects and dead links (links
// taken for dead because an ack request went unanswered), stanzas sent,
// acknowledged and received, the depth of the send queue and of the
// unacknowledged queue, the age of the oldest unacknowledged stanza, the
// smoothed ack round trip and the dead-link timeout; the hook adds every ack
// round trip, for a histogram.
//
// A room or chat client (tracking.Stats, tracking.Hook) gives the trackers
// it handed out, those under way by state, those ended by outcome, and the
// deliveries to the recipient; the hook adds every time to
// DELIVERED_TO_RECIPIENT, for a histogram.
//
// Counters and gauges are read from the Stats snapshot when the metrics
// system collects, so that they agree with Stats (and with what a program
// prints of it) at any moment; histograms are filled by the hooks as things
// happen. Nothing is registered globally: the user registers the adapters
// with a registry or meter provider of their own, and unregisters them
// (which removes their hooks) when the stream or client goes away.
package metrics

import (
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// StreamSource is what the adapters read of a stream: *stream.Stream is one.
// A test or an example may script its own.
type StreamSource interface {
	Stats() stream.Stats
	AddHook(h stream.Hook) (remove func())
}

// TrackerSource is what the adapters read of a room or chat client:
// *muc.Client and *chat.Client are ones. A *tracking.Recorder is one too.
type TrackerSource interface {
	Stats() tracking.Stats
	AddHook(h tracking.Hook) (remove func())
}

// ActiveStates lists the states a tracker can be in while its tracking goes
// on: the label values of the adapters' trackers-by-state metric.
func ActiveStates() []tracking.MessageState {
	return []tracking.MessageState{tracking.InTransit, tracking.DeliveredToServer, tracking.DeliveredToRecipient}
}

// OutcomeStates lists the states a tracker's tracking can end in: the label
// values of the adapters' outcome metric.
func OutcomeStates() []tracking.MessageState {
	return []tracking.MessageState{tracking.DeliveredToRecipient, tracking.SeenByRecipient,
		tracking.Aborted, tracking.TimedOut, tracking.Closed, tracking.Error}
}

// Buckets are the default histogram bucket bounds, in seconds, of the ack
// round trip and of the time to DELIVERED_TO_RECIPIENT: from half a
// millisecond (a server on loopback) to a minute (a message held through a
// reconnection).
func Buckets() []float64 {
	return []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
}

// Kind says how a Value behaves.
type Kind uint8

// Kinds of Value.
const (
	// Counter: the value only grows, over the life of the stream or client.
	Counter Kind = iota
	// Gauge: the value goes up and down.
	Gauge
)

// A Value is one number read from a Stats snapshot of type S. The adapters
// name it after Name and Unit in their system's conventions.
type Value[S any] struct {
	// Name is the value's name in snake case, without a namespace, a unit
	// or a _total suffix, e.g. "resumptions_refused".
	Name string
	// Help says what is counted or measured.
	Help string
	Kind Kind
	// Unit is "s" for a duration in seconds, otherwise a UCUM annotation
	// in braces such as "{stanza}".
	Unit string
	// Read reads the value from a snapshot.
	Read func(S) float64
}

// StreamValues returns the counters and gauges of a stream, read from
// stream.Stats.
func StreamValues() []Value[stream.Stats] {
	count := func(name, unit, help string, f func(stream.Stats) float64) Value[stream.Stats] {
		return Value[stream.Stats]{Name: name, Help: help, Kind: Counter, Unit: unit, Read: f}
	}
	gauge := func(name, unit, help string, f func(stream.Stats) float64) Value[stream.Stats] {
		return Value[stream.Stats]{Name: name, Help: help, Kind: Gauge, Unit: unit, Read: f}
	}
	return []Value[stream.Stats]{
		count("connections", "{connection}", "Successful connections, the first included.",
			func(s stream.Stats) float64 { return float64(s.Connections) }),
		count("resumptions", "{resumption}", "Sessions resumed after a lost connection (XEP-0198).",
			func(s stream.Stats) float64 { return float64(s.Resumptions) }),
		count("resumptions_refused", "{resumption}", "Resumptions the server refused with <failed/>.",
			func(s stream.Stats) float64 { return float64(s.ResumeRefused) }),
		count("new_sessions", "{session}", "Sessions started after a resumption failed or was not possible.",
			func(s stream.Stats) float64 { return float64(s.NewSessions) }),
		count("disconnects", "{connection}", "Connections lost.",
			func(s stream.Stats) float64 { return float64(s.Disconnects) }),
		count("dead_links", "{connection}", "Connections taken for dead: an ack request went unanswered.",
			func(s stream.Stats) float64 { return float64(s.DeadLinks) }),
		count("stanzas_sent", "{stanza}", "Stanzas written.",
			func(s stream.Stats) float64 { return float64(s.Sent) }),
		count("stanzas_acked", "{stanza}", "Stanzas the server acknowledged.",
			func(s stream.Stats) float64 { return float64(s.Acked) }),
		count("stanzas_received", "{stanza}", "Stanzas received.",
			func(s stream.Stats) float64 { return float64(s.Received) }),
		gauge("unacked_stanzas", "{stanza}", "Stanzas written and not yet acknowledged.",
			func(s stream.Stats) float64 { return float64(s.Unacked) }),
		gauge("queued_stanzas", "{stanza}", "Stanzas waiting to be written.",
			func(s stream.Stats) float64 { return float64(s.Queued) }),
		gauge("oldest_unacked", "s", "Age of the oldest stanza written and not yet acknowledged.",
			func(s stream.Stats) float64 { return s.OldestUnacked.Seconds() }),
		gauge("ack_rtt_smoothed", "s", "Smoothed ack round trip of the live connection (RFC 6298); 0 while disconnected.",
			func(s stream.Stats) float64 { return s.AckRTT.Seconds() }),
		gauge("dead_link_timeout", "s", "Silence after an unanswered ack request that makes the link dead; 0 while disconnected.",
			func(s stream.Stats) float64 { return s.DeadAfter.Seconds() }),
	}
}

// TrackerValues returns the unlabelled counters of a room or chat client,
// read from tracking.Stats. The trackers by state (Stats.Active, over
// ActiveStates) and by outcome (Stats.Ended, over OutcomeStates) carry a
// state label, which each adapter adds in its own way.
func TrackerValues() []Value[tracking.Stats] {
	return []Value[tracking.Stats]{
		{Name: "started", Help: "Trackers handed out.", Kind: Counter, Unit: "{message}",
			Read: func(s tracking.Stats) float64 { return float64(s.Started) }},
		{Name: "delivered", Help: "Messages that reached the recipient (DELIVERED_TO_RECIPIENT).", Kind: Counter, Unit: "{message}",
			Read: func(s tracking.Stats) float64 { return float64(s.Delivered) }},
	}
}
