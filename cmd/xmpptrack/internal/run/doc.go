// Package run is the work behind the xmpptrack command: it logs in and joins
// a room (Join), sends tracked messages with a bounded number in flight and
// collects each message's outcome (Runner), and sums a run up (Summary).
//
// A message's outcome is the first of DELIVERED_TO_RECIPIENT or a final
// state that its tracker reaches. A message leaves the window of messages in
// flight at its outcome, and its latency is the time from the send call to
// DELIVERED_TO_RECIPIENT.
//
// The command's tests and the end-to-end benchmark run this code through the
// built binary, so that what is measured is what users run.
package run
