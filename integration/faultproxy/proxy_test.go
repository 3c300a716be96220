package faultproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
)

const (
	header   = `<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>`
	timeout  = 5 * time.Second
	quietFor = 200 * time.Millisecond
)

// fakeServer is a TCP server written for these tests. It stands in for the
// XMPP server and hands each connection it accepts to the test, which plays
// the server's part on it.
type fakeServer struct {
	ln    net.Listener
	conns chan net.Conn
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{ln: ln, conns: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.conns)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range s.conns {
			c.Close()
		}
		<-done
	})
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

// next returns the next connection the server accepted.
func (s *fakeServer) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(timeout):
		t.Fatal("the server accepted no connection")
		return nil
	}
}

// none checks that the server accepts no connection for a while.
func (s *fakeServer) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-s.conns:
		c.Close()
		t.Fatal("the server accepted a connection")
	case <-time.After(quietFor):
	}
}

// newEchoServer starts a TCP server, written for these tests, that echoes
// every connection back and half-closes it once the client has. It returns
// its address.
func newEchoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func newProxy(t *testing.T, upstream string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, p *faultproxy.Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readN reads exactly len(want) bytes and compares them with want.
func readN(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %q: got %q, %v", want, got, err)
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// readEnd reads until the connection ends and returns what it read and the
// error that ended it (nil for a FIN).
func readEnd(t *testing.T, c net.Conn) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection did not end (read %q)", b)
	}
	return b, err
}

// quiet checks that nothing arrives on c for a while.
func quiet(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quietFor))
	b := make([]byte, 1)
	n, err := c.Read(b)
	var ne net.Error
	if n > 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read %q, %v; want nothing", b[:n], err)
	}
	c.SetReadDeadline(time.Time{})
}

// stream returns a client stream of n messages with bodies of size bytes.
func stream(n, size int, rng *rand.Rand) string {
	var b strings.Builder
	b.WriteString(header)
	body := make([]byte, size)
	for i := 0; i < n; i++ {
		for j := range body {
			body[j] = 'a' + byte(rng.IntN(26))
		}
		fmt.Fprintf(&b, "<message to='room@muc' id='m%d' type='groupchat'><body>%s</body><origin-id xmlns='urn:xmpp:sid:0' id='o%d'/></message>", i, body, i)
		b.WriteString("<r xmlns='urn:xmpp:sm:3'/> ")
	}
	b.WriteString("</stream:stream>")
	return b.String()
}

func TestPassThrough(t *testing.T) {
	echo := newEchoServer(t)
	p := newProxy(t, echo)
	rng := rand.New(rand.NewPCG(1, 2))

	inputs := []string{
		stream(1, 10, rng),
		stream(200, 100, rng),
		stream(3, 3<<20, rng),
		"\x16\x03\x01 not XMPP at all, passed through unchanged",
	}
	var wg sync.WaitGroup
	for i, in := range inputs {
		c := dial(t, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Write in chunks of random sizes.
			rest := in
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for len(rest) > 0 {
				n := min(len(rest), 1+r.IntN(70000))
				if _, err := io.WriteString(c, rest[:n]); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				rest = rest[n:]
			}
			c.CloseWrite()
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(4 * timeout))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("stream %d: read: %v", i, err)
			}
			if string(got) != in {
				t.Errorf("stream %d: echoed %d bytes, want %d the same as sent", i, len(got), len(in))
			}
		}()
	}
	wg.Wait()
	if n := p.Connections(); n != len(inputs) {
		t.Errorf("Connections() = %d, want %d", n, len(inputs))
	}
}

func TestServerToClient(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	big := strings.Repeat("<message><body>xyz</body></message>", 100000)
	go io.WriteString(sc, big)
	readN(t, c, big)

	// A FIN from the server reaches the client as a FIN.
	sc.(*net.TCPConn).CloseWrite()
	if b, err := readEnd(t, c); err != nil || len(b) > 0 {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
}

func TestOpaque(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	tls := "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
	write(t, c, header+tls+"\x16\x03\x01<message>")
	sc := s.next(t)
	readN(t, sc, header+tls+"\x16\x03\x01<message>")
	if n := p.Opaque(); n != 1 {
		t.Fatalf("Opaque() = %d, want 1", n)
	}

	// Cut resets an opaque connection on both legs.
	p.Cut()
	if _, err := readEnd(t, sc); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("server leg ended with %v, want a reset", err)
	}
	if _, err := readEnd(t, c); err == nil {
		t.Error("client leg ended with a FIN, want a reset")
	}
}

