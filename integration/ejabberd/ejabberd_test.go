package ejabberd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp"

	"github.com/xmpptrack/xmpptrack/integration/ejabberd"
)

// login opens an authenticated, bound session for user with password pass.
func login(ctx context.Context, srv *ejabberd.Server, user, pass string) (*xmpp.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", srv.Addr())
	if err != nil {
		return nil, err
	}
	addr := srv.JID(user)
	s, err := xmpp.NewSession(ctx, addr.Domain(), addr, conn, 0, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
		return xmpp.StreamConfig{Features: []xmpp.StreamFeature{
			xmpp.StartTLS(srv.TLSConfig()),
			xmpp.SASL("", pass, sasl.ScramSha256, sasl.ScramSha1),
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

// TestServer starts one server and checks what the harness promises: its
// names, TLS from the generated CA, accounts made at start and later (a
// replaced password included), no epmd, and the configuration tests rely
// on.
func TestServer(t *testing.T) {
	srv := ejabberd.StartTB(t, ejabberd.Options{
		Users: map[string]string{"alice": "alice-secret", "Bob": "bob-secret"},
	})
	ctx := ctxTimeout(t, time.Minute)

	for _, c := range []struct{ got, want string }{
		{srv.Domain(), "localhost"},
		{srv.MUCDomain(), "conference.localhost"},
		{srv.JID("alice").String(), "alice@localhost"},
		{srv.Password("alice"), "alice-secret"},
		{srv.Password("bob"), "bob-secret"}, // localparts are normalized
		{srv.Password("nobody"), ""},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}

	t.Run("login", func(t *testing.T) {
		s, err := login(ctx, srv, "alice", srv.Password("alice"))
		if err != nil {
			t.Fatal(err)
		}
		defer closeSession(s)
		if tls := s.ConnectionState(); len(tls.VerifiedChains) == 0 {
			t.Error("TLS not verified")
		}
		if got := s.LocalAddr().Bare().String(); got != "alice@localhost" {
			t.Errorf("bound %s", got)
		}
	})

	t.Run("wrong-password", func(t *testing.T) {
		if s, err := login(ctx, srv, "alice", "wrong"); err == nil {
			closeSession(s)
			t.Error("logged in with a wrong password")
		}
	})

	t.Run("add-users", func(t *testing.T) {
		users := make(map[string]string)
		for i := range 50 {
			users[fmt.Sprintf("user%02d", i)] = fmt.Sprintf("pw-%d", i)
		}
		users["alice"] = "new-alice-secret"
		start := time.Now()
		if err := srv.AddUsers(ctx, users); err != nil {
			t.Fatal(err)
		}
		t.Logf("created %d users in %v", len(users), time.Since(start))
		for _, u := range []string{"user00", "user49", "alice"} {
			s, err := login(ctx, srv, u, users[u])
			if err != nil {
				t.Fatalf("%s: %v", u, err)
			}
			closeSession(s)
		}
		if s, err := login(ctx, srv, "alice", "alice-secret"); err == nil {
			closeSession(s)
			t.Error("alice's old password still works")
		}
	})

	t.Run("config", func(t *testing.T) {
		b, err := os.ReadFile(srv.ConfigPath())
		if err != nil {
			t.Fatal(err)
		}
		cfg := string(b)
		for _, want := range []string{
			"    ip: \"127.0.0.1\"\n", "    shaper: none\n", "  c2s_shaper: none\n",
			"    backlog: 1024\n", "  mod_stream_mgmt:\n", "    resume_timeout: 60\n",
			"  mod_mam: {}\n", "  mod_muc:\n", "      mam: true\n",
		} {
			if !strings.Contains(cfg, want) {
				t.Errorf("config lacks %q", want)
			}
		}
		if strings.Contains(cfg, "\"::\"") || strings.Contains(cfg, "0.0.0.0") {
			t.Error("config listens beyond loopback")
		}
	})

	t.Run("no-epmd", func(t *testing.T) {
		out, _ := exec.Command("ps", "-eo", "pid,args").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "epmd") && !strings.Contains(l, "ps -eo") {
				t.Errorf("an epmd runs: %s", l)
			}
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", srv.PID()))
		if err != nil {
			t.Skipf("no /proc: %v", err)
		}
		if args := strings.ReplaceAll(string(b), "\x00", " "); !strings.Contains(args, "beam") || strings.Contains(args, "-sname") || strings.Contains(args, "-name ") {
			t.Errorf("the child is not a VM without distribution: %s", args)
		}
	})
}

// TestRestart: a restart keeps the address and the accounts, ends every
// session with <system-shutdown/>, and a stopped server is gone.
func TestRestartStop(t *testing.T) {
	ctx := ctxTimeout(t, 2*time.Minute)
	srv, err := ejabberd.Start(ctx, ejabberd.Options{Users: map[string]string{"alice": "pw"}})
	if err != nil {
		ejabberd.SkipOrFatal(t, err)
	}
	defer srv.Stop()
	addr := srv.Addr()
	s, err := login(ctx, srv, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Conn().Close()
	pid := srv.PID()

	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != addr {
		t.Errorf("address changed from %s to %s", addr, srv.Addr())
	}
	s.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(s.Conn())
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Errorf("old connection still open: %v", err)
	}
	_ = got // TLS: the bytes are encrypted; the stream test reads the error
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("old process %d still exists: %v", pid, err)
	}
	s2, err := login(ctx, srv, "alice", "pw")
	if err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	closeSession(s2)

	pid = srv.PID()
	dir := srv.LogPath()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d still exists: %v", pid, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory not removed: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
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

func TestNotInstalled(t *testing.T) {
	opts := ejabberd.Options{Erl: "/nonexistent/erl"}
	if _, err := ejabberd.Start(t.Context(), opts); !errors.Is(err, ejabberd.ErrNotInstalled) {
		t.Fatalf("Start: %v, want ErrNotInstalled", err)
	}
	if _, _, err := ejabberd.LookPath(ejabberd.Options{ErlLibs: t.TempDir()}); !errors.Is(err, ejabberd.ErrNotInstalled) {
		t.Fatalf("LookPath without the application: %v, want ErrNotInstalled", err)
	}
	t.Run("skips", func(t *testing.T) {
		t.Setenv("CI", "")
		tb := &fakeTB{TB: t}
		if ejabberd.StartTB(tb, opts) != nil {
			t.Error("got a server")
		}
		if !tb.skipped || tb.failed || !strings.Contains(tb.msg, "make ejabberd-install") {
			t.Errorf("skipped %v, failed %v (%q); want a skip that says how to install", tb.skipped, tb.failed, tb.msg)
		}
	})
	t.Run("fails-in-ci", func(t *testing.T) {
		t.Setenv("CI", "true")
		tb := &fakeTB{TB: t}
		if ejabberd.StartTB(tb, opts) != nil {
			t.Error("got a server")
		}
		if tb.skipped || !tb.failed {
			t.Errorf("skipped %v, failed %v; want a failure", tb.skipped, tb.failed)
		}
	})
}

// TestStartFailsFast: a configuration ejabberd rejects fails Start with the
// log's critical line, not a timeout.
func TestStartFailsFast(t *testing.T) {
	if _, _, err := ejabberd.LookPath(ejabberd.Options{}); err != nil {
		ejabberd.SkipOrFatal(t, err)
	}
	ctx := ctxTimeout(t, time.Minute)
	start := time.Now()
	_, err := ejabberd.Start(ctx, ejabberd.Options{ExtraConfig: "no_such_option: 1"})
	if err == nil {
		t.Fatal("started with a broken configuration")
	}
	if !strings.Contains(err.Error(), "no_such_option") {
		t.Errorf("error does not say what is wrong: %v", err)
	}
	t.Logf("start failed: %v", err)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v to fail", d)
	}
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
