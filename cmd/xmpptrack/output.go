package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// redraw is how often the live status line is drawn again.
const redraw = 100 * time.Millisecond

// flushEvery bounds how long a line waits in the output buffer: lines are
// written in batches rather than one write each, which at thousands of
// outcomes a second costs more than everything else the command does.
const flushEvery = 20 * time.Millisecond

// printer writes a run's outcomes and summary in one of three forms: JSON
// lines, plain lines, or a live status line on a terminal.
type printer struct {
	json bool
	live bool

	mu       sync.Mutex // guards w and the fields below
	w        *bufio.Writer
	lineLen  int // length of the status line on screen, 0 if none
	lastLine string
	buf      []byte // scratch space for a JSON line
}

func newPrinter(w io.Writer, asJSON, terminal bool) *printer {
	return &printer{w: bufio.NewWriterSize(w, 32<<10), json: asJSON, live: terminal && !asJSON}
}

// flush writes out what is buffered.
func (p *printer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.w.Flush()
}

// outcomeLine is the JSON form of an outcome.
type outcomeLine struct {
	Index     int     `json:"index"`
	ID        string  `json:"id"`
	State     string  `json:"state"`
	LatencyMs float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"`
	Earlier   bool    `json:"earlier,omitempty"`
}

type summaryLine struct {
	Summary run.Summary `json:"summary"`
}

// run runs r, printing as it goes, then prints the summary.
func (p *printer) run(ctx context.Context, r *run.Runner) (run.Summary, error) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		every := flushEvery
		if p.live {
			every = redraw
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if p.live {
					p.status(r.Progress())
				}
				p.flush()
			}
		}
	})
	sum, err := r.Run(ctx, p.outcome)
	close(stop)
	wg.Wait()
	if p.live {
		p.status(r.Progress())
		p.mu.Lock()
		fmt.Fprintln(p.w)
		p.lineLen = 0
		p.mu.Unlock()
	}
	p.summary(sum)
	p.flush()
	return sum, err
}

// outcome prints one message's outcome. On a terminal only failures get a
// line of their own; the status line counts the rest.
func (p *printer) outcome(o run.Outcome) {
	switch {
	case p.json:
		p.mu.Lock()
		p.buf = appendOutcomeJSON(p.buf[:0], o)
		p.w.Write(p.buf)
		p.mu.Unlock()
	case p.live:
		if !o.Reached {
			p.above(outcomeText(o))
		}
	default:
		p.mu.Lock()
		fmt.Fprintln(p.w, outcomeText(o))
		p.mu.Unlock()
	}
}

// appendOutcomeJSON appends the JSON line of an outcome, the same as
// encoding/json writes for outcomeLine, without its reflection.
func appendOutcomeJSON(b []byte, o run.Outcome) []byte {
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, int64(o.Index), 10)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, o.ID)
	b = append(b, `,"state":"`...)
	b = append(b, o.State.String()...)
	b = append(b, `","latency_ms":`...)
	b = strconv.AppendFloat(b, msec(o.Latency), 'f', -1, 64)
	if o.Err != nil {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, o.Err.Error())
	}
	if o.Earlier {
		b = append(b, `,"earlier":true`...)
	}
	return append(b, "}\n"...)
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// outcomeText is the plain form of an outcome.
func outcomeText(o run.Outcome) string {
	s := fmt.Sprintf("#%-5d %-22s %8.2f ms", o.Index, o.State, msec(o.Latency))
	if o.ID != "" {
		s += "  id=" + o.ID
	}
	if o.Err != nil {
		s += "  " + oneLine(o.Err.Error())
	}
	return s
}

// status draws the live status line.
func (p *printer) status(pr run.Progress) {
	var b strings.Builder
	fmt.Fprintf(&b, "sent %d  in flight %d  ", pr.Sent, pr.InFlight)
	for _, s := range outcomeStates {
		if n := pr.States[s]; n > 0 || s == pr.Goal {
			fmt.Fprintf(&b, "%s %d  ", s, n)
		}
	}
	fmt.Fprintf(&b, "%.0f msg/s  resumptions %d", pr.Rate, pr.Resumptions)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw(b.String())
}

// draw replaces the status line with line. p.mu must be held.
func (p *printer) draw(line string) {
	pad := ""
	if n := p.lineLen - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
	p.lineLen = len(line)
	p.lastLine = line
}

// above prints a line above the live status line.
func (p *printer) above(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lineLen > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.lineLen))
	}
	fmt.Fprintln(p.w, line)
	if p.lineLen > 0 {
		p.lineLen = 0
		p.draw(p.lastLine)
	}
}

// summary prints the summary: a JSON line, or a table.
func (p *printer) summary(s run.Summary) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		b, _ := json.Marshal(summaryLine{s})
		p.w.Write(append(b, '\n'))
		return
	}
	fmt.Fprint(p.w, summaryTable(s))
}

// summaryTable formats a summary for people.
func summaryTable(s run.Summary) string {
	var b strings.Builder
	row := func(k, format string, args ...any) {
		fmt.Fprintf(&b, "  %-24s %s\n", k, fmt.Sprintf(format, args...))
	}
	b.WriteString("summary\n")
	row("messages sent", "%d", s.Sent)
	for _, st := range outcomeStates {
		if n := s.States[st.String()]; n > 0 {
			row(st.String(), "%d", n)
		}
	}
	row("throughput", "%.1f msg/s over %v", s.MsgsPerS, s.Elapsed.Round(time.Millisecond))
	row("latency p50 / p99", "%.2f ms / %.2f ms (send to %s)", s.P50Ms, s.P99Ms, s.Goal)
	row("client CPU", "%.1f µs per message", s.CPUMicrosPerMsg)
	row("stream resumptions", "%d", s.Resumptions)
	if st := s.Stream; st != nil {
		row("stream connections", "%d (%d lost, %d dead links, %d resumptions refused, %d new sessions)",
			st.Connections, st.Disconnects, st.DeadLinks, st.ResumeRefused, st.NewSessions)
		row("ack round trip p50 / p99", "%.2f ms / %.2f ms (%d samples)", st.AckRTTP50Ms, st.AckRTTP99Ms, st.AckRTTSamples)
	}
	return b.String()
}

// outcomeStates are the states a message's outcome can be, in the order
// they are shown.
var outcomeStates = []tracking.MessageState{
	tracking.DeliveredToRecipient, tracking.SeenByRecipient, tracking.Error,
	tracking.TimedOut, tracking.Closed, tracking.Aborted,
}

// stateList lists the counts of states other than except, e.g.
// "2 TIMED_OUT, 1 ERROR".
func stateList(states map[string]int, except string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(states)) {
		if k != except && states[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", states[k], k))
		}
	}
	if len(parts) == 0 {
		return "none sent"
	}
	return strings.Join(parts, ", ")
}

func msec(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}
