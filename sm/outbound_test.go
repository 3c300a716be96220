package sm

import (
	"errors"
	"slices"
	"testing"
)

// sendN records items first, first+1, … first+n-1 as sent.
func sendN(o *Outbound[int], first, n int) {
	for i := 0; i < n; i++ {
		o.Sent(first + i)
	}
}

// ack applies h and returns the acknowledged items in the order f saw them.
func ack(t *testing.T, o *Outbound[int], h uint32) ([]int, error) {
	t.Helper()
	var got []int
	n, err := o.Ack(h, func(v int) { got = append(got, v) })
	if n != len(got) {
		t.Fatalf("Ack(%d) returned %d but called f %d times", h, n, len(got))
	}
	return got, err
}

func unacked(o *Outbound[int]) []int {
	var got []int
	o.Unacked(func(v int) { got = append(got, v) })
	return got
}

func seq(first, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = first + i
	}
	return s
}

func checkCounts(t *testing.T, o *Outbound[int], sent, acked uint32, n int) {
	t.Helper()
	if got := o.SentCount(); got != sent {
		t.Errorf("SentCount() = %d, want %d", got, sent)
	}
	if got := o.AckedCount(); got != acked {
		t.Errorf("AckedCount() = %d, want %d", got, acked)
	}
	if got := o.Len(); got != n {
		t.Errorf("Len() = %d, want %d", got, n)
	}
}

func TestOutboundZero(t *testing.T) {
	var o Outbound[int]
	checkCounts(t, &o, 0, 0, 0)
	got, err := ack(t, &o, 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("Ack(0) on an empty session = %v, %v; want nothing, nil", got, err)
	}
	got, err = ack(t, &o, 1)
	if !errors.Is(err, ErrHandledCountTooHigh) {
		t.Fatalf("Ack(1) on an empty session: err = %v, want ErrHandledCountTooHigh", err)
	}
	if len(got) != 0 {
		t.Fatalf("Ack(1) on an empty session acknowledged %v", got)
	}
}

func TestOutboundAck(t *testing.T) {
	// Each step acknowledges h after the previous steps on a session that
	// sent items 1…10.
	steps := []struct {
		h       uint32
		want    []int // acknowledged by this step
		err     error
		acked   uint32 // AckedCount afterwards
		unacked []int
	}{
		{h: 0, want: nil, acked: 0, unacked: seq(1, 10)},
		{h: 3, want: seq(1, 3), acked: 3, unacked: seq(4, 7)},
		{h: 3, want: nil, acked: 3, unacked: seq(4, 7)}, // same h: no-op
		// behind the latest ack: more than the queue covers (mod 2^32)
		{h: 2, want: nil, err: ErrHandledCountTooHigh, acked: 3, unacked: seq(4, 7)},
		{h: 11, want: nil, err: ErrHandledCountTooHigh, acked: 3, unacked: seq(4, 7)},
		{h: 4, want: []int{4}, acked: 4, unacked: seq(5, 6)},
		{h: 10, want: seq(5, 6), acked: 10, unacked: nil},
		{h: 5, want: nil, err: ErrHandledCountTooHigh, acked: 10, unacked: nil},
		{h: 10, want: nil, acked: 10, unacked: nil},
		{h: 11, want: nil, err: ErrHandledCountTooHigh, acked: 10, unacked: nil},
	}
	var o Outbound[int]
	sendN(&o, 1, 10)
	checkCounts(t, &o, 10, 0, 10)
	for i, st := range steps {
		got, err := ack(t, &o, st.h)
		if !errors.Is(err, st.err) || (st.err == nil && err != nil) {
			t.Fatalf("step %d: Ack(%d) error = %v, want %v", i, st.h, err, st.err)
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("step %d: Ack(%d) acknowledged %v, want %v", i, st.h, got, st.want)
		}
		checkCounts(t, &o, 10, st.acked, len(st.unacked))
		if u := unacked(&o); !slices.Equal(u, st.unacked) {
			t.Fatalf("step %d: Unacked() = %v, want %v", i, u, st.unacked)
		}
	}
}

