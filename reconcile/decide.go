package reconcile

import (
	"context"
	"fmt"
	"time"

	"mellium.im/xmpp/jid"
)

// group is the uncertain messages one archive witnesses: a room's, or ours
// with one contact.
type group struct {
	kind   Kind
	peer   jid.JID     // the room, or the contact; bare
	msgs   []int       // indexes into Decide's msgs
	anchor *Anchor     // nil when the caller gave none
	self   jid.JID     // groupchat: our occupant JID; chat: our bare JID
	known  bool        // whether self is known
	start  time.Time   // where the query starts
	result *scanResult // what the archive showed
}

// Decide asks the archives about msgs and returns one Decision per message,
// in the order of msgs. anchors holds at most one Anchor per room or
// contact. A room's messages are looked for in the room's archive, a
// contact's in our own, each archive read once for all its messages, one
// archive after the other.
//
// The archive's failures (an error reply, no answer in time, ctx ending) are
// not errors of Decide: the messages they leave undecided are Unknown, with
// the failure as the Reason. Decide returns an error, wrapping ErrMisuse,
// and no decisions, only for input it cannot decide on (a message without
// ids, kind or send time; a groupchat message without an occupant function;
// two anchors for one archive; an anchor that is one of the uncertain
// messages; an unknown policy), or when an archive announced results that
// never reached the Reconciler (Handle is missing from the session's mux).
func (r *Reconciler) Decide(ctx context.Context, msgs []Uncertain, anchors []Anchor, p Policy) ([]Decision, error) {
	groups, err := r.plan(msgs, anchors, p)
	if err != nil {
		return nil, err
	}
	out := make([]Decision, len(msgs))
	for i, m := range msgs {
		out[i] = Decision{Key: m.Key}
	}
	if p == NeverResend {
		for i := range out {
			out[i].Reason = "policy: never resend"
		}
		return out, nil
	}
	for _, g := range groups {
		if g.kind == Groupchat {
			g.self, g.known = r.occupant(g.peer)
			g.known = g.known && g.self.Bare().Equal(g.peer) && g.self.Resourcepart() != ""
		} else {
			g.self, g.known = r.sess.LocalAddr().Bare(), true
		}
		if g.known {
			res, err := r.scan(ctx, g, msgs)
			if err != nil {
				return nil, err
			}
			g.result = res
		}
		for _, i := range g.msgs {
			out[i] = g.decide(msgs[i], p)
		}
	}
	return out, nil
}

// plan checks the input and groups the messages by archive, in the order of
// their first message.
func (r *Reconciler) plan(msgs []Uncertain, anchors []Anchor, p Policy) ([]*group, error) {
	if p > AlwaysResend {
		return nil, fmt.Errorf("%w: unknown policy %v", ErrMisuse, p)
	}
	type key struct {
		kind Kind
		peer string
	}
	var groups []*group
	byKey := make(map[key]*group)
	byPeer := make(map[string]*group)
	for i, m := range msgs {
		switch {
		case m.Kind != Groupchat && m.Kind != Chat:
			return nil, fmt.Errorf("%w: message %q: unknown kind %v", ErrMisuse, m.Key, m.Kind)
		case m.ID == "" && m.OriginID == "":
			return nil, fmt.Errorf("%w: message %q has neither id nor origin-id", ErrMisuse, m.Key)
		case m.To.Equal(jid.JID{}):
			return nil, fmt.Errorf("%w: message %q has no addressee", ErrMisuse, m.Key)
		case m.SentAt.IsZero():
			return nil, fmt.Errorf("%w: message %q has no send time", ErrMisuse, m.Key)
		case m.Kind == Groupchat && r.occupant == nil && p != NeverResend:
			return nil, fmt.Errorf("%w: message %q is to a room, and the Reconciler has no occupant function", ErrMisuse, m.Key)
		}
		peer := m.To.Bare()
		k := key{m.Kind, peer.String()}
		g := byKey[k]
		if g == nil {
			if other := byPeer[k.peer]; other != nil {
				return nil, fmt.Errorf("%w: %s is addressed both as a room and as a contact", ErrMisuse, peer)
			}
			g = &group{kind: m.Kind, peer: peer}
			byKey[k] = g
			byPeer[k.peer] = g
			groups = append(groups, g)
		}
		g.msgs = append(g.msgs, i)
	}
	seen := make(map[string]bool)
	for i := range anchors {
		a := &anchors[i]
		peer := a.To.Bare().String()
		switch {
		case a.To.Equal(jid.JID{}):
			return nil, fmt.Errorf("%w: an anchor has no room or contact", ErrMisuse)
		case a.StanzaID == "" && a.OriginID == "":
			return nil, fmt.Errorf("%w: the anchor for %s has neither stanza-id nor origin-id", ErrMisuse, peer)
		case seen[peer]:
			return nil, fmt.Errorf("%w: two anchors for %s", ErrMisuse, peer)
		}
		seen[peer] = true
		g := byPeer[peer]
		if g == nil {
			continue // no uncertain message there
		}
		for _, j := range g.msgs {
			if a.OriginID != "" && (a.OriginID == msgs[j].OriginID || a.OriginID == msgs[j].ID) {
				return nil, fmt.Errorf("%w: the anchor for %s is the uncertain message %q", ErrMisuse, peer, msgs[j].Key)
			}
		}
		g.anchor = a
	}
	for _, g := range groups {
		start := msgs[g.msgs[0]].SentAt
		for _, j := range g.msgs[1:] {
			if t := msgs[j].SentAt; t.Before(start) {
				start = t
			}
		}
		if g.anchor != nil && !g.anchor.At.IsZero() && g.anchor.At.Before(start) {
			start = g.anchor.At
		}
		g.start = start.Add(-r.margin)
	}
	return groups, nil
}

