// Package storetest holds the behavioural tests that every outbox.Store
// passes, so that the store in memory and the store on disk behave alike.
package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/xmpptrack/xmpptrack/outbox"
)

// Run runs every behavioural test against stores made by open, which returns
// a new, empty store (closed by the test or at its cleanup).
func Run(t *testing.T, open func(t *testing.T) outbox.Store) {
	tests := []struct {
		name string
		f    func(*testing.T, outbox.Store)
	}{
		{"Empty", testEmpty},
		{"RoundTrip", testRoundTrip},
		{"LogOrder", testLogOrder},
		{"UpsertKeepsOrder", testUpsertKeepsOrder},
		{"Forget", testForget},
		{"Meta", testMeta},
		{"InvalidChangesApplyNothing", testInvalid},
		{"BytesAreCopied", testCopies},
		{"Closed", testClosed},
		{"ConcurrentCommits", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { s.Close() })
			tc.f(t, s)
		})
	}
}

// Load loads s and fails the test on an error.
func Load(t *testing.T, s outbox.Store) outbox.State {
	t.Helper()
	st, err := s.Load()
	require.NoError(t, err)
	return st
}

// Commit commits c to s and fails the test on an error.
func Commit(t *testing.T, s outbox.Store, c outbox.Changes) {
	t.Helper()
	require.NoError(t, s.Commit(c))
}

// Full returns changes that set every field of every kind of record to a
// value other than its zero value, and the state they make from an empty
// store: the times in it are normalised as a store gives them back.
func Full() (outbox.Changes, outbox.State) {
	zone := time.FixedZone("X", 5*3600+1800)
	saved := time.Date(2026, 11, 3, 10, 4, 5, 123456789, zone)
	sent := time.Now() // carries a monotonic reading
	sess := outbox.Session{
		ResumeID: "resume-1",
		Location: "[2001:db8::1]:5222",
		Addr:     "alice@example.net/res",
		Max:      300 * time.Second,
		In:       4294967295,
		Acked:    7,
		Saved:    saved,
	}
	msgs := []outbox.Message{{
		Key:      "k1",
		OriginID: "o1",
		To:       "room@conference.example.net",
		Kind:     outbox.Groupchat,
		Stanza:   []byte("<message id='k1'>héllo \x00\xff</message>"),
		State:    "DELIVERED_TO_RECIPIENT",
		Written:  true,
		SentAt:   sent,
		StanzaID: "sid-1",
		Reason:   "reflected",
	}, {
		Key:    "k2",
		Kind:   outbox.Chat,
		To:     "bob@example.net",
		State:  "IN_TRANSIT",
		Stanza: []byte{}, // comes back as nil
	}}
	c := outbox.Changes{
		Session:  &sess,
		Append:   []outbox.Stanza{{ID: "k1", Bytes: []byte("<message id='k1'/>")}, {Bytes: []byte("<presence/>")}, {ID: "empty"}},
		Messages: msgs,
		Meta:     map[string]string{"jid": "alice@example.net", "n": "100", "body": "a\nb"},
	}
	want := outbox.State{
		Session:  sess,
		Unacked:  []outbox.Stanza{{ID: "k1", Bytes: []byte("<message id='k1'/>")}, {Bytes: []byte("<presence/>")}, {ID: "empty"}},
		Messages: []outbox.Message{msgs[0], msgs[1]},
		Meta:     map[string]string{"jid": "alice@example.net", "n": "100", "body": "a\nb"},
	}
	want.Session.Saved = saved.UTC()
	want.Messages[0].SentAt = sent.Round(0).UTC()
	want.Messages[1].Stanza = nil
	return c, want
}

func testEmpty(t *testing.T, s outbox.Store) {
	require.Equal(t, outbox.State{Meta: map[string]string{}}, Load(t, s))
}

func testRoundTrip(t *testing.T, s outbox.Store) {
	c, want := Full()
	Commit(t, s, c)
	require.Equal(t, want, Load(t, s))
	// A commit without a session keeps it.
	Commit(t, s, outbox.Changes{Meta: map[string]string{"x": "y"}})
	require.Equal(t, want.Session, Load(t, s).Session)
	// The zero session replaces it.
	Commit(t, s, outbox.Changes{Session: &outbox.Session{}})
	require.Equal(t, outbox.Session{}, Load(t, s).Session)
}

// Stanzas returns stanzas with the given ids, each with bytes naming it.
func Stanzas(ids ...string) []outbox.Stanza {
	var out []outbox.Stanza
	for _, id := range ids {
		out = append(out, outbox.Stanza{ID: id, Bytes: []byte("<message id='" + id + "'/>")})
	}
	return out
}

