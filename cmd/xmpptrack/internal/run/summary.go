package run

import (
	"time"

	"github.com/xmpptrack/xmpptrack/internal/report"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Summary sums up a run. Its JSON form (the embedded report.Summary) is the
// summary line of "xmpptrack muc -json" and "xmpptrack chat -json"; its
// latencies are from the send call to the goal (DELIVERED_TO_RECIPIENT
// unless the run says otherwise), over the messages that reached it.
type Summary struct {
	report.Summary
	// Elapsed is the time from the first send to the last outcome.
	Elapsed time.Duration `json:"-"`
	// Goal is the run's goal state (Config.Goal), and Reached the number
	// of messages whose outcome it is.
	Goal    tracking.MessageState `json:"-"`
	Reached int                   `json:"-"`
}

// Delivered returns the number of messages that reached
// DELIVERED_TO_RECIPIENT.
func (s Summary) Delivered() int { return s.States[report.Delivered] }

// streamReport is the summary's view of st.
func streamReport(st stream.Stats) *report.Stream {
	ms := func(d time.Duration) float64 { return report.Round(report.Millis(d), 3) }
	return &report.Stream{
		Connections:     st.Connections,
		Resumptions:     st.Resumptions,
		ResumeRefused:   st.ResumeRefused,
		NewSessions:     st.NewSessions,
		Disconnects:     st.Disconnects,
		DeadLinks:       st.DeadLinks,
		Sent:            st.Sent,
		Acked:           st.Acked,
		Received:        st.Received,
		Unacked:         st.Unacked,
		OldestUnackedMs: ms(st.OldestUnacked),
		AckRTTMs:        ms(st.AckRTT),
		AckRTTP50Ms:     ms(st.AckRTTP50),
		AckRTTP99Ms:     ms(st.AckRTTP99),
		AckRTTSamples:   st.AckRTTSamples,
		OutboxCommits:   st.OutboxCommits,

		BytesWritten:     st.BytesWritten,
		RequestsSent:     st.RequestsSent,
		AnswersSent:      st.AnswersSent,
		RequestsReceived: st.RequestsReceived,
		AnswersRead:      st.AnswersRead,
	}
}

// summarize computes a Summary; latencies are those of the messages that
// reached the goal, cpu the process's CPU time over the run.
func summarize(sent int, states map[string]int, latencies []time.Duration, first, last time.Time, cpu time.Duration) Summary {
	var span time.Duration
	if !first.IsZero() && last.After(first) {
		span = last.Sub(first)
	}
	return Summary{Summary: report.Summarize(sent, states, latencies, span, cpu), Elapsed: span}
}
