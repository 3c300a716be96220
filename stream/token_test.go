package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var allStates = []TokenState{
	TokenQueued, TokenSent, TokenAcked, TokenSentWithoutSM,
	TokenAborted, TokenDropped, TokenDisconnected, TokenFailed,
}

// allowed is the token's state machine as the package documentation draws
// it, written out independently of tokenNext.
var allowed = map[[2]TokenState]bool{
	{TokenQueued, TokenSent}:        true,
	{TokenQueued, TokenAborted}:     true,
	{TokenQueued, TokenDropped}:     true,
	{TokenQueued, TokenFailed}:      true,
	{TokenSent, TokenAcked}:         true,
	{TokenSent, TokenDisconnected}:  true,
	{TokenSent, TokenSentWithoutSM}: true,
}

// tokenIn returns a token already in state s.
func tokenIn(s TokenState) *StanzaToken {
	t := newToken("id-" + s.String())
	t.state = s
	t.settled = s.IsFinal()
	return t
}

func TestTokenTransitions(t *testing.T) {
	errX := errors.New("x")
	for _, from := range allStates {
		for _, to := range allStates {
			name := fmt.Sprintf("%v→%v", from, to)
			want := allowed[[2]TokenState{from, to}]
			tok := tokenIn(from)
			var seen []TokenChange
			tok.Observe(func(c TokenChange) { seen = append(seen, c) })
			got := tok.move(from, to, errX)
			if got != want {
				t.Errorf("%s: move = %v, want %v", name, got, want)
			}
			wantState, wantSeen := from, 1
			if want {
				wantState, wantSeen = to, 2
			}
			if s := tok.State(); s != wantState {
				t.Errorf("%s: state afterwards %v, want %v", name, s, wantState)
			}
			if len(seen) != wantSeen {
				t.Errorf("%s: observer saw %v, want %d changes", name, seen, wantSeen)
			}
			if want && tok.Err() != errX {
				t.Errorf("%s: Err() = %v, want the error given to move", name, tok.Err())
			}
			// A move from a state the token is not in never happens.
			for _, other := range allStates {
				if other == wantState {
					continue
				}
				if tok.move(other, to, nil) {
					t.Errorf("%s: move(%v, %v) succeeded on a token in %v", name, other, to, wantState)
				}
			}
			if s := tok.State(); s != wantState {
				t.Errorf("%s: state changed to %v by a move from another state", name, s)
			}
		}
	}
}

func TestTokenStateNames(t *testing.T) {
	want := map[TokenState]string{
		TokenQueued: "QUEUED", TokenSent: "SENT", TokenAcked: "ACKED",
		TokenSentWithoutSM: "SENT_WITHOUT_SM", TokenAborted: "ABORTED",
		TokenDropped: "DROPPED", TokenDisconnected: "DISCONNECTED", TokenFailed: "FAILED",
	}
	for _, s := range allStates {
		if s.String() != want[s] {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want[s])
		}
		final := s != TokenQueued && s != TokenSent
		if s.IsFinal() != final {
			t.Errorf("%v.IsFinal() = %v, want %v", s, s.IsFinal(), final)
		}
		if final && len(tokenNext) > int(s) && len(tokenNext[s]) > 0 {
			t.Errorf("final state %v has successors %v", s, tokenNext[s])
		}
	}
	if s := TokenState(200).String(); s != "TokenState(200)" {
		t.Errorf("unknown state String() = %q", s)
	}
}

// TestTokenObserveOrder moves tokens from several goroutines at once while
// observers subscribe. Every observer must see the state at the time it
// subscribed and then each later change, once, in order, never two calls
// at the same time (the race detector checks the unguarded slices).
func TestTokenObserveOrder(t *testing.T) {
	for iter := 0; iter < 300; iter++ {
		tok := newToken(fmt.Sprint(iter))
		const observers = 4
		seen := make([][]TokenState, observers)
		final := make(chan int, observers)
		var start sync.WaitGroup
		start.Add(1)
		var wg sync.WaitGroup
		for i := 0; i < observers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				tok.Observe(func(c TokenChange) {
					_ = tok.State() // observers run without the token's lock held
					seen[i] = append(seen[i], c.State)
					if c.State.IsFinal() {
						final <- i
					}
				})
			}()
		}
		// Racing movers: exactly one path through the machine wins.
		movers := []func(){
			func() { tok.move(TokenQueued, TokenSent, nil) },
			func() { tok.move(TokenQueued, TokenAborted, nil) },
			func() {
				for !tok.move(TokenSent, TokenAcked, nil) && !tok.State().IsFinal() {
				}
			},
			func() {
				for !tok.move(TokenSent, TokenDisconnected, ErrConnectionLost) && !tok.State().IsFinal() {
				}
			},
		}
		for _, m := range movers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				m()
			}()
		}
		start.Done()
		wg.Wait()
		end := tok.State()
		if !end.IsFinal() {
			t.Fatalf("iteration %d: token ended in %v", iter, end)
		}
		for n := 0; n < observers; n++ {
			select {
			case <-final:
			case <-time.After(2 * time.Second):
				t.Fatalf("iteration %d: an observer never saw the final state", iter)
			}
		}
		for i, s := range seen {
			if s[len(s)-1] != end {
				t.Fatalf("iteration %d: observer %d saw %v, ending in %v; want the final %v", iter, i, s, s[len(s)-1], end)
			}
			for k := 1; k < len(s); k++ {
				if !allowed[[2]TokenState{s[k-1], s[k]}] {
					t.Fatalf("iteration %d: observer %d saw %v: %v→%v is not a transition", iter, i, s, s[k-1], s[k])
				}
			}
		}
		// A late observer sees only the final state.
		var late []TokenState
		tok.Observe(func(c TokenChange) { late = append(late, c.State) })
		if len(late) != 1 || late[0] != end {
			t.Fatalf("iteration %d: late observer saw %v, want [%v]", iter, late, end)
		}
	}
}

