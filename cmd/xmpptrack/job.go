package main

import (
	"cmp"
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

	"mellium.im/xmpp/jid"
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

// A job is a run of "xmpptrack muc" or "xmpptrack chat" kept durable in an
// outbox file (-outbox): running the same command again after a crash goes
// on with it.
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

// settled returns a record's state, and whether its outcome is
// established: a final state, or goal (or a state past it on the way to the
// recipient).
func settled(m outbox.Message, goal tracking.MessageState) (tracking.MessageState, bool) {
	for s := tracking.InTransit; s <= tracking.Error; s++ {
		if s.String() == m.State {
			return s, (s >= goal && s <= tracking.SeenByRecipient) || s.IsFinal()
		}
	}
	return tracking.InTransit, false
}

// earlier returns the outcomes earlier runs established for a run to goal,
// by index.
func (j *job) earlier(n int, goal tracking.MessageState) map[int]run.Outcome {
	known := make(map[int]run.Outcome)
	for i := range n {
		m, ok := j.records[j.key(i)]
		if !ok {
			continue
		}
		if s, done := settled(m, goal); done {
			o := run.Outcome{ID: m.Key, State: s, Earlier: true}
			if m.Reason != "" {
				o.Err = errors.New(m.Reason)
			}
			known[i] = o
		}
	}
	return known
}

// runJob runs the job that meta describes, kept in o.outbox: a finished
// job has its lines printed and sends nothing; else run goes on with it, on
// the job's stream, which restores the session and the unacknowledged
// stanzas of the earlier run, if any. o.cfg.Known holds the outcomes
// earlier runs established.
func runJob(o *sendOptions, meta map[string]string, stdout io.Writer, goOn func(ctx context.Context, j *job, s *stream.Stream) error) error {
	j, err := openJob(o.outbox, meta)
	if err != nil {
		return err
	}
	defer j.close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.cfg.Known = j.earlier(o.cfg.N, cmp.Or(o.cfg.Goal, tracking.DeliveredToRecipient))
	if len(o.cfg.Known) == o.cfg.N {
		return replay(ctx, *o, stdout)
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
	return goOn(ctx, j, s)
}

// replay prints the lines of a finished job, and sends nothing.
func replay(ctx context.Context, o sendOptions, stdout io.Writer) error {
	out := newPrinter(stdout, o.json, isTerminal(stdout))
	sum, err := out.run(ctx, run.New(nil, o.cfg))
	if err != nil {
		return err
	}
	return checkReached(sum)
}

// resuming reports whether the earlier run left a session to resume.
func (j *job) resuming() bool { return j.state.Session.ResumeID != "" }

// connect makes the stream's first connection, within loginTimeout; then,
// unless the job resumes a session (whose reconciler the caller made before
// Connect), reconciler makes the reconciler, now that the stream has its
// address.
func (j *job) connect(ctx context.Context, s *stream.Stream, a run.Account, reconciler func() error) error {
	cctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	if err := s.Connect(cctx); err != nil {
		return run.LoginError(a, err)
	}
	if j.resuming() {
		return nil
	}
	if err := reconciler(); err != nil {
		closeStream(s)
		return err
	}
	return nil
}

// newReconciler makes a reconciler over a bridge on s, which serves it. The
// bridge's session takes the stream's address when it is made: make it once
// the stream has one, the restored one when resuming (before Connect, so
// that a refused resumption is reconciled), else the one bound by Connect.
func newReconciler(s *stream.Stream, occupant func(room jid.JID) (jid.JID, bool)) (*reconcile.Reconciler, error) {
	b, err := bridge.New(s, bridge.Only(reconcile.Results))
	if err != nil {
		return nil, err
	}
	rc := reconcile.New(b.Session(), occupant)
	go b.Session().Serve(mux.New(stanza.NSClient, reconcile.Handle(rc)))
	return rc, nil
}

// unfollowed returns, by index, the records of messages an earlier run
// wrote whose outcome is not established and that followed does not hold.
func (j *job) unfollowed(n int, known map[int]run.Outcome, followed map[int]*tracking.MessageTracker) map[int]outbox.Message {
	ms := make(map[int]outbox.Message)
	for i := range n {
		m, ok := j.records[j.key(i)]
		if _, done := known[i]; ok && !done && m.Written && followed[i] == nil {
			ms[i] = m
		}
	}
	return ms
}

// decide asks the archive about msgs, messages of an earlier run, with the
// anchor (if any) that the records hold for the earliest of them.
func (j *job) decide(ctx context.Context, rc *reconcile.Reconciler, msgs []reconcile.Uncertain, anchor func(before time.Time) (reconcile.Anchor, bool)) ([]reconcile.Decision, error) {
	earliest := msgs[0].SentAt
	for _, m := range msgs {
		if m.SentAt.Before(earliest) {
			earliest = m.SentAt
		}
	}
	var anchors []reconcile.Anchor
	if a, ok := anchor(earliest); ok {
		anchors = []reconcile.Anchor{a}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	decisions, err := rc.Decide(ctx, msgs, anchors, reconcile.ResendIfAbsent)
	if err != nil {
		return nil, fmt.Errorf("reconciling with the archive: %w", err)
	}
	return decisions, nil
}

// latest returns the record, among those that ok accepts, of the latest
// message sent no later than before.
func (j *job) latest(before time.Time, ok func(outbox.Message) bool) (outbox.Message, bool) {
	var best outbox.Message
	for _, m := range j.records {
		if m.Written && !m.SentAt.After(before) && m.SentAt.After(best.SentAt) && ok(m) {
			best = m
		}
	}
	return best, best.Key != ""
}

// jobTarget sends message index of a job with send, or hands back the
// tracker of a message that an earlier run wrote and this one follows.
type jobTarget struct {
	followed map[int]*tracking.MessageTracker // not changed once the run starts
	send     func(ctx context.Context, index int, body string, timeout time.Duration) (*tracking.MessageTracker, error)
	proof    string
}

func (t jobTarget) Send(ctx context.Context, index int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
	if tr := t.followed[index]; tr != nil {
		return tr, nil
	}
	return t.send(ctx, index, body, timeout)
}

func (t jobTarget) Proof() string { return t.proof }

// mucJob runs "xmpptrack muc" with -outbox.
func mucJob(o mucOptions, stdout, stderr io.Writer) error {
	meta := map[string]string{
		"command": "muc", "jid": o.account.JID.String(), "room": o.room.String(),
		"nick": o.nick, "n": strconv.Itoa(o.cfg.N), "body": o.cfg.Body,
	}
	return runJob(&o.sendOptions, meta, stdout, func(ctx context.Context, j *job, s *stream.Stream) error {
		return mucJobRun(ctx, j, s, o, stdout, stderr)
	})
}

// mucJobRun goes on with a muc job on its stream s.
func mucJobRun(ctx context.Context, j *job, s *stream.Stream, o mucOptions, stdout, stderr io.Writer) (err error) {
	known := o.cfg.Known
	rooms := muc.NewClient(s)
	defer rooms.Close()
	// Reconciliation: the archive decides what a lost session's messages
	// became (after a refused resumption, live or at this start).
	var rc *reconcile.Reconciler
	reconciler := func() (err error) {
		if rc, err = newReconciler(s, rooms.Occupant); err == nil {
			rooms.SetReconciler(rc, reconcile.ResendIfAbsent)
		}
		return err
	}

	// A session the last run left may still be in the room: follow what
	// it wrote before the first stanza arrives.
	followed := make(map[int]*tracking.MessageTracker)
	followedToks := make(map[int]*stream.StanzaToken)
	var room *muc.Room
	if j.resuming() {
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
		if a, ok := j.roomAnchor(earliest); ok {
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
	if err := j.connect(ctx, s, o.account, reconciler); err != nil {
		return err
	}
	defer closeStream(s)
	if !j.resuming() {
		lctx, cancel := context.WithTimeout(ctx, loginTimeout)
		room, err = rooms.Join(lctx, o.room, o.nick)
		cancel()
		if err != nil {
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
	for _, m := range j.unfollowed(o.cfg.N, known, followed) {
		uncertain = append(uncertain, reconcile.Uncertain{Key: m.Key, ID: m.Key, OriginID: m.OriginID, To: o.room, Kind: reconcile.Groupchat, SentAt: m.SentAt})
	}
	if len(uncertain) > 0 {
		if err := j.decideRoom(ctx, rc, room, uncertain, known); err != nil {
			return err
		}
	}
	target := jobTarget{followed: followed, proof: "reflection from the room", send: func(ctx context.Context, index int, body string, timeout time.Duration) (*tracking.MessageTracker, error) {
		opts := []muc.SendOption{muc.WithIDs(j.key(index), j.originID(index))}
		if timeout > 0 {
			opts = append(opts, muc.Timeout(timeout))
		}
		return room.SendTrackedMessage(ctx, body, opts...)
	}}
	return track(ctx, o.sendOptions, target, s, namedSource{"muc", rooms}, stdout, stderr)
}

// decideRoom asks the room's archive about the uncertain messages of an
// earlier run: those it holds are delivered, those it shows absent are sent
// again (by the run, with the same ids), the others end CLOSED with the
// reason. The outcomes it settles are recorded and added to known.
func (j *job) decideRoom(ctx context.Context, rc *reconcile.Reconciler, room *muc.Room, msgs []reconcile.Uncertain, known map[int]run.Outcome) error {
	decisions, err := j.decide(ctx, rc, msgs, func(before time.Time) (reconcile.Anchor, bool) {
		a, ok := j.roomAnchor(before)
		a.To = room.Addr()
		return a, ok
	})
	if err != nil {
		return err
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
	decisions, err := j.decide(ctx, rc, msgs, func(time.Time) (reconcile.Anchor, bool) { return reconcile.Anchor{}, false })
	if err != nil {
		return err
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

// roomAnchor returns the room's stanza-id of the last reflection of ours
// that the records hold, of a message sent no later than before.
func (j *job) roomAnchor(before time.Time) (reconcile.Anchor, bool) {
	m, ok := j.latest(before, func(m outbox.Message) bool {
		s, _ := settled(m, tracking.DeliveredToRecipient)
		return s == tracking.DeliveredToRecipient && m.StanzaID != ""
	})
	return reconcile.Anchor{StanzaID: m.StanzaID, At: m.SentAt}, ok
}
