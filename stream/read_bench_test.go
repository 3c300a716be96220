package stream

import (
	"io"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// roomMessage is another occupant's message as Prosody 0.12 relays it to a
// room's occupants.
const roomMessage = "<message from='room@conference.example.test/bob' type='groupchat' id='b7Qd9x2VfG1kLmN3pR5sTw' to='bot@example.test/r1' xml:lang='en'>" +
	"<body>message %06d from bob, a line of ordinary length</body>" +
	"<origin-id xmlns='urn:xmpp:sid:0' id='Zq8Yx7Wv6Ut5Sr4Qp3On2M'/>" +
	"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='dGhlIG9jY3VwYW50IGlkIG9mIGJvYg=='/>" +
	"<stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.example.test' id='a1B2c3D4e5F6g7H8i9J0kL'/></message>"

// appendRoomMessage appends roomMessage number i to b, as fmt would but
// without allocating (the benchmarks count allocations).
func appendRoomMessage(b []byte, i int) []byte {
	before, after, _ := strings.Cut(roomMessage, "%06d")
	b = append(b, before...)
	for d := 100000; d > 0; d /= 10 {
		b = append(b, byte('0'+i/d%10))
	}
	return append(b, after...)
}

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
		f.pending = appendRoomMessage(f.pending, f.sent)
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

// pacedFeed is a room as a listener sees it: one stanza per read, gap
// apart, then the end of the stream.
type pacedFeed struct {
	n, sent int
	gap     time.Duration
}

func (f *pacedFeed) Read(b []byte) (int, error) {
	if f.sent > f.n {
		return 0, io.EOF
	}
	if f.sent == f.n {
		f.sent++
		return copy(b, "</stream:stream>"), nil
	}
	time.Sleep(f.gap)
	m := appendRoomMessage(b[:0], f.sent)
	f.sent++
	return len(m), nil
}

// BenchmarkReadRoomPaced is BenchmarkReadRoom with the stanzas 100µs
// apart, so that the callback goroutine runs out of work after each: it
// reports the process's CPU time per stanza (cpu-ns/op), which is what
// hand-offs to the callback goroutine cost.
func BenchmarkReadRoomPaced(b *testing.B) {
	for _, linger := range []time.Duration{0, 200 * time.Microsecond, time.Millisecond, 2 * time.Millisecond} {
		b.Run("linger="+linger.String(), func(b *testing.B) {
			benchmarkReadRoomPaced(b, linger)
		})
	}
}

func benchmarkReadRoomPaced(b *testing.B, linger time.Duration) {
	s, c, _ := fuzzStream()
	s.cb.linger = linger
	var got atomic.Int64
	s.HandleElement(func(el *Element) {
		if _, ok := el.Child(el.Name().Space, "body"); ok {
			got.Add(1)
		}
	})
	feed := &pacedFeed{n: b.N, gap: 100 * time.Microsecond}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	err := s.read(c, newFramer(feed, "jabber:client"))
	done := make(chan struct{})
	s.cb.finish(done)
	<-done
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	if err != io.EOF {
		b.Fatalf("read: %v, want io.EOF", err)
	}
	if got.Load() != int64(b.N) {
		b.Fatalf("handled %d of %d", got.Load(), b.N)
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
