// Tests of defects found in review, against the scripted server of
// internal/fakeserver (see scripted_test.go): each needs the server to do
// something on cue (refuse a resumption at a given moment, send an
// unreadable stanza again and again, fail a write) that a real server does
// not do on demand.

package stream_test

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/stream"
)

const refused = "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"

// TestScriptedSendIQLostWithSession: an IQ written in a session that is then
// lost (resumption refused) can get no reply; SendIQ must say so instead of
// waiting forever. Both an IQ the server never acknowledged and one it did
// (its reply went to the old resource) are lost.
func TestScriptedSendIQLostWithSession(t *testing.T) {
	for _, ackedFirst := range []bool{false, true} {
		name := "unacknowledged"
		if ackedFirst {
			name = "acknowledged"
		}
		t.Run(name, func(t *testing.T) {
			h := start(t, nil)
			errc := make(chan error, 1)
			go func() {
				_, err := h.s.SendIQ(context.Background(), stanza.IQ{Type: stanza.GetIQ, To: peer}, nil)
				errc <- err
			}()
			if got := h.c.Stanzas(t, 1); len(got) != 1 {
				t.Fatal("no IQ")
			}
			if ackedFirst {
				h.c.Write(t, ackH(1))
			}
			h.srv.OnResume(func(fakeserver.Resume) string { return refused })
			h.c.Reset()
			c2 := h.srv.Next(t)
			c2.EnableSM(t, "S2")
			select {
			case err := <-errc:
				if !errors.Is(err, stream.ErrIQLost) || !errors.Is(err, stream.ErrResumeRefused) {
					t.Fatalf("SendIQ = %v, want ErrIQLost and ErrResumeRefused", err)
				}
			case <-time.After(waitFor):
				t.Fatal("SendIQ still waits after its session was lost")
			}
			// An IQ sent in the new session gets its reply as usual.
			go autoServe(c2)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if _, err := h.s.SendIQ(ctx, stanza.IQ{Type: stanza.GetIQ, To: peer}, nil); err != nil {
				t.Fatalf("SendIQ in the new session: %v", err)
			}
		})
	}
}

// TestScriptedRemoveFuncHandler removes a handler of an uncomparable type
// (xmpp.HandlerFunc), which used to panic, and checks that only it is gone.
func TestScriptedRemoveFuncHandler(t *testing.T) {
	h := start(t, nil)
	var a, b atomic.Int32
	removeA := h.s.Handle(xmpp.HandlerFunc(func(xmlstream.TokenReadEncoder, *xml.StartElement) error { a.Add(1); return nil }))
	h.s.Handle(xmpp.HandlerFunc(func(xmlstream.TokenReadEncoder, *xml.StartElement) error { b.Add(1); return nil }))
	h.c.Write(t, serverMessage("in1"))
	waitFor := time.Now().Add(waitFor)
	for b.Load() != 1 && time.Now().Before(waitFor) {
		time.Sleep(time.Millisecond)
	}
	removeA()
	removeA() // a second call does nothing
	h.c.Write(t, serverMessage("in2"))
	for b.Load() != 2 && time.Now().Before(waitFor) {
		time.Sleep(time.Millisecond)
	}
	if a.Load() != 1 || b.Load() != 2 {
		t.Fatalf("handlers ran %d and %d times, want 1 (removed) and 2", a.Load(), b.Load())
	}
}

// TestScriptedHandlerWritesBetweenStanzas: white space, a comment and a
// processing instruction that a handler writes around its reply are not
// stanzas: they must not be counted (every later ack would be off by one)
// and a processing instruction must never reach the wire.
func TestScriptedHandlerWritesBetweenStanzas(t *testing.T) {
	h := start(t, nil)
	h.s.Handle(xmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		for _, tok := range []xml.Token{
			xml.CharData("\n  "), xml.Comment("a comment"), xml.ProcInst{Target: "pi", Inst: []byte("x")},
		} {
			if err := r.EncodeToken(tok); err != nil {
				return err
			}
		}
		_, err := xmlstream.Copy(r, message("reply"))
		return err
	}))
	h.c.Write(t, serverMessage("in1"))
	if got := h.c.Stanzas(t, 1); got[0] != "reply" {
		t.Fatalf("server received %v, want the reply", got)
	}
	// One stanza went out: an ack of 1 covers it, and is no violation.
	h.c.Write(t, ackH(1))
	toks := h.send("m2")
	h.c.Stanzas(t, 1)
	h.c.Write(t, ackH(2))
	waitState(t, stream.TokenAcked, toks...)
	if st := h.s.Stats(); st.Sent != 2 || st.Acked != 2 || h.s.Err() != nil {
		t.Fatalf("Stats: Sent=%d Acked=%d, Err=%v; want 2, 2, nil", st.Sent, st.Acked, h.s.Err())
	}
	if got := h.c.Received(); strings.Contains(got, "<?pi") || strings.Contains(got, "<!--") {
		t.Fatalf("a processing instruction or comment reached the wire: %s", got)
	}
}

