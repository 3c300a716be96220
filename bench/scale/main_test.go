package main

import (
	"testing"
	"time"
)

// TestDueAt checks the schedule: each stream sends once a period, the
// streams spread evenly over it, in order.
func TestDueAt(t *testing.T) {
	for _, tc := range []struct {
		k, n   int
		period time.Duration
		want   time.Duration
	}{
		{0, 10, time.Second, 0},
		{3, 10, time.Second, 300 * time.Millisecond},
		{10, 10, time.Second, time.Second},
		{1999, 1000, time.Second, time.Second + 999*time.Millisecond},
		{1000, 1000, 2500 * time.Millisecond, 2500 * time.Millisecond},
		{500, 1000, 2500 * time.Millisecond, 1250 * time.Millisecond},
	} {
		if got := dueAt(tc.k, tc.n, tc.period); got != tc.want {
			t.Errorf("dueAt(%d, %d, %v) = %v, want %v", tc.k, tc.n, tc.period, got, tc.want)
		}
	}
	var last time.Duration
	for k := range 3000 {
		d := dueAt(k, 1000, time.Second)
		if d < last {
			t.Fatalf("message %d due at %v, before message %d at %v", k, d, k-1, last)
		}
		last = d
	}
}

// TestParse checks the flags' defaults and the order of the levels.
func TestParse(t *testing.T) {
	o, err := parse([]string{"-streams", "100,10,100"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.levels) != 2 || o.levels[0] != 10 || o.levels[1] != 100 {
		t.Errorf("levels %v, want [10 100]", o.levels)
	}
	if o.work != 20*time.Second || o.maxRate != 100 || o.window != 5*time.Second {
		t.Errorf("defaults: work %v, max-rate %d, window %v", o.work, o.maxRate, o.window)
	}
	if _, err := parse([]string{"-streams", "0"}); err == nil {
		t.Error("-streams 0 accepted")
	}
}
