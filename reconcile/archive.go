package reconcile

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/history"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
	"github.com/xmpptrack/xmpptrack/stream"
)

// Handle returns the mux option that routes the archive's results
// (<result xmlns='urn:xmpp:mam:2'/> messages) to r. The mux serving r's
// session must include it, and no other handler for those results (pass
// that one to WithNext).
func Handle(r *Reconciler) mux.Option {
	return mux.Message(stanza.NormalMessage, xml.Name{Space: history.NS, Local: "result"}, r)
}

// item is one archived message, as far as the Reconciler cares.
type item struct {
	archive  jid.JID // the from of the <result/>'s message: the archive
	id       string  // the archive id (the result's id)
	from, to string  // of the archived message
	typ      string
	msgID    string
	originID string
}

// collector gathers the results of one running query.
type collector struct {
	items   []item
	arrived int // results with the query's id, parsed or not
}

// HandleMessage takes the archive results of the Reconciler's own queries
// and passes the others on (see WithNext). It is a mux.MessageHandler for
// Handle; it runs on the goroutine serving the session, before the query's
// answer reaches Decide.
func (r *Reconciler) HandleMessage(msg stanza.Message, t xmlstream.TokenReadEncoder) error {
	var read []xml.TokenReader // what was read up to the <result/>, to hand on
	var res xml.StartElement
	for found := false; !found; {
		tok, err := t.Token()
		if err != nil {
			if err == io.EOF {
				return nil // no result in it after all
			}
			return err
		}
		tok = xml.CopyToken(tok)
		read = append(read, xmlstream.Token(tok))
		if s, ok := tok.(xml.StartElement); ok && s.Name.Space == history.NS && s.Name.Local == "result" {
			res, found = s, true
		}
	}
	qid := xstanza.Attr(res, "queryid")
	r.mu.Lock()
	col := r.queries[qid]
	if col != nil {
		col.arrived++
	}
	r.mu.Unlock()
	if col == nil {
		if r.next == nil {
			return nil
		}
		return r.next.HandleMessage(msg, struct {
			xml.TokenReader
			xmlstream.Encoder
		}{xmlstream.MultiReader(append(read, t)...), t})
	}
	var v struct {
		Forwarded struct {
			Message struct {
				From     string `xml:"from,attr"`
				To       string `xml:"to,attr"`
				ID       string `xml:"id,attr"`
				Type     string `xml:"type,attr"`
				OriginID []struct {
					ID string `xml:"id,attr"`
				} `xml:"urn:xmpp:sid:0 origin-id"`
			} `xml:"message"`
		} `xml:"urn:xmpp:forward:0 forwarded"`
	}
	// The decoder must see the start element, or it takes the end element
	// for one that was never opened.
	if err := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(res), t)).Decode(&v); err != nil {
		return nil // not an archived message we can read: not ours
	}
	m := v.Forwarded.Message
	it := item{archive: msg.From, id: xstanza.Attr(res, "id"), from: m.From, to: m.To, typ: m.Type, msgID: m.ID}
	if len(m.OriginID) > 0 {
		it.originID = m.OriginID[0].ID
	}
	r.mu.Lock()
	if r.queries[qid] == col { // not given up meanwhile (a page's timeout)
		col.items = append(col.items, it)
	}
	r.mu.Unlock()
	return nil
}

// track starts collecting the results of the query id.
func (r *Reconciler) track(id string) {
	r.mu.Lock()
	r.queries[id] = &collector{}
	r.mu.Unlock()
}

// untrack stops collecting for the query id and returns what came.
func (r *Reconciler) untrack(id string) *collector {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.queries[id]
	delete(r.queries, id)
	return c
}

// scanResult is what an archive showed about one group.
type scanResult struct {
	byOrigin    map[string]string // our messages' origin-ids -> archive ids
	byID        map[string]string // ids of our messages without origin-id -> archive ids
	anchorFound bool
	complete    bool  // read to the end
	pages       int   // pages asked for
	err         error // why reading stopped short, if it did
}

// found returns the archive id of m's copy, if the archive showed one.
func (s *scanResult) found(m Uncertain) (string, bool) {
	if m.OriginID != "" {
		if id, ok := s.byOrigin[m.OriginID]; ok {
			return id, true
		}
	}
	if m.ID != "" {
		if id, ok := s.byID[m.ID]; ok {
			return id, true
		}
	}
	return "", false
}

// take records the items of one page that come from g's archive.
func (s *scanResult) take(g *group, items []item) {
	for _, it := range items {
		if !g.fromArchive(it.archive) {
			continue // someone else's forgery, or another archive's
		}
		if g.anchor != nil && g.anchor.StanzaID != "" && it.id == g.anchor.StanzaID {
			s.anchorFound = true
		}
		if !g.ours(it) {
			continue
		}
		if g.anchor != nil && g.anchor.OriginID != "" && it.originID == g.anchor.OriginID {
			s.anchorFound = true
		}
		switch {
		case it.originID != "":
			if _, dup := s.byOrigin[it.originID]; !dup {
				s.byOrigin[it.originID] = it.id
			}
		case it.msgID != "":
			if _, dup := s.byID[it.msgID]; !dup {
				s.byID[it.msgID] = it.id
			}
		}
	}
}

