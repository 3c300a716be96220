package serverkit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
)

// NormalizeUsers checks every localpart of users on domain and returns the
// users keyed by their normalized localpart. server names the harness in
// errors.
func NormalizeUsers(server, domain string, users map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(users))
	for local, pass := range users {
		n, err := NormalizeLocal(server, domain, local)
		if err != nil {
			return nil, err
		}
		if pass == "" {
			return nil, fmt.Errorf("%s: user %q has an empty password", server, local)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("%s: users %q collide after normalization", server, n)
		}
		out[n] = pass
	}
	return out, nil
}

// NormalizeLocal returns the normalized form of a localpart on domain.
func NormalizeLocal(server, domain, local string) (string, error) {
	if local == "" {
		return "", fmt.Errorf("%s: empty localpart", server)
	}
	j, err := jid.New(local, domain, "")
	if err != nil {
		return "", fmt.Errorf("%s: invalid localpart %q: %w", server, local, err)
	}
	return j.Localpart(), nil
}

// JID returns the bare JID localpart@domain; it panics if localpart is not
// a valid localpart.
func JID(server, domain, localpart string) jid.JID {
	j, err := jid.New(localpart, domain, "")
	if err != nil {
		panic(fmt.Sprintf("%s: invalid localpart %q: %v", server, localpart, err))
	}
	return j
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
