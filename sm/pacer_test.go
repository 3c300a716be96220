package sm

import (
	"testing"
	"time"
)

var testPace = PacerConfig{
	RequestEvery: 100,
	RequestDelay: 5 * time.Millisecond,
	MaxUnacked:   1000,
	AnswerDelay:  5 * time.Millisecond,
	MinDead:      3 * time.Second,
	MaxDead:      30 * time.Second,
	Idle:         20 * time.Second,
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const ms = time.Millisecond

func TestPacerRequestsOncePerBurst(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.Wrote(t0, 3)
	if a := p.Next(t0, 3, false); a.Request || a.Wake != at(5*ms) {
		t.Fatalf("right after a write: %+v; want no request, wake at +5ms", a)
	}
	p.Wrote(at(2*ms), 2)
	if a := p.Next(at(2*ms), 5, false); a.Request || a.Wake != at(7*ms) {
		t.Fatalf("still writing: %+v; want no request, wake at +7ms", a)
	}
	if a := p.Next(at(7*ms), 5, false); !a.Request {
		t.Fatalf("idle for RequestDelay after the burst: %+v; want a request", a)
	}
	if a := p.Next(at(8*ms), 5, false); a.Request {
		t.Fatalf("nothing new written: %+v; want no second request", a)
	}
	// New stanzas while the request is outstanding wait for its answer.
	p.Wrote(at(9*ms), 1)
	if a := p.Next(at(20*ms), 6, false); a.Request {
		t.Fatalf("a request is outstanding: %+v; want none", a)
	}
	p.Acked(at(21*ms), false)
	if a := p.Next(at(21*ms), 1, false); !a.Request {
		t.Fatalf("answered, a stanza unacked and idle: %+v; want a request", a)
	}
}

func TestPacerRequestEveryAndHalfFull(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.Wrote(t0, 10)
	p.Next(at(10*ms), 10, false) // first request
	p.Wrote(at(11*ms), 99)
	if a := p.Next(at(11*ms), 109, false); a.Request {
		t.Fatalf("99 since the last request: %+v", a)
	}
	p.Wrote(at(12*ms), 1)
	if a := p.Next(at(12*ms), 110, false); !a.Request {
		t.Fatalf("RequestEvery reached with one outstanding: %+v; want a request", a)
	}

	q := NewPacer(testPace, t0, ms)
	q.Wrote(t0, 500)
	if a := q.Next(t0, 500, false); !a.Request {
		t.Fatalf("half of MaxUnacked used: %+v; want a request at once", a)
	}
}

func TestPacerAnswers(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.ServerRequested(t0)
	if a := p.Next(t0, 0, false); a.Answer || a.Wake != at(5*ms) {
		t.Fatalf("just asked: %+v; want the answer held until +5ms", a)
	}
	if a := p.Next(at(5*ms), 0, false); !a.Answer {
		t.Fatalf("AnswerDelay passed: %+v; want an answer", a)
	}
	if a := p.Next(at(6*ms), 0, false); a.Answer {
		t.Fatalf("answered already: %+v", a)
	}
	p.ServerRequested(at(7 * ms))
	p.Wrote(at(8*ms), 1)
	if a := p.Next(at(8*ms), 1, false); !a.Answer {
		t.Fatalf("stanzas written: %+v; want the answer to travel with them", a)
	}
	p.ServerRequested(at(9 * ms))
	if a := p.Next(at(9*ms), 1, true); !a.Answer {
		t.Fatalf("flush: %+v; want an answer at once", a)
	}
}

func TestPacerDeadOnFastLink(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.Wrote(t0, 1)
	if a := p.Next(at(5*ms), 1, false); !a.Request {
		t.Fatal("no request")
	}
	if got := p.DeadAfter(); got != testPace.MinDead {
		t.Fatalf("DeadAfter on a 1ms link = %v, want the floor %v", got, testPace.MinDead)
	}
	if a := p.Next(at(5*ms+3*time.Second-ms), 1, false); a.Dead || a.Wake != at(5*ms+3*time.Second) {
		t.Fatalf("just before the floor: %+v; want alive, wake at the floor", a)
	}
	if a := p.Next(at(5*ms+3*time.Second), 1, false); !a.Dead {
		t.Fatalf("request unanswered for the floor, nothing read: %+v; want dead", a)
	}
}

func TestPacerSlowLinkIsAlive(t *testing.T) {
	// A 5 s round trip (2.5 s each way), measured during negotiation.
	p := NewPacer(testPace, t0, 5*time.Second)
	now := t0
	for i := 0; i < 20; i++ {
		p.Wrote(now, 10)
		now = now.Add(5 * ms)
		if a := p.Next(now, 10, false); !a.Request || a.Dead {
			t.Fatalf("round %d: %+v; want a request", i, a)
		}
		// The answer takes 5 s, give or take 1 s; nothing else arrives.
		rtt := 5*time.Second + time.Duration(i%3-1)*time.Second
		if a := p.Next(now.Add(rtt-ms), 10, false); a.Dead {
			t.Fatalf("round %d: dead after %v with DeadAfter %v", i, rtt, p.DeadAfter())
		}
		now = now.Add(rtt)
		p.Acked(now, true)
	}
	srtt, _ := p.RTT()
	if srtt < 4*time.Second || srtt > 6*time.Second {
		t.Fatalf("smoothed RTT = %v, want about 5s", srtt)
	}
	if d := p.DeadAfter(); d <= 6*time.Second || d > testPace.MaxDead {
		t.Fatalf("DeadAfter = %v after 5s round trips, want above 6s and at most %v", d, testPace.MaxDead)
	}
}

func TestPacerAdaptsToSlowerLink(t *testing.T) {
	// The link slows by 1 s of round trip at a time: each step fits in the
	// timeout the previous ones taught.
	p := NewPacer(testPace, t0, ms)
	now := t0
	for rtt := time.Second; rtt <= 8*time.Second; rtt += time.Second {
		for i := 0; i < 5; i++ {
			p.Wrote(now, 1)
			now = now.Add(5 * ms)
			if a := p.Next(now, 1, false); !a.Request {
				t.Fatalf("rtt %v: no request", rtt)
			}
			if a := p.Next(now.Add(rtt-ms), 1, false); a.Dead {
				t.Fatalf("declared dead at a %v round trip (DeadAfter %v)", rtt, p.DeadAfter())
			}
			now = now.Add(rtt)
			p.Acked(now, true)
		}
	}
}

func TestPacerBusyServerIsNotDead(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.Wrote(t0, 1000)
	p.Next(t0, 1000, false) // request
	// The server keeps sending (reflections) but is slow to ack.
	for s := time.Second; s < 20*time.Second; s += time.Second {
		p.Read(at(s))
		if a := p.Next(at(s), 1000, false); a.Dead {
			t.Fatalf("dead at %v although the server keeps sending", s)
		}
	}
	if a := p.Next(at(21*time.Second), 1000, false); a.Dead {
		t.Fatalf("dead 2s after the last read, under the 3s floor")
	}
	// Whatever arrives, a request unanswered for MaxDead ends the link.
	for s := 21 * time.Second; s < 30*time.Second; s += time.Second {
		p.Read(at(s))
	}
	if a := p.Next(at(30*time.Second), 1000, false); !a.Dead {
		t.Fatalf("request unanswered for MaxDead: %+v; want dead", a)
	}
}

func TestPacerProbesIdleLink(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	if a := p.Next(t0, 0, false); a.Request || a.Wake != at(20*time.Second) {
		t.Fatalf("fresh: %+v; want a probe planned at +20s", a)
	}
	p.Read(at(10 * time.Second))
	if a := p.Next(at(20*time.Second), 0, false); a.Request {
		t.Fatalf("read 10s ago: %+v; want no probe yet", a)
	}
	if a := p.Next(at(30*time.Second), 0, false); !a.Request {
		t.Fatalf("nothing read for Idle: %+v; want a probe", a)
	}
	if a := p.Next(at(33*time.Second), 0, false); !a.Dead {
		t.Fatalf("probe unanswered for the floor: %+v; want dead", a)
	}
}

func TestPacerAckAnswersAllWhenNothingLeft(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.Wrote(t0, 100)
	p.Next(t0, 100, false) // request 1 (half of MaxUnacked? no: RequestEvery)
	p.Wrote(t0, 100)
	p.Next(t0, 200, false) // request 2
	p.Acked(at(10*ms), true)
	if a := p.Next(at(time.Minute), 0, false); a.Dead {
		t.Fatal("an ack that covered everything left a request outstanding")
	}
	if !p.Confirmed() {
		t.Fatal("Confirmed() = false after an <a/>")
	}
}

func TestPacerRequestNow(t *testing.T) {
	p := NewPacer(testPace, t0, ms)
	p.RequestNow()
	if a := p.Next(t0, 0, false); !a.Request {
		t.Fatalf("RequestNow with nothing unacked: %+v; want a request", a)
	}
	if p.Confirmed() {
		t.Fatal("Confirmed() before any <a/>")
	}
}

func TestPacerRTTEstimate(t *testing.T) {
	p := NewPacer(testPace, t0, 0)
	if s, v := p.RTT(); s != 0 || v != 0 {
		t.Fatalf("RTT before any sample = %v, %v", s, v)
	}
	if d := p.DeadAfter(); d != testPace.MaxDead {
		t.Fatalf("DeadAfter with no sample = %v, want MaxDead", d)
	}
	p.sample(100 * ms)
	if s, v := p.RTT(); s != 100*ms || v != 50*ms {
		t.Fatalf("after one sample: %v, %v; want 100ms, 50ms (RFC 6298)", s, v)
	}
	p.sample(200 * ms)
	// rttvar = 3/4·50 + 1/4·100 = 62.5ms; srtt = 7/8·100 + 1/8·200 = 112.5ms
	if s, v := p.RTT(); s != 112500*time.Microsecond || v != 62500*time.Microsecond {
		t.Fatalf("after two samples: %v, %v; want 112.5ms, 62.5ms", s, v)
	}
	cfg := testPace
	cfg.MinDead = time.Minute // a floor above the ceiling: the ceiling wins
	if d := NewPacer(cfg, t0, ms).DeadAfter(); d != cfg.MaxDead {
		t.Fatalf("DeadAfter with MinDead > MaxDead = %v, want MaxDead", d)
	}
}

func TestPacerAckedReturnsSample(t *testing.T) {
	p := NewPacer(testPace, t0, 0)
	if _, ok := p.Acked(t0, true); ok {
		t.Fatal("an <a/> with no request outstanding returned a sample")
	}
	p.Wrote(t0, 100)
	if a := p.Next(t0, 100, false); !a.Request {
		t.Fatalf("no request after RequestEvery stanzas: %+v", a)
	}
	rtt, ok := p.Acked(at(7*ms), true)
	if !ok || rtt != 7*ms {
		t.Fatalf("Acked = %v, %v; want 7ms, true", rtt, ok)
	}
	if s, _ := p.RTT(); s != rtt {
		t.Fatalf("smoothed RTT %v after one sample %v", s, rtt)
	}
	if _, ok := p.Acked(at(8*ms), true); ok {
		t.Fatal("a second <a/> for the same request returned a sample")
	}
}
