// Package run is the work behind the xmpptrack command: it logs in (Dial)
// and joins a room (Join), sends tracked messages to a room or to a chat
// addressee with a bounded number in flight and collects each message's
// outcome (Runner), sums a run up (Summary), and answers the receipt
// requests of one-to-one messages for the other side of a test (Responder).
//
// A run follows each message to its goal, DELIVERED_TO_RECIPIENT unless the
// run asks for another (SEEN_BY_RECIPIENT for chat messages): a message's
// outcome is the first of the goal or a final state that its tracker
// reaches. A message leaves the window of messages in flight at its outcome,
// and its latency is the time from the send call to the goal.
//
// The command's tests and the end-to-end benchmark run this code through the
// built binary, so that what is measured is what users run.
package run
