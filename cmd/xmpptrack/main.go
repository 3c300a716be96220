// Command xmpptrack sends tracked XMPP messages and reports, for each one,
// how far it truthfully got.
//
// Usage:
//
//	xmpptrack muc [flags]              send tracked messages to a Multi-User Chat room
//	xmpptrack chat -to JID [flags]     send tracked one-to-one messages to JID
//	xmpptrack chat-responder [flags]   answer receipt requests, for tests and demos
//	xmpptrack demo [flags]             a guided tour against a local server (make demo)
//
// "xmpptrack muc" logs in, joins a room and sends -n messages with at most
// -window of them awaiting their outcome at once. A message's outcome is the
// first of DELIVERED_TO_RECIPIENT (the room reflected it back) or a final
// state (ERROR, TIMED_OUT, CLOSED, ABORTED). It exits with status 0 if and
// only if every message was DELIVERED_TO_RECIPIENT.
//
// "xmpptrack chat" does the same with one-to-one chat messages to -to, each
// carrying a XEP-0184 receipt request and a XEP-0333 markable. With -wait
// delivered (the default) a message's outcome is the first of
// DELIVERED_TO_RECIPIENT (the addressee's receipt) or a final state; with
// -wait seen it is the first of SEEN_BY_RECIPIENT (a displayed marker) or a
// final state, and a message delivered but not seen within -timeout ends
// DELIVERED_TO_RECIPIENT. It exits with status 0 if and only if every
// message reached the -wait state. "xmpptrack chat-responder" is an
// addressee for it: it sends its presence, answers every receipt request
// and, with -display-after, marks each message displayed after a delay.
//
// With -json it writes one JSON object per line to standard output: one per
// message, at its outcome, in the order outcomes happen,
//
//	{"index":0,"id":"…","state":"DELIVERED_TO_RECIPIENT","latency_ms":1.8}
//
// then one summary line, whose latencies are from the send to the goal
// (DELIVERED_TO_RECIPIENT, or SEEN_BY_RECIPIENT for chat -wait seen),
//
//	{"summary":{"sent":50,"states":{"DELIVERED_TO_RECIPIENT":50},"msgs_per_s":2900.1,"p50_ms":2.1,"p99_ms":6.3,"cpu_us_per_msg":21.4,"resumptions":0,
//	 "stream":{"connections":1,"resumptions":0,"resumptions_refused":0,"new_sessions":0,"disconnects":0,"dead_links":0,
//	 "stanzas_sent":52,"stanzas_acked":52,"stanzas_received":53,"unacked":0,"oldest_unacked_ms":0,
//	 "ack_rtt_ms":1.2,"ack_rtt_p50_ms":1.1,"ack_rtt_p99_ms":3.4,"ack_rtt_samples":12}}}
//
// (one line), where "stream" is the stream's statistics at the end of the
// run (stream.Stats).
//
// With -metrics-addr HOST:PORT, muc and chat serve Prometheus metrics at
// http://HOST:PORT/metrics while they run (see package metrics/prommetrics):
// the stream's counters (connections, resumptions, dead links…), its
// queues and ack round trips, and the trackers by state and outcome. The
// address it listens on is written to standard error, so that port 0 can
// be used.
//
// Without -json it shows a live status line on a terminal, and plain lines
// (one per outcome) otherwise, then a summary table. Run "xmpptrack muc -h"
// (or chat -h, chat-responder -h) for the flags.
//
// The command runs Go code on one processor (GOMAXPROCS 1) unless the
// GOMAXPROCS environment variable says otherwise: its work is one stream's,
// a chain of hand-offs between the stream's goroutines, and on more than one
// processor each hand-off wakes another thread, which costs more than the
// work handed over (about half the CPU time per message with 10 in flight).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
)

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1 // the run failed, or not every message reached its goal
	exitUsage = 2 // bad command line
)

func main() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1) // see the package documentation
	}
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a bad command line; its text is one line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func runMain(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "xmpptrack: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "xmpptrack: %v\n", oneLine(err.Error()))
		return exitFail
	}
}

const usage = `usage: xmpptrack <command> [flags]

Commands:
  muc              send tracked messages to a Multi-User Chat room
  chat             send tracked one-to-one messages to -to JID, followed to
                   DELIVERED_TO_RECIPIENT or, with -wait seen, SEEN_BY_RECIPIENT
  chat-responder   log in and answer receipt requests (XEP-0184); with
                   -display-after DUR, also mark every message displayed
                   (XEP-0333) after DUR; runs until interrupted or -for DUR.
                   The other side of "chat", for tests and demos
  demo             a guided tour against a local server (see "make demo")

Run "xmpptrack <command> -h" for a command's flags.
`

func dispatch(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command given (want muc, chat, chat-responder or demo; see xmpptrack -h)"}
	}
	switch args[0] {
	case "muc":
		return mucCommand(args[1:], stdout, stderr)
	case "chat":
		return chatCommand(args[1:], stdout, stderr)
	case "chat-responder":
		return responderCommand(args[1:], stdout, stderr)
	case "demo":
		return demoCommand(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return errHelp
	}
	return usageError{fmt.Sprintf("unknown command %q (want muc, chat, chat-responder or demo)", args[0])}
}

// oneLine joins the lines of a message, so that every error is one line.
func oneLine(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\n':
			out = append(out, "; "...)
		case '\r':
		default:
			out = append(out, s[i])
		}
	}
	return string(out)
}
