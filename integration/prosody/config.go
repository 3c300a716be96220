package prosody

import (
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Names of the hosts the generated configuration serves.
const (
	domain    = "localhost"
	mucDomain = "conference.localhost"
)

// DefaultHibernationTime is the smacks_hibernation_time used when
// Options.HibernationTime is zero.
const DefaultHibernationTime = 60 * time.Second

// Files and folders inside a server's temporary directory.
const (
	configFile  = "prosody.cfg.lua"
	logFile     = "prosody.log"
	pidFile     = "prosody.pid"
	adminSocket = "admin.sock"
	dataDir     = "data"
	certDir     = "certs"
	caCertFile  = "ca.crt"
	certFile    = "localhost.crt"
	keyFile     = "localhost.key"
)

// layout is where a server keeps its files and which ports it listens on.
type layout struct {
	dir  string
	port int
	// directPort is the port for direct TLS (XEP-0368), 0 for none.
	directPort int
}

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}

// logLevel returns the configured log level, or an error for a level Prosody
// does not know.
func (o Options) logLevel() (string, error) {
	switch o.LogLevel {
	case "":
		return "info", nil
	case "debug", "info", "warn", "error":
		return o.LogLevel, nil
	}
	return "", fmt.Errorf("prosody: unknown log level %q (want debug, info, warn or error)", o.LogLevel)
}

// hibernationSeconds returns smacks_hibernation_time in whole seconds,
// rounding up so that a short positive duration never becomes zero.
func (o Options) hibernationSeconds() int64 {
	d := o.HibernationTime
	if d <= 0 {
		d = DefaultHibernationTime
	}
	return int64(math.Ceil(d.Seconds()))
}

// config returns the Lua configuration of a server laid out as l.
// The options must have been validated (see Options.logLevel).
func (o Options) config(l layout) string {
	level, err := o.logLevel()
	if err != nil {
		level = "info"
	}

	disabled := []string{"s2s"}
	if !o.Offline {
		// offline is loaded automatically unless it is disabled.
		disabled = append(disabled, "offline")
	}
	enabled := []string{
		"roster", "saslauth", "tls", "disco", "ping", "smacks",
		// The admin shell lets "prosodyctl --config FILE shell" talk to the
		// running server, which helps when debugging a test.
		"admin_shell",
	}
	if o.MAM {
		enabled = append(enabled, "mam")
	}

	ssl := fmt.Sprintf("{ key = %s; certificate = %s; }",
		luaString(l.path(certDir, keyFile)), luaString(l.path(certDir, certFile)))

	var b strings.Builder
	w := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	w("-- A throw-away Prosody for tests, written by the xmpptrack integration harness.")
	w("-- Everything it writes stays in %s.", l.dir)
	w("")
	w("run_as_root = true")
	w("daemonize = false")
	w("pidfile = %s", luaString(l.path(pidFile)))
	w("data_path = %s", luaString(l.path(dataDir)))
	w("certificates = %s", luaString(l.path(certDir)))
	w("admin_socket = %s", luaString(l.path(adminSocket)))
	w("log = { { levels = { min = %s }; to = \"file\"; filename = %s; } }",
		luaString(level), luaString(l.path(logFile)))
	w("")
	w("c2s_interfaces = { \"127.0.0.1\" }")
	w("c2s_ports = { %d }", l.port)
	if l.directPort != 0 {
		w("c2s_direct_tls_interfaces = { \"127.0.0.1\" }")
		w("c2s_direct_tls_ports = { %d }", l.directPort)
	} else {
		w("c2s_direct_tls_ports = { }")
	}
	w("legacy_ssl_ports = { }")
	w("modules_disabled = %s", luaList(disabled))
	w("modules_enabled = %s", luaList(enabled))
	w("")
	w("c2s_require_encryption = false")
	w("allow_unencrypted_plain_auth = false")
	w("authentication = \"internal_hashed\"")
	w("default_iteration_count = %d", iterationCount)
	w("storage = \"internal\"")
	w("ssl = %s", ssl)
	w("smacks_hibernation_time = %d", o.hibernationSeconds())
	if o.MAM {
		w("default_archive_policy = true")
	}
	if len(o.Admins) > 0 {
		admins := make([]string, len(o.Admins))
		for i, a := range o.Admins {
			admins[i] = a + "@" + domain
		}
		w("admins = %s", luaList(admins))
	}
	if o.ExtraGlobal != "" {
		w("")
		w("-- Options.ExtraGlobal")
		w("%s", strings.TrimRight(o.ExtraGlobal, "\n"))
	}
	w("")
	w("VirtualHost %s", luaString(domain))
	w("\tssl = %s", ssl)
	if !o.NoMUC {
		w("")
		w("Component %s \"muc\"", luaString(mucDomain))
		w("\tssl = %s", ssl)
		w("\tmodules_enabled = { \"muc_mam\" }")
		w("\tmuc_room_locking = false")
		w("\trestrict_room_creation = %t", o.RestrictRoomCreation)
	}
	return b.String()
}

// luaString quotes s as a Lua string literal.
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			// Decimal escapes, padded so a following digit is not taken in.
			b.WriteString(`\` + fmt.Sprintf("%03d", c))
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// luaList formats ss as a Lua table of strings.
func luaList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = luaString(s)
	}
	return "{ " + strings.Join(q, ", ") + " }"
}

// activatedLine is the line Prosody logs (at level info) once it listens for
// clients on port.
func activatedLine(port int) string {
	return "Activated service 'c2s' on [127.0.0.1]:" + strconv.Itoa(port)
}

// directActivatedLine is the line Prosody logs (at level info) once it
// listens for clients with direct TLS on port.
func directActivatedLine(port int) string {
	return "Activated service 'c2s_direct_tls' on [127.0.0.1]:" + strconv.Itoa(port)
}

// portInUse is logged (at level error) when Prosody cannot bind a port; it
// keeps running without that listener.
const portInUse = "Failed to open server port"
