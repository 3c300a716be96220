// Command inbound is the benchmark of a bot in a busy room: it starts the
// project's Prosody (stream management and the MUC archive on, as in the
// tests), and in each repetition puts two listeners in a fresh room, side
// by side, each its own process:
//
//   - xmpptrack: bench/inbound/bot, a stream.Stream with a muc.Client that
//     counts the room's messages with a stream.HandleElement handler;
//   - raw: the benchmark's raw client (bench/raw -receive), which splits
//     the bytes into elements and looks for the start tag's type and a body
//     with bytes.Contains: the least a client can do.
//
// Once both have joined, other occupants (-senders raw clients, each its own
// process) send -n messages between them as fast as Prosody takes them
// (-window 0: all at once), and both listeners count them until every one
// has arrived. The listeners only receive: they send nothing but their join
// and their answers to the server's ack requests. Which listener joins first
// alternates from one repetition to the next.
//
// The table shows the medians over the repetitions of each listener's CPU
// time per inbound message, measured by the listener itself from its join
// to the last message, and of its whole process (getrusage, login
// included), with the ratio xmpptrack/raw in each repetition, whose median
// is compared with the target of 1.3x.
//
// Usage:
//
//	go run ./bench/inbound [-n 2000] [-reps 7] [-senders 2] [-window 0] [-o results.json] [-profile DIR] [-bin DIR]
//
// With -profile, five more repetitions write CPU profiles of the bot to DIR.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xmpptrack/xmpptrack/bench/internal/benchkit"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "inbound: %v\n", err)
		os.Exit(1)
	}
}

// Listeners under test.
const (
	xmpptrack = "xmpptrack"
	raw       = "raw"
)

// target is the bound on xmpptrack's CPU per inbound message,
// against raw's.
const target = 1.3

const (
	password = "inbound-secret"
	// readyTimeout bounds a listener's login and join.
	readyTimeout = 30 * time.Second
	// runTimeout bounds one repetition.
	runTimeout = 3 * time.Minute
	// profileReps is how many repetitions -profile adds.
	profileReps = 5
)

// Sample is one listener in one repetition.
type Sample struct {
	Client string `json:"client"`
	Rep    int    `json:"rep"`
	// Received is what the listener reported.
	Received benchkit.Received `json:"received"`
	// ProcessCPUMicrosPerMsg is the listener's whole CPU time (getrusage
	// of the child, login included) divided by the messages.
	ProcessCPUMicrosPerMsg float64 `json:"process_cpu_us_per_msg"`
	MaxRSSKiB              int64   `json:"max_rss_kib"`
}

// Rep is one repetition: both listeners, and what the senders and the
// server did meanwhile.
type Rep struct {
	Rep     int      `json:"rep"`
	First   string   `json:"first"`
	Samples []Sample `json:"samples"`
	// SendMsgsPerS is the messages over the time from the senders' start to
	// the end of the last sender.
	SendMsgsPerS float64 `json:"send_msgs_per_s"`
	// ServerCPUMicrosPerMsg is Prosody's CPU time over the repetition
	// divided by the messages.
	ServerCPUMicrosPerMsg float64 `json:"server_cpu_us_per_msg"`
	// RunRatio and ProcessRatio are xmpptrack's CPU per message over raw's.
	RunRatio     float64 `json:"run_cpu_ratio"`
	ProcessRatio float64 `json:"process_cpu_ratio"`
}

// Row is the median of one listener's samples.
type Row struct {
	Client     string  `json:"client"`
	Samples    int     `json:"samples"`
	MsgsPerS   float64 `json:"msgs_per_s"`
	RunCPU     float64 `json:"run_cpu_us_per_msg"`
	ProcessCPU float64 `json:"process_cpu_us_per_msg"`
	StanzasMsg float64 `json:"stanzas_per_msg"`
	AllocBytes float64 `json:"alloc_bytes_per_msg"`
	Allocs     float64 `json:"allocs_per_msg"`
	MaxRSSMiB  float64 `json:"max_rss_mib"`
}

// Results is the JSON output.
type Results struct {
	Date    time.Time `json:"date"`
	Machine string    `json:"machine"`
	N       int       `json:"n"`
	Senders int       `json:"senders"`
	Window  int       `json:"window"`
	Rows    []Row     `json:"rows"`
	// RunRatio and ProcessRatio are the medians of the repetitions'
	// ratios; SendMsgsPerS and ServerCPU the medians of theirs.
	RunRatio     float64 `json:"run_cpu_ratio"`
	ProcessRatio float64 `json:"process_cpu_ratio"`
	SendMsgsPerS float64 `json:"send_msgs_per_s"`
	ServerCPU    float64 `json:"server_cpu_us_per_msg"`
	Reps         []Rep   `json:"reps"`
}

