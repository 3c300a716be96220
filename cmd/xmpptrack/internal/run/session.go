package run

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/jid"
	xstream "mellium.im/xmpp/stream"

	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
)

// Account says how to log in.
type Account struct {
	JID      jid.JID
	Password string
	// Addr is the server's host:port. Empty: the stream finds the server
	// from the SRV records of the JID's domain, as XMPP clients do (see
	// stream.Config.Addr); with Plain, the JID's domain on port 5222.
	Addr string
	// Plain logs in without TLS even when the server offers STARTTLS. It is
	// refused unless Addr is a loopback address.
	Plain bool
	// CAFile, if set, is a PEM file of the certificate authorities to trust
	// for STARTTLS instead of the system's.
	CAFile string
	// Logger receives the stream's logs; nil discards them.
	Logger *slog.Logger
}

// address returns the address to dial, or "" for the stream to find the
// server in DNS. Plaintext needs an address to check for loopback: the JID's
// domain on port 5222.
func (a Account) address() string {
	switch {
	case a.Addr != "":
		return a.Addr
	case a.Plain:
		return net.JoinHostPort(a.JID.Domainpart(), "5222")
	}
	return ""
}

// Dial logs in and returns the stream. Its errors say in one line what went
// wrong: the server cannot be reached, TLS failed, the credentials were
// refused.
func Dial(ctx context.Context, a Account) (*stream.Stream, error) {
	cfg, err := StreamConfig(ctx, a)
	if err != nil {
		return nil, err
	}
	s, err := stream.Dial(ctx, cfg)
	if err != nil {
		return nil, LoginError(a, err)
	}
	return s, nil
}

// StreamConfig returns the stream configuration that logs in as a says.
func StreamConfig(ctx context.Context, a Account) (stream.Config, error) {
	addr := a.address()
	if addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return stream.Config{}, fmt.Errorf("bad server address %q: want host:port", addr)
		}
	}
	cfg := stream.Config{
		JID:      a.JID,
		Password: a.Password,
		Addr:     addr,
		Logger:   a.Logger,
		Backoff:  stream.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2},
	}
	if a.Plain {
		if err := checkLoopback(ctx, addr); err != nil {
			return stream.Config{}, err
		}
		cfg.AllowPlaintext = true
		// Without TLS there is no channel to bind: offer plain SCRAM only.
		cfg.Mechanisms = []sasl.Mechanism{sasl.ScramSha256, sasl.ScramSha1}
	} else {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if a.CAFile != "" {
			pem, err := os.ReadFile(a.CAFile)
			if err != nil {
				return stream.Config{}, fmt.Errorf("reading CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return stream.Config{}, fmt.Errorf("CA file %s: no PEM certificate in it", a.CAFile)
			}
			tc.RootCAs = pool
		}
		cfg.TLS = tc
	}
	return cfg, nil
}

// LoginError turns an error of the first connection (Dial, or Connect of a
// stream made with StreamConfig) into one line that says what went wrong.
func LoginError(a Account, err error) error {
	where := a.address()
	if where == "" {
		where = "the server of " + a.JID.Domainpart() + " (from DNS)"
	}
	return loginError(a.JID, where, err)
}

// loginError turns an error of the first connection into one line that
// says what went wrong.
func loginError(j jid.JID, addr string, err error) error {
	var (
		se   xstream.Error
		cert *tls.CertificateVerificationError
		ne   net.Error
		op   *net.OpError
	)
	msg := err.Error()
	switch {
	case isSASLFailure(err):
		return fmt.Errorf("login as %s refused (wrong JID or password?): %w", j, err)
	case errors.As(err, &cert), strings.Contains(msg, "x509:"), strings.Contains(msg, "tls:"):
		return fmt.Errorf("TLS with %s failed (use -ca to trust the server's CA): %w", addr, err)
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("cannot connect to %s: %w", addr, op.Err)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("no answer from %s in time: %w", addr, err)
	case errors.As(err, &se):
		return fmt.Errorf("server %s ended the stream: %w", addr, err)
	}
	return fmt.Errorf("cannot log in as %s at %s: %w", j, addr, err)
}

// isSASLFailure reports whether err is the server's SASL <failure/>. mellium
// keeps the type of that error in an internal package, so it is recognised
// by the package it comes from.
func isSASLFailure(err error) bool {
	for _, e := range chain(err) {
		if t := reflect.TypeOf(e); t != nil && t.PkgPath() == "mellium.im/xmpp/internal/saslerr" {
			return true
		}
	}
	return false
}

// chain returns err and every error it wraps, depth first.
func chain(err error) []error {
	if err == nil {
		return nil
	}
	out := []error{err}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		out = append(out, chain(u.Unwrap())...)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			out = append(out, chain(e)...)
		}
	}
	return out
}

// checkLoopback returns an error unless addr's host is a loopback address.
func checkLoopback(ctx context.Context, addr string) error {
	host, _, _ := net.SplitHostPort(addr)
	refuse := fmt.Errorf("-plain refused: %s is not a loopback address (plaintext is for local servers only)", host)
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return refuse
		}
		return nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil || len(ips) == 0 {
		return refuse
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return refuse
		}
	}
	return nil
}

// Session is a stream that has joined one room.
type Session struct {
	Stream *stream.Stream
	MUC    *muc.Client
	Room   *muc.Room
}

// Join enters room as nick on s. The MUC client joins the room again by
// itself when the stream has to start a new session.
func Join(ctx context.Context, s *stream.Stream, room jid.JID, nick string, opts ...muc.Option) (*Session, error) {
	c := muc.NewClient(s, opts...)
	r, err := c.Join(ctx, room, nick)
	if err != nil {
		c.Close()
		var je *muc.JoinError
		if errors.As(err, &je) {
			return nil, fmt.Errorf("room %s refused us: %w", room, err)
		}
		return nil, fmt.Errorf("cannot join %s: %w", room, err)
	}
	return &Session{Stream: s, MUC: c, Room: r}, nil
}

// Close detaches the MUC client and closes the stream, waiting (within ctx)
// for the server to acknowledge what was sent.
func (s *Session) Close(ctx context.Context) error {
	s.MUC.Close()
	return s.Stream.Close(ctx)
}
