package outbox

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Memory is a Store in memory, for tests: it behaves as a store on disk does,
// except that nothing survives the process. It is safe for concurrent use.
type Memory struct {
	mu       sync.Mutex
	closed   bool
	session  Session
	unacked  []Stanza
	messages map[string]memoryMessage
	seq      uint64 // the insertion sequence of the latest new message
	meta     map[string]string
}

type memoryMessage struct {
	seq uint64
	m   Message
}

// NewMemory returns an empty Memory store.
func NewMemory() *Memory {
	return &Memory{messages: make(map[string]memoryMessage), meta: make(map[string]string)}
}

// Load implements Store.
func (s *Memory) Load() (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return State{}, ErrClosed
	}
	st := State{Session: s.session, Meta: maps.Clone(s.meta)}
	for _, u := range s.unacked {
		st.Unacked = append(st.Unacked, copyStanza(u))
	}
	ms := slices.SortedFunc(maps.Values(s.messages), func(a, b memoryMessage) int { return cmp.Compare(a.seq, b.seq) })
	for _, m := range ms {
		st.Messages = append(st.Messages, copyMessage(m.m))
	}
	return st, nil
}

// Commit implements Store.
func (s *Memory) Commit(c Changes) error {
	if err := c.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if !c.Reset && c.Drop > len(s.unacked) {
		return fmt.Errorf("%w: drop %d of %d unacknowledged stanzas", ErrInvalidChanges, c.Drop, len(s.unacked))
	}
	if c.Session != nil {
		s.session = *c.Session
		s.session.Saved = normalTime(s.session.Saved)
	}
	if c.Reset {
		s.unacked = nil
	}
	clear(s.unacked[:c.Drop]) // let go of the dropped bytes
	s.unacked = s.unacked[c.Drop:]
	for _, u := range c.Append {
		s.unacked = append(s.unacked, copyStanza(u))
	}
	for _, m := range c.Messages {
		old, ok := s.messages[m.Key]
		if !ok {
			s.seq++
			old.seq = s.seq
		}
		s.messages[m.Key] = memoryMessage{seq: old.seq, m: copyMessage(m)}
	}
	for _, k := range c.Forget {
		delete(s.messages, k)
	}
	for k, v := range c.Meta {
		if v == "" {
			delete(s.meta, k)
		} else {
			s.meta[k] = v
		}
	}
	return nil
}

// Close implements Store.
func (s *Memory) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// copyBytes returns a copy of b, nil when b is empty.
func copyBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return slices.Clone(b)
}

// normalTime returns t as a store gives it back.
func normalTime(t time.Time) time.Time { return t.Round(0).UTC() }

func copyStanza(u Stanza) Stanza {
	u.Bytes = copyBytes(u.Bytes)
	return u
}

func copyMessage(m Message) Message {
	m.Stanza = copyBytes(m.Stanza)
	m.SentAt = normalTime(m.SentAt)
	return m
}