func TestOutboundAckTooHighChangesNothing(t *testing.T) {
	var o Outbound[int]
	sendN(&o, 1, 10)
	if _, err := ack(t, &o, 4); err != nil {
		t.Fatal(err)
	}
	// 3000000000 is "behind" 4 in serial-number arithmetic, yet no queue of
	// 6 stanzas can cover it; 3 is behind the latest ack.
	for _, h := range []uint32{11, 12, 100, 1 << 31, 3000000000, 3, 0} {
		got, err := ack(t, &o, h)
		if !errors.Is(err, ErrHandledCountTooHigh) {
			t.Errorf("Ack(%d) after 10 sent, 4 acked: err = %v, want ErrHandledCountTooHigh", h, err)
		}
		if len(got) != 0 {
			t.Errorf("Ack(%d) acknowledged %v despite the error", h, got)
		}
		checkCounts(t, &o, 10, 4, 6)
		if u := unacked(&o); !slices.Equal(u, seq(5, 6)) {
			t.Errorf("after Ack(%d): Unacked() = %v, want %v", h, u, seq(5, 6))
		}
	}
	// The session still works afterwards.
	got, err := ack(t, &o, 10)
	if err != nil || !slices.Equal(got, seq(5, 6)) {
		t.Fatalf("Ack(10) after refused acks = %v, %v; want %v, nil", got, err, seq(5, 6))
	}
}

func TestOutboundNilFunc(t *testing.T) {
	var o Outbound[int]
	sendN(&o, 1, 5)
	if n, err := o.Ack(2, nil); n != 2 || err != nil {
		t.Fatalf("Ack(2, nil) = %d, %v; want 2, nil", n, err)
	}
	o.Reset(nil)
	checkCounts(t, &o, 0, 0, 0)
}

func TestOutboundWrap(t *testing.T) {
	const start = 4294967290 // six below 2^32
	var o Outbound[int]
	o.SetCounts(start)
	checkCounts(t, &o, start, start, 0)
	sendN(&o, 1, 20)
	checkCounts(t, &o, start+20-(1<<32), start, 20) // 14

	steps := []struct {
		h    uint32
		want []int
	}{
		{h: 4294967295, want: seq(1, 5)}, // the last count before the wrap
		{h: 4, want: seq(6, 5)},          // across the wrap
		{h: 4, want: nil},                // the same h again
		{h: 14, want: seq(11, 10)},       // start+20 mod 2^32
	}
	for _, st := range steps {
		got, err := ack(t, &o, st.h)
		if err != nil {
			t.Fatalf("Ack(%d): %v", st.h, err)
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("Ack(%d) acknowledged %v, want %v", st.h, got, st.want)
		}
	}
	checkCounts(t, &o, 14, 14, 0)
	for _, h := range []uint32{15, 4294967295, 4294967290} {
		if _, err := ack(t, &o, h); !errors.Is(err, ErrHandledCountTooHigh) {
			t.Fatalf("Ack(%d) after the wrap: err = %v, want ErrHandledCountTooHigh", h, err)
		}
	}
}

func TestOutboundSetCountsWithUnacked(t *testing.T) {
	var o Outbound[int]
	sendN(&o, 1, 3)
	o.SetCounts(4294967295)
	checkCounts(t, &o, 4294967295, 4294967292, 3)
	got, err := ack(t, &o, 4294967295)
	if err != nil || !slices.Equal(got, seq(1, 3)) {
		t.Fatalf("Ack = %v, %v; want %v, nil", got, err, seq(1, 3))
	}
}

func TestOutboundReset(t *testing.T) {
	var o Outbound[int]
	sendN(&o, 1, 10)
	if _, err := ack(t, &o, 4); err != nil {
		t.Fatal(err)
	}
	var got []int
	o.Reset(func(v int) { got = append(got, v) })
	if want := seq(5, 6); !slices.Equal(got, want) {
		t.Fatalf("Reset handed back %v, want %v", got, want)
	}
	checkCounts(t, &o, 0, 0, 0)
	if u := unacked(&o); len(u) != 0 {
		t.Fatalf("Unacked() after Reset = %v", u)
	}
	// A new session counts from zero.
	sendN(&o, 100, 2)
	got, err := ack(t, &o, 2)
	if err != nil || !slices.Equal(got, []int{100, 101}) {
		t.Fatalf("Ack(2) after Reset = %v, %v", got, err)
	}
}

