package stream

import (
	"bytes"
	"encoding/binary"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// nsStreams is the namespace of the stream's own elements (stream:error).
const nsStreams = "http://etherx.jabber.org/streams"

// framer splits what the server sends after negotiation into top-level
// elements, on bytes: it finds where each element ends (tags, quotes,
// comments, CDATA, processing instructions), checks that the element is
// well-formed as far as a reader of it would (matching end tags, attribute
// syntax, characters XML allows, known entities), and hands out its bytes as
// an Element. Nothing is tokenised: the Element parses what is asked of it.
//
// A framer is owned by the connection's reader goroutine.
type framer struct {
	r   io.Reader
	ns  string // the stream's default namespace
	buf []byte // buf[off:end] is unread input
	off int    // where the element being read (or the next construct) starts
	end int
	err error // the read error once input ended

	// The element being read, with positions relative to off:
	depth int
	scan  int      // how far it has been scanned
	names [][2]int // the names of its open elements, outermost first
}

func newFramer(r io.Reader, ns string) *framer {
	return &framer{r: r, ns: ns, buf: make([]byte, 4096)}
}

// syntaxError is what a framer returns for input that is not well-formed:
// an *xml.SyntaxError, as encoding/xml would return.
func syntaxError(format string, args ...interface{}) error {
	return &xml.SyntaxError{Msg: fmt.Sprintf(format, args...)}
}

// next returns the next top-level element. At the end of the server's
// stream (</stream:stream>) it returns io.EOF; when the input ends before,
// io.ErrUnexpectedEOF.
func (f *framer) next() (*Element, error) {
	for {
		el, more, err := f.step()
		if err != nil || el != nil {
			return el, err
		}
		if !more {
			continue
		}
		if err := f.fill(); err != nil {
			return nil, err
		}
	}
}

// fill reads more input, keeping buf[off:end].
func (f *framer) fill() error {
	if f.err != nil {
		if f.err == io.EOF {
			// The connection ended without </stream:stream>.
			return io.ErrUnexpectedEOF
		}
		return f.err
	}
	if f.off > 0 {
		n := copy(f.buf, f.buf[f.off:f.end])
		f.end, f.off = n, 0
	}
	if f.end == len(f.buf) {
		f.buf = append(f.buf, make([]byte, len(f.buf))...)
	}
	n, err := f.r.Read(f.buf[f.end:])
	f.end += n
	if err != nil {
		f.err = err
	}
	if n == 0 && err != nil {
		return f.fill()
	}
	return nil
}

// step scans one construct from off+scan. It returns an element once one is
// complete, more when the input ends inside the construct, or neither when
// it skipped something between elements.
func (f *framer) step() (el *Element, more bool, err error) {
	s := f.buf[f.off:f.end]
	i := f.scan
	if i >= len(s) {
		return nil, true, nil
	}
	if s[i] != '<' {
		// Character data.
		j := bytes.IndexByte(s[i:], '<')
		if j < 0 {
			// Check it once it is whole (a character or a reference
			// may be cut).
			return nil, true, nil
		}
		if err := checkText(s[i : i+j]); err != nil {
			return nil, false, err
		}
		if f.depth == 0 {
			// Between elements: white space (keepalives) is dropped,
			// as the reader always did.
			f.off += i + j
			f.scan = 0
			return nil, false, nil
		}
		f.scan = i + j
		return nil, false, nil
	}
	if len(s)-i < 2 {
		return nil, true, nil
	}
	switch s[i+1] {
	case '?':
		j := bytes.Index(s[i+2:], []byte("?>"))
		if j < 0 {
			return nil, true, nil
		}
		if err := checkPI(s[i+2 : i+2+j]); err != nil {
			return nil, false, err
		}
		if f.depth == 0 {
			f.off += i + 2 + j + 2
			f.scan = 0
		} else {
			f.scan = i + 2 + j + 2
		}
		return nil, false, nil
	case '!':
		var open, endMark string
		switch {
		case bytes.HasPrefix(s[i:], []byte("<!--")):
			// A comment ends at the first "--", which must be
			// followed by '>'.
			open, endMark = "<!--", "--"
		case bytes.HasPrefix(s[i:], []byte("<![CDATA[")):
			open, endMark = "<![CDATA[", "]]>"
		case len(s)-i < len("<![CDATA[") && (bytes.HasPrefix([]byte("<!--"), s[i:min(len(s), i+4)]) ||
			bytes.HasPrefix([]byte("<![CDATA["), s[i:])):
			return nil, true, nil
		default:
			return nil, false, syntaxError("unexpected <! in the stream")
		}
		body := i + len(open)
		j := bytes.Index(s[body:], []byte(endMark))
		if j < 0 {
			return nil, true, nil
		}
		end := body + j + len(endMark)
		if endMark == "--" {
			if end >= len(s) {
				return nil, true, nil
			}
			if s[end] != '>' {
				return nil, false, syntaxError(`invalid sequence "--" not allowed in comments`)
			}
			end++
		}
		if err := checkChars(s[body:body+j], false); err != nil {
			return nil, false, err
		}
		if f.depth == 0 {
			f.off += end
			f.scan = 0
		} else {
			f.scan = end
		}
		return nil, false, nil
	case '/':
		j := bytes.IndexByte(s[i:], '>')
		if j < 0 {
			return nil, true, nil
		}
		name := bytes.TrimRight(s[i+2:i+j], " \t\r\n")
		if f.depth == 0 {
			if string(name) == "stream:stream" {
				return nil, false, io.EOF
			}
			return nil, false, syntaxError("unexpected end element </%s>", name)
		}
		open := f.names[len(f.names)-1]
		if !bytes.Equal(name, s[open[0]:open[1]]) {
			return nil, false, syntaxError("element <%s> closed by </%s>", s[open[0]:open[1]], name)
		}
		f.names = f.names[:len(f.names)-1]
		f.depth--
		f.scan = i + j + 1
		if f.depth > 0 {
			return nil, false, nil
		}
		el, err := f.emit(s[:f.scan])
		return el, false, err
	}
	t, ok, err := parseTag(s, i, true)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		return nil, true, nil
	}
	if err := checkChars(s[i:t.end], true); err != nil {
		return nil, false, err
	}
	if f.depth == 0 && i > 0 {
		// Elements start at off.
		f.off += i
		t.shift(-i)
		s = f.buf[f.off:f.end]
	}
	f.scan = t.end
	if t.empty {
		if f.depth == 0 {
			el, err := f.emit(s[:f.scan])
			return el, false, err
		}
		return nil, false, nil
	}
	f.depth++
	f.names = append(f.names, [2]int{t.nameStart, t.nameEnd})
	return nil, false, nil
}