func testLogOrder(t *testing.T, s outbox.Store) {
	Commit(t, s, outbox.Changes{Append: Stanzas("a", "b", "c")})
	require.Equal(t, Stanzas("a", "b", "c"), Load(t, s).Unacked)

	// Drop applies before Append.
	Commit(t, s, outbox.Changes{Drop: 1, Append: Stanzas("d")})
	require.Equal(t, Stanzas("b", "c", "d"), Load(t, s).Unacked)

	Commit(t, s, outbox.Changes{Drop: 2})
	require.Equal(t, Stanzas("d"), Load(t, s).Unacked)

	// Reset applies before Append.
	Commit(t, s, outbox.Changes{Reset: true, Append: Stanzas("e", "f")})
	require.Equal(t, Stanzas("e", "f"), Load(t, s).Unacked)

	// Everything dropped, then appended again: the order is kept.
	Commit(t, s, outbox.Changes{Drop: 2})
	require.Nil(t, Load(t, s).Unacked)
	Commit(t, s, outbox.Changes{Append: Stanzas("g")})
	Commit(t, s, outbox.Changes{Append: Stanzas("h", "i")})
	require.Equal(t, Stanzas("g", "h", "i"), Load(t, s).Unacked)

	Commit(t, s, outbox.Changes{Reset: true})
	require.Nil(t, Load(t, s).Unacked)
}

// Msg returns a chat message record with the given key and state.
func Msg(key, state string) outbox.Message {
	return outbox.Message{Key: key, OriginID: "o-" + key, To: "bob@example.net", Kind: outbox.Chat, State: state, Stanza: []byte(key)}
}

func keys(ms []outbox.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Key+"="+m.State)
	}
	return out
}

func testUpsertKeepsOrder(t *testing.T, s outbox.Store) {
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{Msg("m1", "A"), Msg("m2", "A"), Msg("m3", "A")}})
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{Msg("m4", "A"), Msg("m2", "B")}})
	require.Equal(t, []string{"m1=A", "m2=B", "m3=A", "m4=A"}, keys(Load(t, s).Messages))

	// Within one commit the later record of a key wins; a new key goes
	// last even when it is upserted twice.
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{Msg("m5", "A"), Msg("m1", "B"), Msg("m5", "C"), Msg("m1", "C")}})
	require.Equal(t, []string{"m1=C", "m2=B", "m3=A", "m4=A", "m5=C"}, keys(Load(t, s).Messages))

	// Every field is replaced, not merged.
	m := Msg("m3", "D")
	m.Stanza = nil
	m.OriginID = ""
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{m}})
	require.Equal(t, m, Load(t, s).Messages[2])
}

func testForget(t *testing.T, s outbox.Store) {
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{Msg("m1", "A"), Msg("m2", "A"), Msg("m3", "A")}})
	Commit(t, s, outbox.Changes{Forget: []string{"m2", "unknown"}})
	require.Equal(t, []string{"m1=A", "m3=A"}, keys(Load(t, s).Messages))

	// A forgotten key recorded again is a new message: it goes last.
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{Msg("m2", "B")}})
	require.Equal(t, []string{"m1=A", "m3=A", "m2=B"}, keys(Load(t, s).Messages))

	// Forget applies after Messages.
	Commit(t, s, outbox.Changes{Messages: []outbox.Message{Msg("m1", "C"), Msg("m4", "A")}, Forget: []string{"m1", "m4"}})
	require.Equal(t, []string{"m3=A", "m2=B"}, keys(Load(t, s).Messages))

	Commit(t, s, outbox.Changes{Forget: []string{"m3", "m2"}})
	require.Nil(t, Load(t, s).Messages)
}

func testMeta(t *testing.T, s outbox.Store) {
	Commit(t, s, outbox.Changes{Meta: map[string]string{"jid": "a@b", "room": "r@c", "n": "10"}})
	Commit(t, s, outbox.Changes{Meta: map[string]string{"n": "20", "room": "", "absent": ""}})
	require.Equal(t, map[string]string{"jid": "a@b", "n": "20"}, Load(t, s).Meta)
	Commit(t, s, outbox.Changes{Meta: map[string]string{"jid": "", "n": ""}})
	require.Equal(t, map[string]string{}, Load(t, s).Meta)
}

