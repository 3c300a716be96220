package stream_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/internal/quantile"
	"github.com/xmpptrack/xmpptrack/stream"
)

// recordingHook is a stream.Hook that keeps what it is told. Each call also
// reads the stream's Stats, which would deadlock if a hook ran with the
// stream's lock held.
type recordingHook struct {
	s *stream.Stream

	mu     sync.Mutex
	rtts   []time.Duration
	events []stream.Event
	seen   chan struct{}
}

func newRecordingHook(s *stream.Stream) *recordingHook {
	return &recordingHook{s: s, seen: make(chan struct{}, 1)}
}

func (h *recordingHook) AckRTT(d time.Duration) {
	h.s.Stats()
	h.mu.Lock()
	h.rtts = append(h.rtts, d)
	h.mu.Unlock()
	h.signal()
}

func (h *recordingHook) Event(ev stream.Event) {
	h.s.Stats()
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
	h.signal()
}

func (h *recordingHook) signal() {
	select {
	case h.seen <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds on what the hook has seen.
func (h *recordingHook) waitFor(t *testing.T, what string, cond func(rtts []time.Duration, events []stream.Event) bool) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		h.mu.Lock()
		ok := cond(h.rtts, h.events)
		h.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-h.seen:
		case <-deadline:
			t.Fatalf("hook: %s did not happen", what)
		}
	}
}

func (h *recordingHook) snapshot() ([]time.Duration, []stream.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.rtts), slices.Clone(h.events)
}

// TestMetricsAckRTT checks that every ack round trip reaches the hooks and
// the Stats, whose percentiles are those of the samples the hook saw, and
// that a removed hook hears nothing more.
func TestMetricsAckRTT(t *testing.T) {
	h := start(t, nil)
	hook := newRecordingHook(h.s)
	remove := h.s.AddHook(hook)
	const rounds = 6
	for i := 1; i <= rounds; i++ {
		h.send(fmt.Sprintf("m%d", i))
		h.c.Stanzas(t, 1)
		h.c.Expect(t, "r")
		time.Sleep(time.Duration(i) * time.Millisecond) // samples of different sizes
		h.c.Write(t, ackH(uint32(i)))
		hook.waitFor(t, fmt.Sprintf("sample %d", i), func(rtts []time.Duration, _ []stream.Event) bool { return len(rtts) == i })
	}
	rtts, _ := hook.snapshot()
	st := h.s.Stats()
	if st.AckRTTSamples != rounds {
		t.Fatalf("Stats().AckRTTSamples = %d, want %d (the hook saw %v)", st.AckRTTSamples, rounds, rtts)
	}
	sorted := slices.Sorted(slices.Values(rtts))
	if p50, p99 := quantile.Percentile(sorted, 50), quantile.Percentile(sorted, 99); st.AckRTTP50 != p50 || st.AckRTTP99 != p99 {
		t.Fatalf("Stats() p50, p99 = %v, %v; want %v, %v from the samples %v", st.AckRTTP50, st.AckRTTP99, p50, p99, rtts)
	}
	for i, d := range rtts {
		// Each sample spans at least the server's pause before its <a/>.
		if d < time.Duration(i+1)*time.Millisecond {
			t.Errorf("sample %d = %v, shorter than the server's pause", i+1, d)
		}
	}

	// The hook may have seen EventConnected: Dial queues it for the
	// callback goroutine, before the samples.
	_, before := hook.snapshot()
	remove()
	remove() // a second call is harmless
	h.send("after")
	h.c.Stanzas(t, 1)
	h.c.Expect(t, "r")
	h.c.Write(t, ackH(rounds+1))
	for h.s.Stats().AckRTTSamples != rounds+1 {
		time.Sleep(time.Millisecond)
	}
	// The stream has sampled; a hook still registered would be told on
	// the callback goroutine, which a later event flushes.
	other := newRecordingHook(h.s)
	h.s.AddHook(other)
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, rounds+1) })
	h.c.Reset()
	other.waitFor(t, "resumption", func(_ []time.Duration, evs []stream.Event) bool {
		return len(evs) > 0 && evs[len(evs)-1].Kind == stream.EventResumed
	})
	if got, evs := hook.snapshot(); len(got) != rounds || len(evs) != len(before) {
		t.Fatalf("a removed hook was told of %d samples and events %+v, want %d and %+v", len(got), evs, rounds, before)
	}
}

