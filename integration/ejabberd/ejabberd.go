// Package ejabberd runs a real ejabberd 23.01 XMPP server as a child process,
// for integration tests and development, as package prosody runs Prosody.
//
// Each Server lives in its own temporary directory: configuration, Mnesia
// spool, logs and a TLS certificate authority made at start-up all stay
// there, and Stop removes it. The Erlang VM runs without distribution, so no
// epmd daemon is started and no node name or cookie is involved; it is
// stopped by its PID. The server listens on free ports of 127.0.0.1 only:
// one for clients, one for the HTTP API through which the harness creates
// accounts. It serves the host "localhost" and, unless disabled, a
// Multi-User Chat service on "conference.localhost" whose rooms are
// archived (mod_mam). Stream management (XEP-0198) is on with resumption;
// there are no shapers. Clients reach it with STARTTLS, verified against the
// generated CA (see Server.TLSConfig), and SCRAM authentication.
//
// Nothing here needs a container or a service manager: only Erlang's erl
// and ejabberd's Erlang application, as Debian's "ejabberd" package installs
// them.
package ejabberd // import "github.com/xmpptrack/xmpptrack/integration/ejabberd"

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
)

// ErrNotInstalled is returned (wrapped) by Start when Erlang or ejabberd's
// application cannot be found.
var ErrNotInstalled = errors.New("ejabberd is not installed")

// errPortInUse means that ejabberd could not bind one of its ports.
var errPortInUse = errors.New("port in use")

// StartTimeout bounds the start-up of a server when the caller's context
// sets no deadline, and always for StartTB. The VM takes 2 to 5 seconds.
const StartTimeout = 60 * time.Second

const (
	// startAttempts is how many port pairs Start tries before it gives up.
	startAttempts = 5
	// stopGrace is how long Stop waits after SIGTERM before it sends
	// SIGKILL; a graceful shutdown takes well under a second.
	stopGrace = 10 * time.Second
	// pollInterval is how often start-up checks whether ejabberd is ready.
	pollInterval = 20 * time.Millisecond
	// consoleFile receives the VM's standard output and error.
	consoleFile = "console.log"
)

// Options configures a Server. The zero value is a usable server without
// users.
type Options struct {
	// Users maps localparts to passwords; the accounts exist when Start
	// returns.
	Users map[string]string

	// ResumeTimeout is mod_stream_mgmt's resume_timeout: how long the
	// server keeps a broken stream management session for resumption. It
	// is rounded up to whole seconds; zero means DefaultResumeTimeout.
	ResumeTimeout time.Duration

	// RestrictRoomCreation lets only Admins create rooms.
	RestrictRoomCreation bool

	// Admins are localparts of the server's administrators.
	Admins []string

	// NoMUC leaves out the Multi-User Chat service.
	NoMUC bool

	// NoRoomArchive turns the rooms' archive (mod_mam for rooms) off: the
	// reflections then carry no <stanza-id/>.
	NoRoomArchive bool

	// Offline loads mod_offline, which stores messages for users who are not
	// online. Without it a chat or normal message to a bare JID with no
	// available resource is bounced with service-unavailable.
	Offline bool

	// ExtraConfig holds YAML lines appended to the generated configuration,
	// at the top level. A top-level key the configuration already has must
	// not be repeated.
	ExtraConfig string

	// LogLevel is the lowest level written to the log: "debug", "info",
	// "warning" or "error". Empty means "info".
	LogLevel string

	// Erl is the erl executable to run. Empty means "erl" looked up in PATH,
	// then /usr/bin/erl.
	Erl string

	// ErlLibs is the folder that holds ejabberd's Erlang application (a
	// folder ejabberd-VERSION with an ebin folder inside). Empty means
	// where Debian and Erlang install it.
	ErlLibs string
}

// Server is a running ejabberd. Its methods are safe for concurrent use.
type Server struct {
	*serverkit.Accounts // Domain, MUCDomain, JID, Password

	erl     string
	erlLibs string
	opts    Options
	layout  layout
	ca      *x509.Certificate
	api     *http.Client

	mu      sync.Mutex
	proc    *serverkit.Process // nil while stopped
	stopped bool
}

