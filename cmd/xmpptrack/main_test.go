package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/servers"
)

// build compiles the command into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "xmpptrack")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// result is one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

func runCmd(t *testing.T, bin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s: %v", bin, err)
	}
	return r
}

// checkOneLineError checks that a failed run says why in one line of
// standard error, without a stack trace.
func checkOneLineError(t *testing.T, r result) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("exit status 0, want non-zero; stdout:\n%s", r.stdout)
	}
	msg := strings.TrimRight(r.stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") || strings.Contains(msg, "goroutine ") || strings.Contains(msg, "panic") {
		t.Fatalf("stderr is not one line of error:\n%s", r.stderr)
	}
	t.Logf("exit %d: %s", r.code, msg)
}

type line struct {
	Index     *int    `json:"index"`
	ID        string  `json:"id"`
	State     string  `json:"state"`
	LatencyMs float64 `json:"latency_ms"`
	Summary   *struct {
		Sent        int            `json:"sent"`
		States      map[string]int `json:"states"`
		MsgsPerS    float64        `json:"msgs_per_s"`
		P50Ms       float64        `json:"p50_ms"`
		P99Ms       float64        `json:"p99_ms"`
		CPUMicros   float64        `json:"cpu_us_per_msg"`
		Resumptions *int           `json:"resumptions"`
	} `json:"summary"`
}

func TestMUC(t *testing.T) {
	bin := build(t)
	servers.Run(t, func(t *testing.T, k servers.Kind) {
		srv := k.StartTB(t, servers.Options{Users: map[string]string{"alice": "alice-pw"}})
		room := "cli@" + srv.MUCDomain()
		args := func(extra ...string) []string {
			return append([]string{"muc", "-addr", srv.Addr(), "-ca", srv.CAFile(),
				"-jid", srv.JID("alice").String(), "-password", "alice-pw", "-room", room}, extra...)
		}

		t.Run("json", func(t *testing.T) {
			const n = 50
			r := runCmd(t, bin, args("-json", "-n", strconv.Itoa(n), "-window", "10")...)
			if r.code != 0 {
				t.Fatalf("exit status %d\nstderr: %s\nstdout:\n%s", r.code, r.stderr, r.stdout)
			}
			seen := make(map[int]bool)
			ids := make(map[string]bool)
			summaries := 0
			sc := bufio.NewScanner(strings.NewReader(r.stdout))
			for sc.Scan() {
				var l line
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					t.Fatalf("line %q: %v", sc.Text(), err)
				}
				switch {
				case l.Summary != nil:
					summaries++
					s := l.Summary
					if s.Sent != n || s.States["DELIVERED_TO_RECIPIENT"] != n || len(s.States) != 1 {
						t.Errorf("summary %+v, want %d sent and delivered", *s, n)
					}
					if s.MsgsPerS <= 0 || s.P50Ms <= 0 || s.P99Ms < s.P50Ms || s.CPUMicros <= 0 || s.Resumptions == nil {
						t.Errorf("summary figures missing: %s", sc.Text())
					}
				case l.Index != nil:
					if summaries > 0 {
						t.Errorf("message line after the summary: %s", sc.Text())
					}
					if seen[*l.Index] || *l.Index < 0 || *l.Index >= n {
						t.Errorf("index %d repeated or out of range", *l.Index)
					}
					seen[*l.Index] = true
					if l.State != "DELIVERED_TO_RECIPIENT" || l.ID == "" || ids[l.ID] || l.LatencyMs <= 0 {
						t.Errorf("message line %s", sc.Text())
					}
					ids[l.ID] = true
				default:
					t.Errorf("unknown line %s", sc.Text())
				}
			}
			if len(seen) != n || summaries != 1 {
				t.Fatalf("%d message lines and %d summaries, want %d and 1", len(seen), summaries, n)
			}
		})

		t.Run("plain lines", func(t *testing.T) {
			r := runCmd(t, bin, args("-n", "3", "-body", "plain %d")...)
			if r.code != 0 {
				t.Fatalf("exit status %d: %s", r.code, r.stderr)
			}
			if strings.Count(r.stdout, "DELIVERED_TO_RECIPIENT") < 4 || strings.Contains(r.stdout, "\r") || !strings.Contains(r.stdout, "summary") {
				t.Fatalf("output:\n%s", r.stdout)
			}
		})

		t.Run("timed out", func(t *testing.T) {
			// A timeout too short for any reflection: the message is TIMED_OUT
			// and the exit status says that not every message was delivered.
			r := runCmd(t, bin, args("-json", "-timeout", "1ns")...)
			checkOneLineError(t, r)
			if !strings.Contains(r.stdout, `"TIMED_OUT"`) {
				t.Fatalf("stdout:\n%s", r.stdout)
			}
		})

		t.Run("wrong password", func(t *testing.T) {
			r := runCmd(t, bin, "muc", "-addr", srv.Addr(), "-ca", srv.CAFile(),
				"-jid", srv.JID("alice").String(), "-password", "wrong", "-room", room)
			checkOneLineError(t, r)
			if !strings.Contains(r.stderr, "refused") {
				t.Errorf("stderr does not say the login was refused: %s", r.stderr)
			}
		})

		t.Run("unreachable", func(t *testing.T) {
			r := runCmd(t, bin, "muc", "-addr", "127.0.0.1:1", "-ca", srv.CAFile(),
				"-jid", srv.JID("alice").String(), "-password", "alice-pw", "-room", room)
			checkOneLineError(t, r)
		})

		t.Run("untrusted certificate", func(t *testing.T) {
			r := runCmd(t, bin, "muc", "-addr", srv.Addr(),
				"-jid", srv.JID("alice").String(), "-password", "alice-pw", "-room", room)
			checkOneLineError(t, r)
		})

		t.Run("room refuses", func(t *testing.T) {
			// Remote domains are disabled on the test server: the join is
			// refused.
			r := runCmd(t, bin, args("-room", "cli@conference.example.org")...)
			checkOneLineError(t, r)
		})

		for name, bad := range map[string][]string{
			"unknown flag":   {"muc", "-bogus"},
			"bad number":     {"muc", "-n", "many"},
			"bad jid":        {"muc", "-jid", "@@", "-password", "x", "-room", room},
			"missing room":   {"muc", "-jid", "alice@localhost", "-password", "x"},
			"no command":     {},
			"unknown cmd":    {"send"},
			"plain remote":   {"muc", "-plain", "-addr", "192.0.2.1:5222", "-jid", "alice@localhost", "-password", "x", "-room", room},
			"negative n":     {"muc", "-jid", "alice@localhost", "-password", "x", "-room", room, "-n", "0"},
			"stray argument": {"muc", "extra"},
			"metrics addr":   {"muc", "-jid", "alice@localhost", "-password", "x", "-room", room, "-metrics-addr", "9464"},
		} {
			t.Run(name, func(t *testing.T) {
				checkOneLineError(t, runCmd(t, bin, bad...))
			})
		}
	})
}

