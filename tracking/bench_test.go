package tracking_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	. "github.com/xmpptrack/xmpptrack/tracking"
)

// BenchmarkTransition measures one transition delivered to one observer,
// while 1k, 10k or 100k trackers with a timeout are pending: the cost must
// not depend on how many there are.
func BenchmarkTransition(b *testing.B) {
	for _, pending := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			trackers := make([]*MessageTracker, pending)
			var n int
			observe := func(Change) { n++ }
			i := pending
			b.ReportAllocs()
			for b.Loop() {
				if i == pending {
					b.StopTimer()
					for j := range trackers {
						if trackers[j] != nil {
							trackers[j].Close()
						}
						trackers[j] = NewMessageTracker(WithTimeout(time.Hour))
						trackers[j].OnChange(observe)
					}
					i = 0
					b.StartTimer()
				}
				_ = trackers[i].Transition(DeliveredToServer, nil)
				i++
			}
			b.StopTimer()
			for _, t := range trackers {
				if t != nil {
					t.Close()
				}
			}
		})
	}
}

// BenchmarkLifecycle measures a whole tracker: created with a timeout and an
// observer, acknowledged, delivered and seen.
func BenchmarkLifecycle(b *testing.B) {
	observe := func(Change) {}
	b.ReportAllocs()
	for b.Loop() {
		tr := NewMessageTracker(WithTimeout(time.Minute))
		tr.OnChange(observe)
		_ = tr.Transition(DeliveredToServer, nil)
		_ = tr.Transition(DeliveredToRecipient, nil)
		_ = tr.Transition(SeenByRecipient, nil)
	}
}

// liveTrackers creates n trackers, each with a pending timeout, and returns
// them with the heap bytes they hold per tracker. Only the creation is timed
// when tb is a *testing.B.
func liveTrackers(tb testing.TB, n int) ([]*MessageTracker, float64) {
	b, _ := tb.(*testing.B)
	trackers := make([]*MessageTracker, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if b != nil {
		b.ResetTimer()
	}
	for i := range trackers {
		trackers[i] = NewMessageTracker(WithTimeout(time.Hour))
	}
	if b != nil {
		b.StopTimer()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	return trackers, float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

func closeAll(trackers []*MessageTracker) {
	for _, tr := range trackers {
		_ = tr.Close()
	}
}

// BenchmarkLiveTrackers creates b.N trackers with a timeout and keeps them
// all alive; it reports the heap each one holds.
func BenchmarkLiveTrackers(b *testing.B) {
	b.ReportAllocs()
	trackers, per := liveTrackers(b, b.N)
	b.ReportMetric(per, "B/tracker")
	closeAll(trackers)
}

func TestHeapPer100kTrackers(t *testing.T) {
	if testing.Short() {
		t.Skip("measures the heap")
	}
	trackers, per := liveTrackers(t, 100_000)
	defer closeAll(trackers)
	t.Logf("100,000 live trackers with a timeout: %.0f bytes/tracker, %d goroutines", per, runtime.NumGoroutine())
	if per > 1024 {
		t.Errorf("%.0f bytes per tracker, want < 1 KiB", per)
	}
}
