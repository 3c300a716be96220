// Package boltstore is the default outbox.Store on disk: one file, written
// with go.etcd.io/bbolt, whose every Commit is one transaction synced to the
// disk before it returns.
//
// Open creates the file when it is missing (mode 0600, and never half made:
// it is built under a temporary name and linked into place), or checks the
// one it finds before using it: a file in use by another open store fails
// with outbox.ErrInUse at once; one that is truncated, corrupted or not an
// outbox with outbox.ErrCorrupt and the reason; one written by a newer format
// with outbox.ErrNewerFormat. A refused file is never modified.
//
// The file holds only what the stream and the clients commit: the session's
// ids and counters, stanzas, message records and the job's description. It
// never holds a password, but it does hold the messages' text: keep it
// where the user's other private files are.
//
// No package of the module's core imports this one: a program that keeps its
// outbox elsewhere, or nowhere, does not compile bbolt.
package boltstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/xmpptrack/xmpptrack/outbox"
)

// format is the version of the file's layout that this package writes and
// reads. A file with a higher version is refused.
const format = 1

// magic marks a bbolt file as an outbox.
const magic = "xmpptrack outbox"

// The buckets of the file.
var (
	bucketFormat   = []byte("format")   // magic and version
	bucketSession  = []byte("session")  // keySession: the session
	bucketUnacked  = []byte("unacked")  // big-endian uint64 sequence: a stanza
	bucketMessages = []byte("messages") // Key: insertion sequence and record
	bucketMeta     = []byte("meta")     // free-form job description

	keyMagic   = []byte("magic")
	keyVersion = []byte("version")
	keySession = []byte("session")
)

// lockTimeout is how long Open waits for the file's lock: just one try.
const lockTimeout = time.Nanosecond

// Store is an outbox.Store in one file. Its methods are safe for concurrent
// use.
type Store struct {
	path string
	mu   sync.RWMutex // Close takes it to write; the others to read
	db   *bolt.DB     // nil once closed
}

var _ outbox.Store = (*Store)(nil)

// Open opens the outbox in the file at path, creating it if it does not
// exist. The returned store holds the file until Close: another Open of
// the same file, from this process or another, fails with outbox.ErrInUse.
// Errors name the file and wrap outbox.ErrInUse, outbox.ErrCorrupt or
// outbox.ErrNewerFormat where they apply.
//
// The lock is bbolt's: flock(2), which belongs to an open file and so also
// refuses a second Open in the same process, or LockFileEx on Windows. On
// AIX, Solaris and Android bbolt locks with fcntl(2), which does not tell
// two opens in one process apart: open each file once per process there.
func Open(path string) (*Store, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if err := create(path); err != nil {
			return nil, fmt.Errorf("%s: create outbox: %w", path, err)
		}
	}
	// Check the file read-only first: bbolt opening a file to write may
	// write to it, and reads pages without bounds checks.
	txid, err := check(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: lockTimeout,
		// The file exists: never create another one at this path.
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			return os.OpenFile(name, flag&^os.O_CREATE, mode)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, openError(err))
	}
	// Another store may have written between the check and the lock.
	var now int
	if err := db.View(func(tx *bolt.Tx) error { now = tx.ID(); return nil }); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if now != txid {
		db.Close()
		return nil, fmt.Errorf("%s: %w (written while it was being opened)", path, outbox.ErrInUse)
	}
	return &Store{path: path, db: db}, nil
}

// openError maps what bolt.Open returns for an existing file.
func openError(err error) error {
	var pe *fs.PathError
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return outbox.ErrInUse
	case errors.As(err, &pe):
		return err
	}
	// Every other error of bolt.Open is about the file's contents: no valid
	// meta page, a version or checksum mismatch, too small to hold one.
	return fmt.Errorf("%w: %v", outbox.ErrCorrupt, err)
}

// create makes a new, empty outbox at path. It builds it under a temporary
// name in the same directory and links it into place, so that a file at
// path is never half made: an empty or foreign file there is refused, never
// taken for a new outbox. When another process creates path first, create
// leaves its file alone and returns nil.
func create(path string) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".new-*") // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Close(); err != nil {
		return err
	}
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketFormat)
		if err != nil {
			return err
		}
		if err := b.Put(keyMagic, []byte(magic)); err != nil {
			return err
		}
		if err := b.Put(keyVersion, []byte(strconv.Itoa(format))); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketSession, bucketUnacked, bucketMessages, bucketMeta} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(dir)
}

