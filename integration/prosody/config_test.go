package prosody

import (
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
)

// order fails t unless the snippets appear in s in the given order.
func order(t *testing.T, s string, snippets ...string) {
	t.Helper()
	rest := s
	for _, sn := range snippets {
		i := strings.Index(rest, sn)
		if i < 0 {
			t.Errorf("%q missing or out of order", sn)
			return
		}
		rest = rest[i+len(sn):]
	}
}

func TestConfig(t *testing.T) {
	l := layout{dir: "/srv/p", port: 40123}
	cfg := Options{}.config(l)

	for _, want := range []string{
		"run_as_root = true\n",
		"daemonize = false\n",
		`pidfile = "/srv/p/prosody.pid"` + "\n",
		`data_path = "/srv/p/data"` + "\n",
		`certificates = "/srv/p/certs"` + "\n",
		`admin_socket = "/srv/p/admin.sock"` + "\n",
		`log = { { levels = { min = "info" }; to = "file"; filename = "/srv/p/prosody.log"; } }` + "\n",
		`c2s_interfaces = { "127.0.0.1" }` + "\n",
		"c2s_ports = { 40123 }\n",
		`modules_disabled = { "s2s", "offline" }` + "\n",
		`modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "smacks", "admin_shell" }` + "\n",
		"c2s_require_encryption = false\n",
		"allow_unencrypted_plain_auth = false\n",
		`authentication = "internal_hashed"` + "\n",
		"default_iteration_count = 4096\n",
		`storage = "internal"` + "\n",
		`ssl = { key = "/srv/p/certs/localhost.key"; certificate = "/srv/p/certs/localhost.crt"; }` + "\n",
		"smacks_hibernation_time = 60\n",
		`VirtualHost "localhost"` + "\n",
		`Component "conference.localhost" "muc"` + "\n",
		"\tmodules_enabled = { \"muc_mam\" }\n",
		"\tmuc_room_locking = false\n",
		"\trestrict_room_creation = false\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q", want)
		}
	}
	for _, unwanted := range []string{"limits", "csi", "carbons", `"mam"`, "http", "daemonize = true"} {
		if strings.Contains(cfg, unwanted) {
			t.Errorf("config has %q", unwanted)
		}
	}
	order(t, cfg, "smacks_hibernation_time", `VirtualHost "localhost"`, "\tssl = ", "Component", "\tssl = ", "muc_mam")
	if t.Failed() {
		t.Logf("config:\n%s", cfg)
	}
}

func TestConfigOptions(t *testing.T) {
	l := layout{dir: "/srv/p", port: 1}
	cfg := Options{
		HibernationTime:      1500 * time.Millisecond,
		RestrictRoomCreation: true,
		Admins:               []string{"bob"},
		Offline:              true,
		ExtraGlobal:          "smacks_max_unacked_stanzas = 5\n",
		LogLevel:             "debug",
	}.config(l)
	for _, want := range []string{
		"smacks_hibernation_time = 2\n", // rounded up to whole seconds
		"\trestrict_room_creation = true\n",
		`admins = { "bob@localhost" }` + "\n",
		`modules_disabled = { "s2s" }` + "\n", // offline stays enabled
		`levels = { min = "debug" }`,
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q", want)
		}
	}
	// Extra lines come after the generated ones, in the global section.
	order(t, cfg, "smacks_hibernation_time", "smacks_max_unacked_stanzas = 5\n", "VirtualHost")

	mam := Options{MAM: true}.config(l)
	for _, want := range []string{
		`modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "smacks", "admin_shell", "mam" }` + "\n",
		"default_archive_policy = true\n",
	} {
		if !strings.Contains(mam, want) {
			t.Errorf("MAM config lacks %q", want)
		}
	}
	if strings.Contains(cfg, "default_archive_policy") || strings.Contains(Options{}.config(l), `"mam"`) {
		t.Errorf("mod_mam configured without Options.MAM")
	}

	noMUC := Options{NoMUC: true}.config(l)
	if strings.Contains(noMUC, "Component") || strings.Contains(noMUC, "muc") {
		t.Errorf("NoMUC config has a MUC service:\n%s", noMUC)
	}
	if t.Failed() {
		t.Logf("config:\n%s", cfg)
	}
}