// TestScriptedHandlerAnswersLater: a handler that answers an IQ from another
// goroutine returns ErrAnswerLater; the stream must not send its own
// service-unavailable first.
func TestScriptedHandlerAnswersLater(t *testing.T) {
	h := start(t, nil)
	h.s.Handle(xmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		if start.Name.Local != "iq" {
			return nil
		}
		iq, err := stanza.NewIQ(*start)
		if err != nil {
			return err
		}
		go func() {
			time.Sleep(50 * time.Millisecond)
			h.s.Send(context.Background(), iq.Result(nil))
		}()
		return stream.ErrAnswerLater
	}))
	h.c.Write(t, "<iq type='get' id='q1' from='example.test'><query xmlns='urn:example:slow'/></iq>")
	var reply fakeserver.Element
	for reply = h.c.Next(t); !reply.IsStanza(); reply = h.c.Next(t) {
	}
	if reply.Attr("id") != "q1" || reply.Attr("type") != "result" {
		t.Fatalf("first reply %s, want the handler's result", reply)
	}
	h.c.NoStanza(t, 100*time.Millisecond)
}

// TestScriptedCloseEndsCleanly: Close tells the server what the client
// handled (a last <a h/>, XEP-0198 §4) before </stream:stream>, waits for the
// server's </stream:stream>, and closes with a FIN, not a reset that could
// make the server's kernel drop those last bytes.
func TestScriptedCloseEndsCleanly(t *testing.T) {
	h := start(t, nil)
	for _, id := range ids("in", 1, 3) {
		h.c.Write(t, serverMessage(id))
	}
	for h.s.Stats().Received != 3 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := h.s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := h.c.TCPEnd(t); err != nil {
		t.Fatalf("the connection did not end with a FIN: %v", err)
	}
	if got := h.c.Received(); !strings.HasSuffix(got, ackH(3)+"</stream:stream>") {
		t.Fatalf("the client's stream ends with %q, want a last <a h='3'/> then </stream:stream>", got[max(0, len(got)-120):])
	}
}

// TestScriptedServerEndsStreamCleanly: when the server ends its stream, the
// client ends its own (RFC 6120 §4.4) and closes with a FIN; the session is
// then gone, so the client starts a new one.
func TestScriptedServerEndsStreamCleanly(t *testing.T) {
	h := start(t, nil)
	h.c.EndStream(t)
	if err := h.c.End(t); err != io.EOF {
		t.Fatalf("the client did not end its stream: %v", err)
	}
	if err := h.c.TCPEnd(t); err != nil {
		t.Fatalf("the connection did not end with </stream:stream> and a FIN: %v", err)
	}
	c2 := h.srv.Next(t)
	if c2.Resume != nil {
		t.Fatalf("the client resumed a session the server ended: %+v", c2.Resume)
	}
}

// TestScriptedStreamErrorIsDelivered: the handled-count-too-high stream error
// is followed by a FIN, so the server reads all of it, never a reset that
// may discard it.
func TestScriptedStreamErrorIsDelivered(t *testing.T) {
	h := start(t, nil)
	h.send("m1")
	h.c.Stanzas(t, 1)
	h.c.Write(t, ackH(5))
	if err := h.c.TCPEnd(t); err != nil {
		t.Fatalf("the connection did not end with a FIN after the stream error: %v", err)
	}
	got := h.c.Received()
	if !strings.Contains(got, "<handled-count-too-high xmlns='urn:xmpp:sm:3' h='5' send-count='1'/></stream:error></stream:stream>") {
		t.Fatalf("no handled-count-too-high stream error in %s", got)
	}
	waitDone(t, h.s)
}

// TestScriptedResumeAtLocation: <enabled location/> names where the server
// wants the session resumed; the client goes there first, and falls back to
// its usual address when that fails.
func TestScriptedResumeAtLocation(t *testing.T) {
	t.Run("location answers", func(t *testing.T) {
		other := fakeserver.New(t)
		other.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
		h := startWith(t, nil, func(c *fakeserver.Conn) { c.EnableSMAt(t, "S1", other.Addr()) })
		h.c.Reset()
		c2 := other.Next(t)
		if c2.Resume == nil || c2.Resume.PrevID != "S1" {
			t.Fatalf("the location got %+v, want the resumption of S1", c2.Resume)
		}
		h.event(stream.EventResumed)
	})
	t.Run("location unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gone := ln.Addr().String()
		ln.Close()
		h := startWith(t, nil, func(c *fakeserver.Conn) { c.EnableSMAt(t, "S1", gone) })
		h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
		h.c.Reset()
		c2 := h.srv.Next(t)
		if c2.Resume == nil || c2.Resume.PrevID != "S1" {
			t.Fatalf("the usual address got %+v, want the resumption of S1", c2.Resume)
		}
		h.event(stream.EventResumed)
	})
}

