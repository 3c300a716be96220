package reconcile_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/history"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/reconcile"
)

// base is the scripted archives' first moment: whole seconds, as Prosody
// stamps.
var base = time.Now().Add(-time.Hour).Truncate(time.Second)

// at returns base plus s seconds.
func at(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }

// ours is an archived groupchat message from our occupant JID.
func ours(id, originID string, s int) entry {
	return entry{id: id, from: room + "/" + nick, to: room, typ: "groupchat", msgID: "m-" + originID, originID: originID, at: at(s)}
}

// theirs is an archived groupchat message from another occupant.
func theirs(id, who, originID string, s int) entry {
	return entry{id: id, from: room + "/" + who, to: room, typ: "groupchat", msgID: "m-" + originID, originID: originID, at: at(s)}
}

// toRoom is an uncertain groupchat message.
func toRoom(key, originID string, s int) reconcile.Uncertain {
	return reconcile.Uncertain{Key: key, ID: "m-" + originID, OriginID: originID, To: jid.MustParse(room), Kind: reconcile.Groupchat, SentAt: at(s)}
}

// roomAnchor is the room's stanza-id of a reflection of ours, seen at s.
func roomAnchor(stanzaID string, s int) []reconcile.Anchor {
	return []reconcile.Anchor{{To: jid.MustParse(room), StanzaID: stanzaID, At: at(s)}}
}

// roomArchive returns a room archive with items, n to a page.
func roomArchive(n int, items ...entry) map[string]*archive {
	return map[string]*archive{room: {from: room, page: n, items: items}}
}

// TestAnchor: absence from a room's archive makes a message SafeToResend
// only when the archive still holds our anchor. Without one, or when it is
// gone, absence proves nothing: Unknown, with a reason that says so. A
// message that is there is Delivered in every case.
func TestAnchor(t *testing.T) {
	items := []entry{theirs("A1", "bob", "b1", 10), ours("A2", "o1", 20), theirs("A3", "bob", "b2", 30), ours("A4", "o2", 40)}
	msgs := []reconcile.Uncertain{toRoom("present", "o2", 35), toRoom("absent", "o3", 36)}
	for _, tc := range []struct {
		name    string
		anchors []reconcile.Anchor
		absent  reconcile.Outcome
		words   []string
	}{
		{"anchor found", roomAnchor("A2", 21), reconcile.SafeToResend, []string{"absent", "stanza-id A2"}},
		{"anchor by origin-id", []reconcile.Anchor{{To: jid.MustParse(room), OriginID: "o1", At: at(21)}}, reconcile.SafeToResend, []string{"origin-id o1"}},
		{"anchor missing", roomAnchor("A0", 5), reconcile.Unknown, []string{"does not hold our last reflection (stanza-id A0)", "lost or expired"}},
		{"no anchor", nil, reconcile.Unknown, []string{"no reflection of ours"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := setup(t, roomArchive(20, items...), config{})
			ds := w.decide(t, msgs, tc.anchors, reconcile.ResendIfAbsent)
			want(t, ds["present"], reconcile.Delivered, "archive id A4")
			if ds["present"].StanzaID != "A4" {
				t.Errorf("present: StanzaID %q, want A4", ds["present"].StanzaID)
			}
			want(t, ds["absent"], tc.absent, tc.words...)
			if q := w.srv.Queries(); len(q) != 1 {
				t.Errorf("%d queries, want 1 (one page)", len(q))
			}
		})
	}
}

