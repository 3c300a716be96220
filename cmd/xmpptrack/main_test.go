package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/prosody"
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
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "alice-pw"}})
	bin := build(t)
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
	} {
		t.Run(name, func(t *testing.T) {
			checkOneLineError(t, runCmd(t, bin, bad...))
		})
	}
}
