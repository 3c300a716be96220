package faultproxy_test

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
)

// latency is the one-way latency of the tests that measure it.
const latency = 150 * time.Millisecond

// took returns how long f took.
func took(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// oneWay checks that what the client writes reaches the server, and what the
// server writes reaches the client, no sooner than d after it was written.
func oneWay(t *testing.T, c, sc net.Conn, up, down string, d time.Duration) {
	t.Helper()
	if got := took(func() { write(t, c, up); readN(t, sc, up) }); got < d {
		t.Errorf("client to server took %v, want at least %v", got, d)
	}
	if got := took(func() { write(t, sc, down); readN(t, c, down) }); got < d {
		t.Errorf("server to client took %v, want at least %v", got, d)
	}
}

func TestLatency(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())

	// A live connection is delayed from the moment the latency is set.
	live := dial(t, p)
	write(t, live, header)
	sl := s.next(t)
	readN(t, sl, header)
	if got := took(func() { write(t, live, "<presence/>"); readN(t, sl, "<presence/>") }); got >= latency {
		t.Fatalf("without latency a stanza took %v", got)
	}
	p.SetLatency(latency)
	oneWay(t, live, sl, "<message id='1'/>", "<message id='2'/>", latency)

	// So is a connection accepted later, from its first byte on.
	c := dial(t, p)
	var sc net.Conn
	if got := took(func() { write(t, c, header); sc = s.next(t); readN(t, sc, header) }); got < latency {
		t.Errorf("the stream header took %v, want at least %v", got, latency)
	}
	oneWay(t, c, sc, "<iq id='1'/>", "<iq id='1' type='result'/>", latency)

	// Back to no latency.
	p.SetLatency(0)
	if got := took(func() { write(t, c, "<presence/>"); readN(t, sc, "<presence/>") }); got >= latency {
		t.Errorf("after SetLatency(0) a stanza took %v", got)
	}
}

// TestLatencyOrder lowers the latency while bytes are delayed: the bytes read
// later, due at once, must not overtake them.
func TestLatencyOrder(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	const d = 300 * time.Millisecond
	p.SetLatency(d)
	start := time.Now()
	write(t, c, "<a/>")
	write(t, sc, "<x/>")
	time.Sleep(50 * time.Millisecond) // the proxy reads both meanwhile
	p.SetLatency(0)
	write(t, c, "<b/>")
	write(t, sc, "<y/>")
	readN(t, sc, "<a/><b/>")
	readN(t, c, "<x/><y/>")
	if got := time.Since(start); got < d {
		t.Errorf("the delayed bytes arrived after %v, want at least %v", got, d)
	}
}

// TestLatencyPassThrough sends large streams both ways through an echo
// server while the latency changes: every byte arrives, in order, and the
// end of each stream (a FIN) comes after its last byte.
func TestLatencyPassThrough(t *testing.T) {
	echo := newEchoServer(t)
	p := newProxy(t, echo)
	p.SetLatency(20 * time.Millisecond)
	rng := rand.New(rand.NewPCG(5, 6))
	inputs := []string{stream(300, 100, rng), stream(4, 1<<20, rng), "\x16\x03\x01 opaque bytes"}

	stop := make(chan struct{})
	toggled := make(chan struct{})
	go func() {
		defer close(toggled)
		r := rand.New(rand.NewPCG(7, 8))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(r.IntN(15)) * time.Millisecond):
			}
			p.SetLatency(time.Duration(r.IntN(3)) * 15 * time.Millisecond)
		}
	}()

	var wg sync.WaitGroup
	for i, in := range inputs {
		c := dial(t, p)
		wg.Add(2)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 9))
			for rest := in; len(rest) > 0; {
				n := min(len(rest), 1+r.IntN(50000))
				if _, err := io.WriteString(c, rest[:n]); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				rest = rest[n:]
				if r.IntN(4) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			c.CloseWrite()
		}()
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(4 * timeout))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("stream %d: read: %v", i, err)
			}
			if string(got) != in {
				t.Errorf("stream %d: echoed %d bytes, want the %d sent, unchanged", i, len(got), len(in))
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-toggled
}

// TestLatencyStall stalls the link while bytes are delayed: they are held
// past their time until Unstall.
func TestLatencyStall(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	p.SetLatency(latency)
	write(t, c, "<presence/>")
	write(t, sc, "<iq/>")
	time.Sleep(latency / 3) // the proxy reads both meanwhile
	p.Stall()
	time.Sleep(latency)
	quiet(t, sc)
	quiet(t, c)
	p.Unstall()
	readN(t, sc, "<presence/>")
	readN(t, c, "<iq/>")
}

// TestLatencyCut cuts a connection while a stanza is delayed: the cut
// discards it, and the server leg still ends with a FIN.
func TestLatencyCut(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	p.SetLatency(time.Minute)
	write(t, c, "<message><body>delayed</body></message>")
	write(t, sc, "<iq/>")
	time.Sleep(50 * time.Millisecond) // the proxy reads both meanwhile
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		p.Cut()
	}()
	if b, err := readEnd(t, sc); err != nil || len(b) > 0 {
		t.Fatalf("server read %q, %v after the cut; want EOF", b, err)
	}
	sc.Close()
	if b, err := readEnd(t, c); !errors.Is(err, syscall.ECONNRESET) || len(b) > 0 {
		t.Errorf("client read %q, %v; want a reset", b, err)
	}
	select {
	case <-cut:
	case <-time.After(timeout):
		t.Fatal("Cut did not return")
	}
}

// TestLatencyClose closes the proxy while bytes are delayed for a long time:
// Close does not wait for them, and no goroutine is left.
func TestLatencyClose(t *testing.T) {
	s := newFakeServer(t)
	before := runtime.NumGoroutine()
	p, err := faultproxy.New(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)
	p.SetLatency(time.Minute)
	write(t, c, "<presence/>")
	write(t, sc, "<iq/>")
	time.Sleep(50 * time.Millisecond)

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(timeout):
		t.Fatal("Close waited for the delayed bytes")
	}
	c.Close()
	sc.Close()
	deadline := time.Now().Add(timeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStallNewConnection checks what a client that reconnects over a
// stalled link finds: the server accepts the connection, but no byte
// crosses either way until Unstall.
func TestStallNewConnection(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	p.Stall()
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	quiet(t, sc)
	write(t, sc, "<stream:features/>")
	quiet(t, c)

	p.Unstall()
	readN(t, sc, header)
	readN(t, c, "<stream:features/>")
}
