package quantile

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestWindowKeepsTheLatest(t *testing.T) {
	var w Window
	if got := w.Percentiles(50, 99); got[0] != 0 || got[1] != 0 {
		t.Fatalf("empty window: %v, want zeros", got)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var all []time.Duration
	for i := 0; i < 3*Size+17; i++ {
		d := time.Duration(rng.IntN(1000)) * time.Millisecond
		w.Add(d)
		all = append(all, d)
		latest := slices.Clone(all[max(0, len(all)-Size):])
		slices.Sort(latest)
		got := w.Percentiles(0, 50, 99, 100)
		want := []time.Duration{latest[0], Percentile(latest, 50), Percentile(latest, 99), latest[len(latest)-1]}
		if !slices.Equal(got, want) {
			t.Fatalf("after %d samples: %v, want %v", i+1, got, want)
		}
		if w.Len() != len(latest) {
			t.Fatalf("Len %d, want %d", w.Len(), len(latest))
		}
	}
}

func TestPercentileNearestRank(t *testing.T) {
	s := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {10, 1}, {11, 2}, {50, 5}, {99, 10}, {100, 10}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("Percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
}