func TestOutboundUnackedDoesNotConsume(t *testing.T) {
	var o Outbound[int]
	sendN(&o, 1, 5)
	for i := 0; i < 2; i++ {
		if u := unacked(&o); !slices.Equal(u, seq(1, 5)) {
			t.Fatalf("Unacked() call %d = %v, want %v", i, u, seq(1, 5))
		}
	}
	checkCounts(t, &o, 5, 0, 5)
}

// TestOutboundRing pushes and acknowledges 100,000 items in patterns that
// wrap the circular buffer at every size it grows to.
func TestOutboundRing(t *testing.T) {
	const total = 100000
	var o Outbound[int]
	next, want := 0, 0
	check := func(got int) {
		if got != want {
			t.Fatalf("acknowledged item %d, want %d", got, want)
		}
		want++
	}
	// Grow to hold everything, acknowledge half, then keep the ring half full
	// while pushing the rest so that head and tail wrap around.
	for ; next < total/2; next++ {
		o.Sent(next)
	}
	if _, err := o.Ack(uint32(total/4), check); err != nil {
		t.Fatal(err)
	}
	for ; next < total; next++ {
		o.Sent(next)
		if next%3 == 0 {
			if _, err := o.Ack(o.AckedCount()+2, check); err != nil {
				t.Fatal(err)
			}
		}
	}
	i := want
	o.Unacked(func(v int) {
		if v != i {
			t.Fatalf("Unacked: item %d at position %d", v, i)
		}
		i++
	})
	if i != total {
		t.Fatalf("Unacked stopped at %d, want %d", i, total)
	}
	if _, err := o.Ack(total, check); err != nil {
		t.Fatal(err)
	}
	if want != total {
		t.Fatalf("acknowledged %d items, want %d", want, total)
	}
	checkCounts(t, &o, total, total, 0)
	if len(o.q.buf) != 0 {
		t.Errorf("a drained queue keeps a buffer of %d slots, want it released", len(o.q.buf))
	}
	// Small queues keep their buffer.
	sendN(&o, 0, 10)
	if _, err := o.Ack(total+10, nil); err != nil {
		t.Fatal(err)
	}
	if len(o.q.buf) != 16 {
		t.Errorf("a small drained queue has %d slots, want 16 kept", len(o.q.buf))
	}
}

// TestOutboundRingClearsSlots checks that acknowledged items are not kept
// alive by the buffer.
func TestOutboundRingClearsSlots(t *testing.T) {
	var o Outbound[*int]
	for i := 0; i < 20; i++ {
		v := i
		o.Sent(&v)
	}
	if _, err := o.Ack(15, nil); err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, p := range o.q.buf {
		if p != nil {
			live++
		}
	}
	if live != 5 {
		t.Fatalf("buffer holds %d items, want the 5 unacknowledged", live)
	}
}

func TestOutboundOldest(t *testing.T) {
	var o Outbound[int]
	if _, ok := o.Oldest(); ok {
		t.Fatal("Oldest on an empty queue reports an item")
	}
	for i := 1; i <= 40; i++ { // past the ring's first growth
		o.Sent(i)
	}
	for h := uint32(0); h < 40; h++ {
		if _, err := o.Ack(h, nil); err != nil {
			t.Fatal(err)
		}
		if v, ok := o.Oldest(); !ok || v != int(h)+1 {
			t.Fatalf("after h=%d: Oldest = %d, %v; want %d", h, v, ok, h+1)
		}
	}
	o.Ack(40, nil)
	if _, ok := o.Oldest(); ok {
		t.Fatal("Oldest after everything was acknowledged reports an item")
	}
}

func TestOutboundRestore(t *testing.T) {
	var o Outbound[int]
	o.Restore(4294967294, seq(1, 3)) // across the wrap
	checkCounts(t, &o, 1, 4294967294, 3)
	if got, err := ack(t, &o, 0); err != nil || !slices.Equal(got, seq(1, 2)) {
		t.Fatalf("Ack(0) after Restore = %v, %v; want %v", got, err, seq(1, 2))
	}
	if _, err := ack(t, &o, 2); !errors.Is(err, ErrHandledCountTooHigh) {
		t.Fatalf("Ack(2) beyond the restored stanzas: %v, want ErrHandledCountTooHigh", err)
	}
	if u := unacked(&o); !slices.Equal(u, []int{3}) {
		t.Fatalf("Unacked() = %v, want [3]", u)
	}
}
