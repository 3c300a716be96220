// Package prosody runs a real Prosody 0.12 XMPP server as a child process, for
// integration tests, the demo and benchmarks.
//
// Each Server lives in its own temporary directory: configuration, data,
// log, PID file, admin socket and a TLS certificate authority made at
// start-up all stay there, and Stop removes it. The server listens for
// clients on a free port of 127.0.0.1 only (and, with Options.DirectTLS, on
// a second one for direct TLS), serves the host "localhost" and,
// unless disabled, a Multi-User Chat service on "conference.localhost". It has
// stream management (XEP-0198) and no rate limits. Clients reach it with
// STARTTLS, verified against the generated CA (see Server.TLSConfig), and
// SCRAM authentication.
//
// Nothing here needs a container or a service manager: only the prosody
// executable, found in PATH or in /usr/bin (Debian's "prosody" package).
package prosody // import "github.com/xmpptrack/xmpptrack/integration/prosody"

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
)

// ErrNotInstalled is returned (wrapped) by Start when the prosody executable
// cannot be found.
var ErrNotInstalled = errors.New("prosody is not installed")

// errPortInUse means that Prosody could not bind its client port.
var errPortInUse = errors.New("client port in use")

// StartTimeout bounds the start-up of a server when the caller's context
// sets no deadline, and always for StartTB.
const StartTimeout = 30 * time.Second

const (
	// startAttempts is how many ports Start tries before it gives up.
	startAttempts = 5
	// stopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
	stopGrace = 5 * time.Second
	// pollInterval is how often start-up checks whether Prosody is ready.
	pollInterval = 10 * time.Millisecond
)

// Options configures a Server. The zero value is a usable server without
// users.
type Options struct {
	// Users maps localparts to passwords; the accounts exist when Start
	// returns.
	Users map[string]string

	// HibernationTime is smacks_hibernation_time: how long the server keeps a
	// broken stream management session for resumption. It is rounded up to
	// whole seconds; zero means DefaultHibernationTime.
	HibernationTime time.Duration

	// RestrictRoomCreation sets restrict_room_creation on the MUC service, so
	// that ordinary users cannot create rooms.
	RestrictRoomCreation bool

	// Admins are localparts of the server's administrators (who may create
	// rooms when RestrictRoomCreation is set).
	Admins []string

	// NoMUC leaves out the Multi-User Chat service.
	NoMUC bool

	// Offline loads mod_offline, which stores messages for users who are not
	// online. Without it (Prosody would load it by default) a chat or normal
	// message to a bare JID with no available resource (one that has sent
	// presence) is bounced with a service-unavailable error.
	Offline bool

	// MAM loads mod_mam, the users' own message archives (XEP-0313), with
	// default_archive_policy = true: every one-to-one message a user sends
	// or receives is archived. Rooms archive with or without it (muc_mam).
	MAM bool

	// ExtraGlobal holds Lua configuration lines appended to the global
	// section, after the generated settings. A line may override a generated
	// setting: the later value wins, and Prosody logs a "Duplicate option"
	// warning.
	ExtraGlobal string

	// LogLevel is the lowest level written to the log: "debug", "info",
	// "warn" or "error". Empty means "info".
	LogLevel string

	// DirectTLS makes the server listen, on a second free port of
	// 127.0.0.1, for clients that speak TLS from the first byte (XEP-0368,
	// Prosody's c2s_direct_tls_ports), with the same certificate: see
	// Server.DirectTLSAddr.
	DirectTLS bool

	// Binary is the prosody executable to run. Empty means "prosody" looked up
	// in PATH, then /usr/bin/prosody.
	Binary string
}

// Server is a running Prosody. Its methods are safe for concurrent use.
type Server struct {
	*serverkit.Accounts // Domain, MUCDomain, JID, Password

	bin    string
	opts   Options
	layout layout
	ca     *x509.Certificate

	mu      sync.Mutex
	proc    *serverkit.Process // nil while stopped
	stopped bool
}