func TestCut(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)

	whole := header + `<message id='1' to='a@b'><body>one</body></message><r xmlns='urn:xmpp:sm:3'/>`
	half := `<message id='2' to='a@b'><body>tw`
	write(t, c, whole)
	sc := s.next(t)
	readN(t, sc, whole)
	// The round trip gives the proxy time to read the half stanza and hold
	// it; had it not, the client's reset would lose it just the same.
	write(t, c, half)
	write(t, sc, "<a h='1' xmlns='urn:xmpp:sm:3'/>")
	readN(t, c, "<a h='1' xmlns='urn:xmpp:sm:3'/>")
	quiet(t, sc)

	cut := make(chan struct{})
	go func() {
		defer close(cut)
		p.Cut()
	}()

	// The server gets nothing more, then a FIN, not a reset.
	if b, err := readEnd(t, sc); err != nil || len(b) > 0 {
		t.Fatalf("server read %q, %v after the cut; want EOF", b, err)
	}
	// The client sees its connection reset.
	if _, err := readEnd(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read ended with %v, want a reset", err)
	}

	// While the server has not closed its side, the cut goes on and a new
	// connection is not forwarded.
	c2 := dial(t, p)
	write(t, c2, header)
	s.none(t)
	select {
	case <-cut:
		t.Fatal("Cut returned before the server closed its side")
	default:
	}
	// The server still sends before closing: it is read and discarded.
	write(t, sc, "<message><body>lost</body></message>")
	sc.Close()

	select {
	case <-cut:
	case <-time.After(timeout):
		t.Fatal("Cut did not return after the server closed its side")
	}
	sc2 := s.next(t)
	readN(t, sc2, header)
	write(t, sc2, "<stream:features/>")
	readN(t, c2, "<stream:features/>")
	if n := p.Connections(); n != 2 {
		t.Errorf("Connections() = %d, want 2", n)
	}
}

func TestCutDrainTimeout(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	p.SetDrainTimeout(300 * time.Millisecond)
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	// The server never closes its side: Cut gives up after the drain
	// timeout.
	start := time.Now()
	p.Cut()
	if d := time.Since(start); d > timeout {
		t.Fatalf("Cut took %v", d)
	}
	if b, err := readEnd(t, sc); err != nil || len(b) > 0 {
		t.Fatalf("server read %q, %v; want EOF", b, err)
	}
	if n := p.Live(); n != 0 {
		t.Fatalf("Live() = %d after Cut, want 0", n)
	}
}

func TestCutWhileStalled(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	p.Stall()
	write(t, c, "<presence/>")
	quiet(t, sc)
	go func() {
		// The server closes when it has read to the end.
		io.Copy(io.Discard, sc)
		sc.Close()
	}()
	p.Cut()
	p.Unstall()
	if _, err := readEnd(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read ended with %v, want a reset", err)
	}
}

func TestCutRaw(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)
	write(t, c, "<message><bo")

	p.CutRaw()
	if _, err := readEnd(t, sc); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("server read ended with %v, want a reset", err)
	}
	if _, err := readEnd(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read ended with %v, want a reset", err)
	}

	// New connections go through at once.
	c2 := dial(t, p)
	write(t, c2, header)
	readN(t, s.next(t), header)
}

func TestStall(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	p.Stall()
	write(t, c, "<presence/>")
	write(t, sc, "<iq/>")
	quiet(t, sc)
	quiet(t, c)
	// A FIN is held too.
	c.CloseWrite()
	quiet(t, sc)

	p.Unstall()
	readN(t, sc, "<presence/>")
	readN(t, c, "<iq/>")
	if b, err := readEnd(t, sc); err != nil || len(b) > 0 {
		t.Fatalf("server read %q, %v; want EOF", b, err)
	}
}

func TestHoldServerToClient(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	p.HoldServerToClient()
	write(t, c, "<message id='1'/>")
	readN(t, sc, "<message id='1'/>")
	write(t, sc, "<message id='1' from='room@muc/me'/>")
	quiet(t, c)

	p.ReleaseServerToClient()
	readN(t, c, "<message id='1' from='room@muc/me'/>")
}

func TestCutEvery(t *testing.T) {
	echo := newEchoServer(t)
	p := newProxy(t, echo)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- p.CutEvery(ctx, time.Millisecond, 5*time.Millisecond, rand.New(rand.NewPCG(3, 4)), false)
	}()

	// Connect until a connection gets cut.
	deadline := time.Now().Add(timeout)
	for cut := false; !cut; {
		if time.Now().After(deadline) {
			t.Fatal("no connection was cut")
		}
		// A connection cut as soon as it is accepted may fail to dial.
		c, err := net.DialTimeout("tcp", p.Addr(), timeout)
		if err != nil {
			cut = true
			continue
		}
		c.SetDeadline(time.Now().Add(timeout))
		_, err = io.WriteString(c, header)
		if err == nil {
			_, err = io.ReadFull(c, make([]byte, len(header)))
		}
		cut = err != nil
		c.Close()
	}
	cancel()
	select {
	case n := <-done:
		if n == 0 {
			t.Fatal("CutEvery returned 0")
		}
	case <-time.After(timeout):
		t.Fatal("CutEvery did not return when its context ended")
	}
}

