// Package bench holds the project's benchmarks that need more than one
// package: the memory of tracked messages in flight (BenchmarkInFlight, run
// by "make bench"), the end-to-end benchmark against Prosody (command e2e)
// and its raw baseline clients (command raw, and a minimal Python client in
// rawpy/raw.py that e2e runs with python3), a listener in a busy room
// beside the raw client (command inbound, with its bot), and many streams
// in one process (command scale).
package bench
