package ejabberd

import (
	"context"
	"testing"

	"github.com/xmpptrack/xmpptrack/integration/internal/serverkit"
)

// logTailLines is how many lines of the log a failed test shows.
const logTailLines = 60

// StartTB starts a server for a test or benchmark and stops it when tb ends;
// if tb failed, the tail of the ejabberd log is logged first.
// When ejabberd is not installed the test is skipped, or fails if the
// environment variable CI is true (see SkipOrFatal). Any other start-up
// error fails it.
func StartTB(tb testing.TB, opts Options) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), StartTimeout)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		SkipOrFatal(tb, err)
		return nil
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("ejabberd log (last %d lines):\n%s", logTailLines, s.LogTail(logTailLines))
		}
		if err := s.Stop(); err != nil {
			tb.Errorf("stopping ejabberd: %v", err)
		}
	})
	return s
}

// SkipOrFatal ends tb because a server could not be started with error err.
// If err wraps ErrNotInstalled, tb is skipped with a hint on how to install
// ejabberd, unless the environment variable CI is true: a CI run must not
// pass without having run its integration tests, so there, as for any other
// error, tb fails.
func SkipOrFatal(tb testing.TB, err error) {
	tb.Helper()
	serverkit.SkipOrFatal(tb, err, ErrNotInstalled, "ejabberd", "make ejabberd-install")
}
