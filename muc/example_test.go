package muc_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/stream"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// This example joins a room and sends a tracked message, then waits until
// the room reflects it, refuses it, or the tracker gives up. It needs a
// server, so it is compiled but not run by go test.
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

	c := muc.NewClient(s,
		muc.WithTimeout(30*time.Second),
		muc.WithEvents(func(ev muc.Event) {
			// After the stream had to start a new session.
			log.Printf("%s: %v %v", ev.Room.Addr(), ev.Kind, ev.Err)
		}),
	)
	defer c.Close() // runs before s.Close: close the clients, then the stream

	room, err := c.Join(ctx, jid.MustParse("lobby@conference.example.net"), "alice")
	switch {
	case errors.Is(err, muc.ErrNickConflict):
		log.Fatal("someone else is alice in the lobby")
	case err != nil:
		log.Fatal(err)
	}

	tr, err := room.SendTrackedMessage(ctx, "Hello, room!")
	if err != nil {
		log.Fatal(err)
	}
	tr.OnChange(func(c tracking.Change) {
		log.Printf("message %s: %v -> %v", tr.ID(), c.From, c.To)
	})
	switch st, _ := tr.Wait(ctx, tracking.DeliveredToRecipient); st {
	case tracking.DeliveredToRecipient:
		fmt.Println("the room has distributed the message")
	case tracking.Error:
		fmt.Println("the room refused the message:", tr.Err())
	default:
		fmt.Println("no proof of delivery:", st)
	}
}

// This is the README's "Use" example, kept here so that it compiles. It
// needs a server, so it is compiled but not run by go test.
func Example_readme() {
	ctx := context.Background()
	password := "secret"
	err := func() error {
		s, err := stream.Dial(ctx, stream.Config{
			JID:      jid.MustParse("alice@example.net"),
			Password: password,
			TLS:      &tls.Config{},
			// No Addr: found from example.net's SRV records, as XMPP
			// clients do. Addr: "xmpp.example.net:5222" names it instead.
		})
		if err != nil {
			return err
		}
		defer s.Close(ctx)

		rooms := muc.NewClient(s)
		defer rooms.Close() // before the stream: defers run in reverse
		room, err := rooms.Join(ctx, jid.MustParse("team@conference.example.net"), "alice")
		if err != nil {
			return err
		}
		tr, err := room.SendTrackedMessage(ctx, "hello")
		if err != nil {
			return err
		}
		state, err := tr.Wait(ctx, tracking.DeliveredToRecipient)
		if err != nil {
			return err // ctx ended first
		}
		// DELIVERED_TO_RECIPIENT once the room reflected the message, or the
		// final state that says why not: ERROR, TIMED_OUT, CLOSED, ABORTED.
		fmt.Println(state)
		return nil
	}()
	if err != nil {
		log.Print(err)
	}
}