// TestPaging: the archive answers in pages of two; the anchor is on page
// 1, the match on page 3. Each page after the first asks for what follows
// the last item of the one before (RSM <after>); the window starts at the
// anchor's time minus the margin; all pages are read before absence counts.
func TestPaging(t *testing.T) {
	items := []entry{
		theirs("P1", "bob", "b1", 10), ours("P2", "anchor", 11), // page 1
		theirs("P3", "bob", "b2", 12), theirs("P4", "carol", "c1", 13), // page 2
		ours("P5", "found", 14), theirs("P6", "bob", "b3", 15), // page 3
		theirs("P7", "bob", "b4", 16), // page 4
	}
	w := setup(t, roomArchive(2, items...), config{opts: []reconcile.Option{reconcile.WithMargin(5 * time.Second)}})
	ds := w.decide(t, []reconcile.Uncertain{toRoom("found", "found", 13), toRoom("absent", "nowhere", 14)},
		roomAnchor("P2", 12), reconcile.ResendIfAbsent)
	want(t, ds["found"], reconcile.Delivered, "archive id P5")
	want(t, ds["absent"], reconcile.SafeToResend)

	qs := w.srv.Queries()
	if len(qs) != 4 {
		t.Fatalf("%d queries, want 4 pages", len(qs))
	}
	wantStart := at(12).Add(-5 * time.Second).UTC().Format(time.RFC3339)
	for i, q := range qs {
		wantAfter := []string{"", "P2", "P4", "P6"}[i]
		if q.after != wantAfter || !q.hasSet {
			t.Errorf("page %d: RSM after %q, want %q: %s", i+1, q.after, wantAfter, q.raw)
		}
		if s := q.fields["start"]; len(s) != 1 || s[0] != wantStart {
			t.Errorf("page %d: start %q, want %q", i+1, s, wantStart)
		}
		if q.to != room || q.fields["with"] != nil {
			t.Errorf("page %d: to %q with %q, want the room, no with", i+1, q.to, q.fields["with"])
		}
		if q.max != fmt.Sprint(reconcile.DefaultPageSize) {
			t.Errorf("page %d: max %q, want %d", i+1, q.max, reconcile.DefaultPageSize)
		}
	}

	// When every message is found, reading stops there.
	w = setup(t, roomArchive(2, items...), config{})
	ds = w.decide(t, []reconcile.Uncertain{toRoom("found", "found", 13)}, nil, reconcile.ResendIfAbsent)
	want(t, ds["found"], reconcile.Delivered)
	if n := len(w.srv.Queries()); n != 3 {
		t.Errorf("%d pages read to find a message on page 3, want 3", n)
	}

	// An archive longer than WithMaxPages is not read to its end: absence
	// proves nothing.
	w = setup(t, roomArchive(2, items...), config{opts: []reconcile.Option{reconcile.WithMaxPages(3)}})
	ds = w.decide(t, []reconcile.Uncertain{toRoom("absent", "nowhere", 14)}, roomAnchor("P2", 12), reconcile.ResendIfAbsent)
	want(t, ds["absent"], reconcile.Unknown, "not read to its end")
}

// TestOtherOccupant: our origin-id from another occupant does not count:
// not from our occupant JID (the room's bare JID compared normalized, the
// nick exactly), the message is not ours, so, absent otherwise with our
// anchor there, it is SafeToResend. The same archive entry from our nick,
// with the room's JID in other case, is ours.
func TestOtherOccupant(t *testing.T) {
	impostor := theirs("X2", "mallory", "o1", 20)
	wrongCase := theirs("X3", "Alice", "o2", 21)
	upper := ours("X4", "o3", 22)
	upper.from = "Room@Conference.Example.Test/" + nick
	w := setup(t, roomArchive(20, ours("X1", "anchor", 10), impostor, wrongCase, upper), config{})
	ds := w.decide(t, []reconcile.Uncertain{toRoom("copied", "o1", 19), toRoom("nick case", "o2", 19), toRoom("room case", "o3", 19)},
		roomAnchor("X1", 11), reconcile.ResendIfAbsent)
	want(t, ds["copied"], reconcile.SafeToResend)
	want(t, ds["nick case"], reconcile.SafeToResend)
	want(t, ds["room case"], reconcile.Delivered, "X4")

	// Results that claim to come from another archive are not the room's.
	forged := roomArchive(20, ours("Y1", "anchor", 10), ours("Y2", "o1", 20))
	forged[room].from = "other@conference.example.test"
	w = setup(t, forged, config{})
	ds = w.decide(t, []reconcile.Uncertain{toRoom("forged", "o1", 19)}, roomAnchor("Y1", 11), reconcile.ResendIfAbsent)
	want(t, ds["forged"], reconcile.Unknown, "does not hold our last reflection")

	// Without our occupant JID nothing can be told apart: no query.
	w = setup(t, roomArchive(20, ours("Z1", "o1", 10)), config{occupant: func(jid.JID) (jid.JID, bool) { return jid.JID{}, false }})
	ds = w.decide(t, []reconcile.Uncertain{toRoom("lost nick", "o1", 10)}, roomAnchor("Z1", 10), reconcile.ResendIfAbsent)
	want(t, ds["lost nick"], reconcile.Unknown, "occupant JID")
	if n := len(w.srv.Queries()); n != 0 {
		t.Errorf("%d queries without an occupant JID, want none", n)
	}
}