// TestTokenObserverMoves checks that an observer may move the token itself:
// the change is delivered after the current one, not inside it.
func TestTokenObserverMoves(t *testing.T) {
	tok := newToken("x")
	var seen []TokenState
	depth := 0
	tok.Observe(func(c TokenChange) {
		depth++
		defer func() { depth-- }()
		if depth > 1 {
			t.Errorf("observer called recursively at %v", c.State)
		}
		seen = append(seen, c.State)
		if c.State == TokenSent {
			tok.move(TokenSent, TokenAcked, nil)
		}
	})
	tok.move(TokenQueued, TokenSent, nil)
	want := []TokenState{TokenQueued, TokenSent, TokenAcked}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("observer saw %v, want %v", seen, want)
	}
}

func TestTokenWait(t *testing.T) {
	tok := newToken("x")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	s, err := tok.Wait(ctx)
	if s != TokenQueued || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with an expiring ctx = %v, %v; want QUEUED, DeadlineExceeded", s, err)
	}
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if s, err := tok.Wait(cancelled); s != TokenQueued || !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled ctx = %v, %v", s, err)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		s, err := tok.Wait(context.Background())
		if s != TokenDisconnected || !errors.Is(err, ErrConnectionLost) {
			t.Errorf("Wait = %v, %v; want DISCONNECTED, ErrConnectionLost", s, err)
		}
	}()
	time.Sleep(5 * time.Millisecond)
	tok.move(TokenQueued, TokenSent, nil)
	select {
	case <-done:
		t.Fatal("Wait returned at the non-final state SENT")
	case <-time.After(10 * time.Millisecond):
	}
	tok.move(TokenSent, TokenDisconnected, fmt.Errorf("gone: %w", ErrConnectionLost))
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Wait did not return at the final state")
	}
	// A final token answers at once, even with a cancelled ctx.
	if s, _ := tok.Wait(cancelled); s != TokenDisconnected {
		t.Fatalf("Wait on a final token = %v", s)
	}
}

func TestTokenDone(t *testing.T) {
	tok := newToken("x")
	d := tok.Done()
	if d != tok.Done() {
		t.Fatal("Done returns a different channel each time")
	}
	select {
	case <-d:
		t.Fatal("Done closed for a queued token")
	default:
	}
	tok.move(TokenQueued, TokenSent, nil)
	select {
	case <-d:
		t.Fatal("Done closed for a sent token")
	default:
	}
	tok.move(TokenSent, TokenAcked, nil)
	select {
	case <-d:
	default:
		t.Fatal("Done not closed at ACKED")
	}
	// Asked for the first time after the final state.
	late := tokenIn(TokenDropped)
	select {
	case <-late.Done():
	default:
		t.Fatal("Done of a token already final is not closed")
	}
}

func TestTokenAbort(t *testing.T) {
	tok := newToken("x")
	if err := tok.Abort(); err != nil {
		t.Fatalf("Abort of a queued token: %v", err)
	}
	if s := tok.State(); s != TokenAborted {
		t.Fatalf("state after Abort = %v", s)
	}
	if err := tok.Abort(); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("second Abort: %v, want ErrNotQueued", err)
	}

	for _, s := range allStates[1:] {
		if err := tokenIn(s).Abort(); !errors.Is(err, ErrNotQueued) {
			t.Errorf("Abort in %v: %v, want ErrNotQueued", s, err)
		}
	}
}

// TestTokenDoneAfterObservers: Done closes (and Wait returns) only once every
// observer has been told of the final change.
func TestTokenDoneAfterObservers(t *testing.T) {
	tok := newToken("x")
	var seen atomic.Int32
	tok.Observe(func(c TokenChange) {
		if c.State.IsFinal() {
			time.Sleep(20 * time.Millisecond)
			seen.Add(1)
		}
	})
	go tok.move(TokenQueued, TokenAborted, nil)
	if st, err := tok.Wait(context.Background()); st != TokenAborted || err != nil {
		t.Fatalf("Wait = %v, %v", st, err)
	}
	if seen.Load() != 1 {
		t.Fatal("Wait returned before the observer saw the final change")
	}
}
