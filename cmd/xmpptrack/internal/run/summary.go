package run

import (
	"math"
	"slices"
	"time"

	"github.com/xmpptrack/xmpptrack/tracking"
)

// Summary sums up a run. Its JSON form is the summary line of
// "xmpptrack muc -json" and "xmpptrack chat -json".
type Summary struct {
	// Sent is the number of messages handed to the target.
	Sent int `json:"sent"`
	// States counts the outcomes by state name.
	States map[string]int `json:"states"`
	// MsgsPerS is Sent divided by the time from the first send to the last
	// outcome.
	MsgsPerS float64 `json:"msgs_per_s"`
	// P50Ms and P99Ms are percentiles of the latency from the send call to
	// the goal (DELIVERED_TO_RECIPIENT unless the run says otherwise), in
	// milliseconds, over the messages that reached it.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// CPUMicrosPerMsg is this process's user and system CPU time over the
	// same span, divided by Sent, in microseconds.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// Resumptions is how many times the stream resumed its session.
	Resumptions int `json:"resumptions"`
	// Elapsed is the time from the first send to the last outcome.
	Elapsed time.Duration `json:"-"`
	// Goal is the run's goal state (Config.Goal), and Reached the number
	// of messages whose outcome it is.
	Goal    tracking.MessageState `json:"-"`
	Reached int                   `json:"-"`
}

// Delivered returns the number of messages that reached
// DELIVERED_TO_RECIPIENT.
func (s Summary) Delivered() int { return s.States["DELIVERED_TO_RECIPIENT"] }

// summarize computes a Summary; latencies are those of the messages that
// reached the goal, cpu the process's CPU time over the run.
func summarize(sent int, states map[string]int, latencies []time.Duration, first, last time.Time, cpu time.Duration) Summary {
	s := Summary{Sent: sent, States: states}
	if !first.IsZero() && last.After(first) {
		s.Elapsed = last.Sub(first)
		s.MsgsPerS = round(float64(sent)/s.Elapsed.Seconds(), 1)
	}
	if sent > 0 {
		s.CPUMicrosPerMsg = round(float64(cpu.Microseconds())/float64(sent), 2)
	}
	slices.Sort(latencies)
	s.P50Ms = round(ms(Percentile(latencies, 50)), 3)
	s.P99Ms = round(ms(Percentile(latencies, 99)), 3)
	return s
}

// Percentile returns the p-th percentile (0 to 100) of sorted, by the
// nearest-rank method, or 0 when sorted is empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round(f float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(f*p) / p
}
