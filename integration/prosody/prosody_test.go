package prosody_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp"

	"github.com/xmpptrack/xmpptrack/integration/prosody"
)

// login opens an authenticated, bound session for user.
func login(ctx context.Context, srv *prosody.Server, user string) (*xmpp.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", srv.Addr())
	if err != nil {
		return nil, err
	}
	addr := srv.JID(user)
	s, err := xmpp.NewSession(ctx, addr.Domain(), addr, conn, 0, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
		return xmpp.StreamConfig{Features: []xmpp.StreamFeature{
			xmpp.StartTLS(srv.TLSConfig()),
			xmpp.SASL("", srv.Password(user), sasl.ScramSha256Plus, sasl.ScramSha256, sasl.ScramSha1Plus, sasl.ScramSha1),
			xmpp.BindResource(),
		}}
	}))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

func closeSession(s *xmpp.Session) {
	s.Close()
	s.Conn().Close()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// starttls performs a raw STARTTLS exchange on addr and the TLS handshake with
// cfg, without any XMPP library.
func starttls(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	fmt.Fprint(c, `<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`)
	r := bufio.NewReader(c)
	if err := readUntil(r, "</stream:features>"); err != nil {
		c.Close()
		return nil, err
	}
	fmt.Fprint(c, `<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`)
	if err := readUntil(r, "<proceed"); err != nil {
		c.Close()
		return nil, err
	}
	if err := readUntil(r, ">"); err != nil {
		c.Close()
		return nil, err
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

func readUntil(r *bufio.Reader, s string) error {
	var seen strings.Builder
	for !strings.HasSuffix(seen.String(), s) {
		b, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("waiting for %q after %q: %w", s, seen.String(), err)
		}
		seen.WriteByte(b)
	}
	return nil
}

func TestServer(t *testing.T) {
	srv := prosody.StartTB(t, prosody.Options{
		Users: map[string]string{"alice": "alice-secret", "Bob": "bob-secret"},
	})
	ctx := ctxTimeout(t, 30*time.Second)

	for _, c := range []struct{ got, want string }{
		{srv.Domain(), "localhost"},
		{srv.MUCDomain(), "conference.localhost"},
		{srv.JID("alice").String(), "alice@localhost"},
		{srv.Password("alice"), "alice-secret"},
		{srv.Password("bob"), "bob-secret"}, // localparts are normalized
		{srv.Password("nobody"), ""},
		{srv.DirectTLSAddr(), ""}, // no Options.DirectTLS
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	if host, _, err := net.SplitHostPort(srv.Addr()); err != nil || host != "127.0.0.1" {
		t.Errorf("Addr() = %q (%v), want 127.0.0.1:PORT", srv.Addr(), err)
	}

	t.Run("ca-file", func(t *testing.T) {
		b, err := os.ReadFile(srv.CAFile())
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatal("no PEM block")
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !ca.IsCA {
			t.Error("not a CA")
		}
	})

	t.Run("tls-verified", func(t *testing.T) {
		for _, name := range []string{"localhost", "conference.localhost"} {
			cfg := srv.TLSConfig()
			cfg.ServerName = name
			c, err := starttls(ctx, srv.Addr(), cfg)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if len(c.ConnectionState().VerifiedChains) == 0 {
				t.Errorf("%s: no verified chain", name)
			}
			c.Close()
		}
	})

	t.Run("tls-unknown-ca", func(t *testing.T) {
		cfg := srv.TLSConfig()
		cfg.RootCAs = x509.NewCertPool()
		_, err := starttls(ctx, srv.Addr(), cfg)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("want an unknown authority error, got %v", err)
		}
	})

	t.Run("tls-wrong-name", func(t *testing.T) {
		cfg := srv.TLSConfig()
		cfg.ServerName = "example.org"
		_, err := starttls(ctx, srv.Addr(), cfg)
		var invalid x509.HostnameError
		if !errors.As(err, &invalid) {
			t.Errorf("want a host name error, got %v", err)
		}
	})

	t.Run("login", func(t *testing.T) {
		s, err := login(ctx, srv, "alice")
		if err != nil {
			t.Fatal(err)
		}
		defer closeSession(s)
		if got := s.LocalAddr().Bare().String(); got != "alice@localhost" {
			t.Errorf("bound %s", got)
		}
	})

	t.Run("wrong-password", func(t *testing.T) {
		addr := srv.JID("alice")
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = xmpp.NewSession(ctx, addr.Domain(), addr, conn, 0, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: []xmpp.StreamFeature{
				xmpp.StartTLS(srv.TLSConfig()),
				xmpp.SASL("", "wrong", sasl.ScramSha1),
				xmpp.BindResource(),
			}}
		}))
		if err == nil {
			t.Error("logged in with a wrong password")
		}
	})

	t.Run("add-users", func(t *testing.T) {
		users := make(map[string]string)
		for i := range 50 {
			users[fmt.Sprintf("user%02d", i)] = fmt.Sprintf("pw-%d", i)
		}
		start := time.Now()
		if err := srv.AddUsers(ctx, users); err != nil {
			t.Fatal(err)
		}
		t.Logf("created %d users in %v", len(users), time.Since(start))
		for _, u := range []string{"user00", "user49"} {
			s, err := login(ctx, srv, u)
			if err != nil {
				t.Fatalf("%s: %v", u, err)
			}
			closeSession(s)
		}
	})
}

