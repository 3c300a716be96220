package stream

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// fuzzHeader is the stream header the framer's input follows.
const fuzzHeader = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' " +
	"from='example.test' id='s1' version='1.0' xml:lang='en'>"

// verdict is how reading a stream ended.
type verdict int

const (
	endStream verdict = iota // </stream:stream>: io.EOF from the framer
	endCut                   // the input ended first: io.ErrUnexpectedEOF
	endBad                   // the input is not well-formed
)

func (v verdict) String() string {
	return [...]string{"</stream:stream>", "cut short", "not well-formed"}[v]
}

// decoded is what encoding/xml reads from a stream's body.
type decoded struct {
	elems []decodedElem
	end   verdict
	err   error
	errAt int // with endBad: the decoder's offset in the body after the error

	// stricter is why the framer may reject the body where encoding/xml
	// does not (see FuzzFramer), at or before element number strictAt.
	stricter string
	strictAt int
}

type decodedElem struct {
	raw  string
	toks []xml.Token
}

// decodeBody reads fuzzHeader+body with encoding/xml as the stream's reader
// would, element by element.
func decodeBody(body []byte) decoded {
	var out decoded
	d := xml.NewDecoder(io.MultiReader(strings.NewReader(fuzzHeader), bytes.NewReader(body)))
	if _, err := d.Token(); err != nil {
		panic(err)
	}
	hl := int64(len(fuzzHeader))
	strict := func(why string) {
		if out.stricter == "" {
			out.stricter, out.strictAt = why, len(out.elems)
		}
	}
	fail := func(err error) decoded {
		out.err = err
		var syn *xml.SyntaxError
		if errors.As(err, &syn) && strings.HasPrefix(syn.Msg, "unexpected EOF") {
			out.end = endCut
		} else {
			out.end = endBad
			out.errAt = int(d.InputOffset() - hl)
		}
		return out
	}
	for {
		start := d.InputOffset() - hl
		tok, err := d.Token()
		if err != nil {
			return fail(err)
		}
		switch tok := tok.(type) {
		case xml.EndElement:
			// Token has checked that it ends the stream.
			out.end = endStream
			return out
		case xml.StartElement:
			toks := []xml.Token{tok.Copy()}
			strictToken(tok, strict)
			for depth := 1; depth > 0; {
				tok, err := d.Token()
				if err != nil {
					return fail(err)
				}
				switch tok.(type) {
				case xml.StartElement:
					depth++
				case xml.EndElement:
					depth--
				}
				strictToken(tok, strict)
				toks = append(toks, xml.CopyToken(tok))
			}
			out.elems = append(out.elems, decodedElem{string(body[start : d.InputOffset()-hl]), toks})
		default:
			// Character data, comments and processing instructions
			// between elements.
			strictToken(tok, strict)
		}
	}
}

// strictToken calls strict for what encoding/xml reads that the framer
// rejects on purpose.
func strictToken(tok xml.Token, strict func(string)) {
	name := func(n xml.Name) {
		// encoding/xml reads ":a" and "a:" as local names; namespaces in
		// XML (which XMPP requires) do not allow them.
		if strings.Contains(n.Local, ":") {
			strict("a name with an empty prefix or local part")
		}
	}
	switch tok := tok.(type) {
	case xml.StartElement:
		name(tok.Name)
		for i, a := range tok.Attr {
			name(a.Name)
			for _, b := range tok.Attr[:i] {
				if a.Name == b.Name {
					// Not well-formed, but encoding/xml does
					// not check.
					strict("an attribute repeated")
				}
			}
		}
	case xml.EndElement:
		name(tok.Name)
	case xml.Directive:
		strict("a directive (DTD)")
	case xml.ProcInst:
		if strings.EqualFold(tok.Target, "xml") {
			strict("an XML declaration after the start")
		}
		if !xmlChars(tok.Inst) {
			strict("a character XML does not allow in a processing instruction")
		}
	case xml.Comment:
		if !xmlChars(tok) {
			strict("a character XML does not allow in a comment")
		}
	}
}

func xmlChars(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 || !isXMLChar(r) {
			return false
		}
		b = b[n:]
	}
	return true
}

// framed is what the framer reads from a stream's body.
type framed struct {
	elems   []*Element
	end     verdict
	err     error
	scanned int // with endCut: how far into the body the framer has checked
}

