package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
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
	sendOptions
	room jid.JID
	nick string
}

func parseMUCFlags(args []string, stdout, stderr io.Writer) (mucOptions, error) {
	fs := newFlagSet("muc", mucDoc, stdout)
	acct := addAccountFlags(fs)
	send := addSendFlags(fs)
	var (
		room = fs.String("room", "", "room bare `JID`, e.g. bench@conference.localhost")
		nick = fs.String("nick", "", "occupant `NICK` (default: the JID's localpart)")
	)
	if err := fs.parse(args); err != nil {
		return mucOptions{}, err
	}
	a, err := acct.account("muc", stderr)
	if err != nil {
		return mucOptions{}, err
	}
	var o mucOptions
	if *room == "" {
		return o, usageError{fmt.Sprintf("muc: -room is required, e.g. -room bench@conference.%s", a.JID.Domainpart())}
	}
	o.room, err = jid.Parse(*room)
	if err != nil || o.room.Localpart() == "" || o.room.Resourcepart() != "" {
		return o, usageError{fmt.Sprintf("muc: -room %q is not a room's bare JID like bench@conference.example.org", *room)}
	}
	o.nick = firstNonEmpty(*nick, a.JID.Localpart())
	o.sendOptions, err = send.options("muc", a)
	return o, err
}

func mucCommand(args []string, stdout, stderr io.Writer) error {
	o, err := parseMUCFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	if o.outbox != "" {
		return mucJob(o, stdout, stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sess, err := login(ctx, o.account, o.room, o.nick)
	if err != nil {
		return err
	}
	defer closeSession(sess)
	return track(ctx, o.sendOptions, run.Room(sess.Room), sess.Stream, namedSource{"muc", sess.MUC}, stdout, stderr)
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