// LookPath returns the path of the prosody executable that Start would run
// for binary (Options.Binary), or an error wrapping ErrNotInstalled.
func LookPath(binary string) (string, error) {
	if binary != "" {
		p, err := exec.LookPath(binary)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrNotInstalled, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("prosody"); err == nil {
		return p, nil
	}
	p, err := exec.LookPath("/usr/bin/prosody")
	if err != nil {
		return "", fmt.Errorf("%w (not in PATH or /usr/bin)", ErrNotInstalled)
	}
	return p, nil
}

// Start creates the server's directory, configuration, certificates and
// accounts, starts Prosody and waits until it accepts clients.
// ctx bounds the start-up only (StartTimeout if it has no deadline); the
// server runs until Stop.
// If the prosody executable cannot be found, the error wraps ErrNotInstalled.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StartTimeout)
		defer cancel()
	}
	bin, err := LookPath(opts.Binary)
	if err != nil {
		return nil, err
	}
	if _, err := opts.logLevel(); err != nil {
		return nil, err
	}
	muc := mucDomain
	if opts.NoMUC {
		muc = ""
	}
	accounts := serverkit.NewAccounts("prosody", domain, muc)
	users, err := accounts.Normalize(opts.Users)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "xmpptrack-prosody-")
	if err != nil {
		return nil, fmt.Errorf("prosody: creating directory: %w", err)
	}
	s := &Server{
		Accounts: accounts,
		bin:      bin,
		opts:     opts,
		layout:   layout{dir: dir},
	}
	s.opts.Users = nil
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}

	for _, d := range []string{dataDir, certDir} {
		if err := os.Mkdir(s.layout.path(d), 0o750); err != nil {
			return fail(fmt.Errorf("prosody: creating directory: %w", err))
		}
	}
	if s.ca, err = writeCertificates(s.layout); err != nil {
		return fail(err)
	}
	if err := writeAccounts(ctx, s.layout.path(dataDir), users); err != nil {
		return fail(err)
	}
	accounts.Set(users)

	for attempt := 1; ; attempt++ {
		port, err := serverkit.FreePort()
		if err != nil {
			return fail(err)
		}
		s.layout.port = port
		if opts.DirectTLS {
			if s.layout.directPort, err = freePortBut(port); err != nil {
				return fail(err)
			}
		}
		if err := os.WriteFile(s.layout.path(configFile), []byte(opts.config(s.layout)), 0o640); err != nil {
			return fail(fmt.Errorf("prosody: writing configuration: %w", err))
		}
		p, err := s.launch(ctx)
		if err == nil {
			s.proc = p
			return s, nil
		}
		if !errors.Is(err, errPortInUse) || attempt == startAttempts {
			return fail(err)
		}
	}
}

// freePortBut is serverkit.FreePort, but never returns port.
func freePortBut(port int) (int, error) {
	for {
		p, err := serverkit.FreePort()
		if err != nil || p != port {
			return p, err
		}
	}
}

// launch starts the prosody executable with the current configuration and
// waits until it accepts clients. On failure the process is gone.
func (s *Server) launch(ctx context.Context) (*serverkit.Process, error) {
	logPath := s.layout.path(logFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("prosody: opening log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	logStart, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("prosody: opening log: %w", err)
	}

	cmd := exec.Command(s.bin, "--config", s.layout.path(configFile), "-F")
	cmd.Dir = s.layout.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	p, err := serverkit.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("prosody: %w", err)
	}

	if err := s.waitReady(ctx, p, logPath, logStart); err != nil {
		p.Stop(stopGrace)
		if errors.Is(err, errPortInUse) {
			return nil, err
		}
		return nil, fmt.Errorf("%w\nprosody log:\n%s", err, s.LogTail(30))
	}
	return p, nil
}

