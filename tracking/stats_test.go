package tracking_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/internal/hooktest"
	"github.com/xmpptrack/xmpptrack/internal/quantile"
	"github.com/xmpptrack/xmpptrack/tracking"
)

func mustMove(t *testing.T, tr *tracking.MessageTracker, states ...tracking.MessageState) {
	t.Helper()
	for _, s := range states {
		if err := tr.Transition(s, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRecorder drives trackers through every kind of ending and checks the
// recorder's counts, percentiles and hook calls against them.
func TestRecorder(t *testing.T) {
	var r tracking.Recorder
	hook := &hooktest.Trackers{During: func() { r.Stats() }}
	r.AddHook(hook)
	now := time.Now()
	track := func(sent time.Time) *tracking.MessageTracker {
		tr := tracking.NewMessageTracker()
		r.Track(tr, sent)
		return tr
	}

	// Delivered, then tracking ends there (a room's reflection).
	reflected := track(now.Add(-time.Hour))
	mustMove(t, reflected, tracking.DeliveredToServer, tracking.DeliveredToRecipient)
	reflected.Close()
	// Seen straight away: delivered and ended at once.
	seen := track(now)
	mustMove(t, seen, tracking.SeenByRecipient)
	// Delivered, then seen: delivered once.
	later := track(now)
	mustMove(t, later, tracking.DeliveredToRecipient, tracking.SeenByRecipient)
	// Final states short of the recipient.
	mustMove(t, track(now), tracking.DeliveredToServer, tracking.Error)
	mustMove(t, track(now), tracking.Aborted)
	closed := track(now)
	closed.Close()
	timedOut := tracking.NewMessageTracker(tracking.WithTimeout(time.Nanosecond))
	<-timedOut.Done()
	r.Track(timedOut, now) // changed before Track: counted all the same
	// Still under way.
	mustMove(t, track(now), tracking.DeliveredToServer)
	track(now)
	waiting := track(now)
	mustMove(t, waiting, tracking.DeliveredToRecipient)

	// A removed hook hears nothing more.
	var removed hooktest.Trackers
	remove := r.AddHook(&removed)
	remove()
	remove()
	mustMove(t, waiting, tracking.SeenByRecipient)
	if _, _, calls := removed.Seen(); calls != 0 {
		t.Fatalf("a removed hook was called %d times", calls)
	}

	st := r.Stats()
	var wantActive, wantEnded tracking.StateCounts
	wantActive[tracking.InTransit] = 1
	wantActive[tracking.DeliveredToServer] = 1
	wantEnded[tracking.DeliveredToRecipient] = 1
	wantEnded[tracking.SeenByRecipient] = 3
	wantEnded[tracking.Error] = 1
	wantEnded[tracking.Aborted] = 1
	wantEnded[tracking.Closed] = 1
	wantEnded[tracking.TimedOut] = 1
	if st.Started != 10 || st.Active != wantActive || st.Ended != wantEnded || st.Delivered != 4 {
		t.Fatalf("Stats %+v;\nwant Started 10, Active %v, Ended %v, Delivered 4", st, wantActive, wantEnded)
	}

	delivered, ended, _ := hook.Seen()
	if ended != st.Ended || uint64(len(delivered)) != st.Delivered {
		t.Fatalf("the hook saw endings %v and %d deliveries; Stats says %v and %d", ended, len(delivered), st.Ended, st.Delivered)
	}
	// The reflected message was sent an hour ago: its latency says so.
	if slices.Max(delivered) < time.Hour {
		t.Fatalf("latencies %v: none from the hour-old send", delivered)
	}
	sorted := slices.Sorted(slices.Values(delivered))
	if p50, p99 := quantile.Percentile(sorted, 50), quantile.Percentile(sorted, 99); st.DeliveredP50 != p50 || st.DeliveredP99 != p99 {
		t.Fatalf("Stats p50, p99 = %v, %v; want %v, %v from %v", st.DeliveredP50, st.DeliveredP99, p50, p99, sorted)
	}
}

// TestRecorderConcurrent tracks messages from many goroutines at once, each
// driven to an end from several goroutines: in the end every count adds up.
func TestRecorderConcurrent(t *testing.T) {
	var r tracking.Recorder
	const senders, each = 8, 200
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				tr := tracking.NewMessageTracker()
				r.Track(tr, time.Now())
				var drivers sync.WaitGroup
				drivers.Go(func() { tr.Transition(tracking.DeliveredToServer, nil) })
				drivers.Go(func() {
					if (g+i)%2 == 0 {
						tr.Transition(tracking.DeliveredToRecipient, nil)
					}
					tr.Close()
				})
				r.Stats()
				drivers.Wait()
			}
		})
	}
	wg.Wait()
	st := r.Stats()
	var ended uint64
	for _, n := range st.Ended {
		ended += n
	}
	if st.Started != senders*each || ended != st.Started || st.Active != (tracking.StateCounts{}) {
		t.Fatalf("Stats %+v: want %d started, all ended", st, senders*each)
	}
	if st.Ended[tracking.DeliveredToRecipient] != st.Delivered || st.Delivered != senders*each/2 {
		t.Fatalf("Stats %+v: want %d delivered, ended there", st, senders*each/2)
	}
}
