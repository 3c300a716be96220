package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
)

// errHelp ends a command after it printed its help.
var errHelp = errors.New("help")

// flagSet is a flag.FlagSet that reports bad flags as a one-line
// usageError and can hide flags from the help.
type flagSet struct {
	*flag.FlagSet
	name   string
	doc    string
	hidden map[string]bool
	out    io.Writer
}

func newFlagSet(name, doc string, out io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), name: name, doc: doc, hidden: map[string]bool{}, out: out}
	fs.SetOutput(io.Discard)
	return fs
}

// hide keeps the named flag out of the help.
func (fs *flagSet) hide(name string) { fs.hidden[name] = true }

// parse parses args. -h prints the help to the command's output and returns
// errHelp; a bad flag returns a usageError.
func (fs *flagSet) parse(args []string) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.printHelp()
		return errHelp
	case err != nil:
		return usageError{fmt.Sprintf("%s: %v (see xmpptrack %s -h)", fs.name, err, fs.name)}
	case fs.NArg() > 0:
		return usageError{fmt.Sprintf("%s: unexpected argument %q (see xmpptrack %s -h)", fs.name, fs.Arg(0), fs.name)}
	}
	return nil
}

func (fs *flagSet) printHelp() {
	fmt.Fprintf(fs.out, "usage: xmpptrack %s [flags]\n\n%s\nFlags:\n", fs.name, fs.doc)
	fs.VisitAll(func(f *flag.Flag) {
		if fs.hidden[f.Name] {
			return
		}
		name, help := flag.UnquoteUsage(f)
		line := "  -" + f.Name
		if name != "" {
			line += " " + name
		}
		fmt.Fprintf(fs.out, "%-20s %s", line, help)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			fmt.Fprintf(fs.out, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(fs.out)
	})
}

// envOr returns the environment variable key, or def when it is unset or
// empty.
func envOr(key, def string) string {
	if v := strings.TrimSpace(os.Getenv(key)); v != "" {
		return v
	}
	return def
}

// accountFlags are the flags that say how to log in.
type accountFlags struct {
	addr, jid, password, ca *string
	plain, verbose          *bool
}

func addAccountFlags(fs *flagSet) *accountFlags {
	return &accountFlags{
		addr:     fs.String("addr", "", "server `host:port` (env XMPP_ADDR; default: found from the JID's domain's SRV records, or that domain on port 5222 with -plain)"),
		jid:      fs.String("jid", "", "account `JID` (env XMPP_JID)"),
		password: fs.String("password", "", "account password `PW` (env XMPP_PASSWORD)"),
		plain:    fs.Bool("plain", false, "no TLS, even when the server offers STARTTLS (loopback addresses only)"),
		ca:       fs.String("ca", "", "trust the CA certificate in `FILE` for STARTTLS"),
		verbose:  fs.Bool("v", false, "verbose logging to standard error"),
	}
}

// account returns the account the flags name, logging to stderr with -v.
// Errors are usage errors that start with cmd.
func (f *accountFlags) account(cmd string, stderr io.Writer) (run.Account, error) {
	bad := func(format string, args ...any) (run.Account, error) {
		return run.Account{}, usageError{cmd + ": " + fmt.Sprintf(format, args...)}
	}
	jidStr := firstNonEmpty(*f.jid, envOr("XMPP_JID", ""))
	if jidStr == "" {
		return bad("-jid is required (or set XMPP_JID)")
	}
	j, err := jid.Parse(jidStr)
	if err != nil || j.Localpart() == "" {
		return bad("-jid %q is not an account JID like alice@example.org", jidStr)
	}
	a := run.Account{
		JID:      j,
		Password: firstNonEmpty(*f.password, os.Getenv("XMPP_PASSWORD")),
		Addr:     firstNonEmpty(*f.addr, envOr("XMPP_ADDR", "")),
		Plain:    *f.plain,
		CAFile:   *f.ca,
	}
	switch {
	case a.Password == "":
		return bad("-password is required (or set XMPP_PASSWORD)")
	case a.Plain && a.CAFile != "":
		return bad("-plain and -ca exclude each other")
	}
	if *f.verbose {
		a.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return a, nil
}

// sendFlags are the flags of the commands that send tracked messages (muc,
// chat), besides the account's and the addressee's.
type sendFlags struct {
	n, window   *int
	body        *string
	timeout     *time.Duration
	json        *bool
	cpuProfile  *string
	metricsAddr *string
	outbox      *string
}

func addSendFlags(fs *flagSet) *sendFlags {
	f := &sendFlags{
		n:          fs.Int("n", 1, "send `N` messages"),
		window:     fs.Int("window", 10, "at most `W` messages in flight awaiting their outcome at once (0: all at once)"),
		body:       fs.String("body", "message %d", "body `TEMPLATE`; \"%d\" is replaced by the message index from 0"),
		timeout:    fs.Duration("timeout", 30*time.Second, "per-message tracking timeout `DUR`, after which a message is TIMED_OUT"),
		json:       fs.Bool("json", false, "write one JSON object per line: one per message at its outcome, then a summary"),
		cpuProfile: fs.String("cpuprofile", "", "write a CPU profile of the run to `FILE`"),
		metricsAddr: fs.String("metrics-addr", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics while the command runs "+
			"(port 0: any free port; the address is written to standard error)"),
	}
	f.outbox = fs.String("outbox", "", "keep the job durable in `FILE` (created if missing). Running the same command again after a crash "+
		"(same -jid, -room, -n, -body) continues the job: every index is sent to the room at most once in the room's view "+
		"(a resend reuses the same id and origin-id; a message the room may already have is never sent again), the messages "+
		"in flight are followed to their outcome (resumption of the old session, or the room's archive), and the rest are sent. "+
		"A FILE that holds a different job is refused: a one-line error, exit status 2, FILE unchanged")
	fs.hide("cpuprofile")
	return f
}

// sendOptions are the parsed flags shared by muc and chat.
type sendOptions struct {
	account     run.Account
	cfg         run.Config
	json        bool
	cpuProfile  string
	metricsAddr string
	outbox      string
}

// options checks the flags; errors are usage errors that start with cmd.
func (f *sendFlags) options(cmd string, a run.Account) (sendOptions, error) {
	bad := func(msg string) (sendOptions, error) { return sendOptions{}, usageError{cmd + ": " + msg} }
	switch {
	case *f.n < 1:
		return bad("-n must be at least 1")
	case *f.window < 0:
		return bad("-window must be 0 (all at once) or more")
	case *f.timeout <= 0:
		return bad("-timeout must be positive")
	}
	if *f.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*f.metricsAddr); err != nil {
			return bad(fmt.Sprintf("-metrics-addr %q: want host:port, e.g. 127.0.0.1:9464", *f.metricsAddr))
		}
	}
	return sendOptions{
		account:     a,
		cfg:         run.Config{N: *f.n, Window: *f.window, Body: *f.body, Timeout: *f.timeout},
		json:        *f.json,
		cpuProfile:  *f.cpuProfile,
		metricsAddr: *f.metricsAddr,
		outbox:      *f.outbox,
	}, nil
}

// optDuration is a duration flag that may be left unset, which its help
// shows as no default.
type optDuration struct {
	d   time.Duration
	set bool
}

func (o *optDuration) String() string {
	if o == nil || !o.set {
		return ""
	}
	return o.d.String()
}

func (o *optDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("parse error")
	}
	if d < 0 {
		return errors.New("negative duration")
	}
	o.d, o.set = d, true
	return nil
}
