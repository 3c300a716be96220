package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/stream"
)

// The tests of dead-link detection give the stream an ack timeout far longer
// than the bounds they check, so that only a timeout that adapts to the
// measured round trips, or an idle probe, can meet them.
const (
	// deadLinkAckTimeout is Config.AckTimeout for the silent-link tests.
	deadLinkAckTimeout = 60 * time.Second
	// giveUpDetection is how long a test waits for a detection before it
	// fails: past the bounds, well short of the ack timeout.
	giveUpDetection = 20 * time.Second
)

// eventLog collects a stream's connection events.
type eventLog struct {
	ch      chan stream.Event
	dropped atomic.Int32 // events that did not fit in ch
}

// watch makes a stream report its connection events to l.
func (l *eventLog) watch(s *stream.Stream) {
	l.ch = make(chan stream.Event, 1024)
	s.OnEvent(func(ev stream.Event) {
		select {
		case l.ch <- ev:
		default:
			l.dropped.Add(1)
		}
	})
}

// quiet fails t if the stream lost its connection since the last call.
func (l *eventLog) quiet(t testing.TB, what string) {
	t.Helper()
	if n := l.dropped.Load(); n > 0 {
		t.Fatalf("%s: %d events dropped", what, n)
	}
	for {
		select {
		case ev := <-l.ch:
			if ev.Kind == stream.EventDisconnected || ev.Kind == stream.EventNewSession {
				t.Fatalf("%s: %v at %v (%v)", what, ev.Kind, ev.At.Format(time.StampMilli), ev.Err)
			}
		default:
			return
		}
	}
}

// detection waits until the stream reports its connection lost to an ack
// timeout, and returns how long after since that happened. It fails t if
// that does not happen within giveUpDetection, or if the connection is lost
// to something else.
func (l *eventLog) detection(t testing.TB, since time.Time) time.Duration {
	t.Helper()
	deadline := time.NewTimer(time.Until(since.Add(giveUpDetection)))
	defer deadline.Stop()
	for {
		select {
		case ev := <-l.ch:
			if ev.Kind != stream.EventDisconnected {
				t.Fatalf("%v (%v) while the link was silent", ev.Kind, ev.Err)
			}
			if !errors.Is(ev.Err, stream.ErrAckTimeout) {
				t.Fatalf("disconnected by %v, want an ack timeout", ev.Err)
			}
			return ev.At.Sub(since)
		case <-deadline.C:
			t.Fatalf("the silent link was not found dead within %v (ack timeout %v)", giveUpDetection, deadLinkAckTimeout)
			return 0
		}
	}
}

// resumed waits until the stream has resumed its session.
func (l *eventLog) resumed(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		select {
		case ev := <-l.ch:
			switch ev.Kind {
			case stream.EventResumed:
				return
			case stream.EventNewSession, stream.EventClosed:
				t.Fatalf("%v (%v), want the session resumed", ev.Kind, ev.Err)
			}
		case <-deadline.C:
			t.Fatalf("the session was not resumed within %v", within)
		}
	}
}

// revive ends the connection that the stream gave up on and lets the link
// carry bytes again. A silent link is silent for the server too: it still
// holds the connection, so the stream's resumption could find the session in
// use. Cut ends it stanza-safely and holds new connections until the server
// has read it to the end; the stream's attempts during the stall are cut
// too, and it tries again.
func revive(p *faultproxy.Proxy) {
	p.Cut()
	p.Unstall()
}

