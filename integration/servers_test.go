package integration

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/integration/servers"
	"github.com/xmpptrack/xmpptrack/stream"
)

// server is a running server as the tests use it: a *prosody.Server, an
// *ejabberd.Server, or a shared one seen through an isolated view.
type server = servers.Server

// sharedUsers are the accounts of the package's shared servers.
var sharedUsers = map[string]string{
	"alice": "alice-secret",
	"bob":   "bob-secret",
}

// sharedEntry is the shared server of one kind.
type sharedEntry struct {
	once sync.Once
	srv  server
	err  error
}

// shared holds the package's shared servers, one per kind, each started by
// the first test that needs it and stopped by TestMain.
var shared struct {
	mu    sync.Mutex
	kinds map[string]*sharedEntry
}

func TestMain(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	for name, e := range shared.kinds {
		if e.srv == nil {
			continue
		}
		if code != 0 {
			fmt.Fprintf(os.Stderr, "shared %s log (last 60 lines):\n%s\n", name, e.srv.LogTail(60))
		}
		if err := e.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping %s: %v\n", name, err)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedServerOf returns the package's shared server of kind k, with
// sharedUsers. Tests that need other options, or restart the server, start
// their own with k.StartTB; tests that only need accounts of their own use
// testServer.
func sharedServerOf(tb testing.TB, k servers.Kind) server {
	tb.Helper()
	shared.mu.Lock()
	if shared.kinds == nil {
		shared.kinds = make(map[string]*sharedEntry)
	}
	e := shared.kinds[k.Name]
	if e == nil {
		e = &sharedEntry{}
		shared.kinds[k.Name] = e
	}
	shared.mu.Unlock()
	e.once.Do(func() {
		e.srv, e.err = k.Start(context.Background(), servers.Options{Users: sharedUsers})
	})
	if e.err != nil {
		k.SkipOrFatal(tb, e.err)
	}
	return e.srv
}

// sharedServer returns the package's shared Prosody, with sharedUsers.
func sharedServer(tb testing.TB) *prosody.Server {
	tb.Helper()
	k, err := servers.Lookup(servers.Prosody)
	if err != nil {
		tb.Fatal(err)
	}
	return sharedServerOf(tb, k).(*prosody.Server)
}

// forEachServer runs f as a subtest per server of the table (see
// servers.Kinds): "TestX/prosody", "TestX/ejabberd".
func forEachServer(t *testing.T, f func(t *testing.T, k servers.Kind)) {
	t.Helper()
	servers.Run(t, f)
}

// testServer returns a server of kind k for one test with opts. When opts
// asks for nothing but accounts, that is the shared server of its kind, seen
// through an isolated view with accounts (and rooms) of the test's own;
// otherwise a server of its own, stopped when the test ends.
func testServer(t testing.TB, k servers.Kind, opts servers.Options) server {
	t.Helper()
	if !onlyUsers(opts) {
		return k.StartTB(t, opts)
	}
	v := &isolated{Server: sharedServerOf(t, k), tag: strings.ToLower(rand.Text()[:8])}
	ctx, cancel := context.WithTimeout(t.Context(), k.StartTimeout())
	defer cancel()
	if err := v.AddUsers(ctx, opts.Users); err != nil {
		t.Fatalf("creating accounts on the shared %s: %v", k, err)
	}
	return v
}

// onlyUsers reports whether opts asks for nothing but accounts.
func onlyUsers(opts servers.Options) bool {
	return opts.ResumeTimeout == 0 && !opts.RestrictRoomCreation && len(opts.Admins) == 0 && !opts.Offline && !opts.NoMUC
}

// isolated is a shared server as one test sees it: every localpart (and
// every room of roomJID) carries a tag of the test's own, so that tests
// sharing a server never meet each other's sessions, hibernating ones
// included, nor each other's rooms.
type isolated struct {
	servers.Server
	tag string
}

func (v *isolated) local(localpart string) string { return localpart + "." + v.tag }

func (v *isolated) JID(localpart string) jid.JID { return v.Server.JID(v.local(localpart)) }

func (v *isolated) Password(localpart string) string { return v.Server.Password(v.local(localpart)) }

func (v *isolated) AddUsers(ctx context.Context, users map[string]string) error {
	tagged := make(map[string]string, len(users))
	for u, p := range users {
		tagged[v.local(u)] = p
	}
	return v.Server.AddUsers(ctx, tagged)
}

// errShared refuses to restart or stop a server other tests use.
var errShared = errors.New("the shared server cannot be restarted or stopped by one test")

func (v *isolated) Restart(context.Context) error { return errShared }

func (v *isolated) Stop() error { return errShared }

// resumableCut returns the cut that tests of resumption use on p's
// connections to a server of kind k.
//
// Against Prosody it is the stanza-safe Cut, a workaround for Prosody 0.12
// only: its mod_smacks keeps parsing a resumed stream with the parser of
// the connection it replaces, so a connection torn in the middle of a
// stanza swallows everything after the resumption. ejabberd parses each
// connection on its own, so there the cut is a plain reset of both legs
// (CutRaw), wherever the bytes are.
func resumableCut(k servers.Kind, p *faultproxy.Proxy) func() {
	if k.Name == servers.Prosody {
		return p.Cut
	}
	return p.CutRaw
}

// attemptGauge counts the connections a stream holds open at once: dialed
// and not yet closed. Each connection is one attempt to resume (or start)
// the session, so at most one may be open: two resumption attempts in
// flight make a server replace one session with the other (ejabberd logs
// "Replaced by new connection"), and what was written to the loser is lost.
type attemptGauge struct {
	mu        sync.Mutex
	open, max int
}

// wrap makes a stream config count its connections in g.
func (g *attemptGauge) wrap(c *stream.Config) {
	dial := c.Dial
	c.Dial = func(ctx context.Context) (net.Conn, error) {
		nc, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		g.open++
		g.max = max(g.max, g.open)
		g.mu.Unlock()
		return &gaugedConn{Conn: nc, g: g}, nil
	}
}

// check fails t if two connections were ever open at once.
func (g *attemptGauge) check(t testing.TB) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.max > 1 {
		t.Errorf("%d connections of one stream were open at once, want one attempt at a time", g.max)
	}
}

type gaugedConn struct {
	net.Conn
	g    *attemptGauge
	once sync.Once
}

func (c *gaugedConn) Close() error {
	c.once.Do(func() {
		c.g.mu.Lock()
		c.g.open--
		c.g.mu.Unlock()
	})
	return c.Conn.Close()
}

// viaProxyOneAtATime is viaProxy, and fails t when the test ends if the
// stream ever held two connections open at once (see attemptGauge).
func viaProxyOneAtATime(t testing.TB, p *faultproxy.Proxy) func(*stream.Config) {
	g := &attemptGauge{}
	t.Cleanup(func() { g.check(t) })
	return func(c *stream.Config) {
		viaProxy(p)(c)
		g.wrap(c)
	}
}
