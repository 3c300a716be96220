// Command scale measures what many streams cost in one process (a bridge or
// a bot farm): it starts the project's Prosody (stream management and the
// MUC archive on, as in the tests) and, for each number of streams asked
// for (10, 100 and 1,000 by default), logs that many accounts in, a few at a
// time, each stream joining a room of its own with a muc.Client, and
// measures:
//
//   - idle: the live heap per stream (runtime.ReadMemStats after a full
//     collection, less the heap before the first login, divided by the
//     streams), the goroutines per stream, and the CPU the idle streams use;
//   - at work: every stream sends one tracked room message per second
//     (Room.SendTrackedMessage, spread evenly over each second) for -work
//     (20 s by default, the full minute with -work 1m), and every
//     message must reach DELIVERED_TO_RECIPIENT. Prosody, single-threaded,
//     holds about 550 such messages a second on a 2-core machine with 100
//     to 500 connections (each message alone costs it about 2 ms of CPU),
//     but only about 200 with 1,000 connections open (5 ms each): beyond
//     -max-rate messages a second in all (100 by default, which keeps it
//     at half a core, so that no backlog at the server is measured as the
//     client's cost; 0 for no cap) the streams
//     take turns, each sending one message every streams/max-rate
//     seconds, and the table says so. The process's CPU time
//     (getrusage) is read over windows of -window and the median window
//     taken, per message; the bytes and objects allocated per message, the
//     peak heap per stream, the heap left after the work (a leak shows
//     there), the resident set, the latency to delivery and Prosody's CPU
//     per message come with it.
//
// The streams of one level are closed before the next level starts. If the
// server cannot hold a level's logins, the level goes on with the streams
// that logged in and the table says where the logins stopped and why.
//
// Usage:
//
//	go run ./bench/scale [-streams 10,100,1000] [-work 20s] [-max-rate 100] [-window 5s] [-idle 5s] [-parallel 8] [-o results.json] [-cpuprofile FILE] [-memprofile FILE]
//
// -cpuprofile profiles the work of the largest level, -memprofile writes a
// heap profile of its idle streams.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/bench/internal/benchkit"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "scale: %v\n", err)
		os.Exit(1)
	}
}

// Targets of the issue, per stream when idle.
const (
	targetHeapPerStream       = 64 << 10
	targetGoroutinesPerStream = 3
	// flatWithin is how much the cost per stream or per message may grow
	// from the smallest level to the largest and still count as flat.
	flatWithin = 1.25
)

const (
	password = "scale-secret"
	// settle is how long the streams of a level are left alone after the
	// last login, before the idle measurement: the callbacks of the joins
	// run out and their goroutines end.
	settle = 2 * time.Second
	// drainTimeout bounds the wait for the outcomes of the last messages;
	// the room's own timeout (muc.DefaultTimeout) ends them before it.
	drainTimeout = muc.DefaultTimeout + 10*time.Second
	// tick is the step of the sending schedule: every tick sends the
	// messages that fall due in it.
	tick = 10 * time.Millisecond
	// sample is how often the heap and the goroutines are sampled at work.
	sample = 250 * time.Millisecond
	// maxLoginFailures ends a level's logins: after that many failures the
	// server is taken to hold no more.
	maxLoginFailures = 3
)

