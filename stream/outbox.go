package stream

import (
	"errors"
	"fmt"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/outbox"
)

// ErrOutbox: the outbox (Config.Outbox) failed to load or to commit. A
// stream whose outbox cannot commit stops before writing anything more, as
// writing ahead of the outbox would break its promise; it ends with this
// error.
var ErrOutbox = errors.New("stream: outbox")

// outboxState is what the stream owes its outbox. Guarded by Stream.mu.
type outboxState struct {
	store outbox.Store
	drop  int  // stanzas acknowledged since the last commit
	reset bool // a new session began since the last commit
	notes []outbox.Message
	// notesSince is when the oldest note not committed was made: notes
	// ride with the next batch, or go alone after noteDelay.
	notesSince time.Time
	// live holds the latest record of each message noted and not done:
	// the stream owns its Written and SentAt, set in the commit that holds
	// the stanza's bytes.
	live     map[string]outbox.Message
	restored []*StanzaToken

	// handled counts the inbound stanzas whose handlers have returned
	// (mod 2^32, like Stream.in, which it follows): the callback goroutine
	// runs them in order, so they are a prefix of those read. Every note a
	// handler made before returning is in notes or committed by then.
	handled uint32
	// in is the inbound count of the latest commit: the highest h the
	// stream may acknowledge to the server, in <a/> or <resume/>, so that
	// a new process that resumes with the stored count never finds that
	// the server dropped stanzas it does not count.
	in uint32
}

// markHandled records, once the job of an inbound stanza has run, that the
// inbound count in of session is handled; a job of an earlier session
// counts for nothing. On the callback goroutine.
func (s *Stream) markHandled(in uint32, session uint64) {
	s.mu.Lock()
	if s.session == session && s.smOn {
		s.box.handled = in
	}
	s.mu.Unlock()
}

// ackableLocked returns the inbound count the stream may acknowledge now,
// and whether it must commit first: everything read without an outbox,
// what is handled with one (which the commit about to be made records).
func (s *Stream) ackableLocked() (h uint32, commit bool) {
	if s.box.store == nil {
		return s.in, false
	}
	return s.box.handled, s.box.handled != s.box.in
}

// restore takes up the session an earlier process left in st: the stream
// management state and the unacknowledged stanzas, as tokens in state
// TokenSent. It returns what the first connection needs to resume, or nil
// when the session cannot be resumed (none, or its window has passed).
// Called by Dial before anything runs.
func (s *Stream) restore(st outbox.State) (*previous, error) {
	// The records that say written keep saying so in later notes, by a
	// layer that follows their messages again: the restored stanzas, and
	// those the server acknowledged whose outcome is still to come. Only
	// what note keeps is kept.
	for _, m := range st.Messages {
		if m.Written {
			if s.box.live == nil {
				s.box.live = make(map[string]outbox.Message)
			}
			s.box.live[m.Key] = outbox.Message{Key: m.Key, Written: true, SentAt: m.SentAt}
		}
	}
	ss := st.Session
	if ss.ResumeID == "" && len(st.Unacked) == 0 {
		return nil, nil
	}
	addr, err := jid.Parse(ss.Addr)
	if err != nil && ss.Addr != "" {
		return nil, fmt.Errorf("%w: the stored address %q: %w", ErrOutbox, ss.Addr, err)
	}
	entries := make([]*entry, len(st.Unacked))
	for i, u := range st.Unacked {
		t := newToken(u.ID)
		t.state = TokenSent
		entries[i] = &entry{tok: t, b: u.Bytes}
		s.box.restored = append(s.box.restored, t)
	}
	s.out.Restore(ss.Acked, entries)
	s.in, s.box.handled, s.box.in = ss.In, ss.In, ss.In
	s.smOn = true
	s.smID, s.smLoc, s.smMax, s.addr = ss.ResumeID, ss.Location, ss.Max, addr
	if ss.ResumeID == "" || (ss.Max > 0 && time.Since(ss.Saved) >= ss.Max) {
		return nil, nil
	}
	return &previous{id: ss.ResumeID, h: ss.In, addr: addr}, nil
}

// Restored returns the tokens of the stanzas that an earlier process had
// written and the server had not acknowledged, restored from Config.Outbox
// by Dial, in the order they were written (nil without an outbox). Each
// says what became of its stanza: TokenAcked when the resumed session's h
// counted it, TokenSent while it is written again, TokenDisconnected when
// the session could not be resumed (its fate is then unknown: see package
// reconcile).
func (s *Stream) Restored() []*StanzaToken {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*StanzaToken(nil), s.box.restored...)
}

