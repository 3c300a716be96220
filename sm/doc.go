// Package sm keeps the protocol state of XEP-0198 stream management
// (namespace urn:xmpp:sm:3) for a client: the counters of handled stanzas in
// both directions, the queue of stanzas sent but not yet acknowledged, and the
// decisions that follow from the server's answers.
//
// The package does no I/O. The stream layer feeds it what it reads and writes
// and acts on what it returns, so every rule here is tested without a network.
//
// # Counting
//
// Both counters are unsigned 32-bit numbers that wrap from 4294967295 to 0, as
// XEP-0198 requires. Only stanzas (message, presence, iq) are counted, never
// the stream management elements themselves (r, a, enable, enabled, resume,
// resumed, failed).
//
// # Acknowledgement
//
// Outbound.Ack takes the h of an <a/>, <resumed/> or <failed/> and releases,
// in the order they were sent, exactly the stanzas the server has counted. An
// h older than the last one is ignored. An h that counts more stanzas than were
// sent is a protocol violation: Ack returns an error wrapping
// ErrHandledCountTooHigh and the stream must be closed with the
// <handled-count-too-high/> stream error (HandledCountTooHigh gives it).
//
// # Resumption
//
// After <resumed h='…'/> the stream acknowledges up to h and writes the rest
// of the queue again, oldest first (Outbound.Unacked). After <failed/> the
// stream acknowledges up to h when the server gave one, and the rest are lost:
// they are handed back by Outbound.Reset and must be reported as not
// acknowledged, never as delivered and never silently sent again.
package sm
