// Package outbox keeps what a client must not forget when its process dies:
// the XEP-0198 session of its stream (resumption id, location, both
// counters), the stanzas written and not yet acknowledged, in order, and a
// record of every tracked message (its ids, addressee, bytes, state and send
// time). A new process that loads it can resume the old session and write the
// unacknowledged stanzas again with the same ids, or find out from the
// server's archive which messages arrived, instead of choosing blindly
// between loss and duplicates.
//
// # Guarantees
//
// A Store applies each Commit as a whole or not at all, and when Commit
// returns nil its changes are durable: a Store on disk (package
// outbox/boltstore) has synced them to the disk before returning, so they
// survive a crash of the process and, on a disk that honours its sync
// requests, a loss of power. Load returns exactly what the commits made,
// in order: the unacknowledged stanzas in the order they were appended, the
// messages in the order they were first recorded. The stream commits once per
// batch it writes, before the bytes reach the socket, so a message whose
// bytes may have reached the server is always in the store (Message.Written
// says so). When Commit returns an error, the stream treats its changes as
// not durable and does not write their bytes.
//
// A Store on disk has one writer: a second open of the same file, from this
// process or another, fails at once with ErrInUse. A file that is truncated,
// corrupted or not an outbox is refused with ErrCorrupt and the reason, and
// left unchanged; one written by a newer format is refused with
// ErrNewerFormat. A store never starts afresh on its own: that would send
// everything again.
//
// A Store keeps only what it is given. The stream gives it stanzas and ids,
// never a password; the free-form Meta is for a description of the job (the
// command line's arguments, say), not for secrets.
//
// # Values
//
// Byte slices are copied in and out: a caller may reuse what it committed,
// and what Load returns belongs to the caller. An empty byte slice comes back
// as nil. Times come back in UTC, to the nanosecond, without a monotonic
// clock reading (as time.Time.Round(0).UTC() gives them).
//
// # Layer
//
// The package sits between sm and stream: it does no network I/O and imports
// nothing of this module. NewMemory is a Store in memory, for tests; the
// default Store on disk is in package outbox/boltstore, which a program that
// does not import it does not compile.
package outbox