// options are the parsed flags.
type options struct {
	levels     []int
	work       time.Duration
	maxRate    int
	window     time.Duration
	idle       time.Duration
	parallel   int
	outFile    string
	cpuProfile string
	memProfile string
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	var o options
	levels := fs.String("streams", "10,100,1000", "numbers of streams to measure, comma-separated, in `N,N,...`")
	fs.DurationVar(&o.work, "work", 20*time.Second, "how long each stream sends one message per second (the issue asks for 1m)")
	fs.IntVar(&o.maxRate, "max-rate", 100, "messages per second in all at most, the streams taking turns beyond it (0: no cap)")
	fs.DurationVar(&o.window, "window", 5*time.Second, "CPU is read over windows this long at work; the median window counts")
	fs.DurationVar(&o.idle, "idle", 5*time.Second, "how long the CPU of idle streams is measured")
	fs.IntVar(&o.parallel, "parallel", 8, "logins at a time")
	fs.StringVar(&o.outFile, "o", "", "also write the results as JSON to `FILE`")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the largest level's work to `FILE`")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile of the largest level's idle streams to `FILE`")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, f := range strings.Split(*levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-streams: bad number %q", f)
		}
		o.levels = append(o.levels, n)
	}
	slices.Sort(o.levels)
	o.levels = slices.Compact(o.levels)
	if o.work < time.Second {
		return o, errors.New("-work must be at least 1s")
	}
	if o.window <= 0 || o.window > o.work {
		o.window = o.work
	}
	if o.parallel < 1 {
		o.parallel = 1
	}
	return o, nil
}

// Level is the measurement of one number of streams.
type Level struct {
	Streams int `json:"streams"`
	// Up is how many logged in and joined their room; LoginError, when
	// set, is why the logins stopped there.
	Up         int     `json:"up"`
	LoginError string  `json:"login_error,omitempty"`
	LoginS     float64 `json:"login_s"`

	IdleHeapPerStream       float64 `json:"idle_heap_bytes_per_stream"`
	IdleGoroutinesPerStream float64 `json:"idle_goroutines_per_stream"`
	IdleCPUPerStreamS       float64 `json:"idle_cpu_us_per_stream_s"`
	// IdleServerBusy is Prosody's CPU time over the idle window divided by
	// the window.
	IdleServerBusy float64 `json:"idle_server_busy"`

	// Period is how often each stream sends: 1 s, or longer when the
	// streams take turns (see -max-rate).
	PeriodS   float64        `json:"period_s"`
	Sent      int            `json:"sent"`
	Delivered int            `json:"delivered"`
	Outcomes  map[string]int `json:"outcomes"`
	SendErrs  int            `json:"send_errors"`
	// CPUPerMsg is the median over the windows at work of the process's
	// CPU time divided by the messages sent in the window; CPUWindows are
	// the windows' figures.
	CPUPerMsg            float64   `json:"cpu_us_per_msg"`
	CPUWindows           []float64 `json:"cpu_us_per_msg_windows"`
	AllocBytesPerMsg     float64   `json:"alloc_bytes_per_msg"`
	AllocsPerMsg         float64   `json:"allocs_per_msg"`
	PeakHeapPerStream    float64   `json:"peak_heap_bytes_per_stream"`
	PeakGoroutinesPerStr float64   `json:"peak_goroutines_per_stream"`
	// RetainedPerStream is the live heap after the work, once every
	// message ended, less the idle heap, per stream.
	RetainedPerStream float64 `json:"retained_bytes_per_stream"`
	RSSMiB            float64 `json:"rss_mib"`
	P50Ms             float64 `json:"p50_ms"`
	P99Ms             float64 `json:"p99_ms"`
	ServerCPUPerMsg   float64 `json:"server_cpu_us_per_msg"`
	// ServerBusy is Prosody's CPU time over the work (and the wait for the
	// last outcomes) divided by that time: 1 is one core, all Prosody can
	// use.
	ServerBusy float64 `json:"server_busy"`
}

// Results is the JSON output.
type Results struct {
	Date     time.Time `json:"date"`
	Machine  string    `json:"machine"`
	WorkS    float64   `json:"work_s"`
	MaxRate  int       `json:"max_rate"`
	OpenFile uint64    `json:"open_files_limit"`
	Levels   []Level   `json:"levels"`
}

