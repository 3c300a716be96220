package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/outbox/boltstore"
	"github.com/xmpptrack/xmpptrack/reconcile"
	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// A job is a run of "xmpptrack muc" kept durable in an outbox file
// (-outbox): running the same command again after a crash goes on with it.
//
// The file holds the job's description (its Meta), the stream's session and
// unacknowledged stanzas (written ahead by the stream), and a record per
// message, keyed by the message's stanza id: the job's id and the index.
// Each index gets the same id and origin-id in every run, so a copy sent
// again can be told from a new message.
type job struct {
	file    string
	store   *boltstore.Store
	id      string
	state   outbox.State              // as loaded
	records map[string]outbox.Message // by key
}

// metaJob is the Meta key of the job's own id.
const metaJob = "job"

// openJob opens (or creates) the outbox file for the job described by
// meta. A file that is in use, damaged, of a newer format, or holding
// another job is refused with a usage error, and left as it was.
func openJob(file string, meta map[string]string) (*job, error) {
	store, err := boltstore.Open(file)
	if err != nil {
		switch {
		case errors.Is(err, outbox.ErrInUse):
			return nil, usageError{fmt.Sprintf("-outbox %s: in use by another process", file)}
		default:
			return nil, usageError{fmt.Sprintf("-outbox: %v", err)}
		}
	}
	st, err := store.Load()
	if err != nil {
		store.Close()
		return nil, usageError{fmt.Sprintf("-outbox: %v", err)}
	}
	j := &job{file: file, store: store, state: st, records: make(map[string]outbox.Message, len(st.Messages))}
	for _, m := range st.Messages {
		j.records[m.Key] = m
	}
	if len(st.Meta) == 0 {
		j.id = xstanza.NewID()
		m := maps.Clone(meta)
		m[metaJob] = j.id
		if err := store.Commit(outbox.Changes{Meta: m}); err != nil {
			store.Close()
			return nil, fmt.Errorf("-outbox %s: %w", file, err)
		}
		return j, nil
	}
	j.id = st.Meta[metaJob]
	held := maps.Clone(st.Meta)
	delete(held, metaJob)
	if !maps.Equal(held, meta) || j.id == "" {
		store.Close()
		return nil, usageError{fmt.Sprintf("-outbox %s holds another job (%s); run that job again, or use another file", file, describe(held))}
	}
	return j, nil
}

func describe(meta map[string]string) string {
	keys := slices.Sorted(maps.Keys(meta))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(meta[k])
	}
	return strings.Join(parts, " ")
}

func (j *job) close() { j.store.Close() }

// key is the stanza id of message index, and originID its origin-id.
func (j *job) key(index int) string      { return j.id + "-" + strconv.Itoa(index) }
func (j *job) originID(index int) string { return j.id + "-o" + strconv.Itoa(index) }