type options struct {
	n, reps, senders, window int
	outFile, profile, bin    string
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("inbound", flag.ContinueOnError)
	var o options
	fs.IntVar(&o.n, "n", 2000, "messages per repetition, from all senders together")
	fs.IntVar(&o.reps, "reps", 7, "repetitions")
	fs.IntVar(&o.senders, "senders", 2, "occupants that send")
	fs.IntVar(&o.window, "window", 0, "each sender's messages awaiting their reflection at once (0: all)")
	fs.StringVar(&o.outFile, "o", "", "also write the results as JSON to `FILE`")
	fs.StringVar(&o.profile, "profile", "", "write a CPU profile of the bot in one more repetition to `DIR`")
	fs.StringVar(&o.bin, "bin", "", "build the clients into `DIR` and keep them there (perf's reports need the executables)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.senders < 1 || o.n < o.senders || o.reps < 1 || o.window < 0 {
		return o, errors.New("want -senders ≥ 1, -n ≥ -senders, -reps ≥ 1, -window ≥ 0")
	}
	return o, nil
}

func run(args []string, stdout io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	dir := o.bin
	if dir == "" {
		tmp, err := os.MkdirTemp("", "xmpptrack-inbound-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bins := map[string]string{xmpptrack: filepath.Join(dir, "bot"), raw: filepath.Join(dir, "raw")}
	if err := benchkit.Build(bins[xmpptrack], "./bench/inbound/bot"); err != nil {
		return err
	}
	if err := benchkit.Build(bins[raw], "./bench/raw"); err != nil {
		return err
	}

	users := map[string]string{xmpptrack: password, raw: password}
	for i := range o.senders {
		users[sender(i)] = password
	}
	ctx, cancel := context.WithTimeout(context.Background(), prosody.StartTimeout)
	srv, err := prosody.Start(ctx, prosody.Options{Users: users})
	cancel()
	if err != nil {
		return err
	}
	defer srv.Stop()
	pid := benchkit.PIDFile(filepath.Join(filepath.Dir(srv.ConfigPath()), "prosody.pid"))
	b := bench{o: o, srv: srv, bins: bins, pid: pid}

	fmt.Fprintf(stdout, "inbound: %d messages per repetition from %d senders (window %s), %d repetitions, Prosody at %s\n",
		o.n, o.senders, windowName(o.window), o.reps, srv.Addr())
	res := Results{Date: time.Now().UTC(), Machine: benchkit.Machine(), N: o.n, Senders: o.senders, Window: o.window}
	for i := range o.reps {
		r, err := b.rep(i, nil)
		if err != nil {
			return fmt.Errorf("repetition %d: %w", i+1, err)
		}
		for _, s := range r.Samples {
			fmt.Fprintf(stdout, "  rep %d %-9s %7.0f msg/s in  cpu %6.2f µs/msg (run) %6.2f µs/msg (process)  rss %5.1f MiB\n",
				i+1, s.Client, s.Received.MsgsPerS, s.Received.CPUMicrosPerMsg, s.ProcessCPUMicrosPerMsg, float64(s.MaxRSSKiB)/1024)
		}
		fmt.Fprintf(stdout, "  rep %d senders %.0f msg/s, Prosody %.0f µs/msg; xmpptrack/raw %.2fx (run), %.2fx (process)\n",
			i+1, r.SendMsgsPerS, r.ServerCPUMicrosPerMsg, r.RunRatio, r.ProcessRatio)
		res.Reps = append(res.Reps, r)
	}
	var runRatios, procRatios, rates, server []float64
	for _, r := range res.Reps {
		runRatios, procRatios = append(runRatios, r.RunRatio), append(procRatios, r.ProcessRatio)
		rates, server = append(rates, r.SendMsgsPerS), append(server, r.ServerCPUMicrosPerMsg)
	}
	res.RunRatio = benchkit.Round(benchkit.Median(runRatios), 2)
	res.ProcessRatio = benchkit.Round(benchkit.Median(procRatios), 2)
	res.SendMsgsPerS = benchkit.Round(benchkit.Median(rates), 0)
	res.ServerCPU = benchkit.Round(benchkit.Median(server), 0)
	for _, client := range []string{xmpptrack, raw} {
		res.Rows = append(res.Rows, median(res.Reps, client))
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, table(res))

	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return err
		}
		// A repetition is too short for a profile sampled at 100 Hz: take
		// several, which pprof reads together.
		var paths []string
		for k := range profileReps {
			path, err := filepath.Abs(filepath.Join(o.profile, fmt.Sprintf("bot-%d.pprof", k+1)))
			if err != nil {
				return err
			}
			if _, err := b.rep(o.reps+k, []string{"-cpuprofile", path}); err != nil {
				return fmt.Errorf("profiled repetition: %w", err)
			}
			paths = append(paths, path)
		}
		fmt.Fprintf(stdout, "CPU profiles of the bot: go tool pprof -top %s\n", strings.Join(paths, " "))
	}
	if o.outFile != "" {
		js, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.outFile, append(js, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "results written to %s\n", o.outFile)
	}
	return nil
}

