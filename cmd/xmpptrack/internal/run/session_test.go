package run

import (
	"testing"

	"mellium.im/xmpp/jid"
)

// TestAccountAddress checks which address the CLI gives the stream: -addr
// when set; otherwise none, so that the stream finds the server from the
// domain's SRV records, except with -plain, whose loopback check needs an
// address: the domain on port 5222.
func TestAccountAddress(t *testing.T) {
	j := jid.MustParse("alice@example.test")
	for _, tc := range []struct {
		a    Account
		want string
	}{
		{Account{JID: j, Addr: "xmpp.example.test:5299"}, "xmpp.example.test:5299"},
		{Account{JID: j, Addr: "127.0.0.1:5299", Plain: true}, "127.0.0.1:5299"},
		{Account{JID: j}, ""},
		{Account{JID: j, Plain: true}, "example.test:5222"},
	} {
		if got := tc.a.address(); got != tc.want {
			t.Errorf("address() of %+v = %q, want %q", tc.a, got, tc.want)
		}
	}
}
