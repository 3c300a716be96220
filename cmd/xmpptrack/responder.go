package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
)

const responderDoc = `The other side of "xmpptrack chat", for tests and demos: logs in, sends
its presence (a server delivers messages sent to a bare JID only to
resources that did) and answers the XEP-0184 receipt request of every
message it receives. With -display-after it also marks every markable
message displayed (XEP-0333) that long after it arrived.

It prints one line once it is ready, and one with its counts when it ends:
when interrupted, or after -for.
`

func responderCommand(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chat-responder", responderDoc, stdout)
	acct := addAccountFlags(fs)
	var display optDuration
	fs.Var(&display, "display-after", "mark every message received displayed `DUR` after it arrived (0: at once; default: never)")
	runFor := fs.Duration("for", 0, "stop after `DUR` (default: run until interrupted)")
	if err := fs.parse(args); err != nil {
		return err
	}
	a, err := acct.account("chat-responder", stderr)
	if err != nil {
		return err
	}
	if *runFor < 0 {
		return usageError{"chat-responder: -for must not be negative"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	s, err := dial(ctx, a)
	if err != nil {
		return err
	}
	defer closeStream(s)
	startCtx, cancel := context.WithTimeout(ctx, loginTimeout)
	r, err := run.Respond(startCtx, s, run.ResponderConfig{Display: display.set, DisplayAfter: display.d})
	cancel()
	if err != nil {
		return err
	}
	what := "answers receipt requests"
	if display.set {
		what += fmt.Sprintf(", marks messages displayed after %v", display.d)
	}
	fmt.Fprintf(stdout, "ready: %s %s\n", s.Addr(), what)

	var until <-chan time.Time
	if *runFor > 0 {
		t := time.NewTimer(*runFor)
		defer t.Stop()
		until = t.C
	}
	select {
	case <-ctx.Done():
	case <-until:
	case <-s.Done():
	}
	r.Close()
	fmt.Fprintf(stdout, "received %d messages, answered %d receipt requests, marked %d displayed\n",
		r.Received(), r.Answered(), r.Displayed())
	select {
	case <-s.Done():
		if err := s.Err(); err != nil {
			return fmt.Errorf("connection ended: %w", err)
		}
		return fmt.Errorf("connection ended")
	default:
	}
	return nil
}