// emit ends the element b (at off) and returns it.
func (f *framer) emit(b []byte) (*Element, error) {
	f.off += len(b)
	f.scan = 0
	f.names = f.names[:0]
	return newElement(string(b), f.ns), nil
}

// tag is a start tag found in the input: positions relative to its input.
type tag struct {
	nameStart, nameEnd int
	end                int // just past the '>'
	empty              bool
}

func (t *tag) shift(d int) {
	t.nameStart += d
	t.nameEnd += d
	t.end += d
}

// parseTag reads the start tag at s[i] == '<'. ok is false when s ends
// inside it. With check, it checks the names of the element and its
// attributes (see checkName); the rest of its syntax it always checks.
func parseTag[T ~string | ~[]byte](s T, i int, check bool) (t tag, ok bool, err error) {
	j := i + 1
	t.nameStart = j
	for j < len(s) && !isSpace(s[j]) && s[j] != '/' && s[j] != '>' {
		j++
	}
	t.nameEnd = j
	if j < len(s) && t.nameEnd == t.nameStart {
		return t, false, syntaxError("start tag without a name")
	}
	if check && j < len(s) {
		if err := checkName(s[t.nameStart:t.nameEnd], true); err != nil {
			return t, false, err
		}
	}
	var seen [8][2]int
	names := seen[:0] // where the attributes' names are, with check
	for {
		for j < len(s) && isSpace(s[j]) {
			j++
		}
		if j >= len(s) {
			return t, false, nil
		}
		switch s[j] {
		case '>':
			t.end = j + 1
			return t, true, nil
		case '/':
			if j+1 >= len(s) {
				return t, false, nil
			}
			if s[j+1] != '>' {
				return t, false, syntaxError("expected /> in a start tag")
			}
			t.end, t.empty = j+2, true
			return t, true, nil
		case '<':
			return t, false, syntaxError("unexpected < in a start tag")
		}
		// An attribute: name, '=', a quoted value.
		n := j
		for j < len(s) && !isSpace(s[j]) && s[j] != '=' && s[j] != '>' && s[j] != '/' {
			j++
		}
		if j == n && j < len(s) {
			return t, false, syntaxError("attribute without a name")
		}
		if check && j < len(s) {
			if err := checkName(s[n:j], true); err != nil {
				return t, false, err
			}
			// XML allows an attribute once in a tag (encoding/xml
			// does not check, and would resolve a repeated xmlns
			// otherwise than Element does).
			for _, p := range names {
				if string(s[p[0]:p[1]]) == string(s[n:j]) {
					return t, false, syntaxError("attribute %s repeated", string(s[n:j]))
				}
			}
			names = append(names, [2]int{n, j})
		}
		for j < len(s) && isSpace(s[j]) {
			j++
		}
		if j >= len(s) {
			return t, false, nil
		}
		if s[j] != '=' {
			return t, false, syntaxError("attribute without a value")
		}
		j++
		for j < len(s) && isSpace(s[j]) {
			j++
		}
		if j >= len(s) {
			return t, false, nil
		}
		q := s[j]
		if q != '\'' && q != '"' {
			return t, false, syntaxError("unquoted attribute value")
		}
		j++
		for j < len(s) && s[j] != q {
			if s[j] == '<' {
				return t, false, syntaxError("unescaped < in an attribute value")
			}
			j++
		}
		if j >= len(s) {
			return t, false, nil
		}
		j++
		if j < len(s) && !isSpace(s[j]) && s[j] != '>' && s[j] != '/' {
			return t, false, syntaxError("attributes not separated by space")
		}
	}
}

