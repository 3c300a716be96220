// Package report is the JSON output of "xmpptrack muc -json" and "xmpptrack
// chat -json", which the benchmark's raw client writes too: one line per
// message at its outcome, then one summary line; and the arithmetic of that
// summary.
package report

import (
	"encoding/json"
	"io"
	"math"
	"slices"
	"time"

	"github.com/xmpptrack/xmpptrack/internal/quantile"
)

// Outcome is the line of one message.
type Outcome struct {
	Index     int     `json:"index"`
	ID        string  `json:"id"`
	State     string  `json:"state"`
	LatencyMs float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"`
	Earlier   bool    `json:"earlier,omitempty"`
}

// Summary is the body of the summary line.
type Summary struct {
	Sent            int            `json:"sent"`
	States          map[string]int `json:"states"`
	MsgsPerS        float64        `json:"msgs_per_s"`
	P50Ms           float64        `json:"p50_ms"`
	P99Ms           float64        `json:"p99_ms"`
	CPUMicrosPerMsg float64        `json:"cpu_us_per_msg"`
	Resumptions     int            `json:"resumptions"`
	// Stream is the stream's statistics at the end of the run; only
	// xmpptrack's own client reports them.
	Stream *Stream `json:"stream,omitempty"`
}

// Stream is the summary's view of a stream's statistics (stream.Stats):
// counters over the stream's life, the queue and round trip at the end.
type Stream struct {
	Connections     int     `json:"connections"`
	Resumptions     int     `json:"resumptions"`
	ResumeRefused   int     `json:"resumptions_refused"`
	NewSessions     int     `json:"new_sessions"`
	Disconnects     int     `json:"disconnects"`
	DeadLinks       int     `json:"dead_links"`
	Sent            uint64  `json:"stanzas_sent"`
	Acked           uint64  `json:"stanzas_acked"`
	Received        uint64  `json:"stanzas_received"`
	Unacked         int     `json:"unacked"`
	OldestUnackedMs float64 `json:"oldest_unacked_ms"`
	AckRTTMs        float64 `json:"ack_rtt_ms"`
	AckRTTP50Ms     float64 `json:"ack_rtt_p50_ms"`
	AckRTTP99Ms     float64 `json:"ack_rtt_p99_ms"`
	AckRTTSamples   uint64  `json:"ack_rtt_samples"`
	OutboxCommits   uint64  `json:"outbox_commits,omitempty"`
	// What crossed the wire after negotiation: bytes written, and stream
	// management requests and answers written and read.
	BytesWritten     uint64 `json:"bytes_written"`
	RequestsSent     uint64 `json:"requests_sent"`
	AnswersSent      uint64 `json:"answers_sent"`
	RequestsReceived uint64 `json:"requests_received"`
	AnswersRead      uint64 `json:"answers_read"`
}

// Line is any line of the output: an outcome or, when Summary is set, the
// summary.
type Line struct {
	Outcome
	Summary *Summary `json:"summary,omitempty"`
}

// Delivered is the state of a message the room reflected.
const Delivered = "DELIVERED_TO_RECIPIENT"

// WriteOutcome writes the line of one message.
func WriteOutcome(w io.Writer, o Outcome) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteSummary writes the summary line.
func WriteSummary(w io.Writer, s Summary) error {
	b, err := json.Marshal(struct {
		Summary Summary `json:"summary"`
	}{s})
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Summarize computes a summary: sent messages, their outcomes by state, the
// latencies of the delivered ones, the span from the first send to the last
// outcome, and the CPU time used over it.
func Summarize(sent int, states map[string]int, latencies []time.Duration, span, cpu time.Duration) Summary {
	s := Summary{Sent: sent, States: states}
	if span > 0 {
		s.MsgsPerS = Round(float64(sent)/span.Seconds(), 1)
	}
	if sent > 0 {
		s.CPUMicrosPerMsg = Round(float64(cpu.Microseconds())/float64(sent), 2)
	}
	slices.Sort(latencies)
	s.P50Ms = Round(Millis(Percentile(latencies, 50)), 3)
	s.P99Ms = Round(Millis(Percentile(latencies, 99)), 3)
	return s
}

// Percentile returns the p-th percentile (0 to 100) of sorted by the
// nearest-rank method, or 0 when sorted is empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	return quantile.Percentile(sorted, p)
}

// Millis returns d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Round rounds f to digits decimal places.
func Round(f float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(f*p) / p
}
