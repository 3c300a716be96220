package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/xmpptrack/xmpptrack/outbox"
)

// The records are sequences of fields: strings and byte slices as a uvarint
// length and the bytes, numbers as (u)varints, a time as varint seconds and
// uvarint nanoseconds since 1970 (the zero time is second -62135596800). A
// record is read strictly: a field that runs past the end, or bytes after the
// last field, make the file corrupt.

var errShort = errors.New("record ends inside a field")

type encoder []byte

func (e *encoder) bytes(b []byte) {
	*e = binary.AppendUvarint(*e, uint64(len(b)))
	*e = append(*e, b...)
}

func (e *encoder) str(s string) {
	*e = binary.AppendUvarint(*e, uint64(len(s)))
	*e = append(*e, s...)
}

func (e *encoder) uint(v uint64) { *e = binary.AppendUvarint(*e, v) }

func (e *encoder) int(v int64) { *e = binary.AppendVarint(*e, v) }

func (e *encoder) time(t time.Time) {
	e.int(t.Unix())
	e.uint(uint64(t.Nanosecond()))
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uint() uint64 { return varint(d, binary.Uvarint) }

func (d *decoder) int() int64 { return varint(d, binary.Varint) }

// varint reads the next number with read (binary.Uvarint or binary.Varint).
func varint[T uint64 | int64](d *decoder, read func([]byte) (T, int)) T {
	if d.err != nil {
		return 0
	}
	v, n := read(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns a copy of the next field, nil when it is empty: what bbolt
// returns is valid only during its transaction.
func (d *decoder) bytes() []byte {
	n := d.uint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	var b []byte
	if n > 0 {
		b = append([]byte(nil), d.b[:n]...)
	}
	d.b = d.b[n:]
	return b
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) time() time.Time {
	sec := d.int()
	nsec := d.uint()
	if d.err == nil && nsec >= 1e9 {
		d.err = fmt.Errorf("nanoseconds %d out of range", nsec)
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// done returns the first error, or one for bytes left after the last field.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes after the record", len(d.b))
	}
	return d.err
}

func encodeSession(s outbox.Session) []byte {
	var e encoder
	e.str(s.ResumeID)
	e.str(s.Location)
	e.str(s.Addr)
	e.int(int64(s.Max))
	e.uint(uint64(s.In))
	e.uint(uint64(s.Acked))
	e.time(s.Saved)
	return e
}

func decodeSession(b []byte) (outbox.Session, error) {
	d := decoder{b: b}
	s := outbox.Session{
		ResumeID: d.str(),
		Location: d.str(),
		Addr:     d.str(),
		Max:      time.Duration(d.int()),
		In:       d.uint32(),
		Acked:    d.uint32(),
		Saved:    d.time(),
	}
	return s, d.done()
}

func (d *decoder) uint32() uint32 {
	v := d.uint()
	if d.err == nil && v > 1<<32-1 {
		d.err = fmt.Errorf("counter %d out of range", v)
	}
	return uint32(v)
}

func encodeStanza(s outbox.Stanza) []byte {
	var e encoder
	e.str(s.ID)
	e.bytes(s.Bytes)
	return e
}

func decodeStanza(b []byte) (outbox.Stanza, error) {
	d := decoder{b: b}
	s := outbox.Stanza{ID: d.str(), Bytes: d.bytes()}
	return s, d.done()
}

// encodeMessage encodes m, after seq, its insertion sequence. The key is the
// record's key in the bucket, not part of the value.
func encodeMessage(seq uint64, m outbox.Message) []byte {
	e := make(encoder, 0, 64+len(m.Stanza))
	e.uint(seq)
	e.str(m.OriginID)
	e.str(m.To)
	e.uint(uint64(m.Kind))
	e.bytes(m.Stanza)
	e.str(m.State)
	written := uint64(0)
	if m.Written {
		written = 1
	}
	e.uint(written)
	e.time(m.SentAt)
	e.str(m.StanzaID)
	e.str(m.Reason)
	return e
}

// messageSeq returns the insertion sequence of an encoded message.
func messageSeq(b []byte) (uint64, error) {
	d := decoder{b: b}
	seq := d.uint()
	return seq, d.err
}

func decodeMessage(key, b []byte) (uint64, outbox.Message, error) {
	d := decoder{b: b}
	seq := d.uint()
	m := outbox.Message{Key: string(key), OriginID: d.str(), To: d.str()}
	kind := d.uint()
	m.Stanza = d.bytes()
	m.State = d.str()
	written := d.uint()
	m.SentAt = d.time()
	m.StanzaID = d.str()
	m.Reason = d.str()
	if err := d.done(); err != nil {
		return 0, m, err
	}
	m.Kind = outbox.Kind(kind)
	if m.Kind != outbox.Groupchat && m.Kind != outbox.Chat {
		return 0, m, fmt.Errorf("unknown kind %d", kind)
	}
	if written > 1 {
		return 0, m, fmt.Errorf("written flag %d", written)
	}
	m.Written = written == 1
	return seq, m, nil
}
