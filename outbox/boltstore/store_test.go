package boltstore

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/xmpptrack/xmpptrack/outbox"
	"github.com/xmpptrack/xmpptrack/outbox/internal/storetest"
)

// The tests that need another process run this test binary again with
// childEnv set to the name of a child function and childPath to the file.
const (
	childEnv  = "BOLTSTORE_TEST_CHILD"
	childPath = "BOLTSTORE_TEST_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "hold":
		childHold(os.Getenv(childPath))
	case "commit":
		childCommit(os.Getenv(childPath))
	default:
		fmt.Fprintln(os.Stderr, "unknown child", os.Getenv(childEnv))
		os.Exit(2)
	}
}

func tempPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "job.outbox")
}

func mustOpen(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBehaviour(t *testing.T) {
	storetest.Run(t, func(t *testing.T) outbox.Store { return mustOpen(t, tempPath(t)) })
}

// TestReopen shows that a store opened again after Close holds the state
// the commits made, every field and the order of the log and the messages
// included, and goes on from there.
func TestReopen(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	c, want := storetest.Full()
	storetest.Commit(t, s, c)
	storetest.Commit(t, s, outbox.Changes{
		Drop:     1,
		Append:   storetest.Stanzas("x"),
		Messages: []outbox.Message{storetest.Msg("k1", "B"), storetest.Msg("k3", "A")},
		Meta:     map[string]string{"n": ""},
	})
	want = storetest.Load(t, s)
	require.NoError(t, s.Close())

	// Opening, loading and closing write nothing.
	before := readFile(t, path)
	s = mustOpen(t, path)
	require.Equal(t, want, storetest.Load(t, s))
	require.NoError(t, s.Close())
	require.Equal(t, before, readFile(t, path))

	s = mustOpen(t, path)
	require.Equal(t, want, storetest.Load(t, s))

	// The sequences go on: a new message goes last, a new stanza too.
	storetest.Commit(t, s, outbox.Changes{Append: storetest.Stanzas("y"), Messages: []outbox.Message{storetest.Msg("k0", "A")}})
	st := storetest.Load(t, s)
	require.Equal(t, "y", st.Unacked[len(st.Unacked)-1].ID)
	require.Equal(t, "k0", st.Messages[len(st.Messages)-1].Key)
	require.Equal(t, "k1", st.Messages[0].Key)
}

// TestCreate shows that a new file has mode 0600, and that creating it
// leaves nothing else in its directory.
func TestCreate(t *testing.T) {
	path := tempPath(t)
	mustOpen(t, path)
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, filepath.Base(path), entries[0].Name())
}

// TestInUseSameProcess shows that a second Open in the same process fails
// with ErrInUse while the first store is open, and succeeds after Close.
func TestInUseSameProcess(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	storetest.Commit(t, s, outbox.Changes{Append: storetest.Stanzas("a")})
	before := readFile(t, path)

	_, err := Open(path)
	storetest.ErrIsOnly(t, err, outbox.ErrInUse)
	require.Contains(t, err.Error(), path)
	require.Contains(t, err.Error(), "in use by another process")
	require.Equal(t, before, readFile(t, path))
	// The first store is unharmed.
	storetest.Commit(t, s, outbox.Changes{Append: storetest.Stanzas("b")})

	require.NoError(t, s.Close())
	s = mustOpen(t, path)
	require.Equal(t, storetest.Stanzas("a", "b"), storetest.Load(t, s).Unacked)
}

// TestOpenRace opens a new file from several goroutines at once: exactly one
// store opens it, every other Open fails with ErrInUse (none takes the file
// being made for a corrupt one), and nothing is left beside the file.
func TestOpenRace(t *testing.T) {
	path := tempPath(t)
	const n = 8
	errs := make([]error, n)
	stores := make([]*Store, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = Open(path) })
	}
	wg.Wait()
	opened := 0
	for i, err := range errs {
		if err == nil {
			opened++
			require.NoError(t, stores[i].Close())
			continue
		}
		storetest.ErrIsOnly(t, err, outbox.ErrInUse)
	}
	require.Equal(t, 1, opened)
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1)
}

// TestNotAFile shows that a directory at the path is refused.
func TestNotAFile(t *testing.T) {
	_, err := Open(t.TempDir())
	storetest.ErrIsOnly(t, err, outbox.ErrCorrupt)
	require.Contains(t, err.Error(), "not a regular file")
}