// TestDirectTLS checks the direct TLS port of Options.DirectTLS: TLS from the
// first byte, verified against the server's CA, then a stream whose features
// offer SASL and no STARTTLS. (TestServer checks that a server without the
// option has no such port.)
func TestDirectTLS(t *testing.T) {
	srv := prosody.StartTB(t, prosody.Options{DirectTLS: true, NoMUC: true})
	ctx := ctxTimeout(t, 30*time.Second)
	addr := srv.DirectTLSAddr()
	if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || addr == srv.Addr() {
		t.Fatalf("DirectTLSAddr() = %q (port %s, %v), want 127.0.0.1:PORT other than Addr() %s", addr, port, err, srv.Addr())
	}
	d := tls.Dialer{Config: srv.TLSConfig()}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("TLS handshake on %s: %v", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	fmt.Fprint(c, `<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`)
	var got strings.Builder
	r := bufio.NewReader(io.TeeReader(c, &got))
	if err := readUntil(r, "</stream:features>"); err != nil {
		t.Fatal(err)
	}
	if f := got.String(); !strings.Contains(f, "<mechanisms") || strings.Contains(f, "starttls") {
		t.Errorf("features on the direct TLS port: want SASL and no STARTTLS, got %q", f)
	}
}

func TestRestart(t *testing.T) {
	srv := prosody.StartTB(t, prosody.Options{Users: map[string]string{"alice": "pw"}})
	ctx := ctxTimeout(t, 30*time.Second)
	addr := srv.Addr()

	s, err := login(ctx, srv, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Conn().Close()

	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != addr {
		t.Errorf("address changed from %s to %s", addr, srv.Addr())
	}

	// The old connection is gone.
	s.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(s.Conn())
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Errorf("old connection still open: %v", err)
	}

	s2, err := login(ctx, srv, "alice")
	if err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	closeSession(s2)
}

func TestStop(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	srv, err := prosody.Start(ctx, prosody.Options{})
	if err != nil {
		prosody.SkipOrFatal(t, err)
	}
	pid := readPID(t, srv)
	log := srv.LogPath()

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	if _, err := os.Stat(log); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory not removed: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d still exists: %v", pid, err)
	}
	if c, err := net.DialTimeout("tcp", srv.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("port still accepts")
	}
	if srv.Restart(ctx) == nil {
		t.Error("Restart after Stop succeeded")
	}
	if srv.AddUsers(ctx, map[string]string{"x": "y"}) == nil {
		t.Error("AddUsers after Stop succeeded")
	}
}

func readPID(t *testing.T, srv *prosody.Server) int {
	t.Helper()
	pidFile := filepath.Join(filepath.Dir(srv.LogPath()), "prosody.pid")
	for range 100 {
		b, err := os.ReadFile(pidFile)
		var pid int
		if err == nil {
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
				return pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no PID file")
	return 0
}

func TestStartFailsFast(t *testing.T) {
	if _, err := prosody.LookPath(""); err != nil {
		prosody.SkipOrFatal(t, err)
	}
	ctx := ctxTimeout(t, 30*time.Second)
	start := time.Now()
	_, err := prosody.Start(ctx, prosody.Options{ExtraGlobal: "this is not Lua"})
	if err == nil {
		t.Fatal("started with a broken configuration")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to fail", d)
	}
	for _, want := range []string{"exited during start-up", "prosody log:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestNotInstalled(t *testing.T) {
	opts := prosody.Options{Binary: "/nonexistent/prosody"}
	if _, err := prosody.Start(t.Context(), opts); !errors.Is(err, prosody.ErrNotInstalled) {
		t.Fatalf("Start: %v, want ErrNotInstalled", err)
	}

	t.Run("skips", func(t *testing.T) {
		t.Setenv("CI", "")
		tb := &fakeTB{TB: t}
		if prosody.StartTB(tb, opts) != nil {
			t.Error("got a server")
		}
		if !tb.skipped || tb.failed {
			t.Errorf("skipped %v, failed %v; want a skip", tb.skipped, tb.failed)
		}
		if !strings.Contains(tb.msg, "make prosody-install") {
			t.Errorf("message %q does not say how to install", tb.msg)
		}
	})
	t.Run("fails-in-ci", func(t *testing.T) {
		t.Setenv("CI", "true")
		tb := &fakeTB{TB: t}
		if prosody.StartTB(tb, opts) != nil {
			t.Error("got a server")
		}
		if tb.skipped || !tb.failed {
			t.Errorf("skipped %v, failed %v; want a failure", tb.skipped, tb.failed)
		}
	})
	t.Run("other-errors-fail", func(t *testing.T) {
		t.Setenv("CI", "")
		tb := &fakeTB{TB: t}
		prosody.SkipOrFatal(tb, errors.New("boom"))
		if tb.skipped || !tb.failed {
			t.Errorf("skipped %v, failed %v; want a failure", tb.skipped, tb.failed)
		}
	})
}

// fakeTB records Skip and Fatal instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = true
	f.msg = fmt.Sprintf(format, args...)
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
}
