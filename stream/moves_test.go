package stream

import (
	"slices"
	"sync"
	"testing"
)

// TestTokenMovesOneJob checks that the tokens moved together are told to
// their observers by one job of the callback goroutine, in the order they
// moved, each token's changes in order, and that a token whose delivery is
// already under way joins no job.
func TestTokenMovesOneJob(t *testing.T) {
	s := &Stream{}
	var (
		mu  sync.Mutex
		got []string
	)
	toks := make([]*StanzaToken, 4)
	for i := range toks {
		tok := newToken(string(rune('a' + i)))
		tok.Observe(func(c TokenChange) {
			mu.Lock()
			got = append(got, tok.id+" "+c.State.String())
			mu.Unlock()
		})
		toks[i] = tok
	}
	got = nil

	// Hold the callback goroutine back to see what is queued.
	started, release := make(chan struct{}), make(chan struct{})
	s.cb.push(job{fn: func() { close(started); <-release }}, s)
	<-started
	var moves tokenMoves
	for _, i := range []int{2, 0, 3} {
		if !moves.move(toks[i], TokenQueued, TokenSent, nil) {
			t.Fatalf("token %s did not move", toks[i].id)
		}
	}
	// Token 2 again: its delivery is queued already, the change joins it.
	if !moves.move(toks[2], TokenSent, TokenAcked, nil) {
		t.Fatal("token c did not move to ACKED")
	}
	// Not moved: nothing to tell.
	if moves.move(toks[1], TokenSent, TokenAcked, nil) {
		t.Fatal("token b moved from a state it is not in")
	}
	moves.push(s)
	s.cb.mu.Lock()
	jobs := len(s.cb.jobs)
	batch := jobs == 1 && s.cb.jobs[0].toks != nil
	s.cb.mu.Unlock()
	close(release)
	if !batch {
		t.Fatalf("%d jobs queued, want one holding the tokens", jobs)
	}
	done := make(chan struct{})
	s.cb.finish(done)
	<-done

	want := []string{"c SENT", "c ACKED", "a SENT", "d SENT"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("observers saw %v, want %v", got, want)
	}
	select {
	case <-toks[2].Done():
	default:
		t.Fatal("token c is not done after its observers saw ACKED")
	}
}