// sender is the localpart of the i-th sender.
func sender(i int) string { return "sender" + strconv.Itoa(i+1) }

func windowName(w int) string {
	if w == 0 {
		return "all"
	}
	return strconv.Itoa(w)
}

// bench is what every repetition needs.
type bench struct {
	o    options
	srv  *prosody.Server
	bins map[string]string
	pid  int
}

// rep runs one repetition; botArgs are extra arguments of the bot.
func (b *bench) rep(i int, botArgs []string) (Rep, error) {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	room := fmt.Sprintf("inbound-r%d@%s", i, b.srv.MUCDomain())
	common := func(account string, n int) []string {
		return []string{"-addr", b.srv.Addr(), "-ca", b.srv.CAFile(), "-jid", b.srv.JID(account).String(),
			"-password", password, "-room", room, "-n", strconv.Itoa(n)}
	}
	order := []string{xmpptrack, raw}
	if i%2 == 1 {
		order = []string{raw, xmpptrack}
	}
	r := Rep{Rep: i, First: order[0]}
	server0 := benchkit.ProcessCPU(b.pid)

	// The listeners, one after the other, each ready before the next.
	listeners := make([]*listener, 0, len(order))
	defer func() {
		for _, l := range listeners {
			l.kill()
		}
	}()
	for _, client := range order {
		args := common(client, b.o.n)
		if client == raw {
			args = append(args, "-receive")
		} else {
			args = append(args, botArgs...)
		}
		l, err := startListener(ctx, client, b.bins[client], args)
		if err != nil {
			return r, err
		}
		listeners = append(listeners, l)
		if err := l.ready(); err != nil {
			return r, err
		}
	}

	// The senders, all at once.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, b.o.senders)
	for k := range b.o.senders {
		n := b.o.n / b.o.senders
		if k < b.o.n%b.o.senders {
			n++
		}
		args := append(common(sender(k), n), "-window", strconv.Itoa(b.o.window))
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, b.bins[raw], args...)
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			if err := cmd.Run(); err != nil {
				errs[k] = fmt.Errorf("%s: %w: %s", sender(k), err, strings.TrimSpace(stderr.String()))
			}
		})
	}
	wg.Wait()
	sendSpan := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return r, err
	}
	r.SendMsgsPerS = benchkit.Round(float64(b.o.n)/sendSpan.Seconds(), 0)

	for _, l := range listeners {
		s, err := l.result(b.o.n)
		if err != nil {
			return r, err
		}
		s.Rep = i
		r.Samples = append(r.Samples, s)
	}
	r.ServerCPUMicrosPerMsg = benchkit.Round(float64((benchkit.ProcessCPU(b.pid)-server0).Microseconds())/float64(b.o.n), 0)
	x, w := find(r.Samples, xmpptrack), find(r.Samples, raw)
	r.RunRatio = benchkit.Round(benchkit.Ratio(x.Received.CPUMicrosPerMsg, w.Received.CPUMicrosPerMsg), 2)
	r.ProcessRatio = benchkit.Round(benchkit.Ratio(x.ProcessCPUMicrosPerMsg, w.ProcessCPUMicrosPerMsg), 2)
	return r, nil
}

func find(samples []Sample, client string) Sample {
	for _, s := range samples {
		if s.Client == client {
			return s
		}
	}
	return Sample{}
}

// listener is a listening client's process.
type listener struct {
	client string
	cmd    *exec.Cmd
	lines  chan []byte
	done   chan struct{}
	stderr bytes.Buffer
	err    error // of Wait, once done is closed
}

// startListener starts a listener; its JSON lines arrive on lines.
func startListener(ctx context.Context, client, bin string, args []string) (*listener, error) {
	l := &listener{client: client, lines: make(chan []byte, 2), done: make(chan struct{})}
	l.cmd = exec.CommandContext(ctx, bin, args...)
	l.cmd.Stderr = &l.stderr
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := l.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", client, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case l.lines <- bytes.Clone(sc.Bytes()):
			default: // more lines than expected: they are not read
			}
		}
		l.err = l.cmd.Wait()
		close(l.done)
	}()
	return l, nil
}

