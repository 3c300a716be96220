package prosody

import (
	"context"
	"testing"

	"github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
)

// StartTB starts a server for a test or benchmark and stops it when tb ends;
// if tb failed, the tail of the Prosody log is logged first.
// When Prosody is not installed the test is skipped, or fails if the
// environment variable CI is true (see SkipOrFatal). Any other start-up
// error fails it.
func StartTB(tb testing.TB, opts Options) *Server {
	tb.Helper()
	return serverkit.StartTB(tb, "prosody", StartTimeout, func(ctx context.Context) (*Server, error) {
		return Start(ctx, opts)
	}, SkipOrFatal)
}

// SkipOrFatal ends tb because a server could not be started with error err.
// If err wraps ErrNotInstalled, tb is skipped with a hint on how to install
// Prosody, unless the environment variable CI is true: a CI run must not pass
// without having run its integration tests, so there, as for any other
// error, tb fails.
func SkipOrFatal(tb testing.TB, err error) {
	tb.Helper()
	serverkit.SkipOrFatal(tb, err, ErrNotInstalled, "prosody", "make prosody-install")
}