func frameBody(r io.Reader) framed {
	var out framed
	cr := &countReader{r: r}
	f := newFramer(cr, "jabber:client")
	for {
		el, err := f.next()
		if err != nil {
			out.err = err
			var syn *xml.SyntaxError
			switch {
			case err == io.EOF:
				out.end = endStream
			case err == io.ErrUnexpectedEOF:
				out.end = endCut
			case errors.As(err, &syn):
				out.end = endBad
			default:
				panic(fmt.Sprintf("framer: unexpected error %T %v", err, err))
			}
			// buf[:end] is the last of what was read.
			out.scanned = cr.n - f.end + f.off + f.scan
			return out
		}
		out.elems = append(out.elems, el)
	}
}

type countReader struct {
	r io.Reader
	n int
}

func (r *countReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += n
	return n, err
}

// chunkReader returns its input in reads of 1 to max bytes, in a pattern
// drawn from seed.
type chunkReader struct {
	b    []byte
	max  int
	seed uint32
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	r.seed ^= r.seed << 13
	r.seed ^= r.seed >> 17
	r.seed ^= r.seed << 5
	n := 1 + int(r.seed%uint32(r.max))
	n = min(n, len(p), len(r.b))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// FuzzFramer compares the framer with encoding/xml reading the same stream:
// the framer must hand out the same top-level elements, each its bytes as
// encoding/xml read them (and so the same tokens, names resolved), and end
// the same way: at </stream:stream> (io.EOF), when the input is cut short
// (io.ErrUnexpectedEOF, encoding/xml's "unexpected EOF"), or on input that
// is not well-formed. However the input is split into reads, the framer
// reads the same.
//
// Where the two may differ:
//
//   - Between elements the framer drops character data, comments and
//     processing instructions; encoding/xml returns them as tokens. They
//     are not compared, but both must accept or reject them.
//   - The framer checks a construct once it is whole. When the input ends
//     inside one that encoding/xml already rejected, the framer may say the
//     input was cut short, provided encoding/xml failed beyond what the
//     framer had checked.
//   - The framer rejects on purpose, where encoding/xml does not: a
//     directive (<!DOCTYPE and the like: XMPP allows no DTD); an XML
//     declaration (<?xml ...?>, in any case) after the stream's start;
//     characters XML does not allow in a comment or a processing
//     instruction (encoding/xml does not check those); names with an
//     empty prefix or local part (":a", "a:", which namespaces in XML
//     forbid); an attribute repeated in a tag (encoding/xml keeps both,
//     and Element and encoding/xml would not agree on which counts);
//     attributes not separated by white space; a character
//     reference to a surrogate (encoding/xml reads U+FFFD). Then the
//     framer's elements are those encoding/xml read before.
//
// Run it with: go test -run '^$' -fuzz FuzzFramer ./stream
func FuzzFramer(f *testing.F) {
	for _, s := range framerSeeds {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, body []byte, split uint8) {
		want := decodeBody(body)
		got := frameBody(bytes.NewReader(body))
		checkFramed(t, body, got, want)

		// Split at every byte, and in reads of 1 to n bytes.
		one := frameBody(&chunkReader{b: body, max: 1, seed: 1})
		sameFramed(t, "read a byte at a time", one, got)
		some := frameBody(&chunkReader{b: body, max: 1 + int(split%64), seed: uint32(split)*2654435761 + 1})
		sameFramed(t, fmt.Sprintf("read in chunks of up to %d", 1+split%64), some, got)
	})
}

func sameFramed(t *testing.T, how string, a, b framed) {
	t.Helper()
	if len(a.elems) != len(b.elems) || a.end != b.end || fmt.Sprint(a.err) != fmt.Sprint(b.err) {
		t.Fatalf("%s: %d elements, %v (%v); read whole: %d elements, %v (%v)",
			how, len(a.elems), a.end, a.err, len(b.elems), b.end, b.err)
	}
	for i := range a.elems {
		if a.elems[i].String() != b.elems[i].String() {
			t.Fatalf("%s: element %d is %q; read whole: %q", how, i, a.elems[i], b.elems[i])
		}
	}
}

// checkFramed compares the framer's reading of body with encoding/xml's,
// under the rules of FuzzFramer.
func checkFramed(t *testing.T, body []byte, got framed, want decoded) {
	t.Helper()
	n := len(want.elems)
	strict := -1 // with the framer rejecting on purpose: the elements before
	if got.end == endBad {
		switch {
		case framerStricter(got.err):
			strict = len(got.elems)
		case want.stricter != "":
			strict = want.strictAt
		}
	}
	switch {
	case strict >= 0 && len(got.elems) == strict && strict <= n:
		// The framer rejects what encoding/xml reads, on purpose.
		n = strict
	case got.end == want.end:
	case got.end == endCut && want.end == endBad && want.errAt > got.scanned:
		// encoding/xml failed in what the framer had yet to check.
	default:
		t.Fatalf("body %q:\nframer: %d elements, %v (%v)\nencoding/xml: %d elements, %v (%v), stricter: %q at %d",
			body, len(got.elems), got.end, got.err, len(want.elems), want.end, want.err, want.stricter, want.strictAt)
	}
	if len(got.elems) != n {
		t.Fatalf("body %q:\nframer: %d elements, %v (%v)\nencoding/xml: %d elements, %v (%v), stricter: %q at %d",
			body, len(got.elems), got.end, got.err, len(want.elems), want.end, want.err, want.stricter, want.strictAt)
	}
	for i, el := range got.elems {
		checkElement(t, i, el, want.elems[i])
	}
}

