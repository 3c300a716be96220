// Command raw is the baseline of the end-to-end benchmark: the least work a
// client can do to send groupchat messages and see them reflected, which
// is the ceiling the server allows.
//
// It logs in with mellium (STARTTLS, SCRAM, resource binding), enables
// stream management as xmpptrack does (so that the server does the same
// work), joins the room, and from then on works on raw bytes: it writes
// pre-serialised messages straight to the connection, batching whatever the
// window allows into one write, and finds the reflections in what it reads
// by splitting the stream into top-level elements and looking for the
// sender's occupant JID and the id with bytes.Index. It answers the server's
// ack requests and nothing else.
//
// Usage:
//
//	raw -addr host:port -ca FILE -jid JID -password PW -room ROOM [-nick NICK] [-n N] [-window W] [-timeout DUR] [-receive]
//
// Its output is that of "xmpptrack muc -json": a line per message at its
// outcome, then a summary line.
//
// With -receive it sends nothing but the join and the answers to ack
// requests: it counts the room's groupchat messages that carry a body (a
// start tag with type='groupchat', "<body" after it) until N have arrived,
// for the inbound benchmark (bench/inbound). It writes a JSON line
// {"ready":true} once it has joined, then one with the count, the rate and
// its CPU time per message from then on (benchkit.Received).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/bench/internal/benchkit"
	"github.com/xmpptrack/xmpptrack/internal/report"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "raw: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	addr, caFile, password, nick string
	account, room                jid.JID
	n, window                    int
	timeout                      time.Duration
	receive                      bool
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("raw", flag.ContinueOnError)
	var o options
	var account, room string
	fs.StringVar(&o.addr, "addr", "", "server `host:port`")
	fs.StringVar(&o.caFile, "ca", "", "CA certificate `FILE` for STARTTLS")
	fs.StringVar(&account, "jid", "", "account `JID`")
	fs.StringVar(&o.password, "password", "", "password")
	fs.StringVar(&room, "room", "", "room bare `JID`")
	fs.StringVar(&o.nick, "nick", "", "occupant nick (default: the JID's localpart)")
	fs.IntVar(&o.n, "n", 1, "number of messages")
	fs.IntVar(&o.window, "window", 10, "messages awaiting their reflection at once (0: all)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long the last message may wait for its reflection")
	fs.BoolVar(&o.receive, "receive", false, "send nothing: count N messages of others in the room")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var err error
	if o.account, err = jid.Parse(account); err != nil || o.account.Localpart() == "" {
		return o, fmt.Errorf("bad -jid %q", account)
	}
	if o.room, err = jid.Parse(room); err != nil || o.room.Localpart() == "" {
		return o, fmt.Errorf("bad -room %q", room)
	}
	if o.nick == "" {
		o.nick = o.account.Localpart()
	}
	if o.n < 1 {
		return o, errors.New("-n must be at least 1")
	}
	if o.window <= 0 || o.window > o.n {
		o.window = o.n
	}
	if o.addr == "" {
		o.addr = net.JoinHostPort(o.account.Domainpart(), "5222")
	}
	return o, nil
}

func run(args []string, stdout io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := login(ctx, o)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := newClient(conn, o)
	if err := c.join(); err != nil {
		return err
	}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	if o.receive {
		return c.receive(out)
	}
	return c.send(out)
}

// login negotiates the stream with mellium and returns the connection
// (TLS), positioned after resource binding.
func login(ctx context.Context, o options) (net.Conn, error) {
	tc := &tls.Config{ServerName: o.account.Domainpart(), MinVersion: tls.VersionTLS12}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", o.caFile)
		}
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", o.addr)
	if err != nil {
		return nil, err
	}
	// No channel binding: mellium's -PLUS mechanisms fail against
	// ejabberd 23.01 over TLS 1.3, and the login is not what is measured.
	mechs := []sasl.Mechanism{sasl.ScramSha256, sasl.ScramSha1}
	sess, err := xmpp.NewSession(ctx, o.account.Domain(), o.account, nc, 0, xmpp.NewNegotiator(
		func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: []xmpp.StreamFeature{
				xmpp.StartTLS(tc), xmpp.SASL("", o.password, mechs...), xmpp.BindResource(),
			}}
		}))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("login: %w", err)
	}
	// The server sends nothing after the bind result until asked, so the
	// session's decoder holds no unread bytes: the connection is ours.
	return sess.Conn(), nil
}

// client is the raw client on one connection.
type client struct {
	conn net.Conn
	o    options

	wmu sync.Mutex // serialises writes

	// Reading state: buf holds unconsumed bytes; the scanner's position and
	// state are kept across reads.
	r        io.Reader
	buf      []byte
	pos      int
	depth    int
	inTag    bool
	tagStart int
	elStart  int
	h        uint32 // stanzas received, for <a h/>

	// What crossed the wire after login, as stream.Stats counts it;
	// guarded by wmu.
	wire report.Stream

	occupant []byte // from='room@service/nick'
	prefix   string // id prefix of our messages
}

