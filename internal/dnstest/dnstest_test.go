package dnstest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestResolver checks that the resolver of a Server sees what the test set:
// SRV records, the "." target, A records for 127.0.0.1, NXDOMAIN otherwise,
// and a record changed between two lookups.
func TestResolver(t *testing.T) {
	s := StartTB(t)
	r := s.Resolver()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	s.SetSRV("xmpp-client", "tcp", "example.test", net.SRV{Target: "xmpp.example.test", Port: 5299, Priority: 1})
	s.SetA("xmpp.example.test")
	_, srvs, err := r.LookupSRV(ctx, "xmpp-client", "tcp", "example.test")
	if err != nil {
		t.Fatalf("LookupSRV: %v", err)
	}
	if len(srvs) != 1 || srvs[0].Target != "xmpp.example.test." || srvs[0].Port != 5299 {
		t.Fatalf("LookupSRV = %+v, want xmpp.example.test.:5299", srvs)
	}
	addrs, err := r.LookupHost(ctx, "xmpp.example.test")
	if err != nil || len(addrs) != 1 || addrs[0] != "127.0.0.1" {
		t.Fatalf("LookupHost = %v, %v; want [127.0.0.1]", addrs, err)
	}

	s.SetSRV("xmpp-client", "tcp", "example.test", SRV(t, "xmpp.example.test", "127.0.0.1:5300", 0))
	if _, srvs, err = r.LookupSRV(ctx, "xmpp-client", "tcp", "example.test"); err != nil || len(srvs) != 1 || srvs[0].Port != 5300 {
		t.Fatalf("LookupSRV after the change = %+v, %v; want port 5300", srvs, err)
	}
	if n := s.Count("_xmpp-client._tcp.example.test", "SRV"); n != 2 {
		t.Errorf("Count of the SRV name = %d, want 2", n)
	}

	s.SetSRV("xmpps-client", "tcp", "example.test", net.SRV{Target: "."})
	if _, srvs, err = r.LookupSRV(ctx, "xmpps-client", "tcp", "example.test"); err != nil || len(srvs) != 1 || srvs[0].Target != "." {
		t.Fatalf("LookupSRV of the \".\" target = %+v, %v", srvs, err)
	}

	s.SetSRV("xmpp-client", "tcp", "example.test")
	_, _, err = r.LookupSRV(ctx, "xmpp-client", "tcp", "example.test")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("LookupSRV of a removed name: %v, want a not-found DNSError", err)
	}
	if _, err := r.LookupHost(ctx, "nowhere.example.test"); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("LookupHost of an unknown name: %v, want a not-found DNSError", err)
	}
}
