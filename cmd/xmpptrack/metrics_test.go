package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/internal/report"
)

// scrape reads the text exposition at url into "name{labels}" → value.
func scrape(url string) (map[string]float64, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, "", fmt.Errorf("line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, string(body), sc.Err()
}

// TestMetricsWithCuts runs "xmpptrack muc -json -metrics-addr" through a
// fault proxy that cuts the connection three times, scraping /metrics
// during the run (the scrapes also pace the cuts), and checks the last
// scrape's stream counters against the stream statistics of the run's JSON
// summary: the same connections, resumptions, refusals, new sessions,
// disconnects and dead links.
func TestMetricsWithCuts(t *testing.T) {
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "alice-pw"}})
	proxy, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	bin := build(t)

	const n, cuts = 3000, 3
	cmd := exec.CommandContext(t.Context(), bin, "muc", "-plain", "-addr", proxy.Addr(),
		"-jid", srv.JID("alice").String(), "-password", "alice-pw", "-room", "metrics@"+srv.MUCDomain(),
		"-json", "-n", strconv.Itoa(n), "-window", "1", "-timeout", "20s", "-metrics-addr", "127.0.0.1:0")
	stdout, stderr := &lineBuf{signal: make(chan struct{}, 1)}, &lineBuf{signal: make(chan struct{}, 1)}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	// The metrics address, from standard error.
	var url string
	for deadline := time.After(time.Minute); url == ""; {
		if line, _, ok := strings.Cut(stderr.String(), "\n"); ok {
			rest, ok := strings.CutPrefix(line, "metrics: ")
			if !ok {
				t.Fatalf("first line of standard error %q, want the metrics address", line)
			}
			url = rest
			break
		}
		select {
		case <-stderr.signal:
		case err := <-exited:
			t.Fatalf("exited (%v) before serving metrics; stderr: %s", err, stderr.String())
		case <-deadline:
			t.Fatal("no metrics address within a minute")
		}
	}

	// waitFor scrapes until cond holds on a scrape, and returns it.
	scrapes := 0
	waitFor := func(what string, cond func(map[string]float64) bool) (map[string]float64, string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			m, body, err := scrape(url)
			if err != nil {
				t.Fatalf("waiting for %s: %v; stderr: %s", what, err, stderr.String())
			}
			scrapes++
			if cond(m) {
				return m, body
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: not within a minute; last scrape:\n%s", what, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	const (
		sent        = "xmpptrack_stream_stanzas_sent_total"
		connections = "xmpptrack_stream_connections_total"
	)
	var last map[string]float64
	var lastBody string
	for i := 1; i <= cuts; i++ {
		waitFor(fmt.Sprintf("stanza %d", i*n/(cuts+2)), func(m map[string]float64) bool { return m[sent] >= float64(i*n/(cuts+2)) })
		proxy.Cut()
		last, lastBody = waitFor(fmt.Sprintf("connection %d", i+1), func(m map[string]float64) bool { return m[connections] >= float64(i+1) })
	}
	select {
	case err := <-exited:
		t.Fatalf("the run ended (%v) before the last scrape could be compared", err)
	default:
	}

	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(2 * time.Minute):
		t.Fatal("the run did not end")
	}
	if exitErr != nil {
		t.Fatalf("exit: %v; stderr: %s", exitErr, stderr.String())
	}
	var sum *report.Summary
	sc := bufio.NewScanner(strings.NewReader(stdout.String()))
	for sc.Scan() {
		var l struct {
			Summary *report.Summary `json:"summary"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if l.Summary != nil {
			sum = l.Summary
		}
	}
	if sum == nil || sum.Stream == nil {
		t.Fatalf("no summary with the stream's statistics; stdout ends %q", tail(stdout.String()))
	}
	st := sum.Stream
	var excerpt []string
	for _, line := range strings.Split(lastBody, "\n") {
		if strings.HasPrefix(line, "xmpptrack_") && !strings.Contains(line, "_bucket") {
			excerpt = append(excerpt, line)
		}
	}
	t.Logf("%d scrapes; the last, after cut %d:\n%s", scrapes, cuts, strings.Join(excerpt, "\n"))
	summaryJSON, _ := json.Marshal(st)
	t.Logf("summary stream: %s", summaryJSON)

	for name, want := range map[string]int{
		connections:                                  st.Connections,
		"xmpptrack_stream_resumptions_total":         st.Resumptions,
		"xmpptrack_stream_resumptions_refused_total": st.ResumeRefused,
		"xmpptrack_stream_new_sessions_total":        st.NewSessions,
		"xmpptrack_stream_disconnects_total":         st.Disconnects,
		"xmpptrack_stream_dead_links_total":          st.DeadLinks,
	} {
		if got, ok := last[name]; !ok || got != float64(want) {
			t.Errorf("%s: scraped %v (present %v), the summary says %d", name, got, ok, want)
		}
	}
	// Every cut broke a connection, and every lost connection was replaced
	// by a resumption or a new session.
	if st.Disconnects < cuts || st.Resumptions+st.NewSessions != st.Disconnects || st.Connections != 1+st.Disconnects {
		t.Errorf("summary stream %+v: not %d cuts, each followed by a reconnection", *st, cuts)
	}
	if sum.Resumptions != st.Resumptions {
		t.Errorf("summary: resumptions %d, its stream %d", sum.Resumptions, st.Resumptions)
	}
	// The scrape was taken during the run: the growing counters are at most
	// the final ones.
	for name, final := range map[string]float64{
		sent:                                     float64(st.Sent),
		"xmpptrack_stream_ack_rtt_seconds_count": float64(st.AckRTTSamples),
		`xmpptrack_trackers_started_total{client="muc"}`:          float64(sum.Sent),
		`xmpptrack_trackers_delivered_total{client="muc"}`:        float64(sum.States[report.Delivered]),
		`xmpptrack_trackers_delivery_seconds_count{client="muc"}`: float64(sum.States[report.Delivered]),
	} {
		if got, ok := last[name]; !ok || got <= 0 || got > final {
			t.Errorf("%s: scraped %v during the run, final %v", name, got, final)
		}
	}
	if sum.States[report.Delivered] != n {
		t.Errorf("summary states %v, want %d delivered", sum.States, n)
	}
}

func tail(s string) string {
	if len(s) > 500 {
		return s[len(s)-500:]
	}
	return s
}