// TestEjabberdStyle: an archive that answers bad-request to any field but
// with, start and end (ejabberd 23.01) still answers every query of the
// Reconciler, which pages with RSM alone and never sends ids, after-id or
// before-id.
func TestEjabberdStyle(t *testing.T) {
	items := []entry{ours("1700000000000001", "anchor", 10), theirs("1700000000000002", "bob", "b1", 11),
		theirs("1700000000000003", "bob", "b2", 12), ours("1700000000000004", "o1", 13), theirs("1700000000000005", "bob", "b3", 14)}
	archives := roomArchive(2, items...)
	archives[room].strict = true
	archives[""] = &archive{from: me, page: 2, strict: true, items: []entry{
		{id: "U1", from: me + "/phone", to: contact, typ: "chat", msgID: "earlier", originID: "earlier", at: at(10)},
		{id: "U2", from: contact + "/pc", to: me, typ: "chat", msgID: "r1", at: at(11)},
		{id: "U3", from: me + "/r9", to: contact, typ: "chat", msgID: "c1", originID: "c1", at: at(12)},
	}}
	w := setup(t, archives, config{})
	ds := w.decide(t, []reconcile.Uncertain{
		toRoom("room found", "o1", 12), toRoom("room absent", "o9", 12),
		{Key: "chat found", ID: "c1", OriginID: "c1", To: jid.MustParse(contact), Kind: reconcile.Chat, SentAt: at(12)},
		{Key: "chat absent", ID: "c9", OriginID: "c9", To: jid.MustParse(contact + "/pc"), Kind: reconcile.Chat, SentAt: at(12)},
	}, []reconcile.Anchor{
		{To: jid.MustParse(room), StanzaID: "1700000000000001", At: at(10)},
		{To: jid.MustParse(contact), OriginID: "earlier", At: at(10)},
	}, reconcile.ResendIfAbsent)
	want(t, ds["room found"], reconcile.Delivered)
	want(t, ds["room absent"], reconcile.SafeToResend)
	want(t, ds["chat found"], reconcile.Accepted)
	want(t, ds["chat absent"], reconcile.SafeToResend)
	qs := w.srv.Queries()
	if len(qs) < 4 {
		t.Fatalf("%d queries, want pages of both archives", len(qs))
	}
	for _, q := range qs {
		for _, bad := range []string{"ids", "after-id", "before-id"} {
			if strings.Contains(q.raw, `"`+bad+`"`) || strings.Contains(q.raw, `'`+bad+`'`) {
				t.Errorf("a query names %s: %s", bad, q.raw)
			}
		}
		for f := range q.fields {
			if f != "FORM_TYPE" && f != "with" && f != "start" {
				t.Errorf("a query has the field %q: %s", f, q.raw)
			}
		}
	}

	// mellium's history.Query with only With and Start set writes only those
	// fields: the Reconciler relies on it.
	q := history.Query{ID: "q", With: jid.MustParse(contact), Start: at(0), PageID: "x", Limit: 3}
	raw, err := xmlString(q.TokenReader())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"after-id", "before-id", "ids", "end", "flip-page", "<before"} {
		if strings.Contains(raw, bad) {
			t.Errorf("history.Query writes %q: %s", bad, raw)
		}
	}
}

// TestArchiveError: an archive that refuses, or does not answer, makes the
// messages it did not show Unknown, with its answer as the reason, never
// SafeToResend, even with our anchor there. A copy found on a page before
// the failure is Delivered all the same.
func TestArchiveError(t *testing.T) {
	items := []entry{ours("E1", "anchor", 10), ours("E2", "o1", 11), theirs("E3", "bob", "b1", 12)}
	for _, tc := range []struct {
		cond   string
		failAt int
		silent bool
	}{
		{cond: "feature-not-implemented", failAt: 1},
		{cond: "forbidden", failAt: 1},
		{cond: "item-not-found", failAt: 2},
		{cond: "no answer within", silent: true},
	} {
		t.Run(tc.cond, func(t *testing.T) {
			archives := roomArchive(2, items...)
			archives[room].fail, archives[room].failAt, archives[room].silent = tc.cond, tc.failAt, tc.silent
			w := setup(t, archives, config{opts: []reconcile.Option{reconcile.WithQueryTimeout(300 * time.Millisecond)}})
			ds := w.decide(t, []reconcile.Uncertain{toRoom("on page 1", "o1", 11), toRoom("absent", "o9", 11)},
				roomAnchor("E1", 10), reconcile.ResendIfAbsent)
			want(t, ds["absent"], reconcile.Unknown, "could not be read", tc.cond)
			if tc.failAt == 2 {
				want(t, ds["on page 1"], reconcile.Delivered)
			} else {
				want(t, ds["on page 1"], reconcile.Unknown, tc.cond)
			}
		})
	}
}

