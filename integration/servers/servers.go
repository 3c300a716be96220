// Package servers is the table of real XMPP servers the integration tests
// run against: Prosody 0.12 (package prosody) and ejabberd 23.01 (package
// ejabberd), behind one interface, so that a test is written once and runs
// as a subtest per server.
//
// The environment variable XMPPTRACK_SERVERS, a comma-separated list of
// names ("prosody,ejabberd"), limits the table, for a quicker run by hand;
// unset, every server is in it.
package servers // import "github.com/xmpptrack/xmpptrack/integration/servers"

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/integration/ejabberd"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
)

// Names of the servers in the table.
const (
	Prosody  = "prosody"
	Ejabberd = "ejabberd"
)

// EnvServers names the environment variable that limits Kinds.
const EnvServers = "XMPPTRACK_SERVERS"

// Server is a running server, as both harnesses provide it.
type Server interface {
	// Addr is the client address, "127.0.0.1:PORT".
	Addr() string
	// Domain is the XMPP domain, "localhost".
	Domain() string
	// MUCDomain is the Multi-User Chat service, or "" without one.
	MUCDomain() string
	// JID is localpart@Domain.
	JID(localpart string) jid.JID
	// Password is the password of an account, or "" if there is none.
	Password(localpart string) string
	// AddUsers creates accounts (localpart -> password).
	AddUsers(ctx context.Context, users map[string]string) error
	// TLSConfig trusts only the server's throw-away CA.
	TLSConfig() *tls.Config
	// CAFile is that CA as a PEM file.
	CAFile() string
	// LogPath and LogTail give the server's log.
	LogPath() string
	LogTail(n int) string
	// Restart stops the server gracefully and starts it again on the same
	// port with the same accounts; every session is lost.
	Restart(ctx context.Context) error
	// Stop stops the server and removes its files.
	Stop() error
}

// The harnesses satisfy Server.
var (
	_ Server = (*prosody.Server)(nil)
	_ Server = (*ejabberd.Server)(nil)
)

// Options are the settings a test may ask of any server.
type Options struct {
	// Users maps localparts to passwords.
	Users map[string]string
	// ResumeTimeout is how long the server keeps a broken stream
	// management session for resumption (Prosody's
	// smacks_hibernation_time, ejabberd's resume_timeout); zero means the
	// harness's default (60 s).
	ResumeTimeout time.Duration
	// RestrictRoomCreation lets only Admins create rooms.
	RestrictRoomCreation bool
	// Admins are localparts of administrators.
	Admins []string
	// Offline stores messages for users who are offline instead of bouncing
	// them.
	Offline bool
	// NoMUC leaves out the Multi-User Chat service.
	NoMUC bool
	// LogLevel is the lowest level logged: "debug", "info", "warn" or
	// "error"; empty means "info".
	LogLevel string
}

// Kind is one server of the table.
type Kind struct {
	// Name is Prosody or Ejabberd; Version the release the harness runs
	// (as Debian 12 packages it).
	Name, Version string
	// start starts a server of this kind.
	start func(context.Context, Options) (Server, error)
	// notInstalled is the harness's ErrNotInstalled.
	notInstalled error
	// timeout bounds a start-up.
	timeout time.Duration
}

// StartTimeout bounds a start-up of a server of this kind.
func (k Kind) StartTimeout() time.Duration { return k.timeout }

// String returns the kind's name, which tests use as their subtest name.
func (k Kind) String() string { return k.Name }

// Start starts a server of kind k; it runs until Stop. If the server is not
// installed, the error wraps ErrNotInstalled.
func (k Kind) Start(ctx context.Context, opts Options) (Server, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, k.timeout)
		defer cancel()
	}
	s, err := k.start(ctx, opts)
	if errors.Is(err, k.notInstalled) {
		return nil, fmt.Errorf("%w: %w", ErrNotInstalled, err)
	}
	return s, err
}

