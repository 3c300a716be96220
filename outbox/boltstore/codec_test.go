package boltstore

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/xmpptrack/xmpptrack/outbox"
)

// TestCodecExtremes round-trips the values at the edges of each field.
func TestCodecExtremes(t *testing.T) {
	for _, at := range []time.Time{
		{},
		time.Unix(0, 0).UTC(),
		time.Unix(-1, 999999999).UTC(),
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), // outside UnixNano's range
	} {
		for _, max := range []time.Duration{0, -1, math.MinInt64, math.MaxInt64} {
			s := outbox.Session{Max: max, In: math.MaxUint32, Acked: math.MaxUint32, Saved: at}
			got, err := decodeSession(encodeSession(s))
			require.NoError(t, err)
			require.Equal(t, s, got)
		}
		m := outbox.Message{Key: "k", Kind: outbox.Chat, SentAt: at}
		seq, got, err := decodeMessage([]byte("k"), encodeMessage(math.MaxUint64, m))
		require.NoError(t, err)
		require.Equal(t, uint64(math.MaxUint64), seq)
		require.Equal(t, m, got)
	}
}

// TestCodecRejects shows records that do not decode.
func TestCodecRejects(t *testing.T) {
	good := encodeMessage(1, outbox.Message{Key: "k", Kind: outbox.Groupchat, Written: true})
	for i := range good {
		_, _, err := decodeMessage([]byte("k"), good[:i])
		require.Error(t, err, "cut at %d", i)
	}
	_, _, err := decodeMessage([]byte("k"), append(good, 0))
	require.ErrorContains(t, err, "after the record")
	_, _, err = decodeMessage([]byte("k"), encodeMessage(1, outbox.Message{Key: "k", Kind: 7}))
	require.ErrorContains(t, err, "unknown kind 7")

	var e encoder
	e.uint(1 << 32)
	_, err = decodeSession(append(append([]byte{0, 0, 0, 0}, e...), 0, 0, 0))
	require.ErrorContains(t, err, "out of range")
}

// FuzzDecode feeds arbitrary bytes to the decoders: they return an error or
// a record, and never panic.
func FuzzDecode(f *testing.F) {
	f.Add(encodeSession(outbox.Session{ResumeID: "r", In: 5, Saved: time.Unix(1, 2)}))
	f.Add(encodeStanza(outbox.Stanza{ID: "a", Bytes: []byte("<message/>")}))
	f.Add(encodeMessage(3, outbox.Message{Key: "k", Kind: outbox.Chat, Stanza: []byte("x"), SentAt: time.Unix(5, 0)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeSession(b)
		decodeStanza(b)
		decodeMessage([]byte("k"), b)
	})
}
