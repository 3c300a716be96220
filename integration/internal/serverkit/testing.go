package serverkit

import (
	"errors"
	"os"
	"strconv"
	"testing"
)

// SkipOrFatal ends tb because a server could not be started with error err.
// If err wraps notInstalled, tb is skipped with a hint on how to install the
// server (install, such as "make prosody-install"), unless the environment
// variable CI is true: a CI run must not pass without having run its
// integration tests, so there, as for any other error, tb fails. name names
// the server in messages.
func SkipOrFatal(tb testing.TB, err, notInstalled error, name, install string) {
	tb.Helper()
	if !errors.Is(err, notInstalled) {
		tb.Fatalf("starting %s: %v", name, err)
		return
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		tb.Fatalf("%v; CI is set, so this fails instead of skipping (install it with %q)", err, install)
		return
	}
	tb.Skipf("%v: install it with %q", err, install)
}
