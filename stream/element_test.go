package stream_test

import (
	"encoding/xml"
	"errors"
	"io"
	"testing"

	"github.com/xmpptrack/xmpptrack/stream"
)

// TestElementReadersEnd: Reader and InnerReader give the element's tokens
// and then io.EOF, also for a stanza that names the stream's prefix (which
// is decoded inside a stream element of its own).
func TestElementReadersEnd(t *testing.T) {
	for _, raw := range []string{
		"<message id='a'><body>hello</body></message>",
		"<message id='b'><body>stream:features</body></message>",
		"<message id='c'><stream:error/></message>",
	} {
		el, err := stream.ParseElement([]byte(raw))
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		for name, r := range map[string]xml.TokenReader{"Reader": el.Reader(), "InnerReader": el.InnerReader()} {
			var last xml.Token
			n := 0
			for {
				tok, err := r.Token()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("%s: %s: %v after %d tokens", raw, name, err, n)
				}
				last, n = xml.CopyToken(tok), n+1
			}
			if end, ok := last.(xml.EndElement); !ok || end.Name.Local != "message" {
				t.Errorf("%s: %s ended with %#v, want </message>", raw, name, last)
			}
		}
	}
}
