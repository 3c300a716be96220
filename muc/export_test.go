package muc

import (
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// NewDetachedRoom returns a client without a stream and a room it is in as
// room/nick, as if the join had completed. Nothing can be sent through them:
// they exist so that tests and benchmarks can feed stanzas straight to the
// client's handler (see Client.HandleForTest).
func NewDetachedRoom(room jid.JID, nick string) (*Client, *Room) {
	c := newClient(nil)
	occupant, err := room.WithResource(nick)
	if err != nil {
		panic(err)
	}
	r := newRoom(c, occupant, joinConfig{})
	r.state = joined
	c.rooms[r.key] = r
	return c, r
}

// HandleForTest hands el to the client as the stream's reader would.
func (c *Client) HandleForTest(el *stream.Element) { c.handle(el) }

// TrackForTest registers a pending message with the given id and origin-id,
// as SendTrackedMessage does before it writes the stanza, and returns its
// tracker.
func (r *Room) TrackForTest(id, originID string) *tracking.MessageTracker {
	t := tracking.NewMessageTracker(tracking.WithID(id))
	p := &pending{r: r, t: t, id: id, originID: originID}
	r.mu.Lock()
	r.byOrigin[originID] = p
	r.byID[id] = p
	r.mu.Unlock()
	return t
}