// TestInUseOtherProcess shows that Open fails with ErrInUse while another
// process holds the store open, and succeeds once it has ended.
func TestInUseOtherProcess(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	storetest.Commit(t, s, outbox.Changes{Meta: map[string]string{"job": "1"}})
	require.NoError(t, s.Close())

	child, lines := startChild(t, "hold", path)
	stdin, err := child.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, child.Start())
	require.True(t, lines.Scan(), "the child did not open the store")
	require.Equal(t, "open", lines.Text())

	_, err = Open(path)
	storetest.ErrIsOnly(t, err, outbox.ErrInUse)

	require.NoError(t, stdin.Close()) // the child closes the store and exits
	require.NoError(t, child.Wait())
	s = mustOpen(t, path)
	require.Equal(t, map[string]string{"job": "1"}, storetest.Load(t, s).Meta)
}

// childHold opens the store, says "open", and closes it when its standard
// input ends.
func childHold(path string) {
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("open")
	io.Copy(io.Discard, os.Stdin)
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// startChild prepares this test binary as a child running the named child
// function on path; the scanner reads its standard output by lines.
func startChild(t *testing.T, name, path string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"="+name, childPath+"="+path)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	require.NoError(t, err)
	t.Cleanup(func() {
		if child.ProcessState == nil && child.Process != nil {
			child.Process.Kill()
			child.Wait()
		}
	})
	return child, bufio.NewScanner(out)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// filled returns the path of a closed store that holds a few hundred
// kilobytes of records.
func filled(t *testing.T) string {
	path := tempPath(t)
	s := mustOpen(t, path)
	body := bytes.Repeat([]byte("x"), 1000)
	for i := range 20 {
		var c outbox.Changes
		for j := range 10 {
			key := fmt.Sprintf("m%d-%d", i, j)
			c.Append = append(c.Append, outbox.Stanza{ID: key, Bytes: body})
			m := storetest.Msg(key, "IN_TRANSIT")
			m.Stanza = body
			c.Messages = append(c.Messages, m)
		}
		storetest.Commit(t, s, c)
	}
	require.NoError(t, s.Close())
	return path
}

// refused opens path, which must fail with target, and checks that the file
// is unchanged. It returns the error.
func refused(t *testing.T, path string, target error) error {
	t.Helper()
	before := readFile(t, path)
	_, err := Open(path)
	storetest.ErrIsOnly(t, err, target)
	require.Contains(t, err.Error(), path)
	t.Log(err)
	require.Equal(t, before, readFile(t, path), "the refused file was modified")
	// Refused again, for the same reason: nothing was left locked.
	_, err2 := Open(path)
	require.Equal(t, err.Error(), err2.Error())
	return err
}

// TestTruncated shows that a file cut short is refused with ErrCorrupt, the
// reason, and left as it is.
func TestTruncated(t *testing.T) {
	for _, tc := range []struct {
		name string
		size func(int64) int64
		why  string
	}{
		{"half", func(n int64) int64 { return n / 2 }, "the file ends at"},
		{"one page", func(int64) int64 { return 4096 }, ""},
		{"a few bytes", func(int64) int64 { return 100 }, ""},
		{"empty", func(int64) int64 { return 0 }, "empty file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filled(t)
			info, err := os.Stat(path)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(path, tc.size(info.Size())))
			err = refused(t, path, outbox.ErrCorrupt)
			require.Contains(t, err.Error(), tc.why)
		})
	}
}

// TestGarbage shows that files that are not outboxes, or whose records do
// not decode, are refused with ErrCorrupt and the reason, and left as they
// are.
func TestGarbage(t *testing.T) {
	t.Run("random bytes", func(t *testing.T) {
		path := tempPath(t)
		b := make([]byte, 64<<10)
		rand.Read(b)
		require.NoError(t, os.WriteFile(path, b, 0o600))
		refused(t, path, outbox.ErrCorrupt)
	})
	t.Run("text", func(t *testing.T) {
		path := tempPath(t)
		require.NoError(t, os.WriteFile(path, []byte("-jid alice@example.net -n 100\n"), 0o600))
		refused(t, path, outbox.ErrCorrupt)
	})
	t.Run("flipped bytes in the middle", func(t *testing.T) {
		path := filled(t)
		b := readFile(t, path)
		for i := len(b) / 3; i < len(b)/3+4096; i++ {
			b[i] ^= 0xa5
		}
		require.NoError(t, os.WriteFile(path, b, 0o600))
		refused(t, path, outbox.ErrCorrupt)
	})
	for _, tc := range []struct {
		name string
		edit func(tx *bolt.Tx) error
		why  string
	}{
		{"another bbolt file", func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketFormat); err != nil {
				return err
			}
			_, err := tx.CreateBucket([]byte("other"))
			return err
		}, "not an outbox"},
		{"wrong magic", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketFormat).Put(keyMagic, []byte("something else"))
		}, "not an outbox"},
		{"bad version", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketFormat).Put(keyVersion, []byte("one"))
		}, "format version"},
		{"missing bucket", func(tx *bolt.Tx) error {
			return tx.DeleteBucket(bucketMessages)
		}, "no messages bucket"},
		{"short message", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMessages).Put([]byte("k"), []byte{1, 200})
		}, `message "k"`},
		{"long stanza", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketUnacked).Put(binary.BigEndian.AppendUint64(nil, 9), append(encodeStanza(outbox.Stanza{ID: "a"}), 0))
		}, "unacknowledged stanza 9"},
		{"bad key", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketUnacked).Put([]byte("abc"), encodeStanza(outbox.Stanza{ID: "a"}))
		}, "unacknowledged stanza"},
		{"bad session", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketSession).Put(keySession, []byte{3, 'a'})
		}, "session"},
		{"same sequence", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketMessages)
			if err := b.Put([]byte("k1"), encodeMessage(5, storetest.Msg("k1", "A"))); err != nil {
				return err
			}
			return b.Put([]byte("k2"), encodeMessage(5, storetest.Msg("k2", "A")))
		}, "same sequence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempPath(t)
			s := mustOpen(t, path)
			storetest.Commit(t, s, outbox.Changes{Messages: []outbox.Message{storetest.Msg("m", "A")}})
			require.NoError(t, s.Close())
			rawUpdate(t, path, tc.edit)
			err := refused(t, path, outbox.ErrCorrupt)
			require.Contains(t, err.Error(), tc.why)
		})
	}
}

