package main

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
	"github.com/xmpptrack/xmpptrack/tracking"
)

// TestOutcomeJSON checks the hand-written JSON line against encoding/json.
func TestOutcomeJSON(t *testing.T) {
	for _, o := range []run.Outcome{
		{Index: 0, ID: "abc_-DEF", State: tracking.DeliveredToRecipient, Latency: 1234567 * time.Nanosecond},
		{Index: 41, ID: "x", State: tracking.Error, Latency: time.Second, Err: errors.New(`not-acceptable: "you" <are> not in é`)},
		{Index: 7, State: tracking.Aborted},
	} {
		l := outcomeLine{Index: o.Index, ID: o.ID, State: o.State.String(), LatencyMs: msec(o.Latency)}
		if o.Err != nil {
			l.Error = o.Err.Error()
		}
		want, _ := json.Marshal(l)
		var got, exp outcomeLine
		b := appendOutcomeJSON(nil, o)
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		json.Unmarshal(want, &exp)
		if got != exp || b[len(b)-1] != '\n' {
			t.Errorf("got %s, want %s", b, want)
		}
	}
}