func newClient(conn net.Conn, o options) *client {
	return &client{
		conn:     conn,
		o:        o,
		r:        conn,
		buf:      make([]byte, 0, 64<<10),
		occupant: []byte("from='" + o.room.String() + "/" + o.nick + "'"),
		prefix:   "r",
	}
}

func (c *client) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.conn.Write(b)
	c.wire.BytesWritten += uint64(n)
	return err
}

// join enables stream management and joins the room, waiting for our
// self-presence.
func (c *client) join() error {
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.conn.SetDeadline(time.Time{})
	if err := c.write([]byte("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")); err != nil {
		return err
	}
	joined := false
	presence := "<presence to='" + c.o.room.String() + "/" + c.o.nick + "' id='join'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
	for !joined {
		err := c.next(func(el []byte, name string) error {
			switch name {
			case "enabled":
				return c.write([]byte(presence))
			case "failed":
				return fmt.Errorf("stream management refused: %s", el)
			case "presence":
				if bytes.Contains(startTag(el), c.occupant) && bytes.Contains(el, []byte("code='110'")) {
					joined = true
				}
				if bytes.Contains(startTag(el), []byte("type='error'")) {
					return fmt.Errorf("join refused: %s", el)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("join: %w", err)
		}
	}
	return nil
}

// send writes the messages with at most window awaiting their reflection
// and writes the outcomes to out.
func (c *client) send(out io.Writer) error {
	n := c.o.n
	msgs := make([][]byte, n)
	ids := make([]string, n)
	for i := range msgs {
		ids[i] = fmt.Sprintf("%s%021d", c.prefix, i)
		msgs[i] = []byte("<message type='groupchat' to='" + c.o.room.String() + "' id='" + ids[i] +
			"'><body>message " + strconv.Itoa(i) + "</body><origin-id xmlns='urn:xmpp:sid:0' id='o" + ids[i][1:] + "'/></message>")
	}
	sentAt := make([]atomic.Int64, n)
	slots := make(chan struct{}, c.o.window)
	writeErr := make(chan error, 1)
	cpu0 := report.CPUTime()
	start := time.Now()
	go func() {
		batch := make([]byte, 0, 64<<10)
		for i := 0; i < n; {
			slots <- struct{}{}
			batch = batch[:0]
			j := i
			for {
				batch = append(batch, msgs[j]...)
				j++
				if j == n {
					break
				}
				select {
				case slots <- struct{}{}:
					continue
				default:
				}
				break
			}
			now := time.Now().UnixNano()
			for k := i; k < j; k++ {
				sentAt[k].Store(now)
			}
			if err := c.write(batch); err != nil {
				writeErr <- err
				return
			}
			i = j
		}
	}()

	states := make(map[string]int)
	done := make([]bool, n)
	latencies := make([]time.Duration, 0, n)
	outcomes := 0
	var last time.Time
	record := func(i int, state string, detail string) error {
		if i < 0 || i >= n || done[i] {
			return nil
		}
		done[i] = true
		outcomes++
		last = time.Now()
		lat := last.Sub(time.Unix(0, sentAt[i].Load()))
		if state == report.Delivered {
			latencies = append(latencies, lat)
		}
		states[state]++
		<-slots
		return report.WriteOutcome(out, report.Outcome{Index: i, ID: ids[i], State: state, LatencyMs: report.Round(report.Millis(lat), 3), Error: detail})
	}
	for outcomes < n {
		select {
		case err := <-writeErr:
			return fmt.Errorf("write: %w", err)
		default:
		}
		c.conn.SetReadDeadline(time.Now().Add(c.o.timeout))
		err := c.next(func(el []byte, name string) error {
			if name != "message" {
				return nil
			}
			st := startTag(el)
			i := c.index(st)
			switch {
			case i < 0:
			case bytes.Contains(st, []byte("type='groupchat'")) && bytes.Contains(st, c.occupant):
				return record(i, report.Delivered, "")
			case bytes.Contains(st, []byte("type='error'")):
				return record(i, "ERROR", string(el))
			}
			return nil
		})
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			for i := range n {
				if !done[i] {
					if err := record(i, "TIMED_OUT", ""); err != nil {
						return err
					}
				}
			}
			break
		}
		if err != nil {
			return err
		}
	}
	sum := report.Summarize(n, states, latencies, last.Sub(start), report.CPUTime()-cpu0)
	c.wmu.Lock()
	wire := c.wire
	c.wmu.Unlock()
	sum.Stream = &wire
	if err := report.WriteSummary(out, sum); err != nil {
		return err
	}
	c.write([]byte("</stream:stream>"))
	return nil
}

// receive counts the room's groupchat messages with a body until n have
// arrived, and writes the counts to out.
func (c *client) receive(out *bufio.Writer) error {
	if err := writeReceived(out, benchkit.Received{Ready: true}); err != nil {
		return err
	}
	cpu0 := report.CPUTime()
	alloc0, objs0 := benchkit.Allocs()
	var first, last time.Time
	got := 0
	for got < c.o.n {
		c.conn.SetReadDeadline(time.Now().Add(c.o.timeout))
		err := c.next(func(el []byte, name string) error {
			if name != "message" {
				return nil
			}
			st := startTag(el)
			if bytes.Contains(st, []byte("type='groupchat'")) && bytes.Contains(el[len(st):], []byte("<body")) {
				got++
				last = time.Now()
				if got == 1 {
					first = last
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("after %d messages: %w", got, err)
		}
	}
	cpu := report.CPUTime() - cpu0
	span := last.Sub(first)
	allocBytes, allocs := benchkit.PerMsg(alloc0, objs0, got)
	r := benchkit.Received{
		AllocBytesPerMsg: allocBytes,
		AllocsPerMsg:     allocs,
		Messages:         got,
		Stanzas:          int(c.h),
		SpanS:            benchkit.Round(span.Seconds(), 3),
		CPUMicrosPerMsg:  benchkit.Round(float64(cpu.Nanoseconds())/1e3/float64(got), 2),
	}
	if span > 0 {
		r.MsgsPerS = benchkit.Round(float64(got-1)/span.Seconds(), 1)
	}
	if err := writeReceived(out, r); err != nil {
		return err
	}
	c.write([]byte("</stream:stream>"))
	return nil
}

// writeReceived writes r as a JSON line and flushes it.
func writeReceived(out *bufio.Writer, r benchkit.Received) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	out.Write(append(b, '\n'))
	return out.Flush()
}

// index returns the index of our message whose id the start tag carries,
// or -1.
func (c *client) index(st []byte) int {
	k := bytes.Index(st, []byte(" id='"+c.prefix))
	if k < 0 {
		return -1
	}
	k += len(" id='") + len(c.prefix)
	end := bytes.IndexByte(st[k:], '\'')
	if end < 0 {
		return -1
	}
	i, err := strconv.Atoi(string(st[k : k+end]))
	if err != nil {
		return -1
	}
	return i
}

// next reads from the connection and calls f with each complete top-level
// element it finds (and the element's local name), answering the server's
// ack requests on the way. It returns after one read.
func (c *client) next(f func(el []byte, name string) error) error {
	if len(c.buf) == cap(c.buf) {
		nb := make([]byte, len(c.buf), 2*cap(c.buf))
		copy(nb, c.buf)
		c.buf = nb
	}
	k, err := c.r.Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+k]
	if k == 0 && err != nil {
		return err
	}
	buf := c.buf
	for i := c.pos; i < len(buf); i++ {
		b := buf[i]
		if !c.inTag {
			if b == '<' {
				c.inTag, c.tagStart = true, i
			}
			continue
		}
		if b != '>' {
			continue
		}
		c.inTag = false
		switch buf[c.tagStart+1] {
		case '?', '!':
		case '/':
			c.depth--
			if c.depth < 0 {
				return io.EOF // </stream:stream>
			}
			if c.depth == 0 {
				if err := c.element(buf[c.elStart:i+1], f); err != nil {
					return err
				}
			}
		default:
			if c.depth == 0 {
				c.elStart = c.tagStart
			}
			if buf[i-1] == '/' {
				if c.depth == 0 {
					if err := c.element(buf[c.elStart:i+1], f); err != nil {
						return err
					}
				}
			} else {
				c.depth++
			}
		}
	}
	keep := len(buf)
	if c.inTag {
		keep = c.tagStart
	}
	if c.depth > 0 {
		keep = min(keep, c.elStart)
	}
	copy(buf, buf[keep:])
	c.buf = buf[:len(buf)-keep]
	c.tagStart -= keep
	c.elStart -= keep
	c.pos = len(c.buf)
	return nil
}

// element handles one complete top-level element.
func (c *client) element(el []byte, f func([]byte, string) error) error {
	name := elementName(el)
	switch name {
	case "message", "presence", "iq":
		c.h++
	case "r":
		c.wmu.Lock()
		c.wire.RequestsReceived++
		c.wire.AnswersSent++
		c.wmu.Unlock()
		return c.write([]byte("<a xmlns='urn:xmpp:sm:3' h='" + strconv.FormatUint(uint64(c.h), 10) + "'/>"))
	case "a":
		c.wmu.Lock()
		c.wire.AnswersRead++
		c.wmu.Unlock()
	}
	return f(el, name)
}

// elementName returns the local name of the element that starts el.
func elementName(el []byte) string {
	end := 1
	for end < len(el) && el[end] != ' ' && el[end] != '>' && el[end] != '/' {
		end++
	}
	name := el[1:end]
	if k := bytes.IndexByte(name, ':'); k >= 0 {
		name = name[k+1:]
	}
	return string(name)
}

// startTag returns el's start tag.
func startTag(el []byte) []byte {
	if k := bytes.IndexByte(el, '>'); k >= 0 {
		return el[:k+1]
	}
	return el
}
