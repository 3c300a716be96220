package stream

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"

	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// Element is one inbound stanza, read in full: its start element and every
// token up to and including its end element. It can be read as often as
// needed.
type Element struct {
	Start xml.StartElement
	// Inner holds the tokens after Start, the end element last.
	Inner []xml.Token
}

// Attr returns the value of the unqualified attribute local of the stanza.
func (e *Element) Attr(local string) string {
	for _, a := range e.Start.Attr {
		if a.Name.Local == local && a.Name.Space == "" {
			return a.Value
		}
	}
	return ""
}

// Reader returns the whole element, start first.
func (e *Element) Reader() xml.TokenReader {
	return &sliceReader{start: &e.Start, toks: e.Inner}
}

// InnerReader returns the tokens after the start element, the end element
// last, as mellium's handlers expect them.
func (e *Element) InnerReader() xml.TokenReader {
	return &sliceReader{toks: e.Inner}
}

// Decode unmarshals the element into v with encoding/xml.
func (e *Element) Decode(v interface{}) error {
	return xml.NewTokenDecoder(e.Reader()).Decode(v)
}

// Error returns the stanza error inside an error stanza, parsed by mellium.
func (e *Element) Error() (*stanza.Error, bool) {
	if e.Attr("type") != "error" {
		return nil, false
	}
	return xstanza.Error(e.Inner)
}

type sliceReader struct {
	start *xml.StartElement
	toks  []xml.Token
}

func (r *sliceReader) Token() (xml.Token, error) {
	if r.start != nil {
		s := *r.start
		r.start = nil
		return s, nil
	}
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	return t, nil
}

// readElement reads the rest of the element that begins with start.
//
// encoding/xml hands out a fresh StartElement (names and attributes) for
// every element, but character data lives in a buffer it reuses: only that
// is copied.
func readElement(r xml.TokenReader, start xml.StartElement) (*Element, error) {
	e := &Element{Start: start, Inner: make([]xml.Token, 0, 8)}
	depth := 1
	for depth > 0 {
		tok, err := r.Token()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			tok = t.Copy()
		default:
			tok = xml.CopyToken(tok)
		}
		e.Inner = append(e.Inner, tok)
	}
	return e, nil
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
