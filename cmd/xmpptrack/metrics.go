package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xmpptrack/xmpptrack/metrics"
	"github.com/xmpptrack/xmpptrack/metrics/prommetrics"
	"github.com/xmpptrack/xmpptrack/stream"
)

// namedSource is a room or chat client and the value of its metrics'
// client label.
type namedSource struct {
	name string
	src  metrics.TrackerSource
}

// serveMetrics serves the metrics of s and of the client c at
// http://addr/metrics, from a registry of its own, until stop is called;
// it writes the address it listens on to stderr.
func serveMetrics(addr string, s *stream.Stream, c namedSource, stderr io.Writer) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics-addr: %w", err)
	}
	sc := prommetrics.NewStream(s)
	tc := prommetrics.NewTrackers(c.src, c.name)
	reg := prometheus.NewRegistry()
	reg.MustRegister(sc, tc, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "metrics: http://%s/metrics\n", ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(stderr, "metrics: %v\n", err)
		}
		sc.Close()
		tc.Close()
	}, nil
}
