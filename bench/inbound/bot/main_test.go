package main

import (
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/stream"
)

// TestCounter checks that only groupchat messages with a body count, and
// that wait returns once n have arrived.
func TestCounter(t *testing.T) {
	msg := func(typ string, body bool) *stream.Element {
		s := "<message xmlns='jabber:client' type='" + typ + "'>"
		if body {
			s += "<body>hi</body>"
		}
		e, err := stream.ParseElement([]byte(s + "</message>"))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	presence, err := stream.ParseElement([]byte("<presence/>"))
	if err != nil {
		t.Fatal(err)
	}
	c := newCounter(2)
	c.element(msg("groupchat", false)) // the subject, say
	c.element(msg("chat", true))
	c.element(presence)
	c.element(msg("groupchat", true))
	if got, _, _ := c.wait(10 * time.Millisecond); got != 1 {
		t.Fatalf("counted %d, want 1", got)
	}
	c.element(msg("groupchat", true))
	if got, first, last := c.wait(time.Minute); got != 2 || last.Before(first) {
		t.Fatalf("counted %d (first %v, last %v), want 2", got, first, last)
	}
}
