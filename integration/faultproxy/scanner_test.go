package faultproxy

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

const (
	decl   = `<?xml version='1.0'?>`
	header = `<stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>`
)

var scannerTests = [...]struct {
	name string
	// segs each end at a boundary; tail does not.
	segs []string
	tail string
	// If opaqueAt >= 0, the scanner stops looking for boundaries at
	// tail[opaqueAt]: every byte from there on ends a boundary.
	opaqueAt int
	err      bool
}{
	{
		name:     "header",
		segs:     []string{decl, header},
		opaqueAt: -1,
	},
	{
		name:     "partial header",
		segs:     []string{decl, "\n"},
		tail:     `<stream:stream to='loc`,
		opaqueAt: -1,
	},
	{
		name: "stanzas",
		segs: []string{
			decl, header,
			`<message to='a@b' id='1'><body>a &gt; b</body></message>`,
			` `, "\n", "\t", "\r",
			`<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>`,
		},
		tail:     `<message id='2'><body>hal`,
		opaqueAt: -1,
	},
	{
		name: "nonzas",
		segs: []string{
			header,
			`<enable xmlns='urn:xmpp:sm:3' resume='true'/>`,
			`<r xmlns='urn:xmpp:sm:3'/>`,
			`<a h='3' xmlns='urn:xmpp:sm:3'/>`,
			`<r/>`,
		},
		tail:     `<a h='4'`,
		opaqueAt: -1,
	},
	{
		name: "quoted",
		segs: []string{
			header,
			`<message id='a>b' to="c/>d" x='"' y="'"><body>1 > 0</body></message>`,
			`<a h='/'/>`,
			`<a h="/>"/>`,
		},
		tail:     `<message id='/>'>`,
		opaqueAt: -1,
	},
	{
		name: "self-closing inside",
		segs: []string{
			header,
			`<message><x/><y a='1'/><z><w/></z><body/></message>`,
		},
		tail:     `<message><x/><y a='1'/>`,
		opaqueAt: -1,
	},
	{
		name: "spaces in tags",
		segs: []string{
			header,
			"<message\n id = '1'\t><body >x</body\n></message >",
			`<r />`,
		},
		opaqueAt: -1,
	},
	{
		name: "restart with declaration",
		segs: []string{
			decl, header,
			`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>`,
			decl, header,
			`<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>`,
		},
		opaqueAt: -1,
	},
	{
		name: "restart without declaration",
		segs: []string{
			header,
			`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>`,
			header,
			`<iq type='set' id='b'/>`,
		},
		opaqueAt: -1,
	},
	{
		name: "restart without prefix",
		segs: []string{
			`<stream xmlns='http://etherx.jabber.org/streams'>`,
			`<auth/>`,
			`<stream xmlns='http://etherx.jabber.org/streams'>`,
			`<iq/>`,
		},
		opaqueAt: -1,
	},
	{
		name:     "stream close",
		segs:     []string{decl, header, `<presence/>`, `</stream:stream>`, "\n"},
		opaqueAt: -1,
	},
	{
		name:     "new stream after close",
		segs:     []string{header, `</stream:stream>`, decl, header, `<presence/>`},
		opaqueAt: -1,
	},
	{
		name: "starttls",
		segs: []string{
			decl, header,
			`<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`,
		},
		tail:     "\x16\x03\x01\x02\x00\x01<foo",
		opaqueAt: 0,
	},
	{
		name: "starttls with end tag",
		segs: []string{
			header,
			`<tls:starttls xmlns:tls='urn:ietf:params:xml:ns:xmpp-tls'></tls:starttls>`,
		},
		tail:     "\x16\x03\x01",
		opaqueAt: 0,
	},
	{
		name:     "direct TLS",
		tail:     "\x16\x03\x01\x02\x00",
		opaqueAt: 0,
		err:      true,
	},
	{
		name:     "comment",
		segs:     []string{header},
		tail:     `<!-- no -->`,
		opaqueAt: 1,
		err:      true,
	},
	{
		name:     "CDATA",
		segs:     []string{header},
		tail:     `<message><body><![CDATA[x]]></body></message>`,
		opaqueAt: 16,
		err:      true,
	},
	{
		name:     "processing instruction",
		segs:     []string{header},
		tail:     `<?php ?>`,
		opaqueAt: 5,
		err:      true,
	},
	{
		name:     "declaration inside stanza",
		segs:     []string{header},
		tail:     `<message><?xml?>`,
		opaqueAt: 10,
		err:      true,
	},
	{
		name:     "text in stream",
		segs:     []string{header, " "},
		tail:     `hello`,
		opaqueAt: 0,
		err:      true,
	},
	{
		name:     "end tag before header",
		segs:     []string{" "},
		tail:     `</stream:stream>`,
		opaqueAt: 15,
		err:      true,
	},
	{
		name:     "empty name",
		segs:     []string{header},
		tail:     `< message/>`,
		opaqueAt: 1,
		err:      true,
	},
}