// syncDir makes the directory's new entry durable.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be synced there; NTFS journals them
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// check opens the file read-only and checks it: its pages lie within the
// file, it is an outbox of a format this package reads, every record
// decodes, and bbolt's own consistency check passes. It returns the id of
// the latest transaction, or an error wrapping outbox.ErrInUse,
// outbox.ErrCorrupt or outbox.ErrNewerFormat (or the file system's error).
func check(path string) (int, error) {
	// bbolt would take an empty file for a new one and write to it.
	if info, err := os.Stat(path); err != nil {
		return 0, err
	} else if !info.Mode().IsRegular() {
		return 0, fmt.Errorf("%w: not a regular file", outbox.ErrCorrupt)
	} else if info.Size() == 0 {
		return 0, fmt.Errorf("%w: empty file, not an outbox", outbox.ErrCorrupt)
	}
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return 0, openError(err)
	}
	defer db.Close()
	info, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	tx, err := db.Begin(false)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	// A truncated file still has its meta pages, which name pages past
	// its end; reading those would fault.
	if tx.Size() > info.Size() {
		return 0, fmt.Errorf("%w: the file ends at %d bytes, its pages at %d", outbox.ErrCorrupt, info.Size(), tx.Size())
	}
	if err := walk(tx); err != nil {
		return 0, err
	}
	// Drain the channel: the check's goroutine ends when it is closed.
	var first error
	for err := range tx.Check() {
		if first == nil {
			first = err
		}
	}
	if first != nil {
		return 0, fmt.Errorf("%w: %v", outbox.ErrCorrupt, first)
	}
	return tx.ID(), nil
}

// walk checks, with faults turned into panics and panics into errors, that
// the file is an outbox of a format this package reads and that every record
// decodes.
func walk(tx *bolt.Tx) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", outbox.ErrCorrupt, r)
		}
	}()
	b := tx.Bucket(bucketFormat)
	if b == nil {
		return fmt.Errorf("%w: not an outbox (no %s bucket)", outbox.ErrCorrupt, bucketFormat)
	}
	if m := b.Get(keyMagic); string(m) != magic {
		return fmt.Errorf("%w: not an outbox (magic %q)", outbox.ErrCorrupt, m)
	}
	v := b.Get(keyVersion)
	version, err := strconv.Atoi(string(v))
	if err != nil || version < 1 {
		return fmt.Errorf("%w: format version %q", outbox.ErrCorrupt, v)
	}
	if version > format {
		return fmt.Errorf("%w: format %d, this program reads format %d and older", outbox.ErrNewerFormat, version, format)
	}
	_, err = read(tx)
	return err
}

// buckets are the buckets of the state in one transaction.
type buckets struct {
	session, unacked, messages, meta *bolt.Bucket
}

func open(tx *bolt.Tx) (buckets, error) {
	var bs buckets
	for _, b := range []struct {
		name []byte
		b    **bolt.Bucket
	}{{bucketSession, &bs.session}, {bucketUnacked, &bs.unacked}, {bucketMessages, &bs.messages}, {bucketMeta, &bs.meta}} {
		if *b.b = tx.Bucket(b.name); *b.b == nil {
			return bs, fmt.Errorf("%w: no %s bucket", outbox.ErrCorrupt, b.name)
		}
	}
	return bs, nil
}

// read returns the whole state, or an error wrapping outbox.ErrCorrupt that
// names the record that does not decode.
func read(tx *bolt.Tx) (outbox.State, error) {
	st := outbox.State{Meta: make(map[string]string)}
	bs, err := open(tx)
	if err != nil {
		return st, err
	}
	if v := bs.session.Get(keySession); v != nil {
		if st.Session, err = decodeSession(v); err != nil {
			return st, fmt.Errorf("%w: session: %v", outbox.ErrCorrupt, err)
		}
	}
	c := bs.unacked.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 || v == nil {
			return st, fmt.Errorf("%w: unacknowledged stanza %x: not a stanza", outbox.ErrCorrupt, k)
		}
		u, err := decodeStanza(v)
		if err != nil {
			return st, fmt.Errorf("%w: unacknowledged stanza %d: %v", outbox.ErrCorrupt, binary.BigEndian.Uint64(k), err)
		}
		st.Unacked = append(st.Unacked, u)
	}
	type seqMessage struct {
		seq uint64
		m   outbox.Message
	}
	var ms []seqMessage
	c = bs.messages.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			return st, fmt.Errorf("%w: message %q: not a message", outbox.ErrCorrupt, k)
		}
		seq, m, err := decodeMessage(k, v)
		if err != nil {
			return st, fmt.Errorf("%w: message %q: %v", outbox.ErrCorrupt, k, err)
		}
		ms = append(ms, seqMessage{seq, m})
	}
	slices.SortFunc(ms, func(a, b seqMessage) int { return cmp.Compare(a.seq, b.seq) })
	for i, m := range ms {
		if i > 0 && m.seq == ms[i-1].seq {
			return st, fmt.Errorf("%w: messages %q and %q have the same sequence %d", outbox.ErrCorrupt, ms[i-1].m.Key, m.m.Key, m.seq)
		}
		st.Messages = append(st.Messages, m.m)
	}
	c = bs.meta.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			return st, fmt.Errorf("%w: meta %q: not a value", outbox.ErrCorrupt, k)
		}
		st.Meta[string(k)] = string(v)
	}
	return st, nil
}

