// Package serverkit holds what the integration harnesses (prosody,
// ejabberd) share: a throw-away TLS certificate authority, free loopback
// ports, a child process stopped by its PID, and reading the server's log.
package serverkit // import "github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