// decide applies the rules to one message of g, once its archive was read.
func (g *group) decide(m Uncertain, p Policy) Decision {
	d := Decision{Key: m.Key}
	where := "our archive"
	if g.kind == Groupchat {
		where = "the room's archive"
	}
	res := g.result
	if res != nil {
		if id, ok := res.found(m); ok {
			d.StanzaID = id
			if g.kind == Groupchat {
				d.Outcome = Delivered
				d.Reason = fmt.Sprintf("%s holds it from our occupant JID (archive id %s)", where, id)
			} else {
				d.Outcome = Accepted
				d.Reason = fmt.Sprintf("%s holds it (archive id %s): the server accepted it; a receipt may still come", where, id)
			}
			return d
		}
	}
	var why string
	switch {
	case !g.known:
		why = fmt.Sprintf("our occupant JID in %s is not known: our messages cannot be told from others'", g.peer)
	case res.err != nil:
		why = fmt.Sprintf("%s could not be read: %v", where, res.err)
	case !res.complete:
		why = fmt.Sprintf("%s was not read to its end (%d pages since %s)", where, res.pages, g.start.UTC().Format(time.RFC3339))
	case g.anchor == nil && g.kind == Groupchat:
		why = fmt.Sprintf("it is absent from %s, but we have no reflection of ours from before it to show that the archive covers the window", where)
	case g.anchor == nil:
		why = fmt.Sprintf("it is absent from %s, but we have no earlier message with %s to show that the archive keeps this conversation", where, g.peer)
	case !res.anchorFound && g.kind == Groupchat:
		why = fmt.Sprintf("%s does not hold our last reflection (%s): it may have been lost or expired", where, g.anchor.describe())
	case !res.anchorFound:
		why = fmt.Sprintf("%s does not hold our earlier message with %s (%s): archiving may be off, or the archive lost or expired", where, g.peer, g.anchor.describe())
	default:
		d.Outcome = SafeToResend
		d.Reason = fmt.Sprintf("it is absent from %s, which holds our earlier message (%s) and so covers the window", where, g.anchor.describe())
		return d
	}
	if p == AlwaysResend {
		d.Outcome = SafeToResend
		d.Reason = "policy: always resend (" + why + ")"
		return d
	}
	d.Reason = why
	return d
}

// describe names the anchor in a Reason.
func (a *Anchor) describe() string {
	if a.StanzaID != "" {
		return "stanza-id " + a.StanzaID
	}
	return "origin-id " + a.OriginID
}
