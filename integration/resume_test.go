package integration

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
)

// viaProxy makes a stream config dial through p, in plaintext so that the
// proxy can cut between stanzas.
func viaProxy(p *faultproxy.Proxy) func(*stream.Config) {
	return func(c *stream.Config) {
		c.TLS = nil
		c.AllowPlaintext = true
		c.Dial = func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", p.Addr())
		}
		// Long enough for a negotiation on a loaded machine: an attempt
		// that runs out of time is retried, but it makes the test slower.
		c.AckTimeout = 10 * time.Second
		// These tests cut the link themselves: a silent link they do not
		// test, and a Prosody starved of CPU by the parallel tests should
		// not be taken for one (the dead-link tests set their own floor).
		c.MinAckTimeout = 10 * time.Second
	}
}

// cutWhileSending calls cut `cuts` times while s sends n more stanzas, spread
// evenly over them; with live set, each cut waits for the connection that
// the previous one broke to be back, so that every cut hits a live stream.
// The returned channel is closed after the last cut, or when ctx ends.
func cutWhileSending(ctx context.Context, s *stream.Stream, n, cuts int, live bool, cut func()) <-chan struct{} {
	base := s.Stats()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= cuts; i++ {
			for st := s.Stats(); st.Sent < base.Sent+uint64(i*n/(cuts+1)) ||
				(live && st.Connections < base.Connections+i-1); st = s.Stats() {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Millisecond):
				}
			}
			cut()
		}
	}()
	return done
}

func newProxy(t *testing.T, srv server) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// ackCounter counts, per token, how often it became ACKED.
type ackCounter struct {
	mu    sync.Mutex
	acked map[*stream.StanzaToken]int
}

func (a *ackCounter) watch(tok *stream.StanzaToken) {
	tok.Observe(func(c stream.TokenChange) {
		if c.State == stream.TokenAcked {
			a.mu.Lock()
			a.acked[tok]++
			a.mu.Unlock()
		}
	})
}

// TestResumeUnderCuts sends 5,000 messages from alice to bob while the
// connection of alice is cut 20 times between stanzas: every token is
// acknowledged exactly once, and bob receives each message exactly once, in
// order.
func TestResumeUnderCuts(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		if testing.Short() {
			t.Skip("long")
		}
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		p := newProxy(t, srv)
		var resumed, newSessions atomic.Int32
		alice := dialStream(t, srv, "alice", func(c *stream.Config) {
			viaProxyOneAtATime(t, p)(c)
		})
		alice.OnEvent(func(ev stream.Event) {
			switch ev.Kind {
			case stream.EventResumed:
				resumed.Add(1)
			case stream.EventNewSession:
				newSessions.Add(1)
			}
		})
		bob := dialStream(t, srv, "bob", nil)
		box := newInbox(bob)

		const n, cuts = 5000, 20
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		counter := &ackCounter{acked: make(map[*stream.StanzaToken]int)}
		toks := make([]*stream.StanzaToken, 0, n)
		cutDone := cutWhileSending(ctx, alice, n, cuts, true, resumableCut(k, p))
		for i := range n {
			tok, err := alice.Send(ctx, chat(bob.Addr(), fmt.Sprintf("msg %d", i)))
			if err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			counter.watch(tok)
			toks = append(toks, tok)
		}
		<-cutDone
		for i, tok := range toks {
			if st, err := tok.Wait(ctx); st != stream.TokenAcked {
				t.Fatalf("token %d ended %v: %v (stats %+v)", i, st, err, alice.Stats())
			}
		}
		got := box.waitFor(t, n, time.Minute)
		time.Sleep(200 * time.Millisecond) // let any duplicate arrive
		got = box.waitFor(t, n, time.Second)
		if len(got) != n {
			t.Errorf("bob received %d messages, want %d", len(got), n)
		}
		for i := 0; i < len(got) && i < n; i++ {
			if want := fmt.Sprintf("msg %d", i); got[i] != want {
				t.Fatalf("bob's message %d is %q, want %q", i, got[i], want)
			}
		}
		counter.mu.Lock()
		for i, tok := range toks {
			if k := counter.acked[tok]; k != 1 {
				t.Errorf("token %d acked %d times", i, k)
			}
		}
		counter.mu.Unlock()
		st := alice.Stats()
		t.Logf("connections %d, resumptions %d, new sessions %d, proxy connections %d", st.Connections, st.Resumptions, st.NewSessions, p.Connections())
		if int(resumed.Load()) < cuts || st.Resumptions < cuts {
			t.Errorf("resumed %d times (events %d), want %d", st.Resumptions, resumed.Load(), cuts)
		}
		if newSessions.Load() != 0 {
			t.Errorf("%d new sessions, want none", newSessions.Load())
		}
	})
}

