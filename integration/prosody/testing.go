package prosody

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
)

// logTailLines is how many lines of the log a failed test shows.
const logTailLines = 60

// StartTB starts a server for a test or benchmark and stops it when tb ends;
// if tb failed, the tail of the Prosody log is logged first.
// When Prosody is not installed the test is skipped, or fails if the
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
			tb.Logf("prosody log (last %d lines):\n%s", logTailLines, s.LogTail(logTailLines))
		}
		if err := s.Stop(); err != nil {
			tb.Errorf("stopping prosody: %v", err)
		}
	})
	return s
}

// SkipOrFatal ends tb because a server could not be started with error err.
// If err wraps ErrNotInstalled, tb is skipped with a hint on how to install
// Prosody, unless the environment variable CI is true: a CI run must not pass
// without having run its integration tests, so there, as for any other
// error, tb fails.
func SkipOrFatal(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, ErrNotInstalled) {
		tb.Fatalf("starting prosody: %v", err)
		return
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		tb.Fatalf("%v; CI is set, so this fails instead of skipping (install it with \"make prosody-install\")", err)
		return
	}
	tb.Skipf("%v: install it with \"make prosody-install\" or \"apt-get install prosody\"", err)
}