// lineBuf collects a process's output and says when it grows.
type lineBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	signal chan struct{}
}

func (l *lineBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.b.Write(p)
	l.mu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
	return n, err
}

func (l *lineBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// responder is a running "xmpptrack chat-responder".
type responder struct {
	cmd            *exec.Cmd
	stdout, stderr *lineBuf
	// addr is the full JID it is bound to, from its ready line.
	addr    string
	exited  chan struct{} // closed when the process ended
	err     error         // the process's exit, once exited is closed
	stopped bool
}

// startResponder starts "xmpptrack chat-responder" with args and waits for
// its ready line. It is stopped when the test ends, unless stop did it
// before.
func startResponder(t *testing.T, bin string, args ...string) *responder {
	t.Helper()
	r := &responder{
		cmd:    exec.Command(bin, append([]string{"chat-responder"}, args...)...),
		stdout: &lineBuf{signal: make(chan struct{}, 1)},
		stderr: &lineBuf{signal: make(chan struct{}, 1)},
		exited: make(chan struct{}),
	}
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		if !r.stopped {
			r.cmd.Process.Kill()
			<-r.exited
		}
	})
	deadline := time.After(time.Minute)
	for {
		out := r.stdout.String()
		if first, _, ok := strings.Cut(out, "\n"); ok {
			rest, ok := strings.CutPrefix(first, "ready: ")
			if !ok {
				t.Fatalf("responder's first line %q, want ready", first)
			}
			r.addr, _, _ = strings.Cut(rest, " ")
			return r
		}
		select {
		case <-r.stdout.signal:
		case <-r.exited:
			t.Fatalf("responder exited before it was ready; stderr: %s", r.stderr.String())
		case <-deadline:
			t.Fatalf("responder not ready; stdout %q, stderr %q", out, r.stderr.String())
		}
	}
}

