package stream

import (
	"fmt"
	"io"
	"sync/atomic"
	"testing"
)

// roomMessage is another occupant's message as Prosody 0.12 relays it to a
// room's occupants.
const roomMessage = "<message from='room@conference.example.test/bob' type='groupchat' id='b7Qd9x2VfG1kLmN3pR5sTw' to='bot@example.test/r1' xml:lang='en'>" +
	"<body>message %06d from bob, a line of ordinary length</body>" +
	"<origin-id xmlns='urn:xmpp:sid:0' id='Zq8Yx7Wv6Ut5Sr4Qp3On2M'/>" +
	"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='dGhlIG9jY3VwYW50IGlkIG9mIGJvYg=='/>" +
	"<stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.example.test' id='a1B2c3D4e5F6g7H8i9J0kL'/></message>"

// roomFeed is the server's side of a busy room: n messages, then the end of
// the stream, handed out in reads of up to 4 KiB as a TLS connection would.
type roomFeed struct {
	n, sent int
	pending []byte
}

func (f *roomFeed) Read(b []byte) (int, error) {
	for len(f.pending) < len(b) && len(f.pending) < 4096 {
		if f.sent == f.n {
			if len(f.pending) == 0 {
				return 0, io.EOF
			}
			break
		}
		f.pending = fmt.Appendf(f.pending, roomMessage, f.sent)
		f.sent++
		if f.sent == f.n {
			f.pending = append(f.pending, "</stream:stream>"...)
		}
	}
	n := copy(b, f.pending)
	f.pending = f.pending[:copy(f.pending, f.pending[n:])]
	return n, nil
}

// BenchmarkReadRoom feeds room messages through a connection's reader, its
// inbound count and the callback goroutine to a handler that counts the
// groupchat messages with a body, as a bot in a busy room does. One op is
// one stanza.
func BenchmarkReadRoom(b *testing.B) {
	s, c, _ := fuzzStream()
	var got atomic.Int64
	s.HandleElement(func(el *Element) {
		if el.Name().Local != "message" || el.Attr("type") != "groupchat" {
			return
		}
		if _, ok := el.Child(el.Name().Space, "body"); ok {
			got.Add(1)
		}
	})
	feed := &roomFeed{n: b.N}
	b.ReportAllocs()
	b.ResetTimer()
	err := s.read(c, newFramer(feed, "jabber:client"))
	done := make(chan struct{})
	s.cb.finish(done)
	<-done
	b.StopTimer()
	if err != io.EOF {
		b.Fatalf("read: %v, want io.EOF", err)
	}
	if got.Load() != int64(b.N) {
		b.Fatalf("handled %d of %d", got.Load(), b.N)
	}
}

// BenchmarkFrameRoom is the framer alone on the room's traffic: one op is
// one stanza found, checked and made an Element.
func BenchmarkFrameRoom(b *testing.B) {
	f := newFramer(&roomFeed{n: b.N}, "jabber:client")
	b.ReportAllocs()
	b.ResetTimer()
	for {
		if _, err := f.next(); err != nil {
			if err != io.EOF {
				b.Fatal(err)
			}
			return
		}
	}
}
