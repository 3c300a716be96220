package integration

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/integration/prosody"
	"github.com/xmpptrack/xmpptrack/internal/dnstest"
	"github.com/xmpptrack/xmpptrack/stream"
)

// These tests find the server the way XMPP clients do, from the SRV records of
// the JID's domain ("localhost", the domain of the harness's certificate),
// served by a DNS server on loopback that hands out 127.0.0.1 only. Each
// target is a faultproxy in front of one of Prosody's ports, so that the test
// sees which one the stream dialed.

// Names that the test DNS server resolves to 127.0.0.1: SRV targets.
const (
	startTLSHost  = "c2s.xmpptrack.test"
	directTLSHost = "tls.xmpptrack.test"
)

// srvServer starts a Prosody with a direct TLS port and the account alice.
func srvServer(t *testing.T) *prosody.Server {
	t.Helper()
	return prosody.StartTB(t, prosody.Options{
		Users:     map[string]string{"alice": "alice-secret"},
		DirectTLS: true,
		NoMUC:     true,
	})
}

// srvDNS starts a loopback DNS server, closed when the test ends, that knows
// the addresses of both SRV targets.
func srvDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	dns := dnstest.StartTB(t)
	dns.SetA(startTLSHost)
	dns.SetA(directTLSHost)
	return dns
}

// none is the SRV record that says a service is not offered at all.
var none = net.SRV{Target: "."}

// proxyTo returns a faultproxy in front of addr, closed when the test ends.
func proxyTo(t *testing.T, addr string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// lookedUp makes a stream config find the server through dns: no Addr.
func lookedUp(dns *dnstest.Server, more func(*stream.Config)) func(*stream.Config) {
	return func(c *stream.Config) {
		c.Addr = ""
		c.Resolver = dns.Resolver()
		if more != nil {
			more(c)
		}
	}
}

// sendAcked sends a message to the stream's own account and fails t unless
// the server acknowledges it.
func sendAcked(t *testing.T, s *stream.Stream, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tok, err := s.Send(ctx, chat(s.Addr(), body))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := tok.Wait(ctx); st != stream.TokenAcked {
		t.Fatalf("message %q: %v (%v), want ACKED", body, st, err)
	}
}

// TestSRVFindsServer checks that the stream follows the SRV records of the
// JID's domain and logs in at their target: _xmpp-client._tcp to a STARTTLS
// port, and _xmpps-client._tcp (XEP-0368) to Prosody's direct TLS port, which
// speaks TLS from the first byte, so the stream logs in there without
// STARTTLS. The other service is announced as not offered.
func TestSRVFindsServer(t *testing.T) {
	srv := srvServer(t)
	for _, tc := range []struct {
		name     string
		service  string // the one with a record; the other has none
		host     string
		upstream string
	}{
		{"starttls", "xmpp-client", startTLSHost, srv.Addr()},
		{"direct-tls", "xmpps-client", directTLSHost, srv.DirectTLSAddr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dns := srvDNS(t)
			target := proxyTo(t, tc.upstream)
			for _, service := range []string{"xmpp-client", "xmpps-client"} {
				dns.SetSRV(service, "tcp", srv.Domain(), none)
			}
			dns.SetSRV(tc.service, "tcp", srv.Domain(), dnstest.SRV(t, tc.host, target.Addr(), 0))

			s := dialStream(t, srv, "alice", lookedUp(dns, nil))
			if n := target.Connections(); n != 1 {
				t.Fatalf("the record's target got %d connections, want 1", n)
			}
			sendAcked(t, s, "found by SRV")
		})
	}
}

// TestSRVLookedUpOnReconnect checks that every reconnection looks the server
// up again: while the stream is connected over STARTTLS, the domain starts to
// announce a direct TLS target; the connection is cut, and the stream resumes
// its session there, over direct TLS, and goes on being acknowledged.
func TestSRVLookedUpOnReconnect(t *testing.T) {
	srv := srvServer(t)
	dns := srvDNS(t)
	c2s := proxyTo(t, srv.Addr())
	direct := proxyTo(t, srv.DirectTLSAddr())
	dns.SetSRV("xmpps-client", "tcp", srv.Domain(), none)
	dns.SetSRV("xmpp-client", "tcp", srv.Domain(), dnstest.SRV(t, startTLSHost, c2s.Addr(), 10))

	resumed := make(chan struct{}, 1)
	s := dialStream(t, srv, "alice", lookedUp(dns, nil))
	s.OnEvent(func(ev stream.Event) {
		if ev.Kind == stream.EventResumed {
			select {
			case resumed <- struct{}{}:
			default:
			}
		}
	})
	sendAcked(t, s, "before the move")
	if n := c2s.Connections(); n != 1 {
		t.Fatalf("the STARTTLS target got %d connections, want 1", n)
	}
	srvName := "_xmpp-client._tcp." + srv.Domain()
	before := dns.Count(srvName, "SRV")

	dns.SetSRV("xmpps-client", "tcp", srv.Domain(), dnstest.SRV(t, directTLSHost, direct.Addr(), 0))
	c2s.CutRaw()
	select {
	case <-resumed:
	case <-time.After(20 * time.Second):
		t.Fatalf("not resumed within 20s; stats: %+v", s.Stats())
	}
	if n := direct.Connections(); n != 1 {
		t.Errorf("the direct TLS target got %d connections, want 1", n)
	}
	if n := c2s.Connections(); n != 1 {
		t.Errorf("the STARTTLS target got %d connections, want still 1", n)
	}
	if after := dns.Count(srvName, "SRV"); after <= before {
		t.Errorf("%s looked up %d times in all, %d before the cut: want more", srvName, after, before)
	}
	sendAcked(t, s, "after the move")
	if st := s.Stats(); st.Resumptions != 1 || st.NewSessions != 0 {
		t.Errorf("Stats: %d resumptions, %d new sessions; want 1 and 0", st.Resumptions, st.NewSessions)
	}
}

// TestSRVSkipsSilentTarget checks that a direct TLS target that accepts the
// TCP connection and never answers the handshake costs Config.DialTimeout and
// no more: the stream then logs in at the STARTTLS target.
func TestSRVSkipsSilentTarget(t *testing.T) {
	srv := srvServer(t)
	dns := srvDNS(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			accepted <- c // held open, never written to
		}
	}()
	t.Cleanup(func() {
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})
	dns.SetSRV("xmpps-client", "tcp", srv.Domain(), dnstest.SRV(t, directTLSHost, silent.Addr().String(), 0))
	dns.SetSRV("xmpp-client", "tcp", srv.Domain(), dnstest.SRV(t, startTLSHost, srv.Addr(), 10))

	const timeout = 500 * time.Millisecond
	begin := time.Now()
	s := dialStream(t, srv, "alice", lookedUp(dns, func(c *stream.Config) { c.DialTimeout = timeout }))
	if took := time.Since(begin); took < timeout {
		t.Errorf("logged in after %v, before the silent target's %v ran out", took, timeout)
	}
	if len(accepted) == 0 {
		t.Error("the silent direct TLS target was never tried")
	}
	sendAcked(t, s, "past the silent target")
}