// line waits for the next line within d.
func (l *listener) line(d time.Duration) (benchkit.Received, error) {
	var r benchkit.Received
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case b := <-l.lines:
		if err := json.Unmarshal(b, &r); err != nil {
			return r, fmt.Errorf("%s: bad line %q: %w", l.client, b, err)
		}
		return r, nil
	case <-l.done:
		select {
		case b := <-l.lines:
			if err := json.Unmarshal(b, &r); err != nil {
				return r, fmt.Errorf("%s: bad line %q: %w", l.client, b, err)
			}
			return r, nil
		default:
		}
		return r, fmt.Errorf("%s ended: %v: %s", l.client, l.err, strings.TrimSpace(l.stderr.String()))
	case <-t.C:
		return r, fmt.Errorf("%s: no answer in %v", l.client, d)
	}
}

// ready waits for the listener to have joined.
func (l *listener) ready() error {
	r, err := l.line(readyTimeout)
	if err != nil {
		return err
	}
	if !r.Ready {
		return fmt.Errorf("%s: not ready: %+v", l.client, r)
	}
	return nil
}

// result waits for the listener's count and its exit, and returns its
// sample.
func (l *listener) result(n int) (Sample, error) {
	s := Sample{Client: l.client}
	r, err := l.line(runTimeout)
	if err != nil {
		return s, err
	}
	<-l.done
	if l.err != nil {
		return s, fmt.Errorf("%s: %w: %s", l.client, l.err, strings.TrimSpace(l.stderr.String()))
	}
	if r.Messages != n {
		return s, fmt.Errorf("%s received %d of %d messages", l.client, r.Messages, n)
	}
	s.Received = r
	cpu, rss := benchkit.ChildUsage(l.cmd.ProcessState.SysUsage())
	s.ProcessCPUMicrosPerMsg = benchkit.Round(float64(cpu.Nanoseconds())/1e3/float64(n), 2)
	s.MaxRSSKiB = rss
	return s, nil
}

// kill ends the listener's process if it still runs.
func (l *listener) kill() {
	select {
	case <-l.done:
	default:
		l.cmd.Process.Kill()
		<-l.done
	}
}

// median returns the median of each figure over client's samples.
func median(reps []Rep, client string) Row {
	var rate, run, proc, stanzas, allocBytes, allocs, rss []float64
	for _, r := range reps {
		s := find(r.Samples, client)
		rate = append(rate, s.Received.MsgsPerS)
		run = append(run, s.Received.CPUMicrosPerMsg)
		proc = append(proc, s.ProcessCPUMicrosPerMsg)
		stanzas = append(stanzas, float64(s.Received.Stanzas)/float64(max(s.Received.Messages, 1)))
		rss = append(rss, float64(s.MaxRSSKiB)/1024)
		allocBytes, allocs = append(allocBytes, s.Received.AllocBytesPerMsg), append(allocs, s.Received.AllocsPerMsg)
	}
	return Row{
		Client: client, Samples: len(reps),
		MsgsPerS:   benchkit.Round(benchkit.Median(rate), 0),
		RunCPU:     benchkit.Round(benchkit.Median(run), 2),
		ProcessCPU: benchkit.Round(benchkit.Median(proc), 2),
		StanzasMsg: benchkit.Round(benchkit.Median(stanzas), 3),
		AllocBytes: benchkit.Round(benchkit.Median(allocBytes), 0),
		Allocs:     benchkit.Round(benchkit.Median(allocs), 1),
		MaxRSSMiB:  benchkit.Round(benchkit.Median(rss), 1),
	}
}

// table formats the medians and the ratios as Markdown tables.
func table(r Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "A listener in a busy room: %d messages from %d other occupants (window %s), both listeners in the room side by side; medians of %d repetitions (%s).\n\n",
		r.N, r.Senders, windowName(r.Window), len(r.Reps), r.Machine)
	b.WriteString("| listener | msgs/s in | CPU µs/msg (run) | CPU µs/msg (process) | stanzas read/msg | alloc B/msg | allocs/msg | peak RSS MiB |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %.3f | %.0f | %.1f | %.1f |\n",
			row.Client, row.MsgsPerS, row.RunCPU, row.ProcessCPU, row.StanzasMsg, row.AllocBytes, row.Allocs, row.MaxRSSMiB)
	}
	fmt.Fprintf(&b, "\nSenders: %.0f msg/s; Prosody: %.0f µs of CPU per message.\n", r.SendMsgsPerS, r.ServerCPU)
	verdict := "missed"
	if r.RunRatio > 0 && r.RunRatio <= target {
		verdict = "met"
	}
	b.WriteString("\n| xmpptrack / raw, CPU per inbound message | run | process | target | |\n")
	b.WriteString("| --- | ---: | ---: | ---: | --- |\n")
	fmt.Fprintf(&b, "| median of the repetitions' ratios | %.2fx | %.2fx | ≤ %.1fx (run) | %s |\n", r.RunRatio, r.ProcessRatio, target, verdict)
	return b.String()
}