// TestChat: one-to-one messages are looked for in our own archive (no
// 'to'), with the contact as 'with'. A message from us (any resource) is
// Accepted; one that the contact sent with our origin-id is not. Absence
// counts only when the archive holds our anchor, an earlier message of
// ours to the contact that the server acknowledged.
func TestChat(t *testing.T) {
	items := []entry{
		{id: "C1", from: me + "/old", to: contact, typ: "chat", msgID: "acked", originID: "acked", at: at(10)},
		{id: "C2", from: contact + "/pc", to: me + "/old", typ: "chat", msgID: "x", originID: "echo", at: at(11)},
		{id: "C3", from: me + "/old", to: contact + "/pc", typ: "chat", msgID: "sent", originID: "sent", at: at(12)},
		{id: "C4", from: me + "/old", to: "carol@example.test", typ: "chat", msgID: "elsewhere", originID: "elsewhere", at: at(12)},
	}
	chat := func(key, originID string) reconcile.Uncertain {
		return reconcile.Uncertain{Key: key, ID: "id-" + originID, OriginID: originID, To: jid.MustParse(contact), Kind: reconcile.Chat, SentAt: at(12)}
	}
	msgs := []reconcile.Uncertain{chat("sent", "sent"), chat("echoed", "echo"), chat("absent", "nothing")}
	for _, tc := range []struct {
		name   string
		anchor []reconcile.Anchor
		absent reconcile.Outcome
		words  []string
	}{
		{"anchor found", []reconcile.Anchor{{To: jid.MustParse(contact), OriginID: "acked", At: at(10)}}, reconcile.SafeToResend, []string{"origin-id acked"}},
		{"anchor by stanza-id", []reconcile.Anchor{{To: jid.MustParse(contact), StanzaID: "C2", At: at(11)}}, reconcile.SafeToResend, nil},
		{"anchor missing", []reconcile.Anchor{{To: jid.MustParse(contact), OriginID: "gone", At: at(10)}}, reconcile.Unknown, []string{"archiving may be off"}},
		{"no anchor", nil, reconcile.Unknown, []string{"no earlier message with " + contact}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := setup(t, map[string]*archive{"": {from: me, page: 10, items: items}}, config{})
			ds := w.decide(t, msgs, tc.anchor, reconcile.ResendIfAbsent)
			want(t, ds["sent"], reconcile.Accepted, "a receipt may still come")
			want(t, ds["echoed"], tc.absent, tc.words...)
			want(t, ds["absent"], tc.absent, tc.words...)
			qs := w.srv.Queries()
			if len(qs) != 1 || qs[0].to != "" || len(qs[0].fields["with"]) != 1 || qs[0].fields["with"][0] != contact {
				t.Fatalf("queries %+v, want one to our own archive with %s", qs, contact)
			}
		})
	}
}

// TestPolicy: NeverResend decides Unknown without asking; AlwaysResend
// still finds what was delivered, and makes everything else SafeToResend,
// whatever the archive can prove or not.
func TestPolicy(t *testing.T) {
	items := []entry{ours("N1", "o1", 10)}
	msgs := []reconcile.Uncertain{toRoom("there", "o1", 10), toRoom("absent", "o9", 10)}

	w := setup(t, roomArchive(10, items...), config{})
	ds := w.decide(t, msgs, nil, reconcile.NeverResend)
	want(t, ds["there"], reconcile.Unknown, "policy: never resend")
	want(t, ds["absent"], reconcile.Unknown, "policy: never resend")
	if n := len(w.srv.Queries()); n != 0 {
		t.Errorf("NeverResend sent %d queries, want none", n)
	}

	w = setup(t, roomArchive(10, items...), config{})
	ds = w.decide(t, msgs, nil, reconcile.AlwaysResend)
	want(t, ds["there"], reconcile.Delivered)
	want(t, ds["absent"], reconcile.SafeToResend, "policy: always resend", "no reflection of ours")

	failing := roomArchive(10, items...)
	failing[room].fail, failing[room].failAt = "forbidden", 1
	w = setup(t, failing, config{})
	ds = w.decide(t, msgs, roomAnchor("N1", 10), reconcile.AlwaysResend)
	want(t, ds["there"], reconcile.SafeToResend, "forbidden")
}

