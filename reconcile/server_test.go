// The scripted archive of these tests: a bridge on a stream to
// internal/fakeserver, whose connection is served by a goroutine that
// answers XEP-0313 queries from archives set up by each test, and records
// every query as it came.

package reconcile_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"

	"github.com/xmpptrack/xmpptrack/bridge"
	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/reconcile"
	"github.com/xmpptrack/xmpptrack/stream"
)

// Addresses of the scripted world.
const (
	room    = "room@conference.example.test"
	nick    = "alice"
	me      = "user@example.test"
	contact = "bob@example.test"
)

// entry is one archived message.
type entry struct {
	id       string // archive id
	from, to string
	typ      string
	msgID    string
	originID string
	at       time.Time
}

// archive is a scripted XEP-0313 archive.
type archive struct {
	// from is the 'from' of its results and answers: the room, or our bare
	// JID for our own archive.
	from  string
	items []entry
	// page is the most items it sends in one page.
	page int
	// strict makes it answer bad-request to any form field but FORM_TYPE,
	// with, start and end, as ejabberd 23.01 does.
	strict bool
	// fail, when set, is the condition of the error it answers from page
	// failAt on (1 = the first query).
	fail   string
	failAt int
	// silent archives never answer.
	silent bool

	asked int // queries so far
}

// query is a MAM query the client sent.
type query struct {
	to      string
	raw     string
	queryID string
	fields  map[string][]string
	max     string
	after   string
	hasSet  bool
}

// scripted serves one connection: it acknowledges, and answers queries.
type scripted struct {
	c        *fakeserver.Conn
	self     jid.JID // our full JID
	archives map[string]*archive

	mu      sync.Mutex
	queries []query
	done    chan struct{}
}

// Queries returns the queries the client sent so far.
func (s *scripted) Queries() []query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.queries)
}

func (s *scripted) serve(t *testing.T) {
	defer close(s.done)
	stanzas := 0
	for el := range s.c.Elements() {
		if el.Start.Name.Local == "r" {
			s.c.Send(fmt.Sprintf("<a xmlns='urn:xmpp:sm:3' h='%d'/>", stanzas))
			continue
		}
		if !el.IsStanza() {
			continue
		}
		stanzas++
		if child, ok := el.Child(); !ok || el.Start.Name.Local != "iq" || child.Name.Space != "urn:xmpp:mam:2" {
			continue
		}
		if err := s.answer(el); err != nil {
			t.Errorf("scripted archive: %v", err)
		}
	}
}

// answer answers one query as its archive is scripted to.
func (s *scripted) answer(el fakeserver.Element) error {
	q, err := parseQuery(el)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.queries = append(s.queries, q)
	s.mu.Unlock()
	id := el.Attr("id")
	a := s.archives[q.to]
	if a == nil {
		return s.c.Send(errorReply(id, q.to, "cancel", "service-unavailable"))
	}
	a.asked++
	switch {
	case a.silent:
		return nil
	case a.fail != "" && a.asked >= a.failAt:
		return s.c.Send(errorReply(id, a.from, "cancel", a.fail))
	}
	for f := range q.fields {
		if a.strict && f != "FORM_TYPE" && f != "with" && f != "start" && f != "end" {
			return s.c.Send(errorReply(id, a.from, "modify", "bad-request"))
		}
	}
	var start time.Time
	if v := q.fields["start"]; len(v) == 1 {
		if start, err = time.Parse(time.RFC3339, v[0]); err != nil {
			return s.c.Send(errorReply(id, a.from, "modify", "bad-request"))
		}
	}
	var list []entry
	for _, e := range a.items {
		if e.at.Before(start) {
			continue
		}
		if w := q.fields["with"]; len(w) == 1 && q.to == "" && other(e, s.self.Bare()) != w[0] {
			continue
		}
		list = append(list, e)
	}
	if q.after != "" {
		i := slices.IndexFunc(list, func(e entry) bool { return e.id == q.after })
		if i < 0 {
			return s.c.Send(errorReply(id, a.from, "cancel", "item-not-found"))
		}
		list = list[i+1:]
	}
	n := a.page
	if m, err := strconv.Atoi(q.max); err == nil && m < n {
		n = m
	}
	complete := len(list) <= n
	list = list[:min(n, len(list))]
	var b strings.Builder
	for _, e := range list {
		b.WriteString(result(a.from, s.self.String(), q.queryID, e))
	}
	set := ""
	if len(list) > 0 {
		set = fmt.Sprintf("<first>%s</first><last>%s</last>", list[0].id, list[len(list)-1].id)
	}
	fmt.Fprintf(&b, "<iq type='result' id='%s'%s><fin xmlns='urn:xmpp:mam:2' complete='%t'><set xmlns='http://jabber.org/protocol/rsm'>%s</set></fin></iq>",
		id, fromAttr(a.from), complete, set)
	return s.c.Send(b.String())
}

// other returns the other party of a message in our own archive.
func other(e entry, self jid.JID) string {
	if from, err := jid.Parse(e.from); err == nil && from.Bare().Equal(self) {
		return jid.MustParse(e.to).Bare().String()
	}
	return jid.MustParse(e.from).Bare().String()
}

func fromAttr(from string) string {
	if from == "" {
		return ""
	}
	return " from='" + from + "'"
}

func errorReply(id, from, typ, cond string) string {
	return fmt.Sprintf("<iq type='error' id='%s'%s><error type='%s'><%s xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
		id, fromAttr(from), typ, cond)
}

