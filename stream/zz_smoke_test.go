package stream_test

import (
	"context"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmpp/jid"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/stream"
)

func TestSmoke(t *testing.T) {
	srv := fakeserver.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	type res struct {
		s   *stream.Stream
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := stream.Dial(ctx, stream.Config{JID: jid.MustParse("user@example.test"), Password: "pw", AllowPlaintext: true, Mechanisms: []sasl.Mechanism{sasl.Plain}, Dial: srv.Dial})
		ch <- res{s, err}
	}()
	c := srv.Next(t)
	c.EnableSM(t, "S1")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Log(r.s.Stats(), c.JID)
}