// TestConfigDirectTLS checks that a direct TLS port is configured only when
// asked for, and then on loopback only.
func TestConfigDirectTLS(t *testing.T) {
	plain := Options{}.config(layout{dir: "/srv/p", port: 40123})
	if !strings.Contains(plain, "c2s_direct_tls_ports = { }\n") || strings.Contains(plain, "c2s_direct_tls_interfaces") {
		t.Errorf("config without direct TLS:\n%s", plain)
	}
	direct := Options{DirectTLS: true}.config(layout{dir: "/srv/p", port: 40123, directPort: 40124})
	order(t, direct,
		`c2s_interfaces = { "127.0.0.1" }`+"\n",
		"c2s_ports = { 40123 }\n",
		`c2s_direct_tls_interfaces = { "127.0.0.1" }`+"\n",
		"c2s_direct_tls_ports = { 40124 }\n")
	if t.Failed() {
		t.Logf("config:\n%s", direct)
	}
}

func TestLogLevel(t *testing.T) {
	for _, ok := range []string{"", "debug", "info", "warn", "error"} {
		if _, err := (Options{LogLevel: ok}).logLevel(); err != nil {
			t.Errorf("level %q: %v", ok, err)
		}
	}
	if _, err := (Options{LogLevel: "verbose"}).logLevel(); err == nil {
		t.Error("level verbose accepted")
	}
}

func TestLuaString(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/a b": `"/tmp/a b"`,
		`q"b\s`:    `"q\"b\\s"`,
		"a\n1":     `"a\0101"`,
	} {
		if got := luaString(in); got != want {
			t.Errorf("luaString(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestPathEncode(t *testing.T) {
	for in, want := range map[string]string{
		"localhost":            "localhost",
		"conference.localhost": "conference%2elocalhost",
		"a_b-c":                "a%5fb%2dc",
		"é":                    "%c3%a9",
	} {
		if got := pathEncode(in); got != want {
			t.Errorf("pathEncode(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestNormalizeUsers(t *testing.T) {
	u, err := serverkit.NewAccounts("prosody", domain, mucDomain).Normalize(map[string]string{"Alice": "x"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"alice": "x"}; !maps.Equal(u, want) {
		t.Errorf("got %v, want %v", u, want)
	}
	for _, bad := range []map[string]string{
		{"a@b": "x"},             // invalid localpart
		{"": "x"},                // empty localpart
		{"bob": ""},              // empty password
		{"bob": "x", "BOB": "y"}, // collision
	} {
		if _, err := serverkit.NewAccounts("prosody", domain, mucDomain).Normalize(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestWriteAccount(t *testing.T) {
	dir := t.TempDir()
	if err := writeAccounts(context.Background(), dir, map[string]string{"alice": "secret"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "localhost", "accounts", "alice.dat"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.HasPrefix(s, "return {\n") || !strings.HasSuffix(s, "};\n") {
		t.Errorf("not a Lua table:\n%s", s)
	}
	for _, want := range []string{`["iteration_count"] = 4096;`, `["salt"] = "`, `["stored_key"] = "`, `["server_key"] = "`} {
		if !strings.Contains(s, want) {
			t.Errorf("account lacks %q:\n%s", want, s)
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, "localhost", "accounts"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("%d files, want only the account", len(entries))
	}
}

// TestRestartPortTaken checks that a server whose port was taken by someone
// else fails to restart at once instead of waiting on a port it does not
// own: Prosody itself keeps running without the listener.
func TestRestartPortTaken(t *testing.T) {
	s := StartTB(t, Options{})
	s.mu.Lock()
	s.proc.Stop(stopGrace)
	s.proc = nil
	s.mu.Unlock()

	l, err := net.Listen("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err = s.Restart(ctx)
	if !errors.Is(err, errPortInUse) {
		t.Fatalf("Restart on a taken port: %v, want %v", err, errPortInUse)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to notice", d)
	}
}
