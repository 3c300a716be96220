// Package dnstest is a tiny authoritative DNS server on loopback for tests of
// how a client finds its XMPP server (RFC 6120 §3.2.1 SRV records, XEP-0368
// direct TLS).
//
// A Server listens on 127.0.0.1 (UDP) and answers from the records a test
// sets: SRV records, and A records that always point at 127.0.0.1, so that
// whatever a client looks up, it only ever dials loopback. Any other name is
// answered with NXDOMAIN, an AAAA query for a name with an A record with no
// records. Server.Resolver returns a *net.Resolver that asks this server
// only, to give to the code under test.
//
// It answers one question per query, over UDP only, and never truncates; it
// is a fixture, not a general DNS server.
package dnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Query is one question the server was asked.
type Query struct {
	// Name is the name asked for, in lower case, with the final dot.
	Name string
	// Type is the record type asked for, such as "SRV" or "A".
	Type string
}

// Server is a DNS server on 127.0.0.1 for tests. Its methods are safe for
// concurrent use.
type Server struct {
	pc   net.PacketConn
	done chan struct{} // closed when the serving goroutine has ended

	mu      sync.Mutex
	srv     map[string][]net.SRV // by SRV owner name, e.g. "_xmpp-client._tcp.example.test."
	a       map[string]bool      // names whose A record is 127.0.0.1
	queries []Query
}

// Start listens on a free UDP port of 127.0.0.1 and serves until Close.
func Start() (*Server, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("dnstest: listen: %w", err)
	}
	s := &Server{
		pc:   pc,
		done: make(chan struct{}),
		srv:  make(map[string][]net.SRV),
		a:    make(map[string]bool),
	}
	go s.serve()
	return s, nil
}

// StartTB starts a server for a test or benchmark and closes it when tb
// ends; an error fails tb.
func StartTB(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Addr returns the address the server listens on, "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.pc.LocalAddr().String() }

// Close stops the server and waits until it no longer answers.
func (s *Server) Close() error {
	err := s.pc.Close()
	<-s.done
	return err
}

// Resolver returns a resolver that sends every query to s, whatever the
// system's configuration names. It uses Go's own resolver, which still reads
// /etc/hosts first for addresses (not for SRV records): names given to SetA
// should not be in it.
func (s *Server) Resolver() *net.Resolver {
	addr := s.Addr()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", addr)
		},
	}
}

// SetSRV replaces the SRV records of _service._proto.domain (service and
// proto without the underscore, as for net.LookupSRV) with records; none
// removes them, so that the name is answered with NXDOMAIN. A record whose
// Target is "." says that the service is not offered at all.
func (s *Server) SetSRV(service, proto, domain string, records ...net.SRV) {
	name := fqdn("_" + service + "._" + proto + "." + domain)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(records) == 0 {
		delete(s.srv, name)
		return
	}
	s.srv[name] = append([]net.SRV(nil), records...)
}

// SRV returns an SRV record whose target is host and whose port is that of
// addr ("127.0.0.1:PORT", say a listener's address), with the given priority
// (lower is preferred). A malformed addr fails tb.
func SRV(tb testing.TB, host, addr string, priority uint16) net.SRV {
	tb.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatalf("dnstest: %v", err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		tb.Fatalf("dnstest: port of %q: %v", addr, err)
	}
	return net.SRV{Target: host, Port: uint16(port), Priority: priority}
}

// SetA gives name an A record: 127.0.0.1, the only address this server
// hands out.
func (s *Server) SetA(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.a[fqdn(name)] = true
}

// Queries returns the questions asked so far, oldest first.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

// Count returns how often name was asked for records of type typ ("SRV",
// "A", …).
func (s *Server) Count(name, typ string) int {
	name = fqdn(name)
	n := 0
	for _, q := range s.Queries() {
		if q.Name == name && q.Type == typ {
			n++
		}
	}
	return n
}

// fqdn returns name in lower case with a final dot.
func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// serve answers queries until the connection is closed.
func (s *Server) serve() {
	defer close(s.done)
	buf := make([]byte, 65535)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		resp, err := s.answer(buf[:n])
		if err != nil {
			continue // not a query we can parse: a real server would drop it too
		}
		s.pc.WriteTo(resp, from)
	}
}

// answer builds the response to the query in req.
func (s *Server) answer(req []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil, fmt.Errorf("dnstest: parse header: %w", err)
	}
	q, err := p.Question()
	if err != nil {
		return nil, fmt.Errorf("dnstest: parse question: %w", err)
	}
	name := strings.ToLower(q.Name.String())
	typ := strings.TrimPrefix(q.Type.String(), "Type")

	s.mu.Lock()
	s.queries = append(s.queries, Query{Name: name, Type: typ})
	srvs := append([]net.SRV(nil), s.srv[name]...)
	hasA := s.a[name]
	s.mu.Unlock()

	rh := dnsmessage.Header{
		ID:                 h.ID,
		Response:           true,
		Authoritative:      true,
		RecursionDesired:   h.RecursionDesired,
		RecursionAvailable: true,
	}
	if len(srvs) == 0 && !hasA {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 0}
	switch {
	case q.Type == dnsmessage.TypeSRV:
		for _, r := range srvs {
			target, err := dnsmessage.NewName(fqdn(r.Target))
			if err != nil {
				return nil, fmt.Errorf("dnstest: SRV target %q: %w", r.Target, err)
			}
			err = b.SRVResource(rr, dnsmessage.SRVResource{
				Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: target,
			})
			if err != nil {
				return nil, err
			}
		}
	case q.Type == dnsmessage.TypeA && hasA:
		if err := b.AResource(rr, dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