// framerStricter reports whether err is the framer rejecting on purpose what
// encoding/xml reads.
func framerStricter(err error) bool {
	var syn *xml.SyntaxError
	if !errors.As(err, &syn) {
		return false
	}
	switch {
	case syn.Msg == "attributes not separated by space",
		strings.HasPrefix(syn.Msg, "unexpected <!"),
		strings.HasPrefix(syn.Msg, "invalid qualified name"),
		strings.HasPrefix(syn.Msg, "attribute ") && strings.HasSuffix(syn.Msg, " repeated"):
		return true
	case strings.HasPrefix(syn.Msg, "invalid character entity &#"):
		ref := strings.TrimSuffix(strings.TrimPrefix(syn.Msg, "invalid character entity &#"), ";")
		base := 10
		if strings.HasPrefix(ref, "x") {
			ref, base = ref[1:], 16
		}
		r, err := strconv.ParseUint(ref, base, 64)
		return err == nil && r >= 0xD800 && r <= 0xDFFF
	}
	return false
}

// checkElement compares an element the framer handed out with what
// encoding/xml read: its bytes, its tokens when decoded again (in the
// stream's namespaces), and what Element reads of it on bytes.
func checkElement(t *testing.T, i int, el *Element, want decodedElem) {
	t.Helper()
	if el.String() != want.raw {
		t.Fatalf("element %d: framer %q, encoding/xml %q", i, el, want.raw)
	}
	d := xml.NewDecoder(strings.NewReader(fuzzHeader + el.String()))
	d.Token()
	var toks []xml.Token
	for depth := 0; ; {
		tok, err := d.Token()
		if err != nil {
			t.Fatalf("element %d %q: decoding it again: %v", i, el, err)
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
		toks = append(toks, xml.CopyToken(tok))
		if depth == 0 {
			break
		}
	}
	if !reflect.DeepEqual(toks, want.toks) {
		t.Fatalf("element %d %q: decoded again\n%#v\nencoding/xml read\n%#v", i, el, toks, want.toks)
	}

	// What handlers read.
	start := want.toks[0].(xml.StartElement)
	if el.Name() != start.Name {
		t.Fatalf("element %d %q: Name %v, encoding/xml %v", i, el, el.Name(), start.Name)
	}
	for _, a := range start.Attr {
		if a.Name.Space != "" {
			continue
		}
		if got, want := el.Attr(a.Name.Local), xstanza.Attr(start, a.Name.Local); got != want {
			t.Fatalf("element %d %q: Attr(%q) = %q, encoding/xml %q", i, el, a.Name.Local, got, want)
		}
	}
	if got := el.Tokens(); !reflect.DeepEqual(got, want.toks[1:]) {
		t.Fatalf("element %d %q: Tokens\n%#v\nencoding/xml read\n%#v", i, el, got, want.toks[1:])
	}
	var children []xml.Name
	depth := 0
	for _, tok := range want.toks[1:] {
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				children = append(children, tok.Name)
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	var got []xml.Name
	el.Children(func(c Tag) bool {
		got = append(got, c.Name())
		return true
	})
	if !reflect.DeepEqual(got, children) {
		t.Fatalf("element %d %q: Children %v, encoding/xml %v", i, el, got, children)
	}
}

// framerSeeds are what servers send, and the corners of XML.
var framerSeeds = []string{
	// A room's traffic from Prosody.
	"<message from='room@conference.example.test/bob' type='groupchat' id='b7Qd9x2VfG1kLmN3pR5sTw' to='bot@example.test/r1' xml:lang='en'>" +
		"<body>message 000001 from bob, a line of ordinary length</body>" +
		"<origin-id xmlns='urn:xmpp:sid:0' id='Zq8Yx7Wv6Ut5Sr4Qp3On2M'/>" +
		"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='dGhlIG9jY3VwYW50IGlkIG9mIGJvYg=='/>" +
		"<stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.example.test' id='a1B2c3D4e5F6g7H8i9J0kL'/></message>" +
		"\n<r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='12'/> </stream:stream>",
	"<presence from='room@conference.example.test/bot' to='bot@example.test/r1' id='p1'>" +
		"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='b2NjdXBhbnQ='/>" +
		"<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' jid='bot@example.test/r1' role='participant'/>" +
		"<status code='110'/><status code='100'/><status code='201'/></x></presence>" +
		"<message from='room@conference.example.test' type='groupchat' id='subj'><subject>Today: &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;</subject></message>",
	// Receipts and markers, in both quotes, with a default namespace.
	"<message from=\"alice@example.test/phone\" to=\"bot@example.test/r1\" id=\"rcpt-1\"><received xmlns=\"urn:xmpp:receipts\" id=\"m-42\"/>" +
		"<displayed xmlns='urn:xmpp:chat-markers:0' id='m-42'/><store xmlns='urn:xmpp:hints'/></message>",
	// IQs: a ping, a result, an error with prefixed elements.
	"<iq type='get' id='ping1' from='example.test' to='bot@example.test/r1'><ping xmlns='urn:xmpp:ping'/></iq>" +
		"<iq type='result' id='q1'/>" +
		"<iq type='error' id='q2'><error type='cancel' by='example.test'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" +
		"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>No such &#x2603; here</text></error></iq>",
	"<iq type='result' id='disco'><q:query xmlns:q='http://jabber.org/protocol/disco#info'><q:identity category='conference' type='text' name='Room \u00e9 \u65e5\u672c \U0001F600'/></q:query></iq>",
	// CDATA, comments, processing instructions, references.
	"<message id='c'><body><![CDATA[<not> & markup ]] ]>]]> and &#60;&#x3C;&#X3C;</body></message>",
	"<message id='c'><body><![CDATA[a]]>&#65;&#x42;&#x000043;&#0000000000000068;</body></message>",
	"<!-- between --><?pi between?>\n\t\r <message id='p'><!-- in --><body>x<?pi in ?></body></message>",
	"<!-->--><message/>",
	"<!--><message/>-->",
	"<!-- x --->", "<!--",
	"<!-- a -- b --><message/>",
	"<!---->",
	"<?xml version='1.0'?><message/>",
	"<??><message/>",
	"<message><body>a ]]> b</body></message>",
	"<message a='1'b='2'/>",
	"<message a:b:c='1'/>",
	"<message a\"b='1'/>",
	"<me\"ssage/>",
	"<:a/>", "<a:/>", "<a xmlns:='x'/>",
	"<message><body>&#xD800;</body></message>",
	"<message><body>&#0;</body></message>",
	"<message><body>&#x110000;</body></message>",
	"<message><body>&unknown;</body></message>",
	"<message><body>&amp</body></message>",
	"<!DOCTYPE x><message/>",
	"<message><!DOCTYPE x></message>",
	"<message><![CDATx[a]]></message>",
	// Stream errors and the end.
	"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced</text></stream:error></stream:stream>",
	"</stream:stream >",
	"</stream:stream",
	"</stream>",
	"<message><body>cut",
	"<message a='cut",
	"<message><body>bad \x00 byte, then cut",
	"text between <message/> elements",
	"<message><body>\xff</body></message>",
	"<message><body>\ufffe</body></message>",
	"<a><b></a></b>",
	"<a></a >",
	"</a>",
	"<a/ >",
	"<a b='<'/>",
	"<a b = \"x\" c\t=\n'y'/>",
	"<a xmlns='x' xmlns=''/>",
	"<a b='1' c='2' d='3' e='4' f='5' g='6' h='7' i='8' j='9' b='10'/>",
}

// TestPlainASCII checks the word-at-a-time test of checkChars against the
// byte-at-a-time one.
func TestPlainASCII(t *testing.T) {
	x := uint64(0x9E3779B97F4A7C15)
	for i := 0; i < 1_000_000; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		w := x
		// Mostly printable words, with a byte changed now and then.
		for k := 0; k < 8; k++ {
			b := byte(w >> (8 * k))
			if i%3 != 0 {
				b = 0x20 + b%0x60
			}
			w = w&^(0xFF<<(8*k)) | uint64(b)<<(8*k)
		}
		want := true
		for k := 0; k < 8; k++ {
			b := byte(w >> (8 * k))
			if b < 0x20 || b >= 0x80 || b == '&' {
				want = false
			}
		}
		if got := plainASCII(w); got != want {
			t.Fatalf("plainASCII(%#016x) = %v, want %v", w, got, want)
		}
	}
}
