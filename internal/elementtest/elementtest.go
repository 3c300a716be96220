// Package elementtest parses stanzas written as text into the form the
// stream hands to handlers, for the tests and fuzz targets of the layers
// above the stream.
package elementtest

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/xmpptrack/xmpptrack/stream"
)

// Parse reads the first element of b, start to end, as the stream's reader
// would. It returns an error when b holds no complete element.
func Parse(b []byte) (*stream.Element, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	var el *stream.Element
	depth := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if err == io.EOF {
				err = errors.New("elementtest: no complete element")
			}
			return nil, err
		}
		if el == nil {
			start, ok := tok.(xml.StartElement)
			if !ok {
				continue
			}
			el = &stream.Element{Start: start.Copy()}
			depth = 1
			continue
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
		el.Inner = append(el.Inner, xml.CopyToken(tok))
		if depth == 0 {
			return el, nil
		}
	}
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