// rawUpdate edits the bbolt file at path under the store's feet.
func rawUpdate(t *testing.T, path string, edit func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(edit))
	require.NoError(t, db.Close())
}

// TestNewerFormat shows that a file of a newer format version is refused
// with ErrNewerFormat, even when its layout is one this package does not
// know, and left as it is.
func TestNewerFormat(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	storetest.Commit(t, s, outbox.Changes{Messages: []outbox.Message{storetest.Msg("m", "A")}})
	require.NoError(t, s.Close())
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketMessages); err != nil {
			return err
		}
		return tx.Bucket(bucketFormat).Put(keyVersion, []byte(strconv.Itoa(format+1)))
	})
	err := refused(t, path, outbox.ErrNewerFormat)
	require.Contains(t, err.Error(), fmt.Sprintf("format %d", format+1))
}

// crashChanges is commit i (from 1) of the crash test's child: it appends a
// stanza and a message, updates the message before it, forgets an older one,
// drops the log's head from time to time and replaces the session.
func crashChanges(i int) outbox.Changes {
	key := func(i int) string { return "m" + strconv.Itoa(i) }
	c := outbox.Changes{
		Session:  &outbox.Session{ResumeID: "r", In: uint32(i), Acked: uint32(i / 7 * 7)},
		Append:   []outbox.Stanza{{ID: key(i), Bytes: bytes.Repeat([]byte{byte(i)}, 100+i%300)}},
		Messages: []outbox.Message{storetest.Msg(key(i), "IN_TRANSIT")},
		Meta:     map[string]string{"n": strconv.Itoa(i)},
	}
	if i > 1 {
		c.Messages = append(c.Messages, storetest.Msg(key(i-1), "DELIVERED_TO_SERVER"))
	}
	if i > 5 {
		c.Forget = []string{key(i - 5)}
	}
	if i%7 == 0 {
		c.Drop = 5
	}
	return c
}

// childCommit commits crashChanges(1), (2)… and prints each i once its
// Commit has returned, until it is killed.
func childCommit(path string) {
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i := 1; ; i++ {
		if err := s.Commit(crashChanges(i)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(i)
	}
}

// TestCrash kills a process that commits in a loop with SIGKILL and shows
// that the file holds exactly the state of a prefix of its commits, one that
// includes every commit that had returned.
func TestCrash(t *testing.T) {
	for round := range 3 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			path := tempPath(t)
			child, lines := startChild(t, "commit", path)
			require.NoError(t, child.Start())
			kill := 20 + 40*round // the number of returned commits to wait for
			returned := 0
			for returned < kill && lines.Scan() {
				n, err := strconv.Atoi(lines.Text())
				require.NoError(t, err)
				returned = n
			}
			require.Equal(t, kill, returned, "the child stopped early")
			require.NoError(t, child.Process.Kill())
			child.Wait()

			s := mustOpen(t, path)
			st := storetest.Load(t, s)
			n, err := strconv.Atoi(st.Meta["n"])
			require.NoError(t, err)
			require.GreaterOrEqual(t, n, returned, "a commit that returned is missing")

			// The same commits on a store in memory give the state.
			model := outbox.NewMemory()
			for i := 1; i <= n; i++ {
				storetest.Commit(t, model, crashChanges(i))
			}
			require.Equal(t, storetest.Load(t, model), st)

			// The store goes on from there.
			storetest.Commit(t, s, crashChanges(n+1))
			storetest.Commit(t, model, crashChanges(n+1))
			require.Equal(t, storetest.Load(t, model), storetest.Load(t, s))
		})
	}
}
