// Package elementtest parses stanzas written as text into the form the
// stream hands to handlers, for the tests and fuzz targets of the layers
// above the stream.
package elementtest

import (
	"runtime"
	"strings"
	"time"

	"github.com/xmpptrack/xmpptrack/stream"
)

// Parse reads the first element of b, start to end, as the stream's reader
// would. It returns an error when b holds no complete element.
func Parse(b []byte) (*stream.Element, error) {
	return stream.ParseElement(b)
}

// Goroutines returns the stacks of the running goroutines that were
// started by code whose name contains pkg (for example "xmpptrack/muc."),
// waiting up to grace for them to end first.
func Goroutines(pkg string, grace time.Duration) []string {
	deadline := time.Now().Add(grace)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var found []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if i := strings.Index(g, "\ncreated by "); i >= 0 && strings.Contains(g[i:], pkg) {
				found = append(found, g)
			}
		}
		if len(found) == 0 || time.Now().After(deadline) {
			return found
		}
		time.Sleep(time.Millisecond)
	}
}
