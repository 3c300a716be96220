// Command bot is xmpptrack's side of the inbound benchmark (bench/inbound):
// a bot in a busy room that only listens. It logs in with a stream.Stream
// (STARTTLS, SCRAM, stream management, as xmpptrack always does), joins the
// room with a muc.Client, and counts, with a stream.HandleElement handler,
// the room's groupchat messages that carry a body until N have arrived.
// It sends nothing but the join and what the stream sends by itself
// (answers to the server's ack requests, its own ack requests).
//
// Usage:
//
//	bot -addr host:port -ca FILE -jid JID -password PW -room ROOM [-nick NICK] [-n N] [-timeout DUR] [-cpuprofile FILE]
//
// Its output is that of "raw -receive": a JSON line {"ready":true} once it
// has joined, then one with the count, the rate and its CPU time per
// message from then on (benchkit.Received).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/bench/internal/benchkit"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "bot: %v\n", err)
		os.Exit(1)
	}
}

// profileHz is the sampling rate of -cpuprofile.
const profileHz = 1000

type options struct {
	addr, caFile, password, nick, cpuProfile string
	account, room                            jid.JID
	n                                        int
	timeout                                  time.Duration
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("bot", flag.ContinueOnError)
	var o options
	var account, room string
	fs.StringVar(&o.addr, "addr", "", "server `host:port`")
	fs.StringVar(&o.caFile, "ca", "", "CA certificate `FILE` for STARTTLS")
	fs.StringVar(&account, "jid", "", "account `JID`")
	fs.StringVar(&o.password, "password", "", "password")
	fs.StringVar(&room, "room", "", "room bare `JID`")
	fs.StringVar(&o.nick, "nick", "", "occupant nick (default: the JID's localpart)")
	fs.IntVar(&o.n, "n", 1, "number of messages to wait for")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the next message")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the receiving to `FILE`")
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
	if o.addr == "" {
		return o, errors.New("-addr is required")
	}
	return o, nil
}

func run(args []string, stdout io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	tc := &tls.Config{ServerName: o.account.Domainpart(), MinVersion: tls.VersionTLS12}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", o.caFile)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stream.Dial(ctx, stream.Config{JID: o.account, Password: o.password, Addr: o.addr, TLS: tc})
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	}()
	c := muc.NewClient(s)
	defer c.Close()

	cnt := newCounter(o.n)
	remove := s.HandleElement(cnt.element)
	defer remove()
	if _, err := c.Join(ctx, o.room, o.nick); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if err := writeLine(stdout, benchkit.Received{Ready: true}); err != nil {
		return err
	}

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		// A run lasts a second or two: sample at 1 kHz rather than
		// pprof's 100 Hz. Setting the rate first is the way the runtime
		// allows (StartCPUProfile then warns that it cannot change it).
		runtime.SetCPUProfileRate(profileHz)
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("starting the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := benchkit.CPUTime()
	alloc0, objs0 := benchkit.Allocs()
	got, first, last := cnt.wait(o.timeout)
	cpu := benchkit.CPUTime() - cpu0
	allocBytes, allocs := benchkit.PerMsg(alloc0, objs0, got)
	if got < o.n {
		return fmt.Errorf("%d of %d messages arrived", got, o.n)
	}
	span := last.Sub(first)
	r := benchkit.Received{
		Messages:         got,
		Stanzas:          int(s.Stats().Received),
		SpanS:            benchkit.Round(span.Seconds(), 3),
		CPUMicrosPerMsg:  benchkit.Round(float64(cpu.Nanoseconds())/1e3/float64(got), 2),
		AllocBytesPerMsg: allocBytes,
		AllocsPerMsg:     allocs,
	}
	if span > 0 {
		r.MsgsPerS = benchkit.Round(float64(got-1)/span.Seconds(), 1)
	}
	return writeLine(stdout, r)
}

// counter counts the room's groupchat messages with a body.
type counter struct {
	n       int
	changed chan struct{}

	mu          sync.Mutex
	got         int
	first, last time.Time
}

func newCounter(n int) *counter {
	return &counter{n: n, changed: make(chan struct{}, 1)}
}

// element is the stream's handler: it runs on the stream's callback
// goroutine for every inbound stanza.
func (c *counter) element(e *stream.Element) {
	if e.Name().Local != "message" || e.Attr("type") != "groupchat" {
		return
	}
	if _, body := e.Child(e.Name().Space, "body"); !body {
		return
	}
	now := time.Now()
	c.mu.Lock()
	c.got++
	if c.got == 1 {
		c.first = now
	}
	c.last = now
	done := c.got >= c.n
	c.mu.Unlock()
	if done {
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

// wait waits until n messages have arrived, or until none has for timeout,
// and returns the count and the times of the first and the last.
func (c *counter) wait(timeout time.Duration) (int, time.Time, time.Time) {
	t := time.NewTicker(timeout)
	defer t.Stop()
	seen := -1
	for {
		c.mu.Lock()
		got, first, last := c.got, c.first, c.last
		c.mu.Unlock()
		if got >= c.n || got == seen {
			return got, first, last
		}
		seen = got
		select {
		case <-c.changed:
		case <-t.C:
		}
	}
}

// writeLine writes r as a JSON line.
func writeLine(w io.Writer, r benchkit.Received) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