// StartTB starts a server of kind k for a test and stops it when tb ends,
// logging the tail of its log first if tb failed. A server that is not
// installed skips tb, or fails it when CI is true (see SkipOrFatal).
func (k Kind) StartTB(tb testing.TB, opts Options) Server {
	tb.Helper()
	s, err := k.Start(tb.Context(), opts)
	if err != nil {
		k.SkipOrFatal(tb, err)
		return nil
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("%s log (last 60 lines):\n%s", k.Name, s.LogTail(60))
		}
		if err := s.Stop(); err != nil {
			tb.Errorf("stopping %s: %v", k.Name, err)
		}
	})
	return s
}

// SkipOrFatal ends tb because a server of kind k could not be started with
// error err: a skip with a hint on how to install it when it is not
// installed, except when the environment variable CI is true; a failure
// otherwise.
func (k Kind) SkipOrFatal(tb testing.TB, err error) {
	tb.Helper()
	switch k.Name {
	case Ejabberd:
		ejabberd.SkipOrFatal(tb, err)
	default:
		prosody.SkipOrFatal(tb, err)
	}
}

// ErrNotInstalled is wrapped by Kind.Start's error when the server is not
// installed.
var ErrNotInstalled = errors.New("server not installed")

// All returns every server of the table, whatever EnvServers says.
func All() []Kind {
	return []Kind{
		{
			Name: Prosody, Version: "0.12",
			start: func(ctx context.Context, o Options) (Server, error) {
				s, err := prosody.Start(ctx, prosody.Options{
					Users:                o.Users,
					HibernationTime:      o.ResumeTimeout,
					RestrictRoomCreation: o.RestrictRoomCreation,
					Admins:               o.Admins,
					Offline:              o.Offline,
					NoMUC:                o.NoMUC,
					LogLevel:             o.LogLevel,
				})
				if err != nil {
					return nil, err
				}
				return s, nil
			},
			notInstalled: prosody.ErrNotInstalled,
			timeout:      prosody.StartTimeout,
		},
		{
			Name: Ejabberd, Version: "23.01",
			start: func(ctx context.Context, o Options) (Server, error) {
				s, err := ejabberd.Start(ctx, ejabberd.Options{
					Users:                o.Users,
					ResumeTimeout:        o.ResumeTimeout,
					RestrictRoomCreation: o.RestrictRoomCreation,
					Admins:               o.Admins,
					Offline:              o.Offline,
					NoMUC:                o.NoMUC,
					LogLevel:             ejabberdLevel(o.LogLevel),
				})
				if err != nil {
					return nil, err
				}
				return s, nil
			},
			notInstalled: ejabberd.ErrNotInstalled,
			timeout:      ejabberd.StartTimeout,
		},
	}
}

// Kinds returns the servers to test against: All, limited by EnvServers
// when it is set. It fails on a name it does not know.
func Kinds() ([]Kind, error) {
	all := All()
	env := strings.TrimSpace(os.Getenv(EnvServers))
	if env == "" {
		return all, nil
	}
	var out []Kind
	for _, name := range strings.Split(env, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(all, func(k Kind) bool { return k.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("servers: %s names %q; known: %s, %s", EnvServers, name, Prosody, Ejabberd)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// Lookup returns the kind named name.
func Lookup(name string) (Kind, error) {
	for _, k := range All() {
		if k.Name == name {
			return k, nil
		}
	}
	return Kind{}, fmt.Errorf("servers: unknown server %q (want %s or %s)", name, Prosody, Ejabberd)
}

// Run runs f as a subtest named after each kind of Kinds.
func Run(t *testing.T, f func(t *testing.T, k Kind)) {
	t.Helper()
	kinds, err := Kinds()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kinds {
		t.Run(k.Name, func(t *testing.T) { f(t, k) })
	}
}

// ejabberdLevel names a log level as ejabberd does ("warning", not "warn").
func ejabberdLevel(level string) string {
	if level == "warn" {
		return "warning"
	}
	return level
}