// TestDeadLinkWhileSending blackholes a fast link three times at a random
// moment while alice sends messages to herself with 20 in flight, and
// measures the time from the blackhole to the stream declaring the link dead
// (EventDisconnected with ErrAckTimeout): each must be under 10 s although
// the ack timeout is 60 s. After each, the link comes back and the session is
// resumed; every message ends ACKED.
func TestDeadLinkWhileSending(t *testing.T) {
	t.Parallel()
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "a-pw"}, NoMUC: true})
	p := newProxy(t, srv)
	var events eventLog
	alice := dialStream(t, srv, "alice", func(c *stream.Config) {
		viaProxy(p)(c)
		c.MinAckTimeout = 3 * time.Second // the default floor, which these tests measure
		c.AckTimeout = deadLinkAckTimeout
	})
	events.watch(alice)
	t.Cleanup(p.Unstall) // before the stream closes
	events.quiet(t, "before sending")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	const window = 20
	var (
		mu   sync.Mutex
		toks []*stream.StanzaToken
	)
	stop := make(chan struct{})
	senderDone := make(chan struct{})
	var sendErr error
	go func() {
		defer close(senderDone)
		sem := make(chan struct{}, window)
		for i := 0; ; i++ {
			select {
			case sem <- struct{}{}:
			case <-stop:
				return
			case <-ctx.Done():
				sendErr = ctx.Err()
				return
			}
			tok, err := alice.Send(ctx, chat(alice.Addr(), fmt.Sprintf("busy %d", i)))
			if err != nil {
				sendErr = fmt.Errorf("send %d: %w", i, err)
				return
			}
			mu.Lock()
			toks = append(toks, tok)
			mu.Unlock()
			go func() {
				tok.Wait(ctx)
				<-sem
			}()
		}
	}()
	stopSending := sync.OnceValue(func() error {
		close(stop)
		<-senderDone
		return sendErr
	})
	defer func() {
		cancel()
		stopSending()
	}()

	const blackholes = 3
	var found []time.Duration
	for i := range blackholes {
		// Blackhole a stream that is delivering: the server acknowledged
		// several windows since the last resumption.
		base := alice.Stats().Acked
		for alice.Stats().Acked < base+3*window {
			select {
			case <-senderDone:
				t.Fatalf("blackhole %d: sending stopped: %v", i+1, sendErr)
			case <-time.After(5 * time.Millisecond):
			}
		}
		time.Sleep(rand.N(500 * time.Millisecond))
		events.quiet(t, fmt.Sprintf("before blackhole %d", i+1))
		stalled := time.Now()
		p.Stall()
		d := events.detection(t, stalled)
		found = append(found, d)
		t.Logf("dead-link detection (fast link): blackhole %d found after %v", i+1, d.Round(time.Millisecond))
		if d >= 10*time.Second {
			t.Errorf("blackhole %d found after %v, want under 10s", i+1, d.Round(time.Millisecond))
		}
		revive(p)
		events.resumed(t, 20*time.Second)
	}
	if err := stopSending(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, tok := range toks {
		if st, err := tok.Wait(ctx); st != stream.TokenAcked {
			t.Fatalf("message %d ended %v (%v)", i, st, err)
		}
	}
	st := alice.Stats()
	t.Logf("dead-link detection (fast link): %v; %d messages, connections %d, resumptions %d", roundAll(found), len(toks), st.Connections, st.Resumptions)
	if st.Resumptions != blackholes || st.NewSessions != 0 {
		t.Errorf("%d resumptions and %d new sessions, want %d and none (attempts %+v)", st.Resumptions, st.NewSessions, blackholes, st.Attempts)
	}
}

// TestDeadLinkIdle blackholes an idle link, twice: nothing is sent, so only
// the stream's idle probe (an ack request after KeepAlive, 2 s) can find it
// dead; it must, within 12 s, although the ack timeout is 60 s.
func TestDeadLinkIdle(t *testing.T) {
	t.Parallel()
	const keepAlive = 2 * time.Second
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "a-pw"}, NoMUC: true})
	p := newProxy(t, srv)
	var events eventLog
	alice := dialStream(t, srv, "alice", func(c *stream.Config) {
		viaProxy(p)(c)
		c.MinAckTimeout = 3 * time.Second // the default floor, which these tests measure
		c.AckTimeout = deadLinkAckTimeout
		c.KeepAlive = keepAlive
	})
	events.watch(alice)
	t.Cleanup(p.Unstall) // before the stream closes

	const blackholes = 2
	var found []time.Duration
	for i := range blackholes {
		// At any moment of the probe's cycle.
		time.Sleep(rand.N(keepAlive))
		events.quiet(t, fmt.Sprintf("idle, before blackhole %d", i+1))
		stalled := time.Now()
		p.Stall()
		d := events.detection(t, stalled)
		found = append(found, d)
		t.Logf("dead-link detection (idle link): blackhole %d found after %v", i+1, d.Round(time.Millisecond))
		if d >= 12*time.Second {
			t.Errorf("blackhole %d found after %v, want under 12s", i+1, d.Round(time.Millisecond))
		}
		revive(p)
		events.resumed(t, 20*time.Second)
	}
	st := alice.Stats()
	t.Logf("dead-link detection (idle link): %v; stanzas sent %d, resumptions %d", roundAll(found), st.Sent, st.Resumptions)
	if st.Sent != 0 {
		t.Errorf("the stream sent %d stanzas; the test needs an idle one", st.Sent)
	}
}

