package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"time"

	"github.com/xmpptrack/xmpptrack/cmd/xmpptrack/internal/run"
	"github.com/xmpptrack/xmpptrack/stream"
)

// track sends the run's messages to target over s, printing to stdout as
// it goes, and returns an error unless every message reached the run's
// goal. clients is the room or chat client that sends them, named for the
// metrics (-metrics-addr).
func track(ctx context.Context, o sendOptions, target run.Target, s *stream.Stream, clients namedSource, stdout, stderr io.Writer) error {
	if o.metricsAddr != "" {
		stop, err := serveMetrics(o.metricsAddr, s, clients, stderr)
		if err != nil {
			return err
		}
		defer stop()
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	o.cfg.Resumptions = func() int { return s.Stats().Resumptions }
	o.cfg.Stream = s.Stats
	r := run.New(target, o.cfg)
	out := newPrinter(stdout, o.json, isTerminal(stdout))
	sum, err := out.run(ctx, r)
	if err != nil {
		return err
	}
	return checkReached(sum)
}

// checkReached returns an error unless every message reached the goal.
func checkReached(sum run.Summary) error {
	if sum.Sent > 0 && sum.Reached == sum.Sent {
		return nil
	}
	goal := sum.Goal.String()
	return fmt.Errorf("%d of %d messages did not reach %s (%s)",
		sum.Sent-sum.Reached, sum.Sent, goal, stateList(sum.States, goal))
}

// dial logs in, within loginTimeout.
func dial(ctx context.Context, a run.Account) (*stream.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	return run.Dial(ctx, a)
}

// closeStream closes s, waiting a little for the server to acknowledge what
// was sent.
func closeStream(s *stream.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Close(ctx)
}