func run(args []string, stdout io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	nofile, err := benchkit.RaiseOpenFiles()
	if err != nil {
		return err
	}
	largest := o.levels[len(o.levels)-1]
	users := make(map[string]string, largest)
	for i := range largest {
		users[account(i)] = password
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*prosody.StartTimeout)
	srv, err := prosody.Start(ctx, prosody.Options{
		Users:    users,
		LogLevel: "warn",
		// Prosody keeps 100 rooms in memory by default and swaps the others
		// to storage and back on every message: with a room per stream that
		// is what would be measured, not the streams.
		ExtraGlobal: fmt.Sprintf("muc_room_cache_size = %d", 2*largest),
	})
	cancel()
	if err != nil {
		return err
	}
	defer srv.Stop()
	pid := benchkit.PIDFile(filepath.Join(filepath.Dir(srv.ConfigPath()), "prosody.pid"))

	res := Results{Date: time.Now().UTC(), Machine: benchkit.Machine(), WorkS: o.work.Seconds(), MaxRate: o.maxRate, OpenFile: nofile}
	fmt.Fprintf(stdout, "scale: streams %v, each in its own room, one tracked message per second each for %v; Prosody at %s; open files limit %d\n",
		o.levels, o.work, srv.Addr(), nofile)
	for _, n := range o.levels {
		l, err := measureLevel(srv, pid, n, o, n == largest, stdout)
		if err != nil {
			return fmt.Errorf("%d streams: %w", n, err)
		}
		res.Levels = append(res.Levels, l)
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, table(res))
	if o.outFile != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.outFile, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "results written to %s\n", o.outFile)
	}
	return nil
}

// account is the localpart of the i-th account.
func account(i int) string { return fmt.Sprintf("s%04d", i) }

// bot is one stream with its room client and its room.
type bot struct {
	s    *stream.Stream
	c    *muc.Client
	room *muc.Room
}

// measureLevel logs n streams in, measures them idle and at work, and
// closes them.
func measureLevel(srv *prosody.Server, pid, n int, o options, largest bool, stdout io.Writer) (Level, error) {
	l := Level{Streams: n, Outcomes: map[string]int{}}
	baseHeap, baseG := liveHeap(), runtime.NumGoroutine()
	hook := newHook()

	start := time.Now()
	bots, loginErr := login(srv, n, o.parallel, hook)
	l.LoginS = benchkit.Round(time.Since(start).Seconds(), 2)
	l.Up = len(bots)
	defer closeAll(bots, o.parallel)
	if loginErr != nil {
		l.LoginError = loginErr.Error()
	}
	fmt.Fprintf(stdout, "  %d streams: %d logged in and joined in %.1f s", n, l.Up, l.LoginS)
	if loginErr != nil {
		fmt.Fprintf(stdout, " (logins stopped: %v)", loginErr)
	}
	fmt.Fprintln(stdout)
	if l.Up == 0 {
		return l, fmt.Errorf("no stream logged in: %w", loginErr)
	}
	up := float64(l.Up)

	// Idle.
	time.Sleep(settle)
	cpu0, server0 := benchkit.CPUTime(), benchkit.ProcessCPU(pid)
	time.Sleep(o.idle)
	l.IdleCPUPerStreamS = benchkit.Round(float64((benchkit.CPUTime()-cpu0).Microseconds())/up/o.idle.Seconds(), 2)
	l.IdleServerBusy = benchkit.Round((benchkit.ProcessCPU(pid)-server0).Seconds()/o.idle.Seconds(), 2)
	idleHeap := liveHeap()
	l.IdleHeapPerStream = benchkit.Round(float64(idleHeap-baseHeap)/up, 0)
	l.IdleGoroutinesPerStream = benchkit.Round(float64(runtime.NumGoroutine()-baseG)/up, 2)
	if largest && o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile); err != nil {
			return l, err
		}
	}
	fmt.Fprintf(stdout, "    idle: %.1f KiB heap and %.2f goroutines per stream, %.1f µs CPU per stream per second; Prosody %.0f%% of a core\n",
		l.IdleHeapPerStream/1024, l.IdleGoroutinesPerStream, l.IdleCPUPerStreamS, 100*l.IdleServerBusy)

	// At work.
	if largest && o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return l, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return l, fmt.Errorf("starting the CPU profile: %w", err)
		}
	}
	w := work(bots, o, pid, hook)
	if largest && o.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	l.Sent, l.SendErrs, l.Delivered, l.Outcomes = w.sent, w.sendErrs, w.delivered, w.outcomes
	l.PeriodS = w.period.Seconds()
	l.CPUWindows = w.cpuWindows
	l.CPUPerMsg = benchkit.Round(benchkit.Median(w.cpuWindows), 1)
	if w.sent > 0 {
		l.AllocBytesPerMsg = benchkit.Round(float64(w.allocBytes)/float64(w.sent), 0)
		l.AllocsPerMsg = benchkit.Round(float64(w.allocs)/float64(w.sent), 1)
		l.ServerCPUPerMsg = benchkit.Round(float64(w.serverCPU.Microseconds())/float64(w.sent), 1)
		l.ServerBusy = benchkit.Round(w.serverCPU.Seconds()/w.span.Seconds(), 2)
	}
	l.PeakHeapPerStream = benchkit.Round(float64(int64(w.peakHeap)-baseHeap)/up, 0)
	l.PeakGoroutinesPerStr = benchkit.Round(float64(w.peakG-baseG)/up, 2)
	l.RSSMiB = benchkit.Round(float64(w.rss)/(1<<20), 1)
	l.P50Ms, l.P99Ms = hook.percentiles()
	l.RetainedPerStream = benchkit.Round(float64(liveHeap()-idleHeap)/up, 0)
	fmt.Fprintf(stdout, "    work (one message per stream every %v): %d sent, %d delivered, %v; %.1f µs CPU per message (windows %v), %.0f B and %.1f allocations per message, p50 %.1f ms, p99 %.1f ms; Prosody %.0f µs per message, %.0f%% of a core\n",
		w.period, l.Sent, l.Delivered, l.Outcomes, l.CPUPerMsg, l.CPUWindows, l.AllocBytesPerMsg, l.AllocsPerMsg, l.P50Ms, l.P99Ms, l.ServerCPUPerMsg, 100*l.ServerBusy)
	return l, nil
}