// feed feeds in to a new scanner in chunks of the given sizes (the rest in
// one chunk), and returns what it released and, after each chunk, the total
// released so far.
func feed(in []byte, sizes ...int) (*scanner, []byte, []int) {
	var sc scanner
	var out []byte
	var totals []int
	for _, n := range append(sizes, len(in)) {
		n = min(n, len(in))
		out = append(out, sc.Feed(in[:n])...)
		totals = append(totals, len(out))
		in = in[n:]
	}
	return &sc, out, totals
}

// boundaries feeds in one byte at a time and returns the offsets after which
// the scanner released bytes: all the boundaries it found.
func boundaries(in []byte) (*scanner, []int) {
	var sc scanner
	var b []int
	released := 0
	for i := range in {
		released += len(sc.Feed(in[i : i+1]))
		if released == i+1 {
			b = append(b, released)
		}
	}
	return &sc, b
}

// lastBoundary returns the largest boundary not after n, or 0.
func lastBoundary(b []int, n int) int {
	last := 0
	for _, o := range b {
		if o <= n {
			last = o
		}
	}
	return last
}

func TestScanner(t *testing.T) {
	for _, tc := range scannerTests {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(strings.Join(tc.segs, "") + tc.tail)
			var want []int
			n := 0
			for _, s := range tc.segs {
				n += len(s)
				want = append(want, n)
			}
			if tc.opaqueAt >= 0 {
				for i := n + tc.opaqueAt; i < len(in); i++ {
					want = append(want, i+1)
				}
			}

			sc, got := boundaries(in)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("boundaries one byte at a time:\n got %v\nwant %v", got, want)
			}
			if sc.Opaque() != (tc.opaqueAt >= 0) {
				t.Errorf("opaque = %v, want %v", sc.Opaque(), tc.opaqueAt >= 0)
			}
			if (sc.Err() != nil) != tc.err {
				t.Errorf("err = %v, want error: %v", sc.Err(), tc.err)
			}
			if sc.Err() != nil && !errors.Is(sc.Err(), errScan) {
				t.Errorf("err = %v, does not wrap errScan", sc.Err())
			}

			// Split in two at every offset: after each half the scanner
			// must have released exactly up to the last boundary.
			for k := 0; k <= len(in); k++ {
				sc, out, totals := feed(in, k)
				wantTotals := []int{lastBoundary(want, k), lastBoundary(want, len(in))}
				if fmt.Sprint(totals) != fmt.Sprint(wantTotals) {
					t.Fatalf("split at %d: released %v, want %v", k, totals, wantTotals)
				}
				if !bytes.Equal(out, in[:len(out)]) {
					t.Fatalf("split at %d: released bytes are not a prefix of the input", k)
				}
				if sc.Held() != len(in)-len(out) {
					t.Fatalf("split at %d: holds %d bytes, want %d", k, sc.Held(), len(in)-len(out))
				}
			}
		})
	}
}

func TestScannerDiscard(t *testing.T) {
	var sc scanner
	out := sc.Feed([]byte(header + `<message><body>x`))
	if string(out) != header {
		t.Fatalf("released %q, want the header", out)
	}
	sc.Discard()
	if sc.Held() != 0 {
		t.Fatalf("holds %d bytes after Discard", sc.Held())
	}
}

func TestScannerLongElement(t *testing.T) {
	var sc scanner
	sc.Feed([]byte(header + `<message><body>`))
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	released := 0
	for i := 0; i <= maxHeld>>20 && !sc.Opaque(); i++ {
		released += len(sc.Feed(chunk))
	}
	if !sc.Opaque() || !errors.Is(sc.Err(), errScan) {
		t.Fatalf("an element longer than %d bytes did not make the stream opaque (err %v)", maxHeld, sc.Err())
	}
	if sc.Held() != 0 {
		t.Fatalf("holds %d bytes after turning opaque", sc.Held())
	}
}

// oracle finds the boundaries of a stream with encoding/xml, independently
// of the scanner, applying the same XMPP rules (stream restarts, no comments,
// no text directly inside the stream element). It returns the boundaries the
// scanner must find, the offsets at which it may find one, and the length of
// the longest prefix of in that it can judge.
func oracle(in []byte) (must, may map[int]bool, good int) {
	must, may = make(map[int]bool), make(map[int]bool)
	d := xml.NewDecoder(bytes.NewReader(in))
	depth := 0
	selfClosed := false
	for {
		start := int(d.InputOffset())
		tok, err := d.RawToken()
		if err == io.EOF {
			return must, may, len(in)
		}
		if err != nil {
			return must, may, start
		}
		end := int(d.InputOffset())
		raw := in[start:end]
		boundary := false
		switch tok := tok.(type) {
		case xml.ProcInst:
			if !bytes.HasPrefix(raw, []byte("<?xml")) || len(raw) < 6 ||
				(!isSpace(raw[5]) && raw[5] != '?') || depth > 1 {
				return must, may, start
			}
			depth = 0
			boundary = true
		case xml.StartElement:
			self := bytes.HasSuffix(raw, []byte("/>"))
			selfClosed = self
			switch {
			case depth == 0:
				if !self {
					depth = 1
				}
				boundary = true
			case depth == 1 && tok.Name.Local == "stream" && !self:
				boundary = true
			case depth == 1 && self:
				boundary = true
				if tok.Name.Local == "starttls" {
					// Opaque from here on.
					must[end], may[end] = true, true
					return must, may, end
				}
			case depth == 1:
				depth = 2
				if tok.Name.Local == "starttls" {
					return must, may, start
				}
			case !self:
				depth++
			}
		case xml.EndElement:
			if selfClosed {
				selfClosed = false
				continue
			}
			if depth == 0 {
				return must, may, start
			}
			depth--
			boundary = depth <= 1
		case xml.CharData:
			if bytes.Contains(raw, []byte("<")) {
				// A CDATA section.
				return must, may, start
			}
			if depth > 1 {
				continue
			}
			for i, c := range raw {
				if !isSpace(c) {
					return must, may, start
				}
				may[start+i+1] = true
			}
			boundary = true
		default:
			return must, may, start
		}
		selfClosed = selfClosed && isStart(tok)
		if boundary {
			must[end], may[end] = true, true
		}
	}
}