// TestDeadLinkSlowLinkStaysUp runs alice's stream over a live link with
// 2.5 s of latency each way (a 5 s round trip), from the first byte of the
// negotiation on, and sends messages to bob for about 20 s with a few in
// flight, then a burst of 1,000 at once. They go to bob, not back to alice,
// so that while an ack request waits its 5 s nothing else arrives: a
// dead-link timeout that does not adapt to the round trip would fire. No
// connection may be lost, and every message ends ACKED.
func TestDeadLinkSlowLinkStaysUp(t *testing.T) {
	t.Parallel()
	const (
		oneWay  = 2500 * time.Millisecond
		sending = 20 * time.Second
		window  = 5
		burst   = 1000
	)
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}, NoMUC: true})
	p := newProxy(t, srv)
	p.SetLatency(oneWay)
	var events eventLog
	bob := dialStream(t, srv, "bob", nil)
	// A lost connection ends the test at once: what follows it on a slow
	// link would only take long.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	// The negotiation takes several round trips of 5 s.
	alice := dialStreamWithin(t, 2*time.Minute, srv, "alice", func(c *stream.Config) {
		viaProxy(p)(c)
		c.MinAckTimeout = 3 * time.Second // the default floor, which these tests measure
		c.AckTimeout = 30 * time.Second   // the default
	})
	events.watch(alice)
	alice.OnEvent(func(ev stream.Event) {
		if ev.Kind == stream.EventDisconnected {
			cancel()
		}
	})
	connected := time.Now()
	t.Logf("slow link: connected after %v", connected.Sub(start).Round(time.Millisecond))
	// Closing need not wait for the server's answer at 2.5 s.
	t.Cleanup(func() { p.SetLatency(0) })
	fatal := func(format string, args ...any) {
		t.Helper()
		events.quiet(t, "on a slow but live link")
		t.Fatalf(format, args...)
	}
	type timed struct {
		tok         *stream.StanzaToken
		sent, acked time.Time
	}
	var (
		mu   sync.Mutex
		msgs []*timed
	)
	sem := make(chan struct{}, window)
	var wg sync.WaitGroup
	end := time.Now().Add(sending)
	for i := 0; time.Now().Before(end); i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			fatal("sending: %v", ctx.Err())
		}
		tok, err := alice.Send(ctx, chat(bob.Addr(), fmt.Sprintf("slow %d", i)))
		if err != nil {
			fatal("send %d: %v", i, err)
		}
		m := &timed{tok: tok}
		tok.Observe(func(c stream.TokenChange) {
			mu.Lock()
			defer mu.Unlock()
			switch c.State {
			case stream.TokenSent:
				m.sent = time.Now()
			case stream.TokenAcked:
				m.acked = time.Now()
			}
		})
		mu.Lock()
		msgs = append(msgs, m)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok.Wait(ctx)
			<-sem
		}()
	}
	steady := len(msgs)

	// Then a burst, behind the last window: the last of it is acknowledged
	// a round trip after the server got through all of it.
	for i := range burst {
		tok, err := alice.Send(ctx, chat(bob.Addr(), fmt.Sprintf("slow burst %d", i)))
		if err != nil {
			fatal("burst %d: %v", i, err)
		}
		mu.Lock()
		msgs = append(msgs, &timed{tok: tok})
		mu.Unlock()
	}

	wg.Wait()
	for i, m := range msgs {
		if st, err := m.tok.Wait(ctx); st != stream.TokenAcked {
			fatal("message %d ended %v (%v)", i, st, err)
		}
	}
	mu.Lock()
	var rtts []time.Duration
	for _, m := range msgs[:steady] {
		if !m.sent.IsZero() && !m.acked.IsZero() {
			rtts = append(rtts, m.acked.Sub(m.sent))
		}
	}
	mu.Unlock()
	events.quiet(t, "on a slow but live link")
	t.Logf("slow link: %d messages, all acknowledged %v after connecting", len(msgs), time.Since(connected).Round(time.Millisecond))
	st := alice.Stats()
	if st.Disconnects != 0 || st.Connections != 1 {
		t.Errorf("%d disconnects, %d connections: the slow link was taken for dead (last error %v)", st.Disconnects, st.Connections, st.LastErr)
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		t.Logf("slow link (2.5s one way): %d messages in a window of %d, send-to-ack min %v, median %v, max %v", steady, window,
			rtts[0].Round(time.Millisecond), rtts[len(rtts)/2].Round(time.Millisecond), rtts[len(rtts)-1].Round(time.Millisecond))
		if rtts[0] < 2*oneWay {
			t.Errorf("a message was acknowledged %v after it was sent: the link was not slow", rtts[0])
		}
	}
}

// TestDeadLinkBurst queues 3,000 messages to bob at once on a fast link: the
// server takes a while to acknowledge them all, and only acks come back to
// alice meanwhile. That must not look like a dead link: no connection is
// lost, and every message ends ACKED.
func TestDeadLinkBurst(t *testing.T) {
	const n = 3000
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}, NoMUC: true})
	p := newProxy(t, srv)
	var events eventLog
	bob := dialStream(t, srv, "bob", nil)
	alice := dialStream(t, srv, "alice", func(c *stream.Config) {
		viaProxy(p)(c)
		c.MinAckTimeout = 3 * time.Second // the default floor, which these tests measure
		c.AckTimeout = deadLinkAckTimeout
		c.MaxUnacked = 2 * n
		c.QueueSize = 2 * n
	})
	events.watch(alice)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	start := time.Now()
	toks := make([]*stream.StanzaToken, 0, n)
	for i := range n {
		tok, err := alice.Send(ctx, chat(bob.Addr(), fmt.Sprintf("burst %d", i)))
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		toks = append(toks, tok)
	}
	queued := time.Since(start)
	for i, tok := range toks {
		if st, err := tok.Wait(ctx); st != stream.TokenAcked {
			t.Fatalf("message %d ended %v (%v)", i, st, err)
		}
	}
	events.quiet(t, "during a burst")
	st := alice.Stats()
	t.Logf("burst of %d: queued in %v, all acknowledged after %v; disconnects %d", n, queued.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), st.Disconnects)
	if st.Disconnects != 0 || st.Connections != 1 {
		t.Errorf("%d disconnects, %d connections during the burst (last error %v)", st.Disconnects, st.Connections, st.LastErr)
	}
}

// roundAll rounds durations to the millisecond, for logs.
func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
