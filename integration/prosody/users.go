package prosody

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// iterationCount is the PBKDF2 iteration count of stored credentials: the
// minimum RFC 5802 recommends (Prosody warns below it). Prosody's own default,
// 10000, would make creating users and every login slower for no gain on a
// test server. The configuration sets it as Prosody's default too.
const iterationCount = 4096

// Accounts are written straight into Prosody's internal storage, in the
// format its internal_hashed provider writes itself:
//
//	DATA/localhost/accounts/alice.dat
//	return {
//		["iteration_count"] = 4096;
//		["salt"] = "…";
//		["stored_key"] = "<hex>";
//		["server_key"] = "<hex>";
//	};
//
// The keys are SCRAM-SHA-1 keys (internal_hashed's default hash): PBKDF2 of
// the password with the salt's bytes, then StoredKey = H(HMAC(salted,
// "Client Key")) and ServerKey = HMAC(salted, "Server Key").
// Prosody's internal storage reads a file on every look-up and caches
// nothing, so a file written by rename is used by the very next login, with
// or without the server running. This costs about a millisecond of hashing a
// password, instead of a prosodyctl process (tens of milliseconds) a user.

// credentials are the stored SCRAM-SHA-1 credentials of a password.
type credentials struct {
	salt, storedKey, serverKey string
}

// newCredentials derives credentials for pass with a fresh salt.
func newCredentials(pass string) (credentials, error) {
	salt := rand.Text()
	salted, err := pbkdf2.Key(sha1.New, pass, []byte(salt), iterationCount, sha1.Size)
	if err != nil {
		return credentials{}, err
	}
	storedKey := sha1.Sum(hmacSHA1(salted, "Client Key"))
	return credentials{
		salt:      salt,
		storedKey: hex.EncodeToString(storedKey[:]),
		serverKey: hex.EncodeToString(hmacSHA1(salted, "Server Key")),
	}, nil
}

// writeAccounts stores accounts for users (normalized) in data directory
// dataPath. Hashing dominates the cost, so each distinct password is hashed
// once (users with the same password share a salt, which is harmless on a
// test server), on all CPUs.
func writeAccounts(ctx context.Context, dataPath string, users map[string]string) error {
	dir := filepath.Join(dataPath, pathEncode(domain), "accounts")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("prosody: creating accounts folder: %w", err)
	}

	creds := make(map[string]credentials)
	for _, pass := range users {
		creds[pass] = credentials{}
	}
	passwords := slices.Collect(maps.Keys(creds))

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan string)
	)
	for range min(runtime.GOMAXPROCS(0), len(passwords)) {
		wg.Go(func() {
			for pass := range next {
				c, err := newCredentials(pass)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("prosody: hashing a password: %w", err))
				}
				creds[pass] = c
				mu.Unlock()
			}
		})
	}
	var ctxErr error
feed:
	for _, pass := range passwords {
		select {
		case next <- pass:
		case <-ctx.Done():
			ctxErr = fmt.Errorf("prosody: creating users: %w", ctx.Err())
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := errors.Join(append(errs, ctxErr)...); err != nil {
		return err
	}

	locals := slices.Sorted(maps.Keys(users))
	for _, local := range locals {
		if err := writeAccount(dir, local, creds[users[local]]); err != nil {
			return err
		}
	}
	return nil
}

// writeAccount stores the account file of local in dir.
func writeAccount(dir, local string, c credentials) error {
	data := fmt.Sprintf("return {\n\t[\"iteration_count\"] = %d;\n\t[\"salt\"] = %s;\n\t[\"stored_key\"] = %s;\n\t[\"server_key\"] = %s;\n};\n",
		iterationCount, luaString(c.salt), luaString(c.storedKey), luaString(c.serverKey))

	// Write then rename, as Prosody does, so that a login never reads half a
	// file. The temporary name does not end in ".dat": Prosody ignores it.
	f, err := os.CreateTemp(dir, ".new-*")
	if err != nil {
		return fmt.Errorf("prosody: writing account %q: %w", local, err)
	}
	_, err = f.WriteString(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, pathEncode(local)+".dat"))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("prosody: writing account %q: %w", local, err)
	}
	return nil
}

func hmacSHA1(key []byte, msg string) []byte {
	m := hmac.New(sha1.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// pathEncode encodes a name for a path in Prosody's data folder the way its
// datamanager does: every byte that is not an ASCII letter or digit becomes
// %xx (lower-case hex).
func pathEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02x", c)
	}
	return b.String()
}