func testInvalid(t *testing.T, s outbox.Store) {
	Commit(t, s, outbox.Changes{Append: Stanzas("a", "b"), Messages: []outbox.Message{Msg("m1", "A")}})
	before := Load(t, s)

	// Each bad commit also carries good changes of every kind: none of
	// them may be applied.
	good := func(c outbox.Changes) outbox.Changes {
		c.Session = &outbox.Session{ResumeID: "new"}
		if c.Append == nil {
			c.Append = Stanzas("x")
		}
		c.Messages = append([]outbox.Message{Msg("m2", "A"), Msg("m1", "Z")}, c.Messages...)
		if c.Forget == nil {
			c.Forget = []string{"m1"}
		}
		if c.Meta == nil {
			c.Meta = map[string]string{"k": "v"}
		}
		return c
	}
	bad := map[string]outbox.Changes{
		"negative drop":       {Drop: -1},
		"drop beyond":         {Drop: 3},
		"drop after reset":    {Reset: true, Drop: 1},
		"message without key": {Messages: []outbox.Message{{Kind: outbox.Chat}}},
		"zero kind":           {Messages: []outbox.Message{{Key: "k"}}},
		"unknown kind":        {Messages: []outbox.Message{{Key: "k", Kind: 3}}},
		"empty forget key":    {Forget: []string{""}},
		"empty meta key":      {Meta: map[string]string{"": "v"}},
	}
	for name, c := range bad {
		t.Run(name, func(t *testing.T) {
			err := s.Commit(good(c))
			require.ErrorIs(t, err, outbox.ErrInvalidChanges)
			require.Equal(t, before, Load(t, s))
		})
	}
	// The store still works.
	Commit(t, s, outbox.Changes{Drop: 2})
	require.Nil(t, Load(t, s).Unacked)
}

func testCopies(t *testing.T, s outbox.Store) {
	b := []byte("<message id='a'/>")
	m := Msg("m1", "A")
	Commit(t, s, outbox.Changes{Append: []outbox.Stanza{{ID: "a", Bytes: b}}, Messages: []outbox.Message{m}})
	b[1] = 'X'
	m.Stanza[0] = 'X'
	st := Load(t, s)
	require.Equal(t, "<message id='a'/>", string(st.Unacked[0].Bytes))
	require.Equal(t, "m1", string(st.Messages[0].Stanza))
	st.Unacked[0].Bytes[1] = 'Y'
	st.Messages[0].Stanza[0] = 'Y'
	st.Meta["x"] = "y"
	st = Load(t, s)
	require.Equal(t, "<message id='a'/>", string(st.Unacked[0].Bytes))
	require.Equal(t, "m1", string(st.Messages[0].Stanza))
	require.Empty(t, st.Meta)
}

func testClosed(t *testing.T, s outbox.Store) {
	require.NoError(t, s.Close())
	_, err := s.Load()
	require.ErrorIs(t, err, outbox.ErrClosed)
	require.ErrorIs(t, s.Commit(outbox.Changes{Append: Stanzas("a")}), outbox.ErrClosed)
	require.NoError(t, s.Close())
}

func testConcurrent(t *testing.T, s outbox.Store) {
	const writers, commits = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*commits)
	for w := range writers {
		wg.Go(func() {
			for i := range commits {
				key := fmt.Sprintf("w%d-%d", w, i)
				errs <- s.Commit(outbox.Changes{Append: Stanzas(key), Messages: []outbox.Message{Msg(key, "A")}})
				if _, err := s.Load(); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st := Load(t, s)
	require.Len(t, st.Unacked, writers*commits)
	require.Len(t, st.Messages, writers*commits)
	// Each writer's stanzas and messages are in its own order, and the
	// log and the messages agree on the order of commits.
	for i := range st.Unacked {
		require.Equal(t, st.Unacked[i].ID, st.Messages[i].Key)
	}
	next := make(map[string]int)
	for _, u := range st.Unacked {
		var w, i int
		_, err := fmt.Sscanf(u.ID, "w%d-%d", &w, &i)
		require.NoError(t, err)
		require.Equal(t, next[fmt.Sprint(w)], i, "writer %d out of order", w)
		next[fmt.Sprint(w)]++
	}
}

// ErrIsOnly fails the test unless err wraps target and none of the other
// errors of the package.
func ErrIsOnly(t *testing.T, err, target error) {
	t.Helper()
	require.ErrorIs(t, err, target)
	for _, e := range []error{outbox.ErrInUse, outbox.ErrCorrupt, outbox.ErrNewerFormat, outbox.ErrClosed, outbox.ErrInvalidChanges} {
		if e != target {
			require.False(t, errors.Is(err, e), "%v is also %v", err, e)
		}
	}
}
