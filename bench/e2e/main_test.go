package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPythonClientMissing checks that without python3 the Python client is
// skipped, not an error.
func TestPythonClientMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	python, err := pythonClient(t.TempDir())
	if python != "" || err != nil {
		t.Fatalf("pythonClient without python3 = %q, %v; want \"\", nil", python, err)
	}
	tab := table(Results{Ratios: []Ratio{{Server: onProsody, Window: 10, Throughput: 1, CPU: 1}}})
	if !strings.Contains(tab, "| – | – | – | – |") {
		t.Errorf("the ratio table does not mark the Python columns as missing:\n%s", tab)
	}
}

// TestPythonSplit runs the Python client's splitter (raw.py's split) on a
// stream cut into one-byte reads, and checks that it finds every top-level
// element, whole, as bench/raw's TestSplit does for the Go client.
func TestPythonSplit(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3")
	}
	bin := t.TempDir()
	python, err := pythonClient(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bin, "raw.py")); err != nil {
		t.Fatal(err)
	}
	const check = `
import sys
sys.path.insert(0, sys.argv[1])
import raw
stream = (b"<message from='r@c/me' id='r000000000000000000003' type='groupchat'><body>a &gt; b</body>"
          b"<origin-id xmlns='urn:xmpp:sid:0' id='o3'/></message>"
          b"<presence from='r@c/me'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>"
          b"<r xmlns='urn:xmpp:sm:3'/>\n"
          b"<message from='r@c' id='r000000000000000000004' type='error'><error type='cancel'><not-acceptable/></error></message>")
for step in (len(stream), 1):
    buf, names, whole, ids = b"", [], b"", []
    for k in range(0, len(stream), step):
        els, buf = raw.split(buf + stream[k:k + step])
        for m in els:
            names.append(m.group(1).decode())
            whole += m.group(0).strip()
            found = raw.OUR_ID.search(m.group(2))
            ids.append(int(found.group(1)) if found else -1)
    assert names == ["message", "presence", "r", "message"], names
    assert whole == stream.replace(b"\n", b""), whole
    assert ids == [3, -1, -1, 4], ids
    assert buf == b"", buf
print("ok")
`
	out, err := exec.Command(python, "-S", "-c", check, bin).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("%v: %s", err, out)
	}
}