// TestRouting: results of queries that are not the Reconciler's go on to
// WithNext's handler; a Reconciler whose results never arrive (Handle left
// out of the mux) says so with ErrMisuse instead of deciding on an archive
// that looked empty.
func TestRouting(t *testing.T) {
	next := &otherResults{}
	w := setup(t, roomArchive(10, ours("R1", "o1", 10), ours("R2", "o2", 11)), config{opts: []reconcile.Option{reconcile.WithNext(next)}})
	for _, e := range w.srv.archives[room].items {
		w.srv.c.Send(result(room, w.srv.self.String(), "someone-else", e))
	}
	ds := w.decide(t, []reconcile.Uncertain{toRoom("k", "o2", 11)}, nil, reconcile.ResendIfAbsent)
	want(t, ds["k"], reconcile.Delivered, "R2")
	next.mu.Lock()
	got := strings.Join(next.ids, ",")
	next.mu.Unlock()
	if got != "R1,R2" {
		t.Errorf("WithNext's handler got %q, want the other query's R1,R2 only", got)
	}

	w = setup(t, roomArchive(10, ours("R1", "o1", 10)), config{noHandle: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.r.Decide(ctx, []reconcile.Uncertain{toRoom("k", "o9", 11)}, nil, reconcile.ResendIfAbsent); !errors.Is(err, reconcile.ErrMisuse) {
		t.Errorf("Decide without Handle: %v, want ErrMisuse", err)
	}
}

// TestMisuse: input Decide cannot decide on is refused before any query.
func TestMisuse(t *testing.T) {
	ok := toRoom("ok", "o1", 10)
	bad := func(f func(*reconcile.Uncertain)) []reconcile.Uncertain {
		m := ok
		f(&m)
		return []reconcile.Uncertain{m}
	}
	w := setup(t, roomArchive(10), config{})
	for name, tc := range map[string]struct {
		msgs    []reconcile.Uncertain
		anchors []reconcile.Anchor
		p       reconcile.Policy
	}{
		"no kind":          {msgs: bad(func(m *reconcile.Uncertain) { m.Kind = 0 })},
		"no ids":           {msgs: bad(func(m *reconcile.Uncertain) { m.ID, m.OriginID = "", "" })},
		"no addressee":     {msgs: bad(func(m *reconcile.Uncertain) { m.To = jid.JID{} })},
		"no send time":     {msgs: bad(func(m *reconcile.Uncertain) { m.SentAt = time.Time{} })},
		"two anchors":      {msgs: []reconcile.Uncertain{ok}, anchors: append(roomAnchor("a", 1), roomAnchor("b", 2)...)},
		"empty anchor":     {msgs: []reconcile.Uncertain{ok}, anchors: []reconcile.Anchor{{To: jid.MustParse(room)}}},
		"anchor is msg":    {msgs: []reconcile.Uncertain{ok}, anchors: []reconcile.Anchor{{To: jid.MustParse(room), OriginID: "o1"}}},
		"unknown policy":   {msgs: []reconcile.Uncertain{ok}, p: 9},
		"room and contact": {msgs: []reconcile.Uncertain{ok, {Key: "c", ID: "c", To: jid.MustParse(room), Kind: reconcile.Chat, SentAt: at(1)}}},
	} {
		ds, err := w.r.Decide(context.Background(), tc.msgs, tc.anchors, tc.p)
		if !errors.Is(err, reconcile.ErrMisuse) || ds != nil {
			t.Errorf("%s: %v, %v; want ErrMisuse and no decisions", name, ds, err)
		}
	}
	if n := len(w.srv.Queries()); n != 0 {
		t.Errorf("%d queries for misused calls, want none", n)
	}
	noOccupant := reconcile.New(nil, nil)
	if _, err := noOccupant.Decide(context.Background(), []reconcile.Uncertain{ok}, nil, reconcile.ResendIfAbsent); !errors.Is(err, reconcile.ErrMisuse) {
		t.Errorf("a room message without an occupant function: %v, want ErrMisuse", err)
	}
}
