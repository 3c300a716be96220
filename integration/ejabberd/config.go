package ejabberd

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

// DefaultResumeTimeout is mod_stream_mgmt's resume_timeout when
// Options.ResumeTimeout is zero.
const DefaultResumeTimeout = 60 * time.Second

// Files and folders inside a server's temporary directory.
const (
	configFile = "ejabberd.yml"
	logFile    = "ejabberd.log"
	spoolDir   = "spool"
	certDir    = "certs"
	caCertFile = "ca.crt"
	certFile   = "localhost.crt"
	keyFile    = "localhost.key"
)

// layout is where a server keeps its files and which ports it listens on.
type layout struct {
	dir string
	// port serves clients; apiPort serves the HTTP API through which the
	// harness creates accounts.
	port, apiPort int
}

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}

// logLevel returns the configured log level, or an error for a level the
// harness does not offer.
func (o Options) logLevel() (string, error) {
	switch o.LogLevel {
	case "":
		return "info", nil
	case "debug", "info", "warning", "error":
		return o.LogLevel, nil
	}
	return "", fmt.Errorf("ejabberd: unknown log level %q (want debug, info, warning or error)", o.LogLevel)
}

// resumeSeconds returns resume_timeout in whole seconds, rounding up so that
// a short positive duration never becomes zero.
func (o Options) resumeSeconds() int64 {
	d := o.ResumeTimeout
	if d <= 0 {
		d = DefaultResumeTimeout
	}
	return int64(math.Ceil(d.Seconds()))
}

// config returns the YAML configuration of a server laid out as l.
// The options must have been validated (see Options.logLevel).
func (o Options) config(l layout) string {
	level, err := o.logLevel()
	if err != nil {
		level = "info"
	}
	var b strings.Builder
	w := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	w("# A throw-away ejabberd for tests, written by the xmpptrack integration harness.")
	w("# Everything it writes stays in %s.", l.dir)
	w("loglevel: %s", level)
	w("log_rotate_count: 0")
	w("hide_sensitive_log_data: false")
	w("hosts:")
	w("  - %s", yamlString(domain))
	w("certfiles:")
	w("  - %s", yamlString(l.path(certDir, certFile)))
	w("  - %s", yamlString(l.path(certDir, keyFile)))
	w("auth_password_format: scram")
	// The default shaper would hold each client to 3,000 bytes a second.
	w("shaper_rules:")
	w("  c2s_shaper: none")
	w("  max_user_sessions: infinity")
	w("listen:")
	w("  -")
	w("    port: %d", l.port)
	w("    ip: \"127.0.0.1\"")
	w("    module: ejabberd_c2s")
	w("    shaper: none")
	w("    starttls: true")
	w("    starttls_required: false")
	w("    backlog: 1024")
	w("  -")
	w("    port: %d", l.apiPort)
	w("    ip: \"127.0.0.1\"")
	w("    module: ejabberd_http")
	w("    request_handlers:")
	w("      /api: mod_http_api")
	w("acl:")
	w("  loopback:")
	w("    ip:")
	w("      - 127.0.0.0/8")
	if len(o.Admins) > 0 {
		w("  admin:")
		w("    user:")
		for _, a := range o.Admins {
			w("      - %s", yamlString(a+"@"+domain))
		}
	}
	w("access_rules:")
	w("  c2s:")
	w("    allow: all")
	w("  muc_create:")
	if o.RestrictRoomCreation {
		if len(o.Admins) > 0 {
			w("    allow: admin")
		} else {
			w("    deny: all")
		}
	} else {
		w("    allow: all")
	}
	// Only the harness, from loopback, may create accounts.
	w("api_permissions:")
	w("  \"xmpptrack harness\":")
	w("    who:")
	w("      ip: 127.0.0.1/8")
	w("    what:")
	w("      - register")
	w("      - unregister")
	w("      - stop")
	w("modules:")
	w("  mod_disco: {}")
	w("  mod_ping: {}")
	w("  mod_roster: {}")
	w("  mod_http_api: {}")
	w("  mod_stream_mgmt:")
	w("    resume_timeout: %d", o.resumeSeconds())
	w("    max_resume_timeout: %d", o.resumeSeconds())
	// Rooms archive (default_room_options below); user archives keep
	// nothing (mod_mam's default "never"): on Mnesia, archiving every
	// one-to-one message makes ejabberd answer ack requests seconds late
	// under load.
	w("  mod_mam: {}")
	if o.Offline {
		w("  mod_offline: {}")
	}
	if !o.NoMUC {
		w("  mod_muc:")
		w("    host: %s", yamlString(mucDomain))
		w("    access_create: muc_create")
		w("    default_room_options:")
		w("      mam: %t", !o.NoRoomArchive)
	}
	if o.ExtraConfig != "" {
		w("# Options.ExtraConfig")
		w("%s", strings.TrimRight(o.ExtraConfig, "\n"))
	}
	return b.String()
}

// yamlString quotes s as a double-quoted YAML scalar.
func yamlString(s string) string {
	return strconv.Quote(s)
}

// listening is the line ejabberd logs (at level info) once it accepts
// clients on port.
func listening(port int) string {
	return "Start accepting TCP connections at 127.0.0.1:" + strconv.Itoa(port) + " for ejabberd_c2s"
}

// portInUse is logged when ejabberd cannot bind a port.
const portInUse = "eaddrinuse"