// Note records m in the outbox with the next commit, which comes before the
// next stanza written (or at once, when nothing is waiting to be written). A
// layer that tracks messages notes each one before it sends it, and again
// when its state changes, so that a new process knows what became of it;
// NoteDone is the last record of a message. m.Key must be the stanza's id.
//
// The stream owns m.Written and m.SentAt: it sets them in the commit that
// holds the stanza's bytes, and keeps them in every later record, so that a
// record that says not written is one whose bytes never left. Note does
// nothing without an outbox.
func (s *Stream) Note(m outbox.Message) { s.note(m, false) }

// NoteDone is Note for the last record of a message (its tracking ended):
// the stream stops following it.
func (s *Stream) NoteDone(m outbox.Message) { s.note(m, true) }

func (s *Stream) note(m outbox.Message, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.box.store == nil {
		return
	}
	prev := s.box.live[m.Key]
	m.Written, m.SentAt = prev.Written, prev.SentAt
	if done {
		delete(s.box.live, m.Key)
	} else {
		if s.box.live == nil {
			s.box.live = make(map[string]outbox.Message)
		}
		s.box.live[m.Key] = m
	}
	if len(s.box.notes) == 0 {
		s.box.notesSince = time.Now()
		if s.cur != nil {
			s.cur.wake() // so that the writer plans the flush
		}
	}
	s.box.notes = append(s.box.notes, m)
}

// noteDelay is how long notes may wait for a batch to ride with before
// they are committed on their own. A note that must be durable before its
// message is written always rides with the batch that holds the message;
// later notes (the message's outcome) need not be durable at once: a new
// process that misses one asks the archive instead.
const noteDelay = 200 * time.Millisecond

// notesDueLocked returns when pending notes must be committed alone (zero
// if none are pending).
func (s *Stream) notesDueLocked() time.Time {
	if len(s.box.notes) == 0 || s.box.store == nil {
		return time.Time{}
	}
	return s.box.notesSince.Add(noteDelay)
}

// boxChangesLocked returns what the next commit must say, with the
// stanzas about to be written, and clears what it took; ok is false when
// there is nothing to commit, unless force is set (the handled count must
// be committed before it is acknowledged). Called by the writer with s.mu
// held, after the batch was recorded in s.out and before its bytes are
// written.
func (s *Stream) boxChangesLocked(batch []*entry, force bool) (outbox.Changes, bool) {
	b := &s.box
	notesDue := len(b.notes) > 0 && !time.Now().Before(b.notesSince.Add(noteDelay))
	if b.store == nil || (len(batch) == 0 && !notesDue && !b.reset && !force) {
		return outbox.Changes{}, false
	}
	ch := outbox.Changes{
		Session:  s.boxSessionLocked(),
		Drop:     b.drop,
		Reset:    b.reset,
		Messages: b.notes,
	}
	if b.reset {
		ch.Drop = 0 // the log is emptied anyway
	}
	if s.smOn {
		ch.Append = make([]outbox.Stanza, len(batch))
		for i, e := range batch {
			ch.Append[i] = outbox.Stanza{ID: e.tok.id, Bytes: e.b}
		}
	}
	if len(b.live) > 0 {
		now := time.Now()
		for _, e := range batch {
			if m, ok := b.live[e.tok.id]; ok && !m.Written {
				m.Written, m.SentAt = true, now
				b.live[e.tok.id] = m
				ch.Messages = append(ch.Messages, m)
			}
		}
	}
	b.drop, b.reset, b.notes = 0, false, nil
	return ch, true
}

func (s *Stream) boxSessionLocked() *outbox.Session {
	ss := &outbox.Session{Saved: time.Now()}
	if s.smOn {
		ss.ResumeID, ss.Location, ss.Max = s.smID, s.smLoc, s.smMax
		ss.Addr = s.addr.String()
		ss.In, ss.Acked = s.box.handled, s.out.AckedCount()
	}
	return ss
}

// commitFinal tells the outbox that the session has ended for good (Close,
// or a failure the stream cannot recover from): nothing is left to resume.
// The message records stay, for the layers above.
func (s *Stream) commitFinal() {
	s.mu.Lock()
	store, notes := s.box.store, s.box.notes
	s.box.notes = nil
	s.mu.Unlock()
	if store == nil {
		return
	}
	if err := store.Commit(outbox.Changes{Session: &outbox.Session{Saved: time.Now()}, Reset: true, Messages: notes}); err != nil {
		s.log.Warn("outbox: cannot record the end of the session", "err", err)
	}
}