// login logs in n streams, parallel at a time, each joining its own room.
// It stops after maxLoginFailures failures and returns the streams that
// logged in, with the first failure.
func login(srv *prosody.Server, n, parallel int, hook *hook) ([]*bot, error) {
	var (
		mu       sync.Mutex
		bots     = make([]*bot, n)
		failures int
		firstErr error
		next     = make(chan int)
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for range min(parallel, n) {
		wg.Go(func() {
			for i := range next {
				b, err := dialBot(srv, i, hook)
				mu.Lock()
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = fmt.Errorf("login %d: %w", i+1, err)
					}
					if failures == maxLoginFailures {
						close(stop)
					}
				} else {
					bots[i] = b
				}
				mu.Unlock()
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-stop:
			break feed
		}
	}
	close(next)
	wg.Wait()
	up := slices.DeleteFunc(bots, func(b *bot) bool { return b == nil })
	return up, firstErr
}

// dialBot logs account i in and joins its room.
func dialBot(srv *prosody.Server, i int, h *hook) (*bot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	local := account(i)
	s, err := stream.Dial(ctx, stream.Config{
		JID:      srv.JID(local),
		Password: password,
		Addr:     srv.Addr(),
		TLS:      srv.TLSConfig(),
		Backoff:  stream.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2},
	})
	if err != nil {
		return nil, err
	}
	c := muc.NewClient(s)
	c.AddHook(h)
	room, err := c.Join(ctx, jid.MustParse("scale-"+local+"@"+srv.MUCDomain()), local)
	if err != nil {
		c.Close()
		closeStream(s)
		return nil, fmt.Errorf("joining: %w", err)
	}
	return &bot{s: s, c: c, room: room}, nil
}

