package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
	"github.com/xmpptrack/xmpptrack/integration/faultproxy"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

const demoDoc = `A guided tour against a local server with two accounts (see "make demo"):
bob joins a room and stays; alice joins it through a local TCP proxy and
sends tracked messages, then one to a room she has left behind her client's
back (ERROR), then one while the proxy holds back her downlink for longer
than the message's timeout (TIMED_OUT, although bob receives it).
`

// demoHold is how long the proxy holds alice's downlink, and demoTimeout the
// timeout of the message sent meanwhile.
const (
	demoHold    = 3 * time.Second
	demoTimeout = time.Second
)

func demoCommand(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", demoDoc, stdout)
	var (
		addr   = fs.String("addr", "", "server `host:port` (env XMPP_ADDR)")
		caFile = fs.String("ca", "", "CA certificate `FILE` of the server (env XMPP_CA)")
		domain = fs.String("domain", "", "the server's `DOMAIN` (env XMPP_DOMAIN; default localhost)")
		mucSvc = fs.String("muc", "", "the Multi-User Chat `SERVICE` (env XMPP_MUC; default conference.DOMAIN)")
		users  = fs.String("users", "alice:alice,bob:bob", "the sender's and the occupant's accounts, `USER:PW,USER:PW`")
		n      = fs.Int("n", 20, "number of tracked messages in the first part")
	)
	if err := fs.parse(args); err != nil {
		return err
	}
	*addr = firstNonEmpty(*addr, envOr("XMPP_ADDR", ""))
	*caFile = firstNonEmpty(*caFile, envOr("XMPP_CA", ""))
	*domain = firstNonEmpty(*domain, envOr("XMPP_DOMAIN", "localhost"))
	*mucSvc = firstNonEmpty(*mucSvc, envOr("XMPP_MUC", "conference."+*domain))
	if *addr == "" {
		return usageError{"demo: -addr is required (or set XMPP_ADDR)"}
	}
	pairs := strings.Split(*users, ",")
	if len(pairs) != 2 {
		return usageError{"demo: -users wants two accounts, user:pw,user:pw"}
	}
	var accounts [2]run.Account
	for i, p := range pairs {
		u, pw, ok := strings.Cut(p, ":")
		j, err := jid.New(u, *domain, "")
		if !ok || err != nil || pw == "" {
			return usageError{fmt.Sprintf("demo: -users: %q is not user:password", p)}
		}
		accounts[i] = run.Account{JID: j, Password: pw, Addr: *addr, CAFile: *caFile}
	}
	if *n < 1 {
		return usageError{"demo: -n must be at least 1"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{out: stdout, alice: accounts[0], bob: accounts[1], mucDomain: *mucSvc, n: *n}
	return d.run(ctx)
}

// demo is one run of the guided tour.
type demo struct {
	out        io.Writer
	alice, bob run.Account
	mucDomain  string
	n          int
	step       int
	fromAlice  atomic.Int64 // groupchat messages bob received from alice
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

func (d *demo) heading(title string) {
	d.step++
	fmt.Fprintf(d.out, "\n== %d. %s\n", d.step, title)
}

func (d *demo) roomJID(local string) (jid.JID, error) {
	return jid.New(local, d.mucDomain, "")
}

func (d *demo) run(ctx context.Context) error {
	room, err := d.roomJID("demo")
	if err != nil {
		return fmt.Errorf("demo: room: %w", err)
	}

	d.heading("bob joins the room and stays")
	bob, err := login(ctx, d.bob, room, d.bob.JID.Localpart())
	if err != nil {
		return fmt.Errorf("bob: %w", err)
	}
	defer closeSession(bob)
	aliceNick := d.alice.JID.Localpart()
	bob.Stream.HandleElement(func(el *stream.Element) {
		if el.Name().Local == "message" && el.Attr("type") == "groupchat" &&
			el.Attr("from") == room.String()+"/"+aliceNick {
			d.fromAlice.Add(1)
		}
	})
	d.say("%s is in %s as %q", bob.Stream.Addr(), room, bob.Room.Nick())

	d.heading("alice joins through a local TCP proxy")
	proxy, err := faultproxy.New(d.alice.Addr)
	if err != nil {
		return err
	}
	defer proxy.Close()
	viaProxy := d.alice
	viaProxy.Addr = proxy.Addr()
	alice, err := login(ctx, viaProxy, room, aliceNick)
	if err != nil {
		return fmt.Errorf("alice: %w", err)
	}
	defer closeSession(alice)
	d.say("%s is in %s as %q (through %s, which passes her TLS stream through untouched)",
		alice.Stream.Addr(), room, alice.Room.Nick(), proxy.Addr())

	d.heading(fmt.Sprintf("alice sends %d tracked messages, 5 in flight at a time", d.n))
	d.say("Each one ends DELIVERED_TO_RECIPIENT when the room reflects it back to alice.")
	cfg := run.Config{N: d.n, Window: 5, Body: "hello bob, message %d", Timeout: 10 * time.Second,
		Resumptions: func() int { return alice.Stream.Stats().Resumptions }}
	p := newPrinter(d.out, false, isTerminal(d.out))
	sum, err := p.run(ctx, run.New(run.Room(alice.Room), cfg))
	if err != nil {
		return err
	}
	d.waitFor(ctx, int64(sum.Delivered()), 5*time.Second)
	d.say("bob received %d of them.", d.fromAlice.Load())

	d.heading("a message to a room alice is no longer in: ERROR")
	if err := d.showError(ctx, alice, bob, proxy); err != nil {
		return err
	}

	d.heading("a message whose proof comes too late: TIMED_OUT")
	if err := d.showTimeout(ctx, alice, proxy); err != nil {
		return err
	}

	d.heading("a crash: the sender is killed mid-run and run again on its outbox")
	if err := d.showCrash(ctx, bob); err != nil {
		return err
	}

	d.heading("done")
	d.say("Every message ended in a state that says truthfully how far it got, and a crash")
	d.say("neither lost nor duplicated any.")
	return nil
}

// showCrash runs "xmpptrack muc -outbox" as a child process, kills it with
// SIGKILL a third of the way through, and runs it again: the second run
// resumes the old session, asks the room's archive about what the first
// left uncertain, and sends the rest. bob counts what the room distributed.
func (d *demo) showCrash(ctx context.Context, bob *run.Session) error {
	const n = 60
	room, err := d.roomJID("demo-crash")
	if err != nil {
		return err
	}
	if _, err := bob.MUC.Join(ctx, room, d.bob.JID.Localpart()); err != nil {
		return fmt.Errorf("bob: %w", err)
	}
	var mu sync.Mutex
	bodies := make(map[string]int)
	from := room.String() + "/" + d.alice.JID.Localpart()
	remove := bob.Stream.HandleElement(func(el *stream.Element) {
		var m struct {
			Body string `xml:"body"`
		}
		if el.Name().Local == "message" && el.Attr("type") == "groupchat" && el.Attr("from") == from && el.Decode(&m) == nil {
			mu.Lock()
			bodies[m.Body]++
			mu.Unlock()
		}
	})
	defer remove()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "xmpptrack-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	args := []string{"muc", "-addr", d.alice.Addr, "-jid", d.alice.JID.String(), "-password", d.alice.Password,
		"-room", room.String(), "-n", strconv.Itoa(n), "-window", "10", "-body", "crash-proof %d", "-json",
		"-outbox", filepath.Join(dir, "job.outbox")}
	if d.alice.CAFile != "" {
		args = append(args, "-ca", d.alice.CAFile)
	}
	d.say("xmpptrack muc -n %d -outbox FILE ... sends to %s; it is killed (SIGKILL) after %d outcomes.", n, room, n/3)
	first := exec.CommandContext(ctx, exe, args...)
	out, err := first.StdoutPipe()
	if err != nil {
		return err
	}
	if err := first.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	for seen := 0; seen < n/3 && sc.Scan(); {
		if strings.Contains(sc.Text(), `"index"`) {
			seen++
		}
	}
	first.Process.Kill()
	first.Wait()
	d.say("Killed. The same command again:")
	second := exec.CommandContext(ctx, exe, args...)
	b, err := second.Output()
	if err != nil {
		return fmt.Errorf("the second run: %w", err)
	}
	earlier, now, delivered := 0, 0, 0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, `"index"`) {
			continue // the summary
		}
		if strings.Contains(l, `"earlier":true`) {
			earlier++
		} else {
			now++
		}
		if strings.Contains(l, `"DELIVERED_TO_RECIPIENT"`) {
			delivered++
		}
	}
	d.say("It printed %d outcomes the first run had recorded, and %d it established now (the resumed", earlier, now)
	d.say("session, the room's archive, or a first send): %d of %d DELIVERED_TO_RECIPIENT.", delivered, n)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got, twice := len(bodies), 0
		for _, c := range bodies {
			if c > 1 {
				twice++
			}
		}
		mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			d.say("bob saw %d distinct messages, %d of them more than once.", got, twice)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// showError has alice leave a second room with a bare unavailable presence
// and send a tracked message right after it, while the proxy holds back what
// the server sends her: her client learns that she left only after the
// message went out, and the room refuses it. bob is in that room too, so
// that it lives on when alice leaves.
func (d *demo) showError(ctx context.Context, alice, bob *run.Session, proxy *faultproxy.Proxy) error {
	room, err := d.roomJID("demo-left")
	if err != nil {
		return err
	}
	other, err := run.Join(ctx, bob.Stream, room, bob.Room.Nick())
	if err != nil {
		return err
	}
	defer other.MUC.Close()
	left, err := run.Join(ctx, alice.Stream, room, alice.Room.Nick())
	if err != nil {
		return err
	}
	defer left.MUC.Close()
	occupant := left.Room.OccupantJID()
	proxy.HoldServerToClient()
	if _, err := alice.Stream.Send(ctx, stanza.Presence{To: occupant, Type: stanza.UnavailablePresence}.Wrap(nil)); err != nil {
		proxy.ReleaseServerToClient()
		return err
	}
	d.say("alice and bob joined %s; alice then left it with a bare unavailable presence, and her client sends a message before it hears of that.", room)
	tr, err := left.Room.SendTrackedMessage(ctx, "is anyone here?")
	proxy.ReleaseServerToClient()
	if err != nil {
		return err
	}
	st, _ := tr.Wait(ctx, tracking.DeliveredToRecipient)
	d.say("%-22s id=%s", st, tr.ID())
	var e *stanza.Error
	if errors.As(tr.Err(), &e) {
		d.say("the room answered: %s: %s", e.Condition, oneLine(e.Error()))
	}
	return nil
}

// showTimeout holds back everything the server sends alice for demoHold
// while she sends one message with a timeout of demoTimeout. The room gets
// the message (bob receives it) but its reflection, the proof, reaches alice
// only after the timeout: the message is TIMED_OUT, which says "no proof in
// time", not "lost".
func (d *demo) showTimeout(ctx context.Context, alice *run.Session, proxy *faultproxy.Proxy) error {
	before := d.fromAlice.Load()
	proxy.HoldServerToClient()
	released := false
	release := func() {
		if !released {
			released = true
			proxy.ReleaseServerToClient()
		}
	}
	defer release()
	d.say("The proxy now holds back alice's downlink for %v; the message's timeout is %v.", demoHold, demoTimeout)
	tr, err := alice.Room.SendTrackedMessage(ctx, "slow proof", muc.Timeout(demoTimeout))
	if err != nil {
		return err
	}
	st, _ := tr.Wait(ctx, tracking.DeliveredToRecipient)
	d.say("%-22s id=%s", st, tr.ID())
	d.waitFor(ctx, before+1, demoHold)
	if d.fromAlice.Load() > before {
		d.say("Yet bob received it: the room had it; alice just had no proof in time.")
	} else {
		d.say("bob has not received it either.")
	}
	time.Sleep(max(0, demoHold-demoTimeout))
	release()
	time.Sleep(200 * time.Millisecond)
	d.say("The reflection arrived late, after the hold: the message stays %s (a final state never changes).", tr.State())
	return nil
}

// waitFor waits until bob has received n messages from alice, or d passed.
func (d *demo) waitFor(ctx context.Context, n int64, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for d.fromAlice.Load() < n && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}