func isStart(tok xml.Token) bool {
	_, ok := tok.(xml.StartElement)
	return ok
}

func FuzzScanner(f *testing.F) {
	for _, tc := range scannerTests {
		f.Add([]byte(strings.Join(tc.segs, "")+tc.tail), uint16(7))
	}
	f.Add([]byte(decl+header+`<message id='x'><body>&lt;&#x3c;</body></message><r/>`), uint16(3))
	f.Add([]byte(header+`<iq><query xmlns='jabber:iq:roster'><item jid='a@b' name="A > B"/></query></iq>`), uint16(1))
	f.Add([]byte(`<a><b></b></a>`), uint16(0))
	f.Add([]byte("\x00\xff<<>>'\"/"), uint16(2))

	f.Fuzz(func(t *testing.T, in []byte, chunk uint16) {
		sc, b := boundaries(in)
		opaqueAt := len(in)
		if sc.Opaque() {
			// Find where the scanner stopped looking.
			var probe scanner
			for i := range in {
				probe.Feed(in[i : i+1])
				if probe.Opaque() {
					opaqueAt = i + 1
					break
				}
			}
		}

		// Feeding in chunks releases exactly up to the last boundary.
		size := int(chunk%64) + 1
		var csc scanner
		released := 0
		for off := 0; off < len(in); off += size {
			end := min(off+size, len(in))
			out := csc.Feed(in[off:end])
			if !bytes.Equal(out, in[released:released+len(out)]) {
				t.Fatalf("chunks of %d: released bytes are not the next bytes of the input", size)
			}
			if s, e, ok := csc.LastElement(); ok && (s < 0 || e > len(out) || s >= e || out[s] != '<' || out[e-1] != '>') {
				t.Fatalf("chunks of %d: last element at [%d:%d] of %q", size, s, e, out)
			}
			released += len(out)
			if want := lastBoundary(b, end); released != want {
				t.Fatalf("chunks of %d: released %d bytes after %d, want %d", size, released, end, want)
			}
		}

		// Where the input is a well-formed XMPP stream, the boundaries are
		// the oracle's.
		must, may, good := oracle(in)
		limit := min(good, opaqueAt)
		if sc.Err() != nil && opaqueAt < good {
			t.Fatalf("scanner failed at %d, in a well-formed stream up to %d: %v", opaqueAt, good, sc.Err())
		}
		found := make(map[int]bool)
		for _, o := range b {
			found[o] = true
			if o <= limit && !may[o] {
				t.Fatalf("boundary at %d is not between elements: %q|%q", o, in[:o], in[o:])
			}
		}
		for o := range must {
			if o <= limit && !found[o] {
				t.Fatalf("no boundary at %d: %q|%q", o, in[:o], in[o:])
			}
		}
	})
}

func TestScannerLastElement(t *testing.T) {
	msg := `<message id='a>'><body>x</body></message>`
	for _, tc := range []struct {
		name  string
		feeds []string
		want  string // the last element of the last feed, or ""
	}{
		{name: "header", feeds: []string{decl + header}},
		{name: "stanza", feeds: []string{header + msg}, want: msg},
		{name: "last of several", feeds: []string{header + msg + ` <r/> ` + `<a h=`}, want: `<r/>`},
		{name: "across feeds", feeds: []string{header + `<message id='a>'><bo`, `dy>x</body></message> `}, want: msg},
		{name: "previous feed", feeds: []string{header + msg, " "}},
		{name: "restart", feeds: []string{header + `<auth/>`, header}},
		{name: "starttls", feeds: []string{header + `<starttls/>`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sc scanner
			var out []byte
			for _, f := range tc.feeds {
				out = sc.Feed([]byte(f))
			}
			start, end, ok := sc.LastElement()
			if !ok {
				if tc.want != "" {
					t.Fatalf("no element, want %q", tc.want)
				}
				return
			}
			if got := string(out[start:end]); got != tc.want {
				t.Fatalf("last element %q, want %q", got, tc.want)
			}
		})
	}
}