// closeAll closes the room clients and the streams, parallel at a time.
func closeAll(bots []*bot, parallel int) {
	var wg sync.WaitGroup
	next := make(chan *bot)
	for range min(4*parallel, len(bots)) {
		wg.Go(func() {
			for b := range next {
				b.c.Close()
				closeStream(b.s)
			}
		})
	}
	for _, b := range bots {
		next <- b
	}
	close(next)
	wg.Wait()
}

func closeStream(s *stream.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Close(ctx)
}

// workResult is what work measured.
type workResult struct {
	sent, sendErrs, delivered int
	outcomes                  map[string]int
	cpuWindows                []float64
	allocBytes, allocs        uint64
	peakHeap                  uint64
	peakG                     int
	rss                       int64
	serverCPU, span, period   time.Duration
}

// work has every bot send one tracked message per second for o.work, the
// sends of each second spread evenly over it, then waits for every
// outcome.
func work(bots []*bot, o options, pid int, h *hook) workResult {
	var r workResult
	n := len(bots)
	period := time.Second
	if o.maxRate > 0 && n > o.maxRate {
		period = time.Duration(n) * time.Second / time.Duration(o.maxRate)
	}
	r.period = period
	total := n * max(1, int(o.work/period))
	ctx, cancel := context.WithTimeout(context.Background(), o.work+drainTimeout)
	defer cancel()

	samples := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/allocs:objects"}}
	metrics.Read(samples)
	alloc0, objs0 := samples[0].Value.Uint64(), samples[1].Value.Uint64()
	server0 := benchkit.ProcessCPU(pid)

	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		heap := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/sched/goroutines:goroutines"}}
		t := time.NewTicker(sample)
		defer t.Stop()
		for {
			metrics.Read(heap)
			r.peakHeap = max(r.peakHeap, heap[0].Value.Uint64())
			r.peakG = max(r.peakG, int(heap[1].Value.Uint64())-1) // less this goroutine
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()

	start := time.Now()
	windowStart, windowCPU, windowSent := start, benchkit.CPUTime(), 0
	k := 0
	for k < total {
		// Send everything due by now: message k is stream k%n's in second
		// k/n, at its stream's offset in that second.
		now := time.Since(start)
		for k < total && dueAt(k, n, period) <= now {
			if _, err := bots[k%n].room.SendTrackedMessage(ctx, "scale message "+strconv.Itoa(k)); err != nil {
				r.sendErrs++
			} else {
				r.sent++
				windowSent++
			}
			k++
		}
		if t := time.Now(); t.Sub(windowStart) >= o.window && windowSent > 0 {
			cpu := benchkit.CPUTime()
			r.cpuWindows = append(r.cpuWindows, benchkit.Round(float64((cpu-windowCPU).Microseconds())/float64(windowSent), 1))
			windowStart, windowCPU, windowSent = t, cpu, 0
		}
		if k < total {
			// Sleep until the next message is due, but at least a tick, so
			// that a busy second is sent in batches, a quiet one with no
			// more wake-ups than messages.
			time.Sleep(max(tick, time.Until(start.Add(dueAt(k, n, period)))))
		}
	}
	// The last window's messages are still under way: it ends when their
	// outcomes are in.
	h.waitEnded(ctx, r.sent)
	if windowSent > 0 {
		r.cpuWindows = append(r.cpuWindows, benchkit.Round(float64((benchkit.CPUTime()-windowCPU).Microseconds())/float64(windowSent), 1))
	}
	close(stopSampling)
	<-sampled
	r.serverCPU, r.span = benchkit.ProcessCPU(pid)-server0, time.Since(start)
	r.rss = benchkit.RSS()
	metrics.Read(samples)
	r.allocBytes, r.allocs = samples[0].Value.Uint64()-alloc0, samples[1].Value.Uint64()-objs0
	r.delivered, r.outcomes = h.counts()
	return r
}

// dueAt returns when message k of n streams that each send once a period
// is due, from the start: it is stream k%n's message of period k/n, at the
// stream's offset in that period.
func dueAt(k, n int, period time.Duration) time.Duration {
	return time.Duration(k/n)*period + time.Duration(k%n)*period/time.Duration(n)
}

// hook counts the outcomes of the messages of every room client and keeps
// the times to delivery.
type hook struct {
	mu        sync.Mutex
	changed   chan struct{}
	ended     int
	outcomes  map[string]int
	latencies []time.Duration
}

func newHook() *hook {
	return &hook{changed: make(chan struct{}, 1), outcomes: map[string]int{}}
}

// Delivered implements tracking.Hook.
func (h *hook) Delivered(d time.Duration) {
	h.mu.Lock()
	h.latencies = append(h.latencies, d)
	h.mu.Unlock()
}

// Ended implements tracking.Hook.
func (h *hook) Ended(state tracking.MessageState, _ time.Duration) {
	h.mu.Lock()
	h.ended++
	h.outcomes[state.String()]++
	h.mu.Unlock()
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// waitEnded waits until n messages have ended, or for ctx.
func (h *hook) waitEnded(ctx context.Context, n int) {
	for {
		h.mu.Lock()
		done := h.ended >= n
		h.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-h.changed:
		}
	}
}

// counts returns the messages delivered and the outcomes by state.
func (h *hook) counts() (int, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.outcomes[tracking.DeliveredToRecipient.String()], maps.Clone(h.outcomes)
}

// percentiles returns the median and the 99th percentile of the times to
// delivery, in milliseconds.
func (h *hook) percentiles() (p50, p99 float64) {
	h.mu.Lock()
	lat := slices.Clone(h.latencies)
	h.mu.Unlock()
	slices.Sort(lat)
	pick := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		i := int(p/100*float64(len(lat))+0.999999) - 1
		i = min(max(i, 0), len(lat)-1)
		return benchkit.Round(float64(lat[i].Microseconds())/1000, 2)
	}
	return pick(50), pick(99)
}