// fromArchive reports whether a result came from g's archive: the room, or
// our own account (whose address mellium's session leaves out).
func (g *group) fromArchive(from jid.JID) bool {
	if g.kind == Groupchat {
		return from.Equal(g.peer)
	}
	return from.Equal(jid.JID{}) || from.Equal(g.self)
}

// ours reports whether an archived message is one of ours in g: from our
// occupant JID (the room's bare JID normalized, the nick exactly), or, in
// our own archive, from our account (any resource) to the contact.
func (g *group) ours(it item) bool {
	if g.kind == Groupchat {
		from, err := jid.Parse(it.from)
		return err == nil && it.typ == "groupchat" &&
			from.Bare().Equal(g.peer) && from.Resourcepart() == g.self.Resourcepart()
	}
	if it.from != "" {
		from, err := jid.Parse(it.from)
		if err != nil || !from.Bare().Equal(g.self) {
			return false
		}
	}
	to, err := jid.Parse(it.to)
	return err == nil && to.Bare().Equal(g.peer)
}

// scan reads g's archive from g.start, page after page, until it has seen
// the end, or every message of g, or enough. The archive's failures end up
// in the result; the error is for misuse only.
func (r *Reconciler) scan(ctx context.Context, g *group, msgs []Uncertain) (*scanResult, error) {
	res := &scanResult{byOrigin: make(map[string]string), byID: make(map[string]string)}
	q := history.Query{Start: g.start, Limit: r.pageSize}
	var to jid.JID // our own archive: no 'to'
	if g.kind == Groupchat {
		to = g.peer
	} else {
		q.With = g.peer
	}
	for res.pages < r.maxPages {
		if err := ctx.Err(); err != nil {
			res.err = fmt.Errorf("stopped: %w", err)
			return res, nil
		}
		q.ID = xstanza.NewID()
		r.track(q.ID)
		qctx, cancel := ctx, context.CancelFunc(func() {})
		if r.timeout > 0 {
			qctx, cancel = context.WithTimeout(ctx, r.timeout)
		}
		fin, err := history.Fetch(qctx, q, to, r.sess)
		cancel()
		col := r.untrack(q.ID)
		res.pages++
		// What came is the archive's content, even when the page failed
		// afterwards: a copy found is found.
		res.take(g, col.items)
		switch {
		case err != nil:
			res.err = queryError(ctx, err, r.timeout)
			return res, nil
		case g.allFound(res, msgs):
			return res, nil
		case col.arrived == 0 && (fin.Set.First.ID != "" || fin.Set.Last != ""):
			return nil, fmt.Errorf("%w: %s announced results that never reached the Reconciler: is reconcile.Handle in the mux serving the session?", ErrMisuse, archiveName(g))
		case fin.Complete, col.arrived == 0 && fin.Set.Last == "":
			res.complete = true // the last page, or an empty one
			return res, nil
		case fin.Set.Last == "":
			res.err = errors.New("its answer cannot be paged: it names no last item (RSM <last/>)")
			return res, nil
		case fin.Set.Last == q.PageID:
			res.err = fmt.Errorf("its pages do not advance past %s", q.PageID)
			return res, nil
		}
		q.PageID = fin.Set.Last
	}
	return res, nil
}

// allFound reports whether every message of g was found.
func (g *group) allFound(res *scanResult, msgs []Uncertain) bool {
	for _, i := range g.msgs {
		if _, ok := res.found(msgs[i]); !ok {
			return false
		}
	}
	return true
}

// archiveName names g's archive in an error.
func archiveName(g *group) string {
	if g.kind == Groupchat {
		return "the archive of " + g.peer.String()
	}
	return "our archive (with " + g.peer.String() + ")"
}

// queryError says in words why a page could not be read.
func queryError(ctx context.Context, err error, timeout time.Duration) error {
	var se stanza.Error
	switch {
	case errors.As(err, &se):
		cond := string(se.Condition)
		if cond == "" {
			cond = "an error"
		}
		texts := make([]string, 0, len(se.Text))
		for _, t := range se.Text {
			texts = append(texts, t)
		}
		sort.Strings(texts)
		if len(texts) > 0 {
			return fmt.Errorf("it answered %s (%s)", cond, strings.Join(texts, "; "))
		}
		return fmt.Errorf("it answered %s", cond)
	case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no answer within %v", timeout)
	case ctx.Err() != nil:
		return fmt.Errorf("stopped: %w", ctx.Err())
	}
	return err
}

// Results reports whether el is one of an archive's results: the only
// inbound stanzas, besides the replies to its queries, that a Reconciler
// reads. Give it to bridge.Only so that a busy stream hands the
// reconciler's session nothing else.
func Results(el *stream.Element) bool {
	if el.Name().Local != "message" {
		return false
	}
	_, ok := el.Child(history.NS, "result")
	return ok
}
