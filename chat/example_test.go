package chat_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/chat"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// Example sends a tracked message and waits until the recipient has it, on
// one side, and answers receipt requests and marks a message displayed on
// the other. It needs a server, so it is compiled but not run.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := stream.Dial(ctx, stream.Config{
		JID:      jid.MustParse("alice@example.net"),
		Password: "secret",
		TLS:      &tls.Config{},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	// The sending side.
	c := chat.NewClient(s, chat.WithTimeout(2*time.Minute))
	defer c.Close()
	t, err := c.SendTracked(ctx, jid.MustParse("bob@example.net"), "Hello, Bob")
	if err != nil {
		log.Fatal(err)
	}
	t.OnChange(func(ch tracking.Change) {
		log.Printf("message %s: %v", t.ID(), ch.To)
	})
	if st, err := t.Wait(ctx, tracking.DeliveredToRecipient); err != nil || st != tracking.DeliveredToRecipient {
		log.Printf("not delivered: %v %v (%v)", st, err, t.Err())
	}

	// The receiving side: answer receipt requests, and say when the user
	// has read a message.
	r := chat.NewResponder(s, chat.WithReceivedMarkers())
	defer r.Close()
	if err := r.MarkDisplayed(ctx, jid.MustParse("bob@example.net/phone"), "id-of-bobs-message"); err != nil {
		log.Print(err)
	}
}

// element reads a stanza as the stream hands it to its handlers.
func element(s string) *stream.Element {
	el, err := stream.ParseElement([]byte(s))
	if err != nil {
		panic(err)
	}
	return el
}

// The matching rules at work, without a server: receipts from anyone but
// the addressee change nothing, and a displayed marker covers every earlier
// message.
func ExampleMatcher() {
	m := chat.NewMatcher()
	bob := jid.MustParse("bob@example.net")
	var sent []*tracking.MessageTracker
	for _, id := range []string{"m1", "m2", "m3"} {
		t := tracking.NewMessageTracker(tracking.WithID(id))
		if err := m.Track(bob, id, t); err != nil {
			fmt.Println(err)
		}
		sent = append(sent, t)
	}
	show := func(what string) {
		fmt.Printf("%s:", what)
		for _, t := range sent {
			fmt.Printf(" %s=%v", t.ID(), t.State())
		}
		fmt.Println()
	}

	// Neither another account nor our own laptop is Bob.
	m.Handle(element(`<message from='mallory@example.org/x' to='alice@example.net/desk'>` +
		`<received xmlns='urn:xmpp:receipts' id='m1'/></message>`))
	m.Handle(element(`<message from='alice@example.net/laptop' to='alice@example.net/desk'>` +
		`<received xmlns='urn:xmpp:receipts' id='m1'/></message>`))
	show("forged")

	// We wrote to Bob's bare JID: any of his resources may answer. Clients
	// send receipts without a type.
	m.Handle(element(`<message from='bob@example.net/phone' to='alice@example.net/desk' id='r1'>` +
		`<received xmlns='urn:xmpp:receipts' id='m1'/></message>`))
	m.Handle(element(`<message from='bob@example.net/laptop' to='alice@example.net/desk' id='r2'>` +
		`<received xmlns='urn:xmpp:chat-markers:0' id='m3'/></message>`))
	show("receipts")

	// Bob read m2, and so everything before it.
	m.Handle(element(`<message from='bob@example.net/phone' to='alice@example.net/desk' id='r3'>` +
		`<displayed xmlns='urn:xmpp:chat-markers:0' id='m2'/></message>`))
	show("displayed")
	messages, peers := m.Pending()
	fmt.Printf("remembered: %d message(s), %d peer(s)\n", messages, peers)

	// Output:
	// forged: m1=IN_TRANSIT m2=IN_TRANSIT m3=IN_TRANSIT
	// receipts: m1=DELIVERED_TO_RECIPIENT m2=IN_TRANSIT m3=DELIVERED_TO_RECIPIENT
	// displayed: m1=SEEN_BY_RECIPIENT m2=SEEN_BY_RECIPIENT m3=DELIVERED_TO_RECIPIENT
	// remembered: 1 message(s), 1 peer(s)
}