// LookPath returns the erl executable and the ERL_LIBS folder that Start
// would use for opts, or an error wrapping ErrNotInstalled.
func LookPath(opts Options) (erl, libs string, err error) {
	erl = opts.Erl
	if erl == "" {
		erl = "erl"
	}
	if erl, err = exec.LookPath(erl); err != nil && opts.Erl == "" {
		erl, err = exec.LookPath("/usr/bin/erl")
	}
	if err != nil {
		return "", "", fmt.Errorf("%w: no erl: %w", ErrNotInstalled, err)
	}
	if opts.ErlLibs != "" {
		m, _ := filepath.Glob(filepath.Join(opts.ErlLibs, "ejabberd-*", "ebin", "ejabberd.app"))
		if len(m) == 0 {
			return "", "", fmt.Errorf("%w: no ejabberd application in %s", ErrNotInstalled, opts.ErlLibs)
		}
		return erl, opts.ErlLibs, nil
	}
	// Where Debian and Ubuntu, then Erlang's own tree, keep it.
	libGlobs := []string{
		"/usr/lib/*/ejabberd-*/ebin/ejabberd.app",
		"/usr/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app",
		"/usr/lib64/erlang/lib/ejabberd-*/ebin/ejabberd.app",
	}
	for _, g := range libGlobs {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			// .../ejabberd-VERSION/ebin/ejabberd.app -> ...
			return erl, filepath.Dir(filepath.Dir(filepath.Dir(m[0]))), nil
		}
	}
	return "", "", fmt.Errorf("%w: no ejabberd application (looked in %s)", ErrNotInstalled, strings.Join(libGlobs, ", "))
}

// Start creates the server's directory, configuration and certificates,
// starts ejabberd, waits until it accepts clients and creates the accounts.
// ctx bounds the start-up only (StartTimeout if it has no deadline); the
// server runs until Stop.
// If ejabberd cannot be found, the error wraps ErrNotInstalled.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StartTimeout)
		defer cancel()
	}
	erl, libs, err := LookPath(opts)
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
	accounts := serverkit.NewAccounts("ejabberd", domain, muc)
	users, err := accounts.Normalize(opts.Users)
	if err != nil {
		return nil, err
	}
	for _, a := range opts.Admins {
		if _, err := accounts.NormalizeLocal(a); err != nil {
			return nil, err
		}
	}

	dir, err := os.MkdirTemp("", "xmpptrack-ejabberd-")
	if err != nil {
		return nil, fmt.Errorf("ejabberd: creating directory: %w", err)
	}
	s := &Server{
		Accounts: accounts,
		erl:      erl,
		erlLibs:  libs,
		opts:     opts,
		layout:   layout{dir: dir},
		api:      &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}},
	}
	s.opts.Users = nil
	fail := func(err error) (*Server, error) {
		if s.proc != nil {
			s.proc.Stop(stopGrace)
		}
		os.RemoveAll(dir)
		return nil, err
	}

	for _, d := range []string{spoolDir, certDir} {
		if err := os.Mkdir(s.layout.path(d), 0o750); err != nil {
			return fail(fmt.Errorf("ejabberd: creating directory: %w", err))
		}
	}
	s.ca, err = serverkit.WriteCertificates(serverkit.CertFiles{
		CA:   s.layout.path(caCertFile),
		Cert: s.layout.path(certDir, certFile),
		Key:  s.layout.path(certDir, keyFile),
	}, domain, mucDomain)
	if err != nil {
		return fail(fmt.Errorf("ejabberd: %w", err))
	}

	for attempt := 1; ; attempt++ {
		if s.layout.port, err = serverkit.FreePort(); err != nil {
			return fail(err)
		}
		if s.layout.apiPort, err = serverkit.FreePort(); err != nil {
			return fail(err)
		}
		if s.layout.port == s.layout.apiPort {
			continue
		}
		if err := os.WriteFile(s.layout.path(configFile), []byte(opts.config(s.layout)), 0o640); err != nil {
			return fail(fmt.Errorf("ejabberd: writing configuration: %w", err))
		}
		p, err := s.launch(ctx)
		if err == nil {
			s.proc = p
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == startAttempts {
			return fail(err)
		}
	}
	if err := s.register(ctx, users); err != nil {
		return fail(err)
	}
	return s, nil
}

