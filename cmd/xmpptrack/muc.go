package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
)

// loginTimeout bounds logging in and joining the room.
const loginTimeout = 30 * time.Second

const mucDoc = `Logs in, joins a Multi-User Chat room and sends tracked messages, each
followed until the room reflects it back (DELIVERED_TO_RECIPIENT) or it ends
in ERROR, TIMED_OUT, CLOSED or ABORTED. Exits with status 0 if and only if
every message was DELIVERED_TO_RECIPIENT.
`

// mucOptions are the parsed flags of "xmpptrack muc".
type mucOptions struct {
	account    run.Account
	room       jid.JID
	nick       string
	cfg        run.Config
	json       bool
	verbose    bool
	cpuProfile string
}

func parseMUCFlags(args []string, stdout io.Writer) (mucOptions, error) {
	fs := newFlagSet("muc", mucDoc, stdout)
	var (
		addr     = fs.String("addr", "", "server `host:port` (env XMPP_ADDR; default: the JID's domain on port 5222)")
		jidStr   = fs.String("jid", "", "account `JID` (env XMPP_JID)")
		password = fs.String("password", "", "account password `PW` (env XMPP_PASSWORD)")
		room     = fs.String("room", "", "room bare `JID`, e.g. bench@conference.localhost")
		nick     = fs.String("nick", "", "occupant `NICK` (default: the JID's localpart)")
		n        = fs.Int("n", 1, "send `N` messages")
		window   = fs.Int("window", 10, "at most `W` messages in flight awaiting their outcome at once (0: all at once)")
		body     = fs.String("body", "message %d", "body `TEMPLATE`; \"%d\" is replaced by the message index from 0")
		timeout  = fs.Duration("timeout", 30*time.Second, "per-message tracking timeout `DUR`, after which a message is TIMED_OUT")
		asJSON   = fs.Bool("json", false, "write one JSON object per line: one per message at its outcome, then a summary")
		plain    = fs.Bool("plain", false, "no TLS, even when the server offers STARTTLS (loopback addresses only)")
		caFile   = fs.String("ca", "", "trust the CA certificate in `FILE` for STARTTLS")
		verbose  = fs.Bool("v", false, "verbose logging to standard error")
		cpuProf  = fs.String("cpuprofile", "", "write a CPU profile of the run to `FILE`")
	)
	fs.hide("cpuprofile")
	if err := fs.parse(args); err != nil {
		return mucOptions{}, err
	}
	bad := func(format string, args ...any) (mucOptions, error) {
		return mucOptions{}, usageError{"muc: " + fmt.Sprintf(format, args...)}
	}
	o := mucOptions{json: *asJSON, verbose: *verbose, cpuProfile: *cpuProf}
	*jidStr = firstNonEmpty(*jidStr, envOr("XMPP_JID", ""))
	if *jidStr == "" {
		return bad("-jid is required (or set XMPP_JID)")
	}
	j, err := jid.Parse(*jidStr)
	if err != nil || j.Localpart() == "" {
		return bad("-jid %q is not an account JID like alice@example.org", *jidStr)
	}
	o.account = run.Account{
		JID:      j,
		Password: firstNonEmpty(*password, os.Getenv("XMPP_PASSWORD")),
		Addr:     firstNonEmpty(*addr, envOr("XMPP_ADDR", "")),
		Plain:    *plain,
		CAFile:   *caFile,
	}
	if o.account.Password == "" {
		return bad("-password is required (or set XMPP_PASSWORD)")
	}
	if *room == "" {
		return bad("-room is required, e.g. -room bench@conference.%s", j.Domainpart())
	}
	o.room, err = jid.Parse(*room)
	if err != nil || o.room.Localpart() == "" || o.room.Resourcepart() != "" {
		return bad("-room %q is not a room's bare JID like bench@conference.example.org", *room)
	}
	o.nick = firstNonEmpty(*nick, j.Localpart())
	switch {
	case *n < 1:
		return bad("-n must be at least 1")
	case *window < 0:
		return bad("-window must be 0 (all at once) or more")
	case *timeout <= 0:
		return bad("-timeout must be positive")
	case *plain && *caFile != "":
		return bad("-plain and -ca exclude each other")
	}
	o.cfg = run.Config{N: *n, Window: *window, Body: *body, Timeout: *timeout}
	return o, nil
}

func mucCommand(args []string, stdout, stderr io.Writer) error {
	o, err := parseMUCFlags(args, stdout)
	if err != nil {
		return err
	}
	if o.verbose {
		o.account.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sess, err := login(ctx, o.account, o.room, o.nick)
	if err != nil {
		return err
	}
	defer closeSession(sess)

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	o.cfg.Resumptions = func() int { return sess.Stream.Stats().Resumptions }
	r := run.New(sess.Room, o.cfg)
	out := newPrinter(stdout, o.json, isTerminal(stdout))
	sum, err := out.run(ctx, r)
	if err != nil {
		return err
	}
	return checkDelivered(sum)
}

// login dials, logs in and joins the room, within loginTimeout.
func login(ctx context.Context, a run.Account, room jid.JID, nick string) (*run.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	s, err := run.Dial(ctx, a)
	if err != nil {
		return nil, err
	}
	sess, err := run.Join(ctx, s, room, nick)
	if err != nil {
		closeCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(closeCtx)
		return nil, err
	}
	return sess, nil
}

// closeSession closes a session, waiting a little for the server to
// acknowledge what was sent.
func closeSession(s *run.Session) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Close(ctx)
}

// checkDelivered returns an error unless every message was delivered.
func checkDelivered(sum run.Summary) error {
	if sum.Sent > 0 && sum.Delivered() == sum.Sent {
		return nil
	}
	return fmt.Errorf("%d of %d messages did not reach DELIVERED_TO_RECIPIENT (%s)",
		sum.Sent-sum.Delivered(), sum.Sent, stateList(sum.States, "DELIVERED_TO_RECIPIENT"))
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