// stop interrupts the responder and returns its last line of output, which
// counts what it did.
func (r *responder) stop(t *testing.T) string {
	t.Helper()
	r.stopped = true
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		r.cmd.Process.Kill()
	}
	select {
	case <-r.exited:
	case <-time.After(time.Minute):
		r.cmd.Process.Kill()
		<-r.exited
	}
	if r.err != nil {
		t.Errorf("responder: %v; stderr: %s", r.err, r.stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(r.stdout.String()), "\n")
	return lines[len(lines)-1]
}

// chatRun is the parsed JSON output of one run of "xmpptrack chat -json".
type chatRun struct {
	states  map[string]int // message lines by state
	msgs    []line
	summary *line
}

func parseJSONLines(t *testing.T, r result, n int) chatRun {
	t.Helper()
	cr := chatRun{states: make(map[string]int)}
	seen := make(map[int]bool)
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		switch {
		case l.Summary != nil:
			if cr.summary != nil {
				t.Errorf("two summaries")
			}
			cr.summary = &l
		case l.Index != nil:
			if cr.summary != nil {
				t.Errorf("message line after the summary: %s", sc.Text())
			}
			if seen[*l.Index] || *l.Index < 0 || *l.Index >= n {
				t.Errorf("index %d repeated or out of range", *l.Index)
			}
			seen[*l.Index] = true
			cr.states[l.State]++
			cr.msgs = append(cr.msgs, l)
		default:
			t.Errorf("unknown line %s", sc.Text())
		}
	}
	if len(cr.msgs) != n || cr.summary == nil {
		t.Fatalf("%d message lines and summary %v, want %d and one; stdout:\n%s\nstderr: %s", len(cr.msgs), cr.summary != nil, n, r.stdout, r.stderr)
	}
	if s := cr.summary.Summary; s.Sent != n || !maps.Equal(s.States, cr.states) || s.Resumptions == nil {
		t.Errorf("summary %+v, want %d sent and states %v", *s, n, cr.states)
	}
	return cr
}

