package stream

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strings"

	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// Element is one inbound stanza as the server sent it: its bytes, start tag
// to end tag. Reading it parses only what is asked for: Name and Attr read
// the start tag, Child and Children the start tags of its children, all
// from the bytes and without allocating; Start, Reader, InnerReader, Tokens
// and Decode decode it with encoding/xml each time they are called.
//
// An Element never changes once the stream hands it out: a handler may keep
// it and read it later, from any goroutine, as often as it likes.
type Element struct {
	raw  string   // the element, start tag to end tag
	ns   string   // the default namespace around it
	name xml.Name // resolved
	tag  string   // its start tag
}

// newElement returns the element raw, well-formed and complete, read where
// ns is the default namespace.
func newElement(raw, ns string) *Element {
	t, _, _ := parseTag(raw, 0, false)
	e := &Element{raw: raw, ns: ns, tag: raw[:t.end]}
	e.name = resolve(raw[t.nameStart:t.nameEnd], e.tag, "", ns)
	return e
}

// ParseElement reads one complete element from b, as the stream's reader
// would, with no default namespace around it (tests of handlers build their
// stanzas with it). Anything after the element is ignored.
func ParseElement(b []byte) (*Element, error) {
	f := newFramer(bytes.NewReader(b), "")
	el, err := f.next()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return el, err
}

// String returns the element's bytes as the server sent them.
func (e *Element) String() string { return e.raw }

// Name returns the element's name, its namespace resolved.
func (e *Element) Name() xml.Name { return e.name }

// Attr returns the value of the unqualified attribute local of the stanza.
func (e *Element) Attr(local string) string {
	return Tag{tag: e.tag}.attr(local, e)
}

// Start returns the start element, decoded with encoding/xml.
func (e *Element) Start() (xml.StartElement, error) {
	tok, err := e.decoder().Token()
	if err != nil {
		return xml.StartElement{Name: e.name}, err
	}
	start, _ := tok.(xml.StartElement)
	return start.Copy(), nil
}

// Reader returns the whole element as tokens, start first, decoded from its
// bytes.
func (e *Element) Reader() xml.TokenReader {
	return &oneElement{d: e.decoder()}
}

// InnerReader returns the tokens after the start element, the end element
// last, as mellium's handlers expect them.
func (e *Element) InnerReader() xml.TokenReader {
	r := &oneElement{d: e.decoder()}
	if _, err := r.Token(); err != nil {
		return errReader{err}
	}
	return r
}

// oneElement reads one element from d and then io.EOF, whatever follows it
// (the end of the stream element that decoder wraps some elements in).
type oneElement struct {
	d     *xml.Decoder
	depth int
	done  bool
}

func (r *oneElement) Token() (xml.Token, error) {
	if r.done {
		return nil, io.EOF
	}
	tok, err := r.d.Token()
	if err != nil {
		return tok, err
	}
	switch tok.(type) {
	case xml.StartElement:
		r.depth++
	case xml.EndElement:
		r.depth--
		r.done = r.depth == 0
	}
	return tok, nil
}

// Tokens returns the tokens after the start element, the end element last,
// each a copy that stays valid.
func (e *Element) Tokens() []xml.Token {
	r := e.InnerReader()
	var toks []xml.Token
	for {
		tok, err := r.Token()
		if err != nil {
			return toks
		}
		toks = append(toks, xml.CopyToken(tok))
	}
}

// Decode unmarshals the element into v with encoding/xml.
func (e *Element) Decode(v interface{}) error {
	return e.decoder().Decode(v)
}

// Error returns the stanza error inside an error stanza, parsed by mellium.
func (e *Element) Error() (*stanza.Error, bool) {
	if e.Attr("type") != "error" {
		return nil, false
	}
	return xstanza.Error(e.Tokens())
}

// decoder decodes the element in the namespaces around it.
func (e *Element) decoder() *xml.Decoder {
	if strings.Contains(e.raw, "stream:") {
		d := xml.NewDecoder(strings.NewReader("<stream:stream xmlns='" + e.ns + "' xmlns:stream='" + nsStreams + "'>" + e.raw))
		d.Token()
		return d
	}
	d := xml.NewDecoder(strings.NewReader(e.raw))
	d.DefaultSpace = e.ns
	return d
}

type errReader struct{ err error }

func (r errReader) Token() (xml.Token, error) { return nil, r.err }

// Tag is the start tag of a child of an Element, read from its bytes.
type Tag struct {
	name xml.Name
	tag  string
	el   *Element
}

// Name returns the child's name, its namespace resolved.
func (t Tag) Name() xml.Name { return t.name }

// Attr returns the value of the child's unqualified attribute local.
func (t Tag) Attr(local string) string { return t.attr(local, t.el) }

