package main

import (
	"encoding/xml"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/stream"
)

// TestCounter checks that only groupchat messages with a body count, and
// that wait returns once n have arrived.
func TestCounter(t *testing.T) {
	msg := func(typ string, body bool) *stream.Element {
		e := &stream.Element{Start: xml.StartElement{
			Name: xml.Name{Space: "jabber:client", Local: "message"},
			Attr: []xml.Attr{{Name: xml.Name{Local: "type"}, Value: typ}},
		}}
		if body {
			e.Inner = append(e.Inner, xml.StartElement{Name: xml.Name{Local: "body"}}, xml.CharData("hi"), xml.EndElement{Name: xml.Name{Local: "body"}})
		}
		e.Inner = append(e.Inner, xml.EndElement{Name: e.Start.Name})
		return e
	}
	c := newCounter(2)
	c.element(msg("groupchat", false)) // the subject, say
	c.element(msg("chat", true))
	c.element(&stream.Element{Start: xml.StartElement{Name: xml.Name{Local: "presence"}}})
	c.element(msg("groupchat", true))
	if got, _, _ := c.wait(10 * time.Millisecond); got != 1 {
		t.Fatalf("counted %d, want 1", got)
	}
	c.element(msg("groupchat", true))
	if got, first, last := c.wait(time.Minute); got != 2 || last.Before(first) {
		t.Fatalf("counted %d (first %v, last %v), want 2", got, first, last)
	}
}