// apply applies c, already validated, in a writable transaction. An error
// rolls the whole transaction back.
func apply(tx *bolt.Tx, c *outbox.Changes) error {
	bs, err := open(tx)
	if err != nil {
		return err
	}
	if c.Session != nil {
		if err := bs.session.Put(keySession, encodeSession(*c.Session)); err != nil {
			return err
		}
	}
	if c.Reset {
		if err := tx.DeleteBucket(bucketUnacked); err != nil {
			return err
		}
		if bs.unacked, err = tx.CreateBucket(bucketUnacked); err != nil {
			return err
		}
	}
	if c.Drop > 0 {
		keys := make([][]byte, 0, c.Drop)
		cur := bs.unacked.Cursor()
		for k, _ := cur.First(); k != nil && len(keys) < c.Drop; k, _ = cur.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		if len(keys) < c.Drop {
			return fmt.Errorf("%w: drop %d of %d unacknowledged stanzas", outbox.ErrInvalidChanges, c.Drop, len(keys))
		}
		for _, k := range keys {
			if err := bs.unacked.Delete(k); err != nil {
				return err
			}
		}
	}
	bs.unacked.FillPercent = 0.9 // appended at the end: fill the pages
	for _, u := range c.Append {
		seq, err := bs.unacked.NextSequence()
		if err != nil {
			return err
		}
		if err := bs.unacked.Put(binary.BigEndian.AppendUint64(nil, seq), encodeStanza(u)); err != nil {
			return err
		}
	}
	for _, m := range c.Messages {
		key := []byte(m.Key)
		var seq uint64
		if old := bs.messages.Get(key); old != nil {
			if seq, err = messageSeq(old); err != nil {
				return fmt.Errorf("%w: message %q: %v", outbox.ErrCorrupt, key, err)
			}
		} else if seq, err = bs.messages.NextSequence(); err != nil {
			return err
		}
		if err := bs.messages.Put(key, encodeMessage(seq, m)); err != nil {
			return fmt.Errorf("message %q: %w", m.Key, err)
		}
	}
	for _, k := range c.Forget {
		if err := bs.messages.Delete([]byte(k)); err != nil {
			return err
		}
	}
	for k, v := range c.Meta {
		if v == "" {
			err = bs.meta.Delete([]byte(k))
		} else {
			err = bs.meta.Put([]byte(k), []byte(v))
		}
		if err != nil {
			return fmt.Errorf("meta %q: %w", k, err)
		}
	}
	return nil
}

// Load implements outbox.Store.
func (s *Store) Load() (outbox.State, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return outbox.State{}, fmt.Errorf("%s: %w", s.path, outbox.ErrClosed)
	}
	var st outbox.State
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		st, err = read(tx)
		return err
	})
	if err != nil {
		return outbox.State{}, fmt.Errorf("%s: %w", s.path, err)
	}
	return st, nil
}

// Commit implements outbox.Store: the changes are one bbolt transaction,
// synced to the disk before Commit returns.
func (s *Store) Commit(c outbox.Changes) error {
	if err := c.Validate(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return fmt.Errorf("%s: %w", s.path, outbox.ErrClosed)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return apply(tx, &c) }); err != nil {
		return fmt.Errorf("%s: commit: %w", s.path, err)
	}
	return nil
}

// Close implements outbox.Store: it releases the file and its lock.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("%s: close: %w", s.path, err)
	}
	return nil
}