func TestClose(t *testing.T) {
	s := newFakeServer(t)
	before := runtime.NumGoroutine()
	func() {
		p, err := faultproxy.New(s.addr())
		if err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		for i := 0; i < 5; i++ {
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			write(t, c, header)
			readN(t, s.next(t), header)
		}
		p.Stall()
		write(t, conns[0], "<presence/>")
		p.HoldServerToClient()
		if n := p.Live(); n != 5 {
			t.Errorf("Live() = %d, want 5", n)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		for _, c := range conns {
			if _, err := readEnd(t, c); err == nil {
				t.Error("a client saw a FIN, want a reset")
			}
			c.Close()
		}
		if _, err := net.Dial("tcp", p.Addr()); err == nil {
			t.Error("the proxy still accepts connections after Close")
		}
		p.Cut()
		p.CutRaw()
	}()

	// The proxy's goroutines ended in Close; give the runtime a moment to
	// account for them.
	deadline := time.Now().Add(timeout)
	for {
		after := runtime.NumGoroutine()
		if after <= before {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseDuringCut(t *testing.T) {
	s := newFakeServer(t)
	p, err := faultproxy.New(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p)
	write(t, c, header)
	readN(t, s.next(t), header)

	// The server never closes: Close ends the Cut.
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		p.Cut()
	}()
	time.Sleep(quietFor)
	p.Close()
	select {
	case <-cut:
	case <-time.After(timeout):
		t.Fatal("Cut did not return after Close")
	}
}

func TestUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := newProxy(t, addr)
	if p.Addr() == addr {
		// The proxy got the port back and would forward to itself.
		t.Skip("port reused")
	}
	// The reset may come before the client's dial has returned.
	c, err := net.DialTimeout("tcp", p.Addr(), timeout)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
		return
	}
	defer c.Close()
	if _, err := readEnd(t, c); err == nil {
		t.Error("client saw a FIN, want a reset when the server is down")
	}
}

func TestCutMidStanza(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	type result struct {
		b   []byte
		err error
	}
	server := make(chan result, 1)
	go func() {
		// The server reads to the end, then closes.
		sc.SetReadDeadline(time.Now().Add(timeout))
		b, err := io.ReadAll(sc)
		sc.Close()
		server <- result{b, err}
	}()
	cut := make(chan error, 1)
	go func() { cut <- p.CutMidStanza(context.Background()) }()

	// Send stanzas until one is cut.
	var sent strings.Builder
	var werr error
	for i := 0; werr == nil; i++ {
		msg := fmt.Sprintf("<message id='m%d'><body>%d</body></message>", i, i)
		sent.WriteString(msg)
		_, werr = io.WriteString(c, msg)
		time.Sleep(5 * time.Millisecond)
		if i > 1000 {
			t.Fatal("no stanza was cut")
		}
	}
	select {
	case err := <-cut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(timeout):
		t.Fatal("CutMidStanza did not return")
	}

	r := <-server
	if r.err != nil {
		t.Fatalf("server leg ended with %v, want a FIN", r.err)
	}
	// The server read whole stanzas and then the first half of one.
	got := string(r.b)
	if !strings.HasPrefix(sent.String(), got) {
		t.Fatalf("server read %q, not a prefix of what was sent", got)
	}
	i := strings.LastIndex(got, "<message")
	if i < 0 {
		t.Fatalf("server read %q, want half a stanza at the end", got)
	}
	rest := sent.String()[i:]
	msg := rest[:strings.Index(rest, "</message>")+len("</message>")]
	if half := msg[:len(msg)/2]; got[i:] != half {
		t.Fatalf("server read %q at the end, want %q", got[i:], half)
	}
	// The client's writes found the connection reset.
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Errorf("client write failed with %v, want a reset", werr)
	}
}

func TestCutMidStanzaContext(t *testing.T) {
	s := newFakeServer(t)
	p := newProxy(t, s.addr())
	c := dial(t, p)
	write(t, c, header)
	sc := s.next(t)
	readN(t, sc, header)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.CutMidStanza(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CutMidStanza = %v, want the context's error", err)
	}
	// The request is gone: stanzas flow whole.
	write(t, c, "<presence/>")
	readN(t, sc, "<presence/>")
}