// TestMetricsOldestUnacked checks the age of the oldest unacknowledged
// stanza: it grows while the stanza waits, follows the queue's head as
// acknowledgements arrive, survives a resumption and is 0 once nothing
// waits.
func TestMetricsOldestUnacked(t *testing.T) {
	h := start(t, nil)
	if st := h.s.Stats(); st.OldestUnacked != 0 {
		t.Fatalf("OldestUnacked = %v with nothing sent", st.OldestUnacked)
	}
	h.send("m1")
	h.c.Stanzas(t, 1) // m1 is written before mark
	mark := time.Now()
	time.Sleep(20 * time.Millisecond)
	h.send("m2")
	h.c.Stanzas(t, 1)
	if got, since := h.s.Stats().OldestUnacked, time.Since(mark); got < since {
		t.Fatalf("OldestUnacked = %v, less than the %v since m1 was written", got, since)
	}

	// A resumption writes m1 and m2 again; their age goes on from their
	// first write.
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	h.c.Reset()
	h.event(stream.EventResumed)
	c2 := h.srv.Next(t)
	c2.Stanzas(t, 2)
	if got, since := h.s.Stats().OldestUnacked, time.Since(mark); got < since {
		t.Fatalf("after the resumption OldestUnacked = %v, less than the %v since m1 was first written", got, since)
	}

	mark2 := time.Now() // after m2 was written
	c2.Write(t, ackH(1))
	for h.s.Stats().Unacked != 1 {
		time.Sleep(time.Millisecond)
	}
	if got, since := h.s.Stats().OldestUnacked, time.Since(mark); got == 0 || got >= since {
		t.Fatalf("with m1 acknowledged OldestUnacked = %v, want m2's age, below %v (m1's)", got, since)
	}
	if got, since := h.s.Stats().OldestUnacked, time.Since(mark2); got < since {
		t.Fatalf("with m1 acknowledged OldestUnacked = %v, less than the %v since m2 was written", got, since)
	}
	c2.Write(t, ackH(2))
	for h.s.Stats().Unacked != 0 {
		time.Sleep(time.Millisecond)
	}
	if got := h.s.Stats().OldestUnacked; got != 0 {
		t.Fatalf("OldestUnacked = %v with everything acknowledged", got)
	}
}

// TestMetricsConnectionCounters checks the counters of dead links and of
// refused resumptions against what the scripted server did, and that a
// hook learns of the same events.
func TestMetricsConnectionCounters(t *testing.T) {
	h := start(t, func(c *stream.Config) {
		c.AckTimeout = 300 * time.Millisecond
		c.KeepAlive = 100 * time.Millisecond
	})
	hook := newRecordingHook(h.s)
	h.s.AddHook(hook)

	// 1. A reset, resumed: neither dead nor refused.
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	h.c.Reset()
	h.event(stream.EventDisconnected)
	h.event(stream.EventResumed)
	c := h.srv.Next(t)
	// A resumed connection asks at once; unanswered, it would not be
	// resumed again.
	c.Expect(t, "r")
	c.Write(t, ackH(0))
	// 2. A silent server: a dead link, resumed.
	h.event(stream.EventDisconnected)
	c = h.srv.Next(t)
	h.event(stream.EventResumed)
	c.Expect(t, "r")
	c.Write(t, ackH(0))
	// 3. A reset whose resumption the server refuses.
	h.srv.OnResume(func(fakeserver.Resume) string { return "<failed xmlns='urn:xmpp:sm:3'/>" })
	c.Reset()
	c = h.srv.Next(t)
	c.EnableSM(t, "S2")
	h.event(stream.EventNewSession)

	st := h.s.Stats()
	want := stream.Stats{Disconnects: 3, DeadLinks: 1, Resumptions: 2, ResumeRefused: 1, NewSessions: 1, Connections: 4}
	got := stream.Stats{Disconnects: st.Disconnects, DeadLinks: st.DeadLinks, Resumptions: st.Resumptions,
		ResumeRefused: st.ResumeRefused, NewSessions: st.NewSessions, Connections: st.Connections}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Stats counters %+v, want %+v", got, want)
	}
	hook.waitFor(t, "the new session", func(_ []time.Duration, evs []stream.Event) bool {
		return len(evs) > 0 && evs[len(evs)-1].Kind == stream.EventNewSession
	})
	_, evs := hook.snapshot()
	var dead, refused int
	for _, ev := range evs {
		if ev.Kind == stream.EventDisconnected && errors.Is(ev.Err, stream.ErrAckTimeout) {
			dead++
		}
		if ev.Kind == stream.EventNewSession && errors.Is(ev.Err, stream.ErrResumeRefused) {
			refused++
		}
	}
	if dead != st.DeadLinks || refused != st.ResumeRefused {
		t.Fatalf("the hook saw %d dead links and %d refusals, Stats says %d and %d", dead, refused, st.DeadLinks, st.ResumeRefused)
	}
}

// TestScriptedWireStats: Stats counts the bytes written after negotiation
// and the stream management requests and answers both ways.
func TestScriptedWireStats(t *testing.T) {
	h := start(t, nil)
	before := h.s.Stats()
	toks := h.send("m1", "m2")
	h.c.Stanzas(t, 2)
	h.c.Write(t, ackH(2))
	waitState(t, stream.TokenAcked, toks...)
	h.c.Write(t, "<r xmlns='urn:xmpp:sm:3'/>")
	for h.c.Next(t).Start.Name.Local != "a" {
	}
	st := h.s.Stats()
	if got := st.RequestsReceived - before.RequestsReceived; got != 1 {
		t.Errorf("RequestsReceived went up by %d, want 1", got)
	}
	if st.AnswersSent == before.AnswersSent {
		t.Error("AnswersSent did not count the answer to <r/>")
	}
	if got := st.AnswersRead - before.AnswersRead; got != 1 {
		t.Errorf("AnswersRead went up by %d, want 1", got)
	}
	// Each stanza is at least "<message id='mN'/>"-sized, and the answer
	// is at least <a xmlns='urn:xmpp:sm:3' h='0'/>; the writer counts
	// them once its write has returned.
	least := uint64(2*len("<message id='m1'/>") + len("<a xmlns='urn:xmpp:sm:3' h='0'/>"))
	deadline := time.Now().Add(waitFor)
	for h.s.Stats().BytesWritten-before.BytesWritten < least && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := h.s.Stats().BytesWritten - before.BytesWritten; got < least {
		t.Errorf("BytesWritten went up by %d, want at least %d", got, least)
	}
}