// attr finds attribute local in the tag; a value with references or line
// ends is decoded by encoding/xml as the tag's element would be.
func (t Tag) attr(local string, el *Element) string {
	a := attrs{s: t.tag}
	a.skipName()
	for {
		name, value, ok := a.next()
		if !ok {
			return ""
		}
		if name != local {
			continue
		}
		if strings.IndexByte(value, '&') < 0 && strings.IndexByte(value, '\r') < 0 {
			return value
		}
		return decodeAttr(t.tag, local, el)
	}
}

// decodeAttr decodes attribute local of the start tag tag with encoding/xml.
func decodeAttr(tag, local string, el *Element) string {
	ns := ""
	if el != nil {
		ns = el.ns
	}
	if !strings.HasSuffix(tag, "/>") {
		tag = tag[:len(tag)-1] + "/>"
	}
	d := xml.NewDecoder(strings.NewReader(tag))
	d.DefaultSpace = ns
	tok, err := d.Token()
	if err != nil {
		return ""
	}
	start, _ := tok.(xml.StartElement)
	return xstanza.Attr(start, local)
}

// Children calls yield with the start tag of each child element of e, in
// order, until yield returns false. It reads the bytes only.
func (e *Element) Children(yield func(Tag) bool) {
	s := e.raw
	i := len(e.tag)
	if strings.HasSuffix(e.tag, "/>") {
		return
	}
	depth := 0
	for {
		j := strings.IndexByte(s[i:], '<')
		if j < 0 {
			return
		}
		i += j
		switch {
		case strings.HasPrefix(s[i:], "<!--"):
			i += len("<!--") + strings.Index(s[i+len("<!--"):], "-->") + len("-->")
		case strings.HasPrefix(s[i:], "<![CDATA["):
			i += len("<![CDATA[") + strings.Index(s[i+len("<![CDATA["):], "]]>") + len("]]>")
		case strings.HasPrefix(s[i:], "<?"):
			i += 2 + strings.Index(s[i+2:], "?>") + 2
		case strings.HasPrefix(s[i:], "</"):
			if depth == 0 {
				return // e's own end
			}
			depth--
			i += strings.IndexByte(s[i:], '>') + 1
		default:
			t, _, _ := parseTag(s, i, false)
			if depth == 0 {
				tag := s[i:t.end]
				c := Tag{tag: tag, el: e, name: resolve(s[t.nameStart:t.nameEnd], tag, e.tag, e.ns)}
				if !yield(c) {
					return
				}
			}
			if !t.empty {
				depth++
			}
			i = t.end
		}
	}
}

// Child returns the start tag of the first child of e named local in
// namespace space.
func (e *Element) Child(space, local string) (Tag, bool) {
	var found Tag
	ok := false
	e.Children(func(t Tag) bool {
		if t.name.Local == local && t.name.Space == space {
			found, ok = t, true
			return false
		}
		return true
	})
	return found, ok
}

// resolve returns the name qname of the element whose start tag is tag,
// inside the element whose start tag is parent (empty for a top-level
// element), where ns is the default namespace around them both.
func resolve(qname, tag, parent, ns string) xml.Name {
	prefix, local, ok := strings.Cut(qname, ":")
	if !ok {
		local, prefix = qname, ""
	}
	if prefix == "xml" {
		return xml.Name{Space: "http://www.w3.org/XML/1998/namespace", Local: local}
	}
	decl := "xmlns"
	if prefix != "" {
		decl = "xmlns:" + prefix
	}
	for _, t := range [2]string{tag, parent} {
		if t == "" {
			continue
		}
		a := attrs{s: t}
		a.skipName()
		for {
			name, value, more := a.next()
			if !more {
				break
			}
			if name == decl {
				return xml.Name{Space: value, Local: local}
			}
		}
	}
	switch {
	case prefix == "":
		return xml.Name{Space: ns, Local: local}
	case prefix == "stream" && parent == "":
		return xml.Name{Space: nsStreams, Local: local}
	}
	// An undeclared prefix: encoding/xml keeps it as the space.
	return xml.Name{Space: prefix, Local: local}
}

// attrs walks the attributes of a well-formed start tag.
type attrs struct {
	s string
	i int
}

func (a *attrs) skipName() {
	a.i = 1
	for a.i < len(a.s) && !isSpace(a.s[a.i]) && a.s[a.i] != '/' && a.s[a.i] != '>' {
		a.i++
	}
}

// next returns the next attribute's name and raw value.
func (a *attrs) next() (name, value string, ok bool) {
	s := a.s
	i := a.i
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	if i >= len(s) || s[i] == '/' || s[i] == '>' {
		return "", "", false
	}
	n := i
	for s[i] != '=' && !isSpace(s[i]) {
		i++
	}
	name = s[n:i]
	for s[i] != '\'' && s[i] != '"' {
		i++
	}
	q := s[i]
	v := i + 1
	end := v + strings.IndexByte(s[v:], q)
	a.i = end + 1
	return name, s[v:end], true
}