// TestResumeRefusedAfterRestart cuts alice's connection while stanzas she
// wrote are stuck in a stalled link, and restarts the server, so that it no
// longer knows the session and refuses to resume it: no token is ACKED
// without the server's count, the unacknowledged ones end DISCONNECTED, and
// the stream goes on in a new session.
func TestResumeRefusedAfterRestart(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := k.StartTB(t, servers.Options{Users: map[string]string{"alice": "a-pw"}})
		p := newProxy(t, srv)
		events := make(chan stream.Event, 16)
		var gate sync.RWMutex // held while alice must not reconnect
		alice := dialStream(t, srv, "alice", func(c *stream.Config) {
			viaProxyOneAtATime(t, p)(c)
			dial := c.Dial
			c.Dial = func(ctx context.Context) (net.Conn, error) {
				gate.RLock()
				defer gate.RUnlock()
				return dial(ctx)
			}
		})
		alice.OnEvent(func(ev stream.Event) { events <- ev })
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		first, err := alice.Send(ctx, chat(alice.Addr().Bare(), "kept"))
		if err != nil {
			t.Fatal(err)
		}
		if st, err := first.Wait(ctx); st != stream.TokenAcked {
			t.Fatalf("first message: %v %v", st, err)
		}
		// Nothing alice sends now reaches the server, and the cut discards it.
		p.Stall()
		var toks []*stream.StanzaToken
		for i := range 10 {
			tok, err := alice.Send(ctx, chat(alice.Addr().Bare(), fmt.Sprintf("lost %d", i)))
			if err != nil {
				t.Fatal(err)
			}
			toks = append(toks, tok)
		}
		for alice.Stats().Sent < 11 {
			time.Sleep(5 * time.Millisecond)
		}
		gate.Lock()
		p.CutRaw()
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		p.Unstall()
		gate.Unlock()
		for _, tok := range toks {
			st, err := tok.Wait(ctx)
			if st != stream.TokenDisconnected {
				t.Fatalf("token %s ended %v (%v), want DISCONNECTED; attempts %+v", tok.ID(), st, err, alice.Stats().Attempts)
			}
		}
		var sawNew bool
		for !sawNew {
			select {
			case ev := <-events:
				sawNew = ev.Kind == stream.EventNewSession
			case <-ctx.Done():
				t.Fatal("no new session")
			}
		}
		// The stream carries on.
		tok, err := alice.Send(ctx, chat(alice.Addr(), "after"))
		if err != nil {
			t.Fatal(err)
		}
		if st, err := tok.Wait(ctx); st != stream.TokenAcked {
			t.Fatalf("after new session: %v %v", st, err)
		}
		t.Logf("attempts: %+v", alice.Stats().Attempts)
	})
}

