// Package bench holds the project's benchmarks that need more than one
// package: the memory of tracked messages in flight (BenchmarkInFlight, run
// by "make bench"), the end-to-end benchmark against Prosody (command e2e)
// and its raw baseline client (command raw).
package bench