// encodeStanza serialises one top-level element from r and returns its bytes
// and id attribute, adding a random id when it has none.
func encodeStanza(r xml.TokenReader, newID func() string) (b []byte, id string, err error) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	depth := 0
	started := false
	for {
		tok, err := r.Token()
		if tok != nil {
			switch t := tok.(type) {
			case xml.StartElement:
				t = xstanza.WithoutNSDecls(t)
				if depth == 0 {
					if started {
						return nil, "", fmt.Errorf("%w: more than one element", ErrSerialize)
					}
					started = true
					t, id = ensureID(t, newID)
				}
				tok = t
				depth++
			case xml.EndElement:
				depth--
			case xml.CharData:
				if depth == 0 {
					tok = nil // whitespace around the element
				}
			case xml.ProcInst, xml.Comment, xml.Directive:
				return nil, "", fmt.Errorf("%w: %T not allowed in a stanza", ErrSerialize, tok)
			}
			if tok != nil {
				if e := enc.EncodeToken(tok); e != nil {
					return nil, "", fmt.Errorf("%w: %w", ErrSerialize, e)
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrSerialize, err)
		}
	}
	if !started || depth != 0 {
		return nil, "", fmt.Errorf("%w: not one complete element", ErrSerialize)
	}
	if err := enc.Flush(); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrSerialize, err)
	}
	return buf.Bytes(), id, nil
}

func ensureID(start xml.StartElement, newID func() string) (xml.StartElement, string) {
	for _, a := range start.Attr {
		if a.Name.Local == "id" && a.Name.Space == "" && a.Value != "" {
			return start, a.Value
		}
	}
	id := newID()
	start = start.Copy()
	attrs := start.Attr[:0]
	for _, a := range start.Attr {
		if !(a.Name.Local == "id" && a.Name.Space == "") {
			attrs = append(attrs, a)
		}
	}
	start.Attr = append(attrs, xml.Attr{Name: xml.Name{Local: "id"}, Value: id})
	return start, id
}

// replyWriter is the encoder half that handlers get: every element a handler
// writes becomes a stanza sent through the stream (counted, acknowledged and
// resent like any other). It also notes whether an IQ reply to id was
// written, so that the stream can answer unanswered IQs itself.
type replyWriter struct {
	s       *Stream
	id      string
	replied bool
	buf     bytes.Buffer
	enc     *xml.Encoder
	depth   int
	err     error
}

func (w *replyWriter) EncodeToken(t xml.Token) error {
	if w.err != nil {
		return w.err
	}
	if w.enc == nil {
		w.enc = xml.NewEncoder(&w.buf)
	}
	if _, ok := t.(xml.StartElement); !ok && w.depth == 0 {
		// Between stanzas only elements go out: white space, comments
		// and processing instructions are dropped (a processing
		// instruction must never reach the wire, and none may count as a
		// stanza). A stray end element is an error.
		if _, end := t.(xml.EndElement); end {
			w.err = fmt.Errorf("%w: end element outside a stanza", ErrSerialize)
			return w.err
		}
		return nil
	}
	switch tt := t.(type) {
	case xml.StartElement:
		if w.depth == 0 && tt.Name.Local == "iq" {
			for _, a := range tt.Attr {
				if a.Name.Local == "type" && (a.Value == "result" || a.Value == "error") {
					for _, b := range tt.Attr {
						if b.Name.Local == "id" && b.Value == w.id {
							w.replied = true
						}
					}
				}
			}
		}
		w.depth++
	case xml.EndElement:
		w.depth--
	case xml.ProcInst, xml.Directive:
		w.err = fmt.Errorf("%w: %T not allowed in a stanza", ErrSerialize, t)
		return w.err
	}
	if err := w.enc.EncodeToken(t); err != nil {
		w.err = err
		return err
	}
	if w.depth == 0 {
		if err := w.enc.Flush(); err != nil {
			w.err = err
			return err
		}
		b := bytes.Clone(w.buf.Bytes())
		w.buf.Reset()
		err := w.s.sendInternal(b)
		if err != nil {
			w.err = err
		}
		return err
	}
	return nil
}

func (w *replyWriter) Encode(v interface{}) error {
	return w.EncodeElement(v, xml.StartElement{})
}

func (w *replyWriter) EncodeElement(v interface{}, start xml.StartElement) error {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	var err error
	if start.Name.Local == "" {
		err = enc.Encode(v)
	} else {
		err = enc.EncodeElement(v, start)
	}
	if err != nil {
		return err
	}
	d := xml.NewDecoder(&buf)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := w.EncodeToken(xml.CopyToken(tok)); err != nil {
			return err
		}
	}
}

type readEncoder struct {
	xml.TokenReader
	*replyWriter
}
