// These tests check how the stream finds its server when Config.Addr and
// Config.Dial are empty: the SRV records of the JID's domain, from a DNS
// server on loopback (internal/dnstest) that only ever hands out 127.0.0.1.

package stream_test

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/internal/dnstest"
	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/stream"
)

// TestLookupFallsBackToDomain checks the fallback of RFC 6120 §3.2.1 and
// XEP-0368: when the JID's domain has no SRV records, the stream dials the
// domain itself, on port 5223 with direct TLS and then on port 5222, and the
// error of a failed Dial names the domain and the address. Without TLS it
// tries no direct TLS. A dial control hook refuses each attempt, so nothing
// needs to listen on those ports.
func TestLookupFallsBackToDomain(t *testing.T) {
	tests := []struct {
		name     string
		tls      bool
		services []string // SRV names the stream must look up
		dialed   []string
	}{
		{"tls", true, []string{"_xmpps-client._tcp.fallback.example.test.", "_xmpp-client._tcp.fallback.example.test."}, []string{"127.0.0.1:5223", "127.0.0.1:5222"}},
		{"plaintext", false, []string{"_xmpp-client._tcp.fallback.example.test."}, []string{"127.0.0.1:5222"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dns := dnstest.StartTB(t)
			dns.SetA("fallback.example.test")
			refused := errors.New("refused by the test")
			var mu sync.Mutex
			var dialed []string
			cfg := stream.Config{
				JID:      jid.MustParse("user@fallback.example.test"),
				Password: "secret",
				Resolver: dns.Resolver(),
			}
			if tc.tls {
				cfg.TLS = &tls.Config{}
			} else {
				cfg.AllowPlaintext = true
			}
			stream.SetDialControl(&cfg, func(network, address string, _ syscall.RawConn) error {
				mu.Lock()
				defer mu.Unlock()
				dialed = append(dialed, address)
				return refused
			})
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			s, err := stream.Dial(ctx, cfg)
			if err == nil {
				s.Close(ctx)
				t.Fatal("Dial succeeded, want the test's refusal")
			}
			if !errors.Is(err, refused) {
				t.Fatalf("Dial: %v, want the test's refusal", err)
			}
			if msg := err.Error(); !strings.Contains(msg, "fallback.example.test") || !strings.Contains(msg, "127.0.0.1:5222") {
				t.Errorf("Dial: %q, want the domain and the address it tried last named", msg)
			}
			mu.Lock()
			got := slices.Clone(dialed)
			mu.Unlock()
			if !slices.Equal(got, tc.dialed) {
				t.Errorf("dialed %v, want %v", got, tc.dialed)
			}
			var srvs []string
			for _, q := range dns.Queries() {
				if q.Type == "SRV" {
					srvs = append(srvs, q.Name)
				}
			}
			slices.Sort(srvs)
			want := slices.Sorted(slices.Values(tc.services))
			if !slices.Equal(srvs, want) {
				t.Errorf("SRV queries %v, want %v", srvs, want)
			}
			if dns.Count("fallback.example.test", "A") == 0 {
				t.Errorf("the domain's address was never looked up; queries: %v", dns.Queries())
			}
		})
	}
}

// TestLookupNotWithAddrOrDial checks that an explicit Config.Addr or
// Config.Dial wins: the stream connects there and asks DNS nothing, even with a
// Resolver set.
func TestLookupNotWithAddrOrDial(t *testing.T) {
	for _, name := range []string{"addr", "dial"} {
		t.Run(name, func(t *testing.T) {
			dns := dnstest.StartTB(t)
			srv := fakeserver.New(t)
			cfg := lookupConfig(dns)
			if name == "addr" {
				cfg.Addr = srv.Addr()
			} else {
				cfg.Dial = srv.Dial
			}
			dialScriptedWith(t, cfg, srv)
			if q := dns.Queries(); len(q) != 0 {
				t.Errorf("DNS was asked %v", q)
			}
		})
	}
}

// lookupConfig is the configuration of a stream that logs in to a scripted
// server (plaintext, PLAIN) found through dns.
func lookupConfig(dns *dnstest.Server) stream.Config {
	return stream.Config{
		JID:            account,
		Password:       "secret",
		AllowPlaintext: true,
		Mechanisms:     []sasl.Mechanism{sasl.Plain},
		Resolver:       dns.Resolver(),
	}
}

// dialScriptedWith dials cfg, plays the first connection on srv up to an
// enabled stream management session with the id S1, and returns the stream
// and that connection. The stream is closed when the test ends, the server
// first.
func dialScriptedWith(t *testing.T, cfg stream.Config, srv *fakeserver.Server) (*stream.Stream, *fakeserver.Conn) {
	t.Helper()
	wait := dialAsync(cfg)
	c := srv.Next(t)
	c.EnableSM(t, "S1")
	s, err := wait()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s.Close(ctx)
		checkNoStreamGoroutines(t)
	})
	return s, c
}

// TestLookupOnEveryReconnection checks that each reconnection looks the
// server up again: the domain's SRV record moves from one server to another
// while connected, the connection breaks, and the stream resumes its session
// at the new target, where it goes on sending.
func TestLookupOnEveryReconnection(t *testing.T) {
	dns := dnstest.StartTB(t)
	dns.SetA("xmpp.example.test")
	first, second := fakeserver.New(t), fakeserver.New(t)
	second.OnResume(func(r fakeserver.Resume) string { return fakeserver.Resumed(r.PrevID, 0) })
	const srvName = "_xmpp-client._tcp.example.test"
	dns.SetSRV("xmpp-client", "tcp", "example.test", dnstest.SRV(t, "xmpp.example.test", first.Addr(), 0))

	events := make(chan stream.Event, 16)
	cfg := lookupConfig(dns)
	cfg.Backoff = stream.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	s, c := dialScriptedWith(t, cfg, first)
	s.OnEvent(func(ev stream.Event) { events <- ev })
	t.Cleanup(second.Close) // before the stream's cleanup
	lookups := dns.Count(srvName, "SRV")
	if lookups == 0 {
		t.Fatalf("Dial did not look up %s; queries: %v", srvName, dns.Queries())
	}

	dns.SetSRV("xmpp-client", "tcp", "example.test", dnstest.SRV(t, "xmpp.example.test", second.Addr(), 0))
	c.Reset()
	c2 := second.Next(t)
	if c2.Resume == nil || c2.Resume.PrevID != "S1" {
		t.Fatalf("the new target got %+v, want a <resume/> of S1", c2.Resume)
	}
	for resumed := false; !resumed; {
		select {
		case ev := <-events:
			switch ev.Kind {
			case stream.EventResumed:
				resumed = true
			case stream.EventConnected, stream.EventDisconnected:
			default:
				t.Fatalf("unexpected event %v (%v) before the resumption", ev.Kind, ev.Err)
			}
		case <-time.After(waitFor):
			t.Fatalf("not resumed within %v", waitFor)
		}
	}
	if n := dns.Count(srvName, "SRV"); n <= lookups {
		t.Errorf("%s looked up %d times after the reconnection, %d before: want more", srvName, n, lookups)
	}

	tok, err := s.Send(t.Context(), message("after"))
	if err != nil {
		t.Fatal(err)
	}
	if ids := c2.Stanzas(t, 1); ids[0] != "after" {
		t.Fatalf("the new target got %v, want [after]", ids)
	}
	c2.Write(t, ackH(1))
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	if st, err := tok.Wait(ctx); st != stream.TokenAcked {
		t.Errorf("token %v (%v), want ACKED by the new target", st, err)
	}
}
