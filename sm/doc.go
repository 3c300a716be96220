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
// in the order they were sent, exactly the stanzas the server has counted. The
// client knows what it sent, so h must lie between the latest acknowledgement
// and the number of stanzas sent; any other h (one that counts more than was
// sent, or one "behind" the latest acknowledgement, which mod 2^32 is the
// same thing) is a protocol violation: Ack returns an error wrapping
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
//
// # Pacing and dead links
//
// Pacer holds the rest of the protocol's timing for one connection: when to
// ask the server for an acknowledgement, when to answer its requests, when to
// probe an idle link, and when a link that stays silent is dead. It measures
// the round trip of each request and adapts the dead-link timeout to it, as
// TCP adapts its retransmission timeout (RFC 6298). Time is an argument of
// every method, so each decision is tested without sleeping.
package sm