// waitReady polls until Prosody serves clients on its port: it has logged
// that the c2s service is active on that port (when the log level shows it)
// and answers a client stream with STARTTLS among its features.
func (s *Server) waitReady(ctx context.Context, p *serverkit.Process, logPath string, logStart int64) error {
	level, _ := s.opts.logLevel()
	wantLine := level == "debug" || level == "info"
	activated := []byte(activatedLine(s.layout.port))
	directActivated := []byte(directActivatedLine(s.layout.directPort))
	addr := s.Addr()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	notYet := errors.New("c2s service not activated yet")
	last := notYet
	for {
		select {
		case <-p.Done():
			return fmt.Errorf("prosody: exited during start-up: %v", p.Err())
		case <-ctx.Done():
			return fmt.Errorf("prosody: waiting for start-up: %w (last check: %v)", ctx.Err(), last)
		case <-t.C:
		}

		log, err := serverkit.ReadFrom(logPath, logStart)
		if err != nil {
			return fmt.Errorf("prosody: %w", err)
		}
		if bytes.Contains(log, []byte(portInUse)) {
			return fmt.Errorf("prosody: port %d: %w", s.layout.port, errPortInUse)
		}
		if wantLine && (!bytes.Contains(log, activated) ||
			s.layout.directPort != 0 && !bytes.Contains(log, directActivated)) {
			last = notYet
			continue
		}
		if last = serverkit.ProbeStartTLS(ctx, addr, domain); last == nil {
			return nil
		}
	}
}

// Addr returns the address clients connect to, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return serverkit.LoopbackAddr(s.layout.port)
}

// DirectTLSAddr returns the address clients connect to with direct TLS
// (XEP-0368), "127.0.0.1:PORT", or "" unless Options.DirectTLS is set.
func (s *Server) DirectTLSAddr() string {
	if s.layout.directPort == 0 {
		return ""
	}
	return serverkit.LoopbackAddr(s.layout.directPort)
}

// AddUsers creates accounts (localpart -> password), replacing the password of
// any that exist. They can log in as soon as it returns, without a restart.
func (s *Server) AddUsers(ctx context.Context, users map[string]string) error {
	n, err := s.Normalize(users)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("prosody: server stopped")
	}
	if err := writeAccounts(ctx, s.layout.path(dataDir), n); err != nil {
		return err
	}
	s.Set(n)
	return nil
}

// TLSConfig returns a new TLS configuration for clients that trusts only the
// server's generated CA and expects the name "localhost".
func (s *Server) TLSConfig() *tls.Config {
	return serverkit.ClientTLS(s.ca, domain)
}

// CAFile returns the path of the generated CA certificate (PEM).
func (s *Server) CAFile() string { return s.layout.path(caCertFile) }

// ConfigPath returns the path of the generated Prosody configuration, for
// example for "prosodyctl --config PATH shell".
func (s *Server) ConfigPath() string { return s.layout.path(configFile) }

// LogPath returns the path of the server's log, which also receives the
// process's standard output and error.
func (s *Server) LogPath() string { return s.layout.path(logFile) }

// LogTail returns the last n lines of the log, or a note saying why it cannot
// be read.
func (s *Server) LogTail(n int) string {
	return serverkit.LogTail(s.LogPath(), n)
}

// Restart stops the Prosody process and starts it again with the same
// configuration, data and port. Every session is lost: a client cannot resume
// a stream of the previous run. ctx bounds the start-up as for Start.
func (s *Server) Restart(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StartTimeout)
		defer cancel()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("prosody: server stopped")
	}
	if s.proc != nil {
		s.proc.Stop(stopGrace)
		s.proc = nil
	}
	p, err := s.launch(ctx)
	if err != nil {
		return fmt.Errorf("prosody: restarting: %w", err)
	}
	s.proc = p
	return nil
}

// Stop stops Prosody (SIGTERM, then SIGKILL after a few seconds), waits for
// it to exit and removes the server's directory. It may be called more than
// once; later calls do nothing.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	if s.proc != nil {
		s.proc.Stop(stopGrace)
		s.proc = nil
	}
	if err := os.RemoveAll(s.layout.dir); err != nil {
		return fmt.Errorf("prosody: removing %s: %w", s.layout.dir, err)
	}
	return nil
}