// result is the message that carries one archived message.
func result(from, to, queryID string, e entry) string {
	origin := ""
	if e.originID != "" {
		origin = "<origin-id xmlns='urn:xmpp:sid:0' id='" + e.originID + "'/>"
	}
	return fmt.Sprintf("<message%s to='%s'><result xmlns='urn:xmpp:mam:2' queryid='%s' id='%s'>"+
		"<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='%s'/>"+
		"<message xmlns='jabber:client' from='%s' to='%s' type='%s' id='%s'><body>hi</body>%s</message>"+
		"</forwarded></result></message>",
		fromAttr(from), to, queryID, e.id, e.at.UTC().Format(time.RFC3339), e.from, e.to, e.typ, e.msgID, origin)
}

// parseQuery reads a MAM query: its form fields and RSM set.
func parseQuery(el fakeserver.Element) (query, error) {
	var v struct {
		To    string `xml:"to,attr"`
		Query struct {
			ID     string `xml:"queryid,attr"`
			Fields []struct {
				Var    string   `xml:"var,attr"`
				Values []string `xml:"value"`
			} `xml:"jabber:x:data x>field"`
			Set *struct {
				Max   string `xml:"max"`
				After string `xml:"after"`
			} `xml:"http://jabber.org/protocol/rsm set"`
		} `xml:"urn:xmpp:mam:2 query"`
	}
	if err := xml.Unmarshal([]byte(el.String()), &v); err != nil {
		return query{}, fmt.Errorf("query %s: %w", el, err)
	}
	q := query{to: v.To, raw: el.String(), queryID: v.Query.ID, fields: make(map[string][]string)}
	for _, f := range v.Query.Fields {
		q.fields[f.Var] = f.Values
	}
	if v.Query.Set != nil {
		q.hasSet, q.max, q.after = true, v.Query.Set.Max, v.Query.Set.After
	}
	return q, nil
}

// world is a reconciler over a bridge to a scripted server.
type world struct {
	srv *scripted
	r   *reconcile.Reconciler
}

// config changes what setup builds.
type config struct {
	opts     []reconcile.Option
	occupant func(jid.JID) (jid.JID, bool)
	// extra is added to the mux serving the session; noHandle leaves
	// reconcile.Handle out of it.
	extra    []mux.Option
	noHandle bool
}

// setup connects a stream to a scripted server whose archives are given by
// the address a query goes to ("" for our own), bridges it, and serves the
// session with reconcile.Handle.
func setup(t *testing.T, archives map[string]*archive, cfg config) *world {
	t.Helper()
	fs := fakeserver.New(t)
	dialed := make(chan error, 1)
	var s *stream.Stream
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		s, err = stream.Dial(ctx, stream.Config{
			JID: jid.MustParse(me), Password: "pw", AllowPlaintext: true,
			Mechanisms: []sasl.Mechanism{sasl.Plain}, Dial: fs.Dial,
		})
		dialed <- err
	}()
	c := fs.Next(t)
	c.EnableSM(t, "S1")
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
	b, err := bridge.New(s)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.occupant == nil {
		cfg.occupant = func(r jid.JID) (jid.JID, bool) {
			j, err := r.WithResource(nick)
			return j, err == nil
		}
	}
	w := &world{
		srv: &scripted{c: c, self: c.JID, archives: archives, done: make(chan struct{})},
		r:   reconcile.New(b.Session(), cfg.occupant, cfg.opts...),
	}
	go w.srv.serve(t)
	opts := cfg.extra
	if !cfg.noHandle {
		opts = append(opts, reconcile.Handle(w.r))
	}
	served := make(chan error, 1)
	go func() { served <- b.Session().Serve(mux.New(stanza.NSClient, opts...)) }()
	t.Cleanup(func() {
		b.Close()
		<-served
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Close(ctx)
		fs.Close()
		<-w.srv.done
	})
	return w
}

// decide runs Decide and returns its decisions by key.
func (w *world) decide(t *testing.T, msgs []reconcile.Uncertain, anchors []reconcile.Anchor, p reconcile.Policy) map[string]reconcile.Decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := w.r.Decide(ctx, msgs, anchors, p)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if len(ds) != len(msgs) {
		t.Fatalf("Decide returned %d decisions for %d messages", len(ds), len(msgs))
	}
	out := make(map[string]reconcile.Decision)
	for i, d := range ds {
		if d.Key != msgs[i].Key {
			t.Fatalf("decision %d is for %q, want %q", i, d.Key, msgs[i].Key)
		}
		out[d.Key] = d
	}
	return out
}

// want fails the test unless d has the outcome, and its reason contains
// each of the words.
func want(t *testing.T, d reconcile.Decision, o reconcile.Outcome, words ...string) {
	t.Helper()
	if d.Outcome != o {
		t.Errorf("%s: %v (%s), want %v", d.Key, d.Outcome, d.Reason, o)
		return
	}
	for _, w := range words {
		if !strings.Contains(d.Reason, w) {
			t.Errorf("%s: reason %q does not say %q", d.Key, d.Reason, w)
		}
	}
}

// otherResults is a mux.MessageHandler that records the archive ids of the
// results handed on to it.
type otherResults struct {
	mu  sync.Mutex
	ids []string
}

func (h *otherResults) HandleMessage(_ stanza.Message, r xmlstream.TokenReadEncoder) error {
	d := xml.NewTokenDecoder(r)
	for {
		tok, err := d.Token()
		if err != nil {
			return nil
		}
		if s, ok := tok.(xml.StartElement); ok && s.Name.Local == "result" {
			for _, a := range s.Attr {
				if a.Name.Local == "id" {
					h.mu.Lock()
					h.ids = append(h.ids, a.Value)
					h.mu.Unlock()
				}
			}
		}
	}
}

// xmlString encodes the tokens of r.
func xmlString(r xml.TokenReader) (string, error) {
	var b strings.Builder
	e := xml.NewEncoder(&b)
	if _, err := xmlstream.Copy(e, r); err != nil {
		return "", err
	}
	err := e.Flush()
	return b.String(), err
}
