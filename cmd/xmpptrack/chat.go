package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
	"github.com/xmpptrack/xmpptrack/tracking"
)

const chatDoc = `Logs in and sends tracked one-to-one chat messages to -to, each with a
XEP-0184 receipt request and a XEP-0333 markable, followed until it reaches
the state -wait names or ends in ERROR, TIMED_OUT, CLOSED or ABORTED:
DELIVERED_TO_RECIPIENT when the addressee's client returns a receipt,
SEEN_BY_RECIPIENT when it sends a displayed marker. With -wait seen, a
message delivered but not seen within -timeout ends DELIVERED_TO_RECIPIENT,
short of the goal. Exits with status 0 if and only if every message reached
the -wait state.

The addressee's client must answer receipt requests ("xmpptrack
chat-responder" does), and a server delivers a message sent to a bare JID
only to resources that sent their presence.
`

// waitStates are the values of -wait.
var waitStates = map[string]tracking.MessageState{
	"delivered": tracking.DeliveredToRecipient,
	"seen":      tracking.SeenByRecipient,
}

// chatOptions are the parsed flags of "xmpptrack chat".
type chatOptions struct {
	sendOptions
	to jid.JID
}

func parseChatFlags(args []string, stdout, stderr io.Writer) (chatOptions, error) {
	fs := newFlagSet("chat", chatDoc, stdout)
	acct := addAccountFlags(fs)
	send := addSendFlags(fs)
	fs.Lookup("timeout").Usage = "per-message tracking timeout `DUR`: a message not delivered to the recipient by then is TIMED_OUT " +
		"(with -wait seen, one delivered but not seen by then ends DELIVERED_TO_RECIPIENT)"
	fs.Lookup("outbox").Usage = "keep the job durable in `FILE` (created if missing). Running the same command again after a crash " +
		"(same -jid, -to, -n, -body, -wait) continues the job: every index is sent to the contact at most once (a resend " +
		"reuses the same id and origin-id, and only a message our archive shows the server never took is sent again), the " +
		"messages in flight are followed to their outcome (resumption of the old session, or our archive), and the rest are " +
		"sent. A FILE that holds a different job is refused: a one-line error, exit status 2, FILE unchanged"
	var (
		to   = fs.String("to", "", "the addressee's `JID`, bare or full (required)")
		wait = fs.String("wait", "delivered", "follow each message to `STATE`: delivered (DELIVERED_TO_RECIPIENT) or seen (SEEN_BY_RECIPIENT)")
	)
	if err := fs.parse(args); err != nil {
		return chatOptions{}, err
	}
	a, err := acct.account("chat", stderr)
	if err != nil {
		return chatOptions{}, err
	}
	var o chatOptions
	if *to == "" {
		return o, usageError{fmt.Sprintf("chat: -to is required, e.g. -to bob@%s", a.JID.Domainpart())}
	}
	o.to, err = jid.Parse(*to)
	if err != nil {
		return o, usageError{fmt.Sprintf("chat: -to %q is not a JID like bob@example.org", *to)}
	}
	goal, ok := waitStates[strings.ToLower(*wait)]
	if !ok {
		return o, usageError{fmt.Sprintf("chat: -wait %q: want delivered or seen", *wait)}
	}
	o.sendOptions, err = send.options("chat", a)
	o.cfg.Goal = goal
	return o, err
}

func chatCommand(args []string, stdout, stderr io.Writer) error {
	o, err := parseChatFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	if o.outbox != "" {
		return chatJob(o, stdout, stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	s, err := dial(ctx, o.account)
	if err != nil {
		return err
	}
	defer closeStream(s)
	c := chat.NewClient(s, chatClientOptions(o)...)
	defer c.Close()
	return track(ctx, o.sendOptions, run.Chat(c, o.to), s, namedSource{"chat", c}, stdout, stderr)
}

// chatClientOptions are the options of the chat client of a run.
func chatClientOptions(o chatOptions) []chat.ClientOption {
	if o.cfg.Goal == tracking.SeenByRecipient {
		// Every message is forgotten at its outcome (SEEN_BY_RECIPIENT is
		// final; the runner closes the rest at the timeout): no need to cap
		// the delivered messages that wait for a displayed marker.
		return []chat.ClientOption{chat.WithUnseenLimit(0)}
	}
	return nil
}