// index returns the index of the message with stanza id key.
func (j *job) index(key string) (int, bool) {
	rest, ok := strings.CutPrefix(key, j.id+"-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil
}

// settled reports whether a record's outcome is established: a final state,
// or the room's reflection.
func settled(m outbox.Message) (tracking.MessageState, bool) {
	for s := tracking.InTransit; s <= tracking.Error; s++ {
		if s.String() == m.State {
			return s, s == tracking.DeliveredToRecipient || s.IsFinal()
		}
	}
	return tracking.InTransit, false
}

// earlier returns the outcomes earlier runs established, by index.
func (j *job) earlier(n int) map[int]run.Outcome {
	known := make(map[int]run.Outcome)
	for i := range n {
		m, ok := j.records[j.key(i)]
		if !ok {
			continue
		}
		if s, done := settled(m); done {
			o := run.Outcome{ID: m.Key, State: s, Earlier: true}
			if m.Reason != "" {
				o.Err = errors.New(m.Reason)
			}
			known[i] = o
		}
	}
	return known
}

// mucJob runs "xmpptrack muc" with -outbox.
func mucJob(o mucOptions, stdout, stderr io.Writer) error {
	meta := map[string]string{
		"command": "muc", "jid": o.account.JID.String(), "room": o.room.String(),
		"nick": o.nick, "n": strconv.Itoa(o.cfg.N), "body": o.cfg.Body,
	}
	j, err := openJob(o.outbox, meta)
	if err != nil {
		return err
	}
	defer j.close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	known := j.earlier(o.cfg.N)
	o.cfg.Known = known
	if len(known) == o.cfg.N {
		// A finished job: its lines, and nothing sent.
		out := newPrinter(stdout, o.json, isTerminal(stdout))
		sum, err := out.run(ctx, run.New(nil, o.cfg))
		if err != nil {
			return err
		}
		return checkReached(sum)
	}

	cfg, err := run.StreamConfig(ctx, o.account)
	if err != nil {
		return err
	}
	cfg.Outbox = j.store
	s, err := stream.New(cfg)
	if err != nil {
		return fmt.Errorf("-outbox %s: %w", j.file, err)
	}
	rooms := muc.NewClient(s)
	defer rooms.Close()
	// Reconciliation: the archive decides what a lost session's messages
	// became (after a refused resumption, live or at this start). The
	// bridge's session takes the stream's address when it is made: the
	// restored one when resuming (set up before Connect, so that a refused
	// resumption is reconciled), else the one bound by Connect.
	var rc *reconcile.Reconciler
	reconciler := func() error {
		b, err := bridge.New(s)
		if err != nil {
			return err
		}
		rc = reconcile.New(b.Session(), rooms.Occupant)
		go b.Session().Serve(mux.New(stanza.NSClient, reconcile.Handle(rc)))
		rooms.SetReconciler(rc, reconcile.ResendIfAbsent)
		return nil
	}

	// A session the last run left may still be in the room: follow what
	// it wrote before the first stanza arrives.
	followed := make(map[int]*tracking.MessageTracker)
	followedToks := make(map[int]*stream.StanzaToken)
	var room *muc.Room
	resuming := j.state.Session.ResumeID != ""
	if resuming {
		if err := reconciler(); err != nil {
			return err
		}
		if room, err = rooms.Adopt(o.room, o.nick); err != nil {
			return err
		}
		// The anchor of the room's reconciliation: our last reflection
		// before the earliest message the stream restored.
		earliest := time.Now()
		for _, tok := range s.Restored() {
			if m, ok := j.records[tok.ID()]; ok && m.Written && m.SentAt.Before(earliest) {
				earliest = m.SentAt
			}
		}
		if a, ok := j.anchor(earliest); ok {
			room.SetAnchor(a.StanzaID, a.At)
		}
		for _, tok := range s.Restored() {
			i, ok := j.index(tok.ID())
			m, rec := j.records[tok.ID()]
			if _, done := known[i]; !ok || !rec || done || i >= o.cfg.N {
				continue
			}
			tr, err := room.Follow(tok, m.OriginID, m.Stanza, m.SentAt, muc.Timeout(o.cfg.Timeout))
			if err == nil {
				followed[i], followedToks[i] = tr, tok
			}
		}
	}
	lctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	if err := s.Connect(lctx); err != nil {
		return run.LoginError(o.account, err)
	}
	defer closeStream(s)
	if !resuming {
		if err := reconciler(); err != nil {
			return err
		}
		if room, err = rooms.Join(lctx, o.room, o.nick); err != nil {
			return fmt.Errorf("cannot join %s: %w", o.room, err)
		}
	}

	// A restored message the resumed session acknowledged at once: the
	// server had it. The stored inbound count stops before any reflection
	// the earlier process read without recording, so the server sends that
	// again and the room follows it; the archive is a safety net for what
	// that misses (a note made off the callback goroutine after its commit,
	// an outbox written by an older version that counted every stanza read).
	if err := j.confirmAcked(ctx, rc, room, followed, followedToks); err != nil {
		return err
	}

	// Messages an earlier run wrote that nobody follows now (acknowledged
	// before the crash, or in a session that ended): the archive decides.
	var uncertain []reconcile.Uncertain
	for i := range o.cfg.N {
		m, ok := j.records[j.key(i)]
		if _, done := known[i]; !ok || done || !m.Written || followed[i] != nil {
			continue
		}
		uncertain = append(uncertain, reconcile.Uncertain{Key: m.Key, ID: m.Key, OriginID: m.OriginID, To: o.room, Kind: reconcile.Groupchat, SentAt: m.SentAt})
	}
	if len(uncertain) > 0 {
		if err := j.decide(ctx, rc, room, uncertain, known); err != nil {
			return err
		}
	}
	return track(ctx, o.sendOptions, jobTarget{j: j, room: room, followed: followed}, s, namedSource{"muc", rooms}, stdout, stderr)
}

// decide asks the room's archive about the uncertain messages of an earlier
// run: those it holds are delivered, those it shows absent are sent again
// (by the run, with the same ids), the others end CLOSED with the reason.
// The outcomes it settles are recorded and added to known.
func (j *job) decide(ctx context.Context, rc *reconcile.Reconciler, room *muc.Room, msgs []reconcile.Uncertain, known map[int]run.Outcome) error {
	earliest := msgs[0].SentAt
	for _, m := range msgs {
		if m.SentAt.Before(earliest) {
			earliest = m.SentAt
		}
	}
	var anchors []reconcile.Anchor
	if a, ok := j.anchor(earliest); ok {
		a.To = room.Addr()
		anchors = []reconcile.Anchor{a}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	decisions, err := rc.Decide(ctx, msgs, anchors, reconcile.ResendIfAbsent)
	if err != nil {
		return fmt.Errorf("reconciling with the room's archive: %w", err)
	}
	var records []outbox.Message
	for _, d := range decisions {
		i, ok := j.index(d.Key)
		if !ok {
			continue
		}
		m := j.records[d.Key]
		switch d.Outcome {
		case reconcile.Delivered:
			m.State, m.StanzaID = tracking.DeliveredToRecipient.String(), d.StanzaID
			known[i] = run.Outcome{ID: d.Key, State: tracking.DeliveredToRecipient}
		case reconcile.SafeToResend:
			continue // the run sends it again
		default:
			m.State, m.Reason = tracking.Closed.String(), d.Reason
			known[i] = run.Outcome{ID: d.Key, State: tracking.Closed, Err: errors.New(d.Reason)}
		}
		records = append(records, m)
	}
	if len(records) > 0 {
		if err := j.store.Commit(outbox.Changes{Messages: records}); err != nil {
			return fmt.Errorf("-outbox %s: %w", j.file, err)
		}
	}
	return nil
}

// jobTarget sends message index with the job's ids for it, or hands back
// the tracker of a message the resumed session follows.
type jobTarget struct {
	j        *job
	room     *muc.Room
	followed map[int]*tracking.MessageTracker
}

func (t jobTarget) Send(ctx context.Context, index int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
	if tr := t.followed[index]; tr != nil {
		return tr, nil
	}
	opts := []muc.SendOption{muc.WithIDs(t.j.key(index), t.j.originID(index))}
	if timeout > 0 {
		opts = append(opts, muc.Timeout(timeout))
	}
	return t.room.SendTrackedMessage(ctx, body, opts...)
}

func (jobTarget) Proof() string { return "reflection from the room" }

// confirmAcked asks the room's archive about the followed messages whose
// tokens the resumed session acknowledged, and moves to
// DELIVERED_TO_RECIPIENT those it holds. The others go on waiting for
// their reflection (or their timeout): nothing is sent again, since no
// anchor is given and absence so proves nothing.
func (j *job) confirmAcked(ctx context.Context, rc *reconcile.Reconciler, room *muc.Room, followed map[int]*tracking.MessageTracker, toks map[int]*stream.StanzaToken) error {
	var msgs []reconcile.Uncertain
	byKey := make(map[string]*tracking.MessageTracker)
	for i, tok := range toks {
		if tok.State() != stream.TokenAcked {
			continue
		}
		m := j.records[tok.ID()]
		msgs = append(msgs, reconcile.Uncertain{Key: m.Key, ID: m.Key, OriginID: m.OriginID, To: room.Addr(), Kind: reconcile.Groupchat, SentAt: m.SentAt})
		byKey[m.Key] = followed[i]
	}
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	decisions, err := rc.Decide(ctx, msgs, nil, reconcile.ResendIfAbsent)
	if err != nil {
		return fmt.Errorf("reconciling with the room's archive: %w", err)
	}
	for _, d := range decisions {
		if tr := byKey[d.Key]; tr != nil && d.Outcome == reconcile.Delivered {
			resp := &tracking.Response{StanzaID: d.StanzaID, StanzaIDBy: room.Addr()}
			resp.Message.From, resp.Message.Type = room.OccupantJID(), stanza.GroupChatMessage
			_ = tr.Transition(tracking.DeliveredToRecipient, resp) // a reflection may have come first
		}
	}
	return nil
}

// anchor returns the room's stanza-id of the last reflection of ours that
// the records hold, of a message sent no later than before.
func (j *job) anchor(before time.Time) (reconcile.Anchor, bool) {
	var best outbox.Message
	for _, m := range j.records {
		if s, _ := settled(m); s == tracking.DeliveredToRecipient && m.StanzaID != "" && !m.SentAt.After(before) && m.SentAt.After(best.SentAt) {
			best = m
		}
	}
	return reconcile.Anchor{StanzaID: best.StanzaID, At: best.SentAt}, best.Key != ""
}