func isSpace(c byte) bool { return byteClass[c]&classSpace != 0 }

const (
	classSpace = 1 << iota // white space
	className              // read by encoding/xml as part of a name
)

var byteClass = func() (t [256]uint8) {
	for _, c := range []byte(" \t\r\n") {
		t[c] |= classSpace
	}
	for c := 0; c < 256; c++ {
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '_' || c == ':' || c == '.' || c == '-' {
			t[c] |= className
		}
	}
	return t
}()

// plainASCII reports whether the eight bytes of w are all in 0x20-0x7F and
// none is '&': characters that need no check.
func plainASCII(w uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	below := (w - 0x20*lo) &^ w & hi // a byte below 0x20 (or >= 0x80)
	amp := w ^ '&'*lo
	amp = (amp - lo) &^ amp & hi // a byte equal to '&'
	return (w|below|amp)&hi == 0
}

// checkChars reports the first character XML does not allow in b and, with
// refs, the first reference encoding/xml would not know: what would make the
// element unreadable.
func checkChars(b []byte, refs bool) error {
	for i := 0; i < len(b); {
		// Eight bytes at a time while they are printable ASCII and no
		// '&'.
		for i+8 <= len(b) && plainASCII(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		if i >= len(b) {
			break
		}
		c := b[i]
		switch {
		case c >= 0x20 && c < 0x80:
			if c == '&' && refs {
				n, err := checkEntity(b[i:])
				if err != nil {
					return err
				}
				i += n
				continue
			}
			i++
		case c == '\t' || c == '\n' || c == '\r':
			i++
		case c < 0x20:
			return syntaxError("illegal character code %U", rune(c))
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				return syntaxError("invalid UTF-8")
			}
			if !isXMLChar(r) {
				return syntaxError("illegal character code %U", r)
			}
			i += n
		}
	}
	return nil
}

