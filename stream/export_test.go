package stream

import "syscall"

// SetCounts starts the stream management counters of s at the given values,
// so that tests can cross the 32-bit wrap without sending four billion
// stanzas: out is the number of stanzas sent (and acknowledged, as nothing is
// outstanding yet), in the number of stanzas received. Call it right after
// Dial, before anything is sent.
func SetCounts(s *Stream, out, in uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out.SetCounts(out)
	s.in, s.box.handled, s.box.in = in, in, in
}

// SetDialControl makes the dialer that connects to what DNS announces (when
// Config.Addr and Config.Dial are empty) call f for each address it dials,
// before connecting; an error from f aborts that attempt. Tests see which
// addresses were tried without anything listening there.
func SetDialControl(cfg *Config, f func(network, address string, c syscall.RawConn) error) {
	cfg.dialControl = f
}