// launch starts the VM with the current configuration and waits until it
// accepts clients. On failure the process is gone.
func (s *Server) launch(ctx context.Context) (*serverkit.Process, error) {
	logPath := s.LogPath()
	logStart := serverkit.LogSize(logPath)
	console, err := os.OpenFile(s.layout.path(consoleFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("ejabberd: opening console log: %w", err)
	}
	defer console.Close() // the child has its own copy
	consoleStart, err := console.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("ejabberd: opening console log: %w", err)
	}

	// What ejabberdctl foreground runs, without distribution: no node
	// name, so no epmd and no cookie.
	cmd := exec.Command(s.erl, "-noinput", "-noshell", "+K", "true",
		"-mnesia", "dir", strconv.Quote(s.layout.path(spoolDir)),
		"-s", "ejabberd")
	cmd.Dir = s.layout.dir
	cmd.Env = append(os.Environ(),
		"HOME="+s.layout.dir, // no ~/.erlang of the user's
		"ERL_LIBS="+s.erlLibs,
		"EJABBERD_CONFIG_PATH="+s.layout.path(configFile),
		"EJABBERD_LOG_PATH="+logPath,
		"ERL_CRASH_DUMP="+s.layout.path("erl_crash.dump"),
		"ERL_CRASH_DUMP_BYTES=0",
	)
	cmd.Stdout = console
	cmd.Stderr = console
	p, err := serverkit.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("ejabberd: %w", err)
	}
	if err := s.waitReady(ctx, p, logPath, logStart); err != nil {
		p.Stop(stopGrace)
		if errors.Is(err, errPortInUse) {
			return nil, err
		}
		out, _ := serverkit.ReadFrom(s.layout.path(consoleFile), consoleStart)
		return nil, fmt.Errorf("%w\nejabberd log:\n%s\nconsole:\n%s", err, s.LogTail(30), lastLines(out, 20))
	}
	return p, nil
}

// waitReady polls until ejabberd serves clients on its port: it has logged
// that it accepts connections there and answers a client stream with
// STARTTLS among its features.
func (s *Server) waitReady(ctx context.Context, p *serverkit.Process, logPath string, logStart int64) error {
	level, _ := s.opts.logLevel()
	wantLine := level == "debug" || level == "info"
	ready := []byte(listening(s.layout.port))
	addr := s.Addr()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	notYet := errors.New("c2s listener not started yet")
	last := notYet
	for {
		select {
		case <-p.Done():
			return fmt.Errorf("ejabberd: exited during start-up: %v", p.Err())
		case <-ctx.Done():
			return fmt.Errorf("ejabberd: waiting for start-up: %w (last check: %v)", ctx.Err(), last)
		case <-t.C:
		}
		log, err := serverkit.ReadFrom(logPath, logStart)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ejabberd: %w", err)
		}
		if bytes.Contains(log, []byte(portInUse)) {
			return fmt.Errorf("ejabberd: port %d or %d: %w", s.layout.port, s.layout.apiPort, errPortInUse)
		}
		if i := bytes.Index(log, []byte("[critical]")); i >= 0 {
			// ejabberdctl would report success here: a bad configuration
			// is logged as critical, and the VM may linger a while.
			return fmt.Errorf("ejabberd: critical error during start-up: %s", lastLines(log[i:], 5))
		}
		if wantLine && !bytes.Contains(log, ready) {
			last = notYet
			continue
		}
		if last = serverkit.ProbeStartTLS(ctx, addr, domain); last == nil {
			return nil
		}
	}
}