// checkText checks character data: its characters and references, and
// that it has no "]]>", as encoding/xml does.
func checkText(b []byte) error {
	if err := checkChars(b, true); err != nil {
		return err
	}
	if bytes.IndexByte(b, '>') >= 0 && bytes.Contains(b, []byte("]]>")) {
		return syntaxError("unescaped ]]> not in CDATA section")
	}
	return nil
}

// checkPI checks the inside of a processing instruction: a target that is a
// name, other than xml (an XML declaration may only start a document), and
// characters XML allows.
func checkPI(b []byte) error {
	n := 0
	for n < len(b) && (b[n] >= utf8.RuneSelf || nameByte(b[n])) {
		n++
	}
	if n == 0 {
		return syntaxError("expected target name after <?")
	}
	if err := checkName(b[:n], false); err != nil {
		return err
	}
	if bytes.EqualFold(b[:n], []byte("xml")) {
		return syntaxError("XML declaration inside the stream")
	}
	return checkChars(b[n:], false)
}

// nameByte reports whether encoding/xml reads c as part of a name.
func nameByte(c byte) bool { return byteClass[c]&className != 0 }

// checkName checks that b is a name as encoding/xml reads one and, with
// qname, a qualified name as namespaces in XML require: no more than one
// colon, and not first or last.
func checkName[T ~string | ~[]byte](b T, qname bool) error {
	if len(b) == 0 {
		return syntaxError("expected a name")
	}
	ascii := true
	colon := -1
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= utf8.RuneSelf:
			ascii = false
		case !nameByte(c):
			return syntaxError("invalid XML name: %q", string(b))
		case c == ':' && qname:
			if colon >= 0 || i == 0 || i == len(b)-1 {
				return syntaxError("invalid qualified name: %q", string(b))
			}
			colon = i
		}
	}
	if !ascii {
		// Rare: let encoding/xml judge the characters.
		d := xml.NewDecoder(strings.NewReader("<?" + string(b) + "?>"))
		tok, err := d.RawToken()
		if pi, ok := tok.(xml.ProcInst); err != nil || !ok || pi.Target != string(b) {
			return syntaxError("invalid XML name: %q", string(b))
		}
		return nil
	}
	if c := b[0]; c >= '0' && c <= '9' || c == '.' || c == '-' {
		return syntaxError("invalid XML name: %q", string(b))
	}
	return nil
}

// checkEntity checks the reference at b[0] == '&' and returns its length.
func checkEntity(b []byte) (int, error) {
	end := bytes.IndexByte(b, ';')
	if end < 0 {
		return 0, syntaxError("invalid character entity")
	}
	name := string(b[1:end])
	switch name {
	case "lt", "gt", "amp", "apos", "quot":
		return end + 1, nil
	}
	if len(name) < 2 || name[0] != '#' {
		return 0, syntaxError("invalid character entity &%s;", name)
	}
	var r rune
	digits := name[1:]
	base := rune(10)
	if digits[0] == 'x' {
		digits, base = digits[1:], 16
	}
	if digits == "" {
		return 0, syntaxError("invalid character entity &%s;", name)
	}
	for _, c := range []byte(digits) {
		if r > 0x10FFFF {
			r = 0x110000 // any number past the last character
		}
		var d rune
		switch {
		case c >= '0' && c <= '9':
			d = rune(c - '0')
		case base == 16 && c >= 'a' && c <= 'f':
			d = rune(c-'a') + 10
		case base == 16 && c >= 'A' && c <= 'F':
			d = rune(c-'A') + 10
		default:
			return 0, syntaxError("invalid character entity &%s;", name)
		}
		r = r*base + d
	}
	if !isXMLChar(r) {
		return 0, syntaxError("invalid character entity &%s;", name)
	}
	return end + 1, nil
}

// isXMLChar reports whether r is a character XML 1.0 allows.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}