// TestCounterAgreement exchanges 1,000 mixed stanzas (messages to self, pings
// to the server, pings from bob to alice that alice's stream answers,
// presence) and checks that the server's count of what alice sent equals
// hers, then resumes and checks that the server accepted her inbound count
// (nothing delivered twice, nothing missing).
func TestCounterAgreement(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		p := newProxy(t, srv)
		alice := dialStream(t, srv, "alice", viaProxyOneAtATime(t, p))
		box := newInbox(alice)
		bob := dialStream(t, srv, "bob", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()

		var toks []*stream.StanzaToken
		send := func(tok *stream.StanzaToken, err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			toks = append(toks, tok)
		}
		msgs := 0
		for i := 0; i < 700; i++ {
			send(alice.Send(ctx, chat(alice.Addr(), fmt.Sprintf("self %d", msgs))))
			msgs++
			if i%10 == 0 {
				send(alice.Send(ctx, stanza.Presence{}.Wrap(nil)))
			}
			if i%5 == 0 {
				if _, err := alice.SendIQ(ctx, stanza.IQ{Type: stanza.GetIQ, To: srv.JID("").Domain()}, pingPayload()); err != nil {
					t.Fatal(err)
				}
				reply, err := bob.SendIQ(ctx, stanza.IQ{Type: stanza.GetIQ, To: alice.Addr()}, pingPayload())
				if err != nil {
					t.Fatal(err)
				}
				if reply.Attr("type") != "result" {
					t.Fatalf("alice answered bob's ping with %v", reply)
				}
			}
		}
		for _, tok := range toks {
			if st, err := tok.Wait(ctx); st != stream.TokenAcked {
				t.Fatalf("%s: %v %v", tok.ID(), st, err)
			}
		}
		before := alice.Stats()
		if before.Acked != before.Sent || before.Unacked != 0 {
			t.Fatalf("server acknowledged %d of %d stanzas", before.Acked, before.Sent)
		}
		if before.Sent < 1000 || before.Received < 1000 {
			t.Fatalf("only %d out and %d in", before.Sent, before.Received)
		}
		box.waitFor(t, msgs, 10*time.Second)

		// Resume: the server must neither deliver again what alice counted nor
		// lose what was in flight.
		resumableCut(k, p)()
		send(alice.Send(ctx, chat(alice.Addr(), fmt.Sprintf("self %d", msgs))))
		msgs++
		got := box.waitFor(t, msgs, 20*time.Second)
		time.Sleep(300 * time.Millisecond)
		got = box.waitFor(t, msgs, time.Second)
		if len(got) != msgs {
			t.Fatalf("alice received %d messages, want %d", len(got), msgs)
		}
		for i, b := range got {
			if b != fmt.Sprintf("self %d", i) {
				t.Fatalf("message %d is %q", i, b)
			}
		}
		if st := alice.Stats(); st.Resumptions != 1 {
			t.Fatalf("resumptions %d, want 1 (attempts %+v)", st.Resumptions, st.Attempts)
		}
	})
}

// TestRawCutsEndTruthfully cuts alice's connection anywhere, mid-stanza
// included. Prosody 0.12 may then resume onto a parser that still holds the
// torn stanza and ignore the resumed stream; the stream must notice (its ack
// request goes unanswered), give the session up, and carry on in a new one.
// Whatever happens, every token ends in a final state, and a token is ACKED
// only if bob really received its message.
func TestRawCutsEndTruthfully(t *testing.T) {
	forEachServer(t, func(t *testing.T, k servers.Kind) {
		if testing.Short() {
			t.Skip("long")
		}
		srv := testServer(t, k, servers.Options{Users: map[string]string{"alice": "a-pw", "bob": "b-pw"}})
		p := newProxy(t, srv)
		alice := dialStream(t, srv, "alice", func(c *stream.Config) {
			viaProxyOneAtATime(t, p)(c)
			c.AckTimeout = time.Second
		})
		bob := dialStream(t, srv, "bob", nil)
		box := newInbox(bob)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()

		const n, cuts = 600, 4
		toks := make([]*stream.StanzaToken, 0, n)
		cutDone := cutWhileSending(ctx, alice, n, cuts, false, p.CutRaw)
		for i := range n {
			tok, err := alice.Send(ctx, chat(bob.Addr(), fmt.Sprintf("raw %d", i)))
			if err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			toks = append(toks, tok)
			if i%20 == 0 {
				time.Sleep(5 * time.Millisecond) // spread the sends over the cuts
			}
		}
		<-cutDone
		states := make(map[stream.TokenState]int)
		for i, tok := range toks {
			st, err := tok.Wait(ctx)
			if !st.IsFinal() {
				t.Fatalf("token %d not final: %v %v", i, st, err)
			}
			states[st]++
		}
		time.Sleep(500 * time.Millisecond)
		box.mu.Lock()
		received := make(map[string]bool, len(box.bodies))
		for _, b := range box.bodies {
			received[b] = true
		}
		box.mu.Unlock()
		for i, tok := range toks {
			if tok.State() == stream.TokenAcked && !received[fmt.Sprintf("raw %d", i)] {
				t.Errorf("token %d ACKED but bob never received its message", i)
			}
		}
		st := alice.Stats()
		t.Logf("token states %v; bob received %d; resumptions %d, new sessions %d", states, len(received), st.Resumptions, st.NewSessions)
	})
}
