package muc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/internal/fakeserver"
	"github.com/xmpptrack/xmpptrack/internal/hooktest"
	"github.com/xmpptrack/xmpptrack/muc"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// TestClientStats checks the client's tracker counts and its hook against
// what the room did to each message: reflected, refused, timed out, under
// way, then closed by Leave. A send that fails hands out no tracker and is
// not counted.
func TestClientStats(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	hook := &hooktest.Trackers{During: func() { h.c.Stats() }}
	h.c.AddHook(hook)
	r := h.join(t)

	reflected, m1 := h.send(t, r, "reflected")
	refused, m2 := h.send(t, r, "refused")
	timedOut, _ := h.send(t, r, "too late", muc.Timeout(50*time.Millisecond)) // never answered
	pending, _ := h.send(t, r, "pending")
	h.reflect(t, m1)
	h.write(t, "%s", errorMessage(testRoom, h.conn.JID.String(), m2.id, "forbidden", ""))
	h.sync(t)
	for _, tr := range []*tracking.MessageTracker{reflected, refused, timedOut} {
		wait(t, tr)
	}
	st := h.c.Stats()
	var active, ended tracking.StateCounts
	active[tracking.InTransit] = 1
	ended[tracking.DeliveredToRecipient] = 1
	ended[tracking.Error] = 1
	ended[tracking.TimedOut] = 1
	if st.Started != 4 || st.Active != active || st.Ended != ended || st.Delivered != 1 {
		t.Fatalf("Stats %+v; want 4 started, active %v, ended %v, 1 delivered", st, active, ended)
	}
	if st.DeliveredP50 <= 0 || st.DeliveredP99 != st.DeliveredP50 {
		t.Fatalf("Stats: one delivery, yet p50 %v and p99 %v", st.DeliveredP50, st.DeliveredP99)
	}

	if err := r.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	wait(t, pending)
	if _, err := r.SendTrackedMessage(context.Background(), "after leaving"); !errors.Is(err, muc.ErrLeft) {
		t.Fatalf("send after Leave: %v", err)
	}
	st = h.c.Stats()
	ended[tracking.Closed] = 1
	if st.Started != 4 || st.Active != (tracking.StateCounts{}) || st.Ended != ended {
		t.Fatalf("after Leave: Stats %+v; want 4 started, none active, ended %v", st, ended)
	}
	delivered, hookEnded, _ := hook.Seen()
	if hookEnded != st.Ended || uint64(len(delivered)) != st.Delivered || delivered[0] != st.DeliveredP50 {
		t.Fatalf("the hook saw endings %v and deliveries %v; Stats %+v", hookEnded, delivered, st)
	}
}

// wait waits for the end of tr's tracking.
func wait(t *testing.T, tr *tracking.MessageTracker) {
	t.Helper()
	select {
	case <-tr.Done():
	case <-t.Context().Done():
	case <-time.After(fakeserver.Timeout):
		t.Fatalf("tracker still %v", tr.State())
	}
}
