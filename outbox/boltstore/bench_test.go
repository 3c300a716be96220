package boltstore

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/outbox"
)

// BenchmarkCommit commits batches as the stream will: each commit appends a
// batch of stanzas with their message records, drops the previous batch from
// the log (acknowledged) and forgets its messages (delivered), so the file
// stays the size of one batch. It reports commits per message (fsyncs per
// message are twice that: bbolt syncs the data pages, then the meta page),
// and, where /proc/self/io exists, the bytes handed to write(2) per message.
func BenchmarkCommit(b *testing.B) {
	for _, batch := range []int{1, 10, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s, err := Open(b.TempDir() + "/bench.outbox")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			sent := time.Now()
			changes := func(i int) outbox.Changes {
				var c outbox.Changes
				for j := range batch {
					id := fmt.Sprintf("%022d", i*batch+j)
					stanza := []byte(`<message type='groupchat' to='room@conference.example.net' id='` + id +
						`'><body>message number ` + id + `</body><origin-id xmlns='urn:xmpp:sid:0' id='` + id + `'/></message>`)
					c.Append = append(c.Append, outbox.Stanza{ID: id, Bytes: stanza})
					c.Messages = append(c.Messages, outbox.Message{
						Key: id, OriginID: id, To: "room@conference.example.net", Kind: outbox.Groupchat,
						Stanza: stanza, State: "IN_TRANSIT", Written: true, SentAt: sent,
					})
				}
				if i > 0 {
					c.Drop = batch
					for j := range batch {
						c.Forget = append(c.Forget, fmt.Sprintf("%022d", (i-1)*batch+j))
					}
				}
				return c
			}
			b.ReportAllocs()
			w0, ok := written()
			n := 0
			for ; b.Loop(); n++ {
				if err := s.Commit(changes(n)); err != nil {
					b.Fatal(err)
				}
			}
			msgs := float64(n * batch)
			b.ReportMetric(float64(n)/msgs, "commits/msg")
			b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
			if w1, ok1 := written(); ok && ok1 {
				b.ReportMetric(float64(w1-w0)/msgs, "B-written/msg")
			}
		})
	}
}

// written returns the bytes this process has handed to write system calls
// (wchar of /proc/self/io), and false where that is not known.
func written() (int64, bool) {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