// liveHeap returns the bytes of live heap objects after a full collection.
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("writing the heap profile: %w", err)
	}
	return f.Close()
}

// table formats the levels as Markdown tables: the measurements, their
// growth from the smallest level, and the targets.
func table(r Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "One process, each stream in a room of its own, one tracked message per stream per second (or as the column says, when the streams take turns to stay within %d messages a second in all) for %.0f s (%s).\n\n", r.MaxRate, r.WorkS, r.Machine)
	b.WriteString("| streams | up | login s | msgs/stream/s | idle heap KiB/stream | idle goroutines/stream | idle CPU µs/stream/s | msgs | delivered | CPU µs/msg | alloc B/msg | allocs/msg | peak heap KiB/stream | heap left KiB/stream | RSS MiB | p50 ms | p99 ms | Prosody CPU µs/msg | Prosody busy |\n")
	b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, l := range r.Levels {
		fmt.Fprintf(&b, "| %d | %d | %.1f | %.2f | %.1f | %.2f | %.1f | %d | %d | %.1f | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f%% |\n",
			l.Streams, l.Up, l.LoginS, 1/l.PeriodS, l.IdleHeapPerStream/1024, l.IdleGoroutinesPerStream, l.IdleCPUPerStreamS,
			l.Sent, l.Delivered, l.CPUPerMsg, l.AllocBytesPerMsg, l.AllocsPerMsg,
			l.PeakHeapPerStream/1024, l.RetainedPerStream/1024, l.RSSMiB, l.P50Ms, l.P99Ms, l.ServerCPUPerMsg, 100*l.ServerBusy)
	}
	for _, l := range r.Levels {
		if l.LoginError != "" {
			fmt.Fprintf(&b, "\nAt %d streams the logins stopped at %d: %s\n", l.Streams, l.Up, l.LoginError)
		}
	}
	if len(r.Levels) == 0 {
		return b.String()
	}
	first, last := r.Levels[0], r.Levels[len(r.Levels)-1]
	if len(r.Levels) > 1 {
		fmt.Fprintf(&b, "\n| per stream or message, against %d streams | idle heap | idle goroutines | CPU/msg | alloc/msg |\n", first.Up)
		b.WriteString("| --- | ---: | ---: | ---: | ---: |\n")
		for _, l := range r.Levels[1:] {
			fmt.Fprintf(&b, "| %d streams | %.2fx | %.2fx | %.2fx | %.2fx |\n", l.Up,
				benchkit.Ratio(l.IdleHeapPerStream, first.IdleHeapPerStream),
				benchkit.Ratio(l.IdleGoroutinesPerStream, first.IdleGoroutinesPerStream),
				benchkit.Ratio(l.CPUPerMsg, first.CPUPerMsg),
				benchkit.Ratio(l.AllocBytesPerMsg, first.AllocBytesPerMsg))
		}
	}
	metIf := func(ok bool) string {
		if ok {
			return "met"
		}
		return "missed"
	}
	allDelivered := true
	worstHeap, worstG := 0.0, 0.0
	for _, l := range r.Levels {
		allDelivered = allDelivered && l.Sent > 0 && l.Delivered == l.Sent
		worstHeap = max(worstHeap, l.IdleHeapPerStream)
		worstG = max(worstG, l.IdleGoroutinesPerStream)
	}
	cpuGrowth := benchkit.Ratio(last.CPUPerMsg, first.CPUPerMsg)
	heapGrowth := benchkit.Ratio(last.IdleHeapPerStream, first.IdleHeapPerStream)
	allocGrowth := benchkit.Ratio(last.AllocBytesPerMsg, first.AllocBytesPerMsg)
	b.WriteString("\n| target | measured | |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| %d streams in one process | %d logged in | %s |\n", last.Streams, last.Up, metIf(last.Up == last.Streams))
	fmt.Fprintf(&b, "| idle: ≤ 64 KiB heap per stream | %.1f KiB (largest of the levels) | %s |\n", worstHeap/1024, metIf(worstHeap <= targetHeapPerStream))
	fmt.Fprintf(&b, "| idle: ≤ 3 goroutines per stream | %.2f (largest of the levels) | %s |\n", worstG, metIf(worstG <= targetGoroutinesPerStream))
	var full, turns []string
	for _, l := range r.Levels {
		if l.PeriodS <= 1 {
			full = append(full, strconv.Itoa(l.Up))
		} else {
			turns = append(turns, fmt.Sprintf("%d at %.2f", l.Up, 1/l.PeriodS))
		}
	}
	rate := "at " + strings.Join(full, ", ") + " streams"
	if len(turns) > 0 {
		rate += "; " + strings.Join(turns, ", ") + " msgs/stream/s, within -max-rate: beyond it Prosody, not the client, falls behind"
	}
	fmt.Fprintf(&b, "| at work: one message per stream per second | %s | %s |\n", rate, metIf(len(turns) == 0))
	fmt.Fprintf(&b, "| at work: every message delivered | %s | %s |\n", deliveredSummary(r.Levels), metIf(allDelivered))
	fmt.Fprintf(&b, "| cost per stream flat (≤ %.2fx from %d to %d streams) | CPU/msg %.2fx, idle heap %.2fx, alloc/msg %.2fx | %s |\n",
		flatWithin, first.Up, last.Up, cpuGrowth, heapGrowth, allocGrowth,
		metIf(cpuGrowth <= flatWithin && heapGrowth <= flatWithin && allocGrowth <= flatWithin))
	return b.String()
}

func deliveredSummary(levels []Level) string {
	parts := make([]string, len(levels))
	for i, l := range levels {
		parts[i] = fmt.Sprintf("%d/%d", l.Delivered, l.Sent)
	}
	return strings.Join(parts, ", ")
}