// lastLines returns at most n lines from the start of b.
func lastLines(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// register creates (or replaces) the accounts through the HTTP API: one VM
// for all of them, a request each on one connection.
func (s *Server) register(ctx context.Context, users map[string]string) error {
	for _, local := range slices.Sorted(maps.Keys(users)) {
		pass := users[local]
		args := map[string]string{"user": local, "host": domain, "password": pass}
		err := s.call(ctx, "register", args)
		if errors.Is(err, errConflict) {
			// Replace the password: AddUsers promises it.
			if err = s.call(ctx, "unregister", map[string]string{"user": local, "host": domain}); err == nil {
				err = s.call(ctx, "register", args)
			}
		}
		if err != nil {
			return fmt.Errorf("ejabberd: creating user %q: %w", local, err)
		}
		s.Set(map[string]string{local: pass})
	}
	return nil
}

// errConflict is the API's answer to registering an existing account.
var errConflict = errors.New("account exists")

// call runs one command of ejabberd's HTTP API.
func (s *Server) call(ctx context.Context, command string, args map[string]string) error {
	body, err := json.Marshal(args)
	if err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.layout.apiPort)) + "/api/" + command
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.api.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", command, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode == http.StatusConflict || bytes.Contains(out, []byte("already registered")):
		return fmt.Errorf("%s: %w: %s", command, errConflict, out)
	}
	return fmt.Errorf("%s: HTTP %d: %s", command, resp.StatusCode, out)
}

// Addr returns the address clients connect to, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return serverkit.LoopbackAddr(s.layout.port)
}

// AddUsers creates accounts (localpart -> password), replacing the password of
// any that exist. They can log in as soon as it returns.
func (s *Server) AddUsers(ctx context.Context, users map[string]string) error {
	n, err := s.Normalize(users)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.proc == nil {
		return errors.New("ejabberd: server stopped")
	}
	return s.register(ctx, n)
}

// TLSConfig returns a new TLS configuration for clients that trusts only the
// server's generated CA and expects the name "localhost".
func (s *Server) TLSConfig() *tls.Config {
	return serverkit.ClientTLS(s.ca, domain)
}

// CAFile returns the path of the generated CA certificate (PEM).
func (s *Server) CAFile() string { return s.layout.path(caCertFile) }

// ConfigPath returns the path of the generated ejabberd configuration.
func (s *Server) ConfigPath() string { return s.layout.path(configFile) }

// LogPath returns the path of ejabberd's log.
func (s *Server) LogPath() string { return s.layout.path(logFile) }

// LogTail returns the last n lines of the log, or a note saying why it cannot
// be read.
func (s *Server) LogTail(n int) string {
	return serverkit.LogTail(s.LogPath(), n)
}

// PID returns the process id of the running VM, or 0 while stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid()
}

// Restart stops ejabberd gracefully (SIGTERM: clients receive
// <system-shutdown/>) and starts it again with the same configuration,
// accounts and ports. Every session is lost: a client cannot resume a stream
// of the previous run. ctx bounds the start-up as for Start.
func (s *Server) Restart(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, StartTimeout)
		defer cancel()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("ejabberd: server stopped")
	}
	if s.proc != nil {
		s.shutdown(ctx)
		s.proc = nil
	}
	p, err := s.launch(ctx)
	if err != nil {
		return fmt.Errorf("ejabberd: restarting: %w", err)
	}
	s.proc = p
	return nil
}

// shutdown stops the running VM as an administrator would ("ejabberdctl
// stop", here through the HTTP API), then by its PID if it is still there
// after stopGrace.
func (s *Server) shutdown(ctx context.Context) {
	if err := s.call(ctx, "stop", map[string]string{}); err == nil {
		select {
		case <-s.proc.Done():
			return
		case <-time.After(stopGrace):
		}
	}
	s.proc.Stop(stopGrace)
}

// Stop stops ejabberd (SIGTERM, then SIGKILL after a few seconds), waits for
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
	s.api.CloseIdleConnections()
	if err := os.RemoveAll(s.layout.dir); err != nil {
		return fmt.Errorf("ejabberd: removing %s: %w", s.layout.dir, err)
	}
	return nil
}