// failingConn fails every write once failing is set.
type failingConn struct {
	net.Conn
	failing *atomic.Bool
}

func (c failingConn) Write(b []byte) (int, error) {
	if c.failing.Load() {
		return 0, errors.New("write failed on purpose")
	}
	return c.Conn.Write(b)
}

// TestScriptedWriteFailsWithoutSM: without stream management, stanzas whose
// write failed must not claim SENT_WITHOUT_SM (written): they end
// DISCONNECTED.
func TestScriptedWriteFailsWithoutSM(t *testing.T) {
	var failing atomic.Bool
	h := startWith(t, func(c *stream.Config) {
		c.DisableSM = true
		dial := c.Dial
		c.Dial = func(ctx context.Context) (net.Conn, error) {
			nc, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			return failingConn{nc, &failing}, nil
		}
	}, func(*fakeserver.Conn) {})
	ok := h.send("ok")
	waitState(t, stream.TokenSentWithoutSM, ok...)
	failing.Store(true)
	lost := h.send("lost")
	for _, tok := range lost {
		if _, err := tok.Wait(context.Background()); !errors.Is(err, stream.ErrConnectionLost) {
			t.Fatalf("token %s: %v (%v), want DISCONNECTED with ErrConnectionLost", tok.ID(), tok.State(), err)
		}
	}
	checkState(t, stream.TokenDisconnected, lost...)
	failing.Store(false)
}

// TestScriptedUnreadableStanza: a stanza the decoder rejects breaks the
// connection; the server sends it again on every resumption. After a few
// such loops the client must start a new session, and say why.
func TestScriptedUnreadableStanza(t *testing.T) {
	h := start(t, nil)
	const poison = "<message from='peer@example.test/x' id='bad'><body>&undefined;</body></message>"
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	c := h.c
	c.Write(t, serverMessage("in1"))
	c.Write(t, poison)
	resumptions := 0
	for {
		c = h.srv.Next(t)
		if c.Resume == nil {
			break
		}
		if c.Resume.H != "1" {
			t.Fatalf("resumed with h %s, want 1", c.Resume.H)
		}
		resumptions++
		if resumptions > 5 {
			t.Fatalf("still resuming onto the unreadable stanza after %d resumptions", resumptions)
		}
		c.Write(t, poison)
	}
	c.EnableSM(t, "S2")
	ev := h.event(stream.EventNewSession)
	if !errors.Is(ev.Err, stream.ErrUnreadable) {
		t.Fatalf("new session because of %v, want ErrUnreadable", ev.Err)
	}
	if resumptions != 2 {
		t.Errorf("%d resumptions before the new session, want 2 (3 connections lost at the same stanza)", resumptions)
	}
}

// TestScriptedDeadLinkAdapts: with the default floor lowered for the test
// and a ceiling of a minute, a link that answers nothing is found dead after
// the floor, long before the ceiling (before, AckTimeout alone decided).
func TestScriptedDeadLinkAdapts(t *testing.T) {
	h := start(t, func(c *stream.Config) {
		c.AckTimeout = time.Minute
		c.MinAckTimeout = 200 * time.Millisecond
	})
	h.srv.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	begin := time.Now()
	h.send("m1")
	ev := h.event(stream.EventDisconnected)
	if !errors.Is(ev.Err, stream.ErrAckTimeout) {
		t.Fatalf("disconnected by %v, want ErrAckTimeout", ev.Err)
	}
	if d := time.Since(begin); d < 200*time.Millisecond {
		t.Fatalf("taken for dead after %v, under the floor", d)
	}
	t.Logf("dead link found after %v (floor 200ms, ceiling 1m)", time.Since(begin).Round(time.Millisecond))
}

// TestScriptedBusyLinkIsAlive: a server that keeps sending while it is slow
// to acknowledge is not taken for dead at the floor.
func TestScriptedBusyLinkIsAlive(t *testing.T) {
	h := start(t, func(c *stream.Config) {
		c.AckTimeout = time.Minute
		c.MinAckTimeout = 200 * time.Millisecond
	})
	toks := h.send("m1")
	h.c.Stanzas(t, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 10; i++ {
			time.Sleep(80 * time.Millisecond)
			h.c.Send(serverMessage("busy"))
		}
		h.c.Send(ackH(1))
	}()
	wg.Wait()
	waitState(t, stream.TokenAcked, toks...)
	h.noEvent(stream.EventDisconnected)
}