func TestChat(t *testing.T) {
	bin := build(t)
	servers.Run(t, func(t *testing.T, k servers.Kind) {
		users := map[string]string{"alice": "alice-pw", "bob": "bob-pw"}
		srv := k.StartTB(t, servers.Options{Users: users})
		login := func(user string) []string {
			return []string{"-addr", srv.Addr(), "-ca", srv.CAFile(), "-jid", srv.JID(user).String(), "-password", users[user]}
		}
		chat := func(extra ...string) []string {
			return append(append([]string{"chat"}, login("alice")...), extra...)
		}
		bob := srv.JID("bob").String()

		// bob answers receipt requests but never marks anything displayed.
		resp := startResponder(t, bin, login("bob")...)
		answered := 0 // by resp, in the subtests that passed

		t.Run("delivered", func(t *testing.T) {
			const n = 20
			r := runCmd(t, bin, chat("-to", bob, "-n", strconv.Itoa(n), "-json")...)
			if r.code != 0 {
				t.Fatalf("exit status %d\nstderr: %s\nstdout:\n%s", r.code, r.stderr, r.stdout)
			}
			cr := parseJSONLines(t, r, n)
			ids := make(map[string]bool)
			for _, l := range cr.msgs {
				if l.State != "DELIVERED_TO_RECIPIENT" || l.ID == "" || ids[l.ID] || l.LatencyMs <= 0 {
					t.Errorf("message line %+v", l)
				}
				ids[l.ID] = true
			}
			if s := cr.summary.Summary; s.MsgsPerS <= 0 || s.P50Ms <= 0 || s.P99Ms < s.P50Ms {
				t.Errorf("summary figures missing: %+v", *s)
			}
			answered += n
		})

		t.Run("full JID", func(t *testing.T) {
			r := runCmd(t, bin, chat("-to", resp.addr, "-n", "3", "-window", "0")...)
			if r.code != 0 {
				t.Fatalf("exit status %d: %s", r.code, r.stderr)
			}
			if strings.Count(r.stdout, "DELIVERED_TO_RECIPIENT") < 4 || !strings.Contains(r.stdout, "summary") {
				t.Fatalf("output:\n%s", r.stdout)
			}
			answered += 3
		})

		t.Run("not seen", func(t *testing.T) {
			// Delivered, but bob never displays them: each message ends at
			// DELIVERED_TO_RECIPIENT at the timeout, short of the goal.
			r := runCmd(t, bin, chat("-to", bob, "-n", "3", "-json", "-wait", "seen", "-timeout", "2s")...)
			checkOneLineError(t, r)
			cr := parseJSONLines(t, r, 3)
			if cr.states["DELIVERED_TO_RECIPIENT"] != 3 || !strings.Contains(r.stdout, "not SEEN_BY_RECIPIENT before the timeout") {
				t.Fatalf("stdout:\n%s", r.stdout)
			}
			if !strings.Contains(r.stderr, "did not reach SEEN_BY_RECIPIENT") {
				t.Errorf("stderr: %s", r.stderr)
			}
			answered += 3
		})

		want := fmt.Sprintf("received %d messages, answered %d receipt requests, marked 0 displayed", answered, answered)
		if got := resp.stop(t); got != want {
			t.Errorf("responder: %q, want %q", got, want)
		}

		t.Run("seen", func(t *testing.T) {
			const n, delay = 20, 50 * time.Millisecond
			resp := startResponder(t, bin, append(login("bob"), "-display-after", delay.String())...)
			r := runCmd(t, bin, chat("-to", bob, "-n", strconv.Itoa(n), "-json", "-wait", "seen")...)
			if r.code != 0 {
				t.Fatalf("exit status %d\nstderr: %s\nstdout:\n%s", r.code, r.stderr, r.stdout)
			}
			cr := parseJSONLines(t, r, n)
			for _, l := range cr.msgs {
				if l.State != "SEEN_BY_RECIPIENT" || l.ID == "" || l.LatencyMs < float64(delay/time.Millisecond) {
					t.Errorf("message line %+v, want SEEN_BY_RECIPIENT after at least %v", l, delay)
				}
			}
			if s := cr.summary.Summary; s.P50Ms < float64(delay/time.Millisecond) {
				t.Errorf("p50 %v ms: the latency is not to SEEN_BY_RECIPIENT", s.P50Ms)
			}
			if got := resp.stop(t); !strings.HasPrefix(got, fmt.Sprintf("received %d messages, answered %d receipt requests, marked %d displayed", n, n, n)) {
				t.Errorf("responder: %q", got)
			}
		})

		t.Run("no such user", func(t *testing.T) {
			r := runCmd(t, bin, chat("-to", srv.JID("nobody").String(), "-n", "3", "-json")...)
			checkOneLineError(t, r)
			cr := parseJSONLines(t, r, 3)
			if cr.states["ERROR"] != 3 {
				t.Fatalf("states %v, want 3 ERROR; stdout:\n%s", cr.states, r.stdout)
			}
			if !strings.Contains(r.stderr, "3 of 3 messages did not reach DELIVERED_TO_RECIPIENT (3 ERROR)") {
				t.Errorf("stderr: %s", r.stderr)
			}
		})

		t.Run("responder for", func(t *testing.T) {
			r := runCmd(t, bin, append(append([]string{"chat-responder"}, login("bob")...), "-for", "100ms")...)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "ready: ") || !strings.Contains(r.stdout, "received 0 messages") {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
		})

		for name, bad := range map[string][]string{
			"missing to":          chat(),
			"bad to":              chat("-to", "@@"),
			"bad wait":            chat("-to", bob, "-wait", "read"),
			"negative window":     chat("-to", bob, "-window", "-1"),
			"stray argument":      chat("-to", bob, "extra"),
			"missing password":    {"chat", "-jid", "alice@localhost", "-to", bob},
			"responder bad delay": {"chat-responder", "-jid", "bob@localhost", "-password", "x", "-display-after", "-1s"},
			"responder room":      {"chat-responder", "-jid", "bob@localhost", "-password", "x", "-room", "r@conference.localhost"},
		} {
			t.Run(name, func(t *testing.T) {
				r := runCmd(t, bin, bad...)
				checkOneLineError(t, r)
				if r.code != 2 {
					t.Errorf("exit status %d, want 2", r.code)
				}
			})
		}
	})
}
