package serverkit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
)

// Accounts is what a harness knows of its server's names and accounts: the
// domain, the Multi-User Chat service, and each user's password. A harness's
// Server embeds it, which gives it Domain, MUCDomain, JID and Password. Its
// methods are safe for concurrent use.
type Accounts struct {
	server    string // the harness's name, for errors: "prosody"
	domain    string
	mucDomain string

	mu    sync.Mutex        // guards users
	users map[string]string // normalized localpart -> password
}

// NewAccounts returns the accounts of the harness server (named in errors)
// on domain, with no users yet. mucDomain is "" when the server has no
// Multi-User Chat service.
func NewAccounts(server, domain, mucDomain string) *Accounts {
	return &Accounts{server: server, domain: domain, mucDomain: mucDomain, users: make(map[string]string)}
}

// Domain returns the server's XMPP domain.
func (a *Accounts) Domain() string { return a.domain }

// MUCDomain returns the domain of the Multi-User Chat service, or "" when
// the server has none.
func (a *Accounts) MUCDomain() string { return a.mucDomain }

// JID returns the bare JID localpart@domain. It panics if localpart is not
// a valid localpart.
func (a *Accounts) JID(localpart string) jid.JID {
	j, err := jid.New(localpart, a.domain, "")
	if err != nil {
		panic(fmt.Sprintf("%s: invalid localpart %q: %v", a.server, localpart, err))
	}
	return j
}

// Password returns the password of user localpart, or "" if there is no
// such user.
func (a *Accounts) Password(localpart string) string {
	n, err := a.NormalizeLocal(localpart)
	if err != nil {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.users[n]
}

// Set records users (normalized localpart -> password, as Normalize returns
// them) once the server has them, replacing the passwords of those known.
func (a *Accounts) Set(users map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	maps.Copy(a.users, users)
}

// Normalize checks every localpart of users and returns the users keyed by
// their normalized localpart.
func (a *Accounts) Normalize(users map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(users))
	for local, pass := range users {
		n, err := a.NormalizeLocal(local)
		if err != nil {
			return nil, err
		}
		if pass == "" {
			return nil, fmt.Errorf("%s: user %q has an empty password", a.server, local)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("%s: users %q collide after normalization", a.server, n)
		}
		out[n] = pass
	}
	return out, nil
}

// NormalizeLocal returns the normalized form of a localpart on the domain.
func (a *Accounts) NormalizeLocal(local string) (string, error) {
	if local == "" {
		return "", fmt.Errorf("%s: empty localpart", a.server)
	}
	j, err := jid.New(local, a.domain, "")
	if err != nil {
		return "", fmt.Errorf("%s: invalid localpart %q: %w", a.server, local, err)
	}
	return j.Localpart(), nil
}

// LoopbackAddr returns "127.0.0.1:port".
func LoopbackAddr(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// ClientTLS returns a new TLS configuration for clients that trusts only ca
// and expects the name serverName.
func ClientTLS(ca *x509.Certificate, serverName string) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		RootCAs:    pool,
		ServerName: serverName,
		MinVersion: tls.VersionTLS12,
	}
}

// Harness is what StartTB needs of a started server.
type Harness interface {
	LogTail(n int) string
	Stop() error
}

// logTailLines is how many lines of the log a failed test shows.
const logTailLines = 60

// StartTB starts a server with start, within timeout, for a test or
// benchmark, and stops it when tb ends, logging the tail of its log first if
// tb failed. A start-up error ends tb through skipOrFatal. name names the
// server in messages.
func StartTB[S Harness](tb testing.TB, name string, timeout time.Duration, start func(context.Context) (S, error), skipOrFatal func(testing.TB, error)) S {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), timeout)
	defer cancel()
	s, err := start(ctx)
	if err != nil {
		skipOrFatal(tb, err)
		var zero S
		return zero
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("%s log (last %d lines):\n%s", name, logTailLines, s.LogTail(logTailLines))
		}
		if err := s.Stop(); err != nil {
			tb.Errorf("stopping %s: %v", name, err)
		}
	})
	return s
}
