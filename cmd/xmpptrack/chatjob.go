package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// chatJob runs "xmpptrack chat" with -outbox. Each index is sent with the
// job's id for it, as the message's id and origin-id. After a crash, the
// messages the earlier run wrote are followed to their outcome: those the
// stream restored (written, not acknowledged) through the resumed session,
// or our archive when it is refused; those the server acknowledged by the
// receipt still to come; those whose fate the records do not tell by our
// archive. The rest are sent.
func chatJob(o chatOptions, stdout, stderr io.Writer) error {
	meta := map[string]string{
		"command": "chat", "jid": o.account.JID.String(), "to": o.to.String(),
		"n": strconv.Itoa(o.cfg.N), "body": o.cfg.Body, "wait": o.cfg.Goal.String(),
	}
	return runJob(&o.sendOptions, meta, stdout, func(ctx context.Context, j *job, s *stream.Stream) error {
		return chatJobRun(ctx, j, s, o, stdout, stderr)
	})
}

// chatJobRun goes on with a chat job on its stream s.
func chatJobRun(ctx context.Context, j *job, s *stream.Stream, o chatOptions, stdout, stderr io.Writer) error {
	known := o.cfg.Known
	c := chat.NewClient(s, chatClientOptions(o)...)
	defer c.Close()
	var rc *reconcile.Reconciler
	reconciler := func() (err error) {
		if rc, err = newReconciler(s, nil); err == nil {
			c.SetReconciler(rc, reconcile.ResendIfAbsent)
		}
		return err
	}
	if j.resuming() {
		// Before Connect: a refused resumption is reconciled.
		if err := reconciler(); err != nil {
			return err
		}
	}
	var opts []chat.SendOption
	if o.cfg.Timeout > 0 {
		opts = append(opts, chat.Timeout(o.cfg.Timeout))
	}

	// Everything the earlier run wrote is followed before Connect, so that
	// no receipt the resumed session brings is missed: the stanzas the
	// stream restored, then the messages the server had acknowledged, or
	// whose fate the records do not tell (unsure).
	followed := make(map[int]*tracking.MessageTracker)
	earliest := time.Now()
	for _, tok := range s.Restored() {
		i, ok := j.index(tok.ID())
		m, rec := j.records[tok.ID()]
		if _, done := known[i]; !ok || !rec || done || i >= o.cfg.N {
			continue
		}
		if tr, err := c.Follow(tok, o.to, m.Stanza, m.SentAt, opts...); err == nil {
			followed[i] = tr
			earliest = minTime(earliest, m.SentAt)
		}
	}
	unsure := make(map[int]outbox.Message)
	for i, m := range j.unfollowed(o.cfg.N, known, followed) {
		tr, err := c.Expect(o.to, m.Key, m.Stanza, m.SentAt, opts...)
		if err != nil {
			// Not followed, the run would send it again.
			return fmt.Errorf("-outbox %s: %w", j.file, err)
		}
		followed[i] = tr
		if st, _ := settled(m, o.cfg.Goal); st >= tracking.DeliveredToServer {
			_ = tr.Transition(st, nil) // acknowledged: a receipt may come
			continue
		}
		// Acknowledged with no record of it yet, or lost with a session
		// the earlier run had given up: the archive decides.
		unsure[i] = m
		earliest = minTime(earliest, m.SentAt)
	}
	// The anchor of the reconciliation of the restored messages, should
	// the resumption be refused.
	if a, ok := j.contactAnchor(o, earliest); ok {
		c.SetAnchor(a)
	}

	if err := j.connect(ctx, s, o.account, reconciler); err != nil {
		return err
	}
	defer closeStream(s)
	if err := j.decideUnsure(ctx, rc, o, unsure, followed); err != nil {
		return err
	}
	target := jobTarget{followed: followed, proof: "delivery receipt", send: func(ctx context.Context, index int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
		opts := []chat.SendOption{chat.WithID(j.key(index))}
		if timeout > 0 {
			opts = append(opts, chat.Timeout(timeout))
		}
		return c.SendTracked(ctx, o.to, body, opts...)
	}}
	return track(ctx, o.sendOptions, target, s, namedSource{"chat", c}, stdout, stderr)
}

// decideUnsure asks our archive about the unsure messages that no receipt
// has moved meanwhile. One the archive holds is DELIVERED_TO_SERVER and
// waits for its receipt; one it shows absent stops being followed, and the
// run sends it again with the same id; for the others nothing vouches
// either way: they end CLOSED.
func (j *job) decideUnsure(ctx context.Context, rc *reconcile.Reconciler, o chatOptions, unsure map[int]outbox.Message, followed map[int]*tracking.MessageTracker) error {
	var msgs []reconcile.Uncertain
	byKey := make(map[string]int)
	for i, m := range unsure {
		if followed[i].State() >= tracking.DeliveredToServer {
			continue
		}
		msgs = append(msgs, reconcile.Uncertain{Key: m.Key, ID: m.Key, OriginID: m.OriginID, To: o.to, Kind: reconcile.Chat, SentAt: m.SentAt})
		byKey[m.Key] = i
	}
	if len(msgs) == 0 {
		return nil
	}
	decisions, err := j.decide(ctx, rc, msgs, func(before time.Time) (reconcile.Anchor, bool) { return j.contactAnchor(o, before) })
	if err != nil {
		return err
	}
	for _, d := range decisions {
		i, ok := byKey[d.Key]
		if !ok {
			continue
		}
		tr := followed[i]
		switch d.Outcome {
		case reconcile.Accepted:
			_ = tr.Transition(tracking.DeliveredToServer, &tracking.Response{StanzaID: d.StanzaID})
		case reconcile.SafeToResend:
			// Our archive, which holds the anchor, lacks it: the server
			// never took it. Tracking ends (its record says CLOSED until
			// the run records the copy), and the run sends it again.
			if tr.Close() == nil {
				<-tr.Done()
				delete(followed, i)
			}
		default:
			_ = tr.Transition(tracking.Closed, nil)
		}
	}
	return nil
}

// contactAnchor returns the anchor of a reconciliation of messages to the
// contact sent after before: the origin-id of the latest message to it that
// the records show the server took.
func (j *job) contactAnchor(o chatOptions, before time.Time) (reconcile.Anchor, bool) {
	m, ok := j.latest(before, func(m outbox.Message) bool {
		s, _ := settled(m, o.cfg.Goal)
		return s >= tracking.DeliveredToServer && s <= tracking.SeenByRecipient && m.OriginID != ""
	})
	return reconcile.Anchor{To: o.to.Bare(), OriginID: m.OriginID, At: m.SentAt}, ok
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
