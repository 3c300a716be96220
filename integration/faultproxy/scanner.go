package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
)

// maxHeld bounds the bytes the scanner holds back while it waits for an
// element to end. A longer element makes the stream opaque.
const maxHeld = 16 << 20

// maxName is the longest tag name the scanner keeps: it only compares names
// with "stream" and "starttls".
const maxName = 64

// state is where the scanner is in the markup.
type state uint8

const (
	inText      state = iota // character data, between tags
	afterLT                  // just read '<'
	inPITarget               // "<?" read, reading the target
	inPIBody                 // reading a declaration up to "?>"
	inStartName              // reading the name of a start tag
	inAttrs                  // inside a start tag, after its name
	inEndTag                 // inside an end tag
)

// errScan is wrapped by every error of the scanner.
var errScan = errors.New("faultproxy: not a plaintext XMPP stream")

// scanner finds the boundaries of top-level elements in the client's half of
// a plaintext XMPP stream, and holds back the bytes of an element until its
// end.
//
// A boundary is the end of an XML declaration, of a stream header, of a
// stanza or nonza (a child of the stream element), of "</stream:stream>", or
// a whitespace byte between them. Bytes up to a boundary may be forwarded:
// a server that reads them leaves its parser between elements.
//
// It is a small byte scanner, not an XML parser: it tracks depth, quoted
// attribute values and self-closing tags, and does not check names or
// entities. Comments, CDATA sections, DTDs, processing instructions other
// than the XML declaration, and character data directly inside the stream
// element are not allowed in XMPP and are errors.
//
// Once the client has sent a complete <starttls/> element, or after an error,
// the stream is opaque: every later byte is released at once.
type scanner struct {
	held []byte // bytes not yet released; held[:off] was released by the last call
	off  int

	state  state
	depth  int    // 0 outside the stream element, 1 directly inside it
	quote  byte   // closing quote of the attribute value being read, or 0
	slash  bool   // the last byte of the start tag outside quotes was '/'
	qmark  bool   // the last byte of the declaration was '?'
	name   []byte // first bytes of the tag name (or declaration target) being read
	long   bool   // the name is longer than maxName
	top    []byte // local name of the open child of the stream element
	opaque bool
	err    error

	lt    int    // offset in held of the '<' that opened the current child
	ended bool   // the last byte stepped ended a child of the stream element
	elem  [2]int // offsets in held of the last child the last Feed completed, or -1
}

// Feed adds p to the bytes held and returns those of them that end at the
// last boundary, which the caller may forward; the rest stays held. The
// returned slice is valid until the next call.
func (s *scanner) Feed(p []byte) []byte {
	if s.off > 0 {
		n := copy(s.held, s.held[s.off:])
		s.held = s.held[:n]
		s.lt -= s.off
		s.off = 0
	}
	s.elem = [2]int{-1, -1}
	start := len(s.held)
	s.held = append(s.held, p...)
	if s.opaque {
		return s.release(len(s.held))
	}
	last := 0
	for i := start; i < len(s.held); i++ {
		c := s.held[i]
		if c == '<' && s.state == inText && s.depth == 1 {
			s.lt = i
		}
		boundary, err := s.step(c)
		if err != nil {
			s.fail(err)
			return s.release(len(s.held))
		}
		if boundary {
			last = i + 1
		}
		if s.ended {
			s.ended = false
			s.elem = [2]int{s.lt, i + 1}
		}
		if s.opaque {
			return s.release(len(s.held))
		}
	}
	if len(s.held)-last > maxHeld {
		s.fail(fmt.Errorf("%w: element longer than %d bytes", errScan, maxHeld))
		return s.release(len(s.held))
	}
	return s.release(last)
}

// Discard drops the bytes held.
func (s *scanner) Discard() {
	s.held = s.held[:0]
	s.off = 0
}

// Held returns the number of bytes held back.
func (s *scanner) Held() int {
	return len(s.held) - s.off
}

// LastElement returns where, in the bytes the last call to Feed returned,
// the last child of the stream element that they complete starts and ends.
// It reports false if they complete none (stream headers, whitespace and
// declarations are not children).
func (s *scanner) LastElement() (start, end int, ok bool) {
	if s.opaque || s.elem[1] <= 0 {
		return 0, 0, false
	}
	return s.elem[0], s.elem[1], true
}

// Opaque reports whether the scanner no longer looks for boundaries: after
// STARTTLS, or after an error.
func (s *scanner) Opaque() bool {
	return s.opaque
}

// Err returns the error that made the stream opaque, if any.
func (s *scanner) Err() error {
	return s.err
}

func (s *scanner) release(n int) []byte {
	s.off = n
	return s.held[:n]
}

func (s *scanner) fail(err error) {
	s.err = err
	s.opaque = true
}

// step consumes one byte and reports whether a boundary follows it.
func (s *scanner) step(c byte) (boundary bool, err error) {
	switch s.state {
	case inText:
		if c == '<' {
			s.state = afterLT
			return false, nil
		}
		if s.depth > 1 {
			return false, nil
		}
		if isSpace(c) {
			return true, nil
		}
		return false, fmt.Errorf("%w: character data %q outside a stanza", errScan, c)

	case afterLT:
		switch {
		case c == '?':
			if s.depth > 1 {
				return false, fmt.Errorf("%w: processing instruction inside a stanza", errScan)
			}
			s.state = inPITarget
			s.resetName()
		case c == '!':
			return false, fmt.Errorf("%w: comment, CDATA section or DTD", errScan)
		case c == '/':
			s.state = inEndTag
		case c == '>' || isSpace(c):
			return false, fmt.Errorf("%w: tag without a name", errScan)
		default:
			s.state = inStartName
			s.resetName()
			s.addName(c)
		}
		return false, nil

	case inPITarget:
		if !isSpace(c) && c != '?' {
			s.addName(c)
			return false, nil
		}
		if s.long || string(s.name) != "xml" {
			return false, fmt.Errorf("%w: processing instruction %q", errScan, s.name)
		}
		// A declaration inside the stream element starts a new stream
		// (a stream restart).
		s.depth = 0
		s.state = inPIBody
		s.qmark = c == '?'
		return false, nil

	case inPIBody:
		if s.qmark && c == '>' {
			s.state = inText
			return true, nil
		}
		s.qmark = c == '?'
		return false, nil

	case inStartName:
		switch {
		case c == '>':
			return s.endStartTag(false), nil
		case c == '/':
			s.state = inAttrs
			s.quote = 0
			s.slash = true
		case isSpace(c):
			s.state = inAttrs
			s.quote = 0
			s.slash = false
		default:
			s.addName(c)
		}
		return false, nil

	case inAttrs:
		switch {
		case s.quote != 0:
			if c == s.quote {
				s.quote = 0
			}
			s.slash = false
		case c == '"' || c == '\'':
			s.quote = c
			s.slash = false
		case c == '>':
			return s.endStartTag(s.slash), nil
		default:
			s.slash = c == '/'
		}
		return false, nil

	case inEndTag:
		if c != '>' {
			return false, nil
		}
		if s.depth == 0 {
			return false, fmt.Errorf("%w: end tag outside the stream element", errScan)
		}
		s.depth--
		s.state = inText
		if s.depth == 1 {
			s.ended = true
			if string(s.top) == "starttls" {
				s.opaque = true
			}
		}
		return s.depth <= 1, nil
	}
	panic("faultproxy: unknown scanner state")
}

// endStartTag handles the '>' that ends a start tag and reports whether it
// is a boundary.
func (s *scanner) endStartTag(selfClosing bool) bool {
	s.state = inText
	local := s.local()
	switch {
	case s.depth == 0:
		// The stream header.
		if !selfClosing {
			s.depth = 1
		}
		return true
	case s.depth == 1 && local == "stream" && !selfClosing:
		// A new stream header without a declaration (a stream restart):
		// the depth stays 1.
		return true
	case s.depth == 1 && selfClosing:
		s.ended = true
		if local == "starttls" {
			s.opaque = true
		}
		return true
	case s.depth == 1:
		s.top = append(s.top[:0], local...)
		s.depth = 2
		return false
	case !selfClosing:
		s.depth++
	}
	return false
}

func (s *scanner) resetName() {
	s.name = s.name[:0]
	s.long = false
}

func (s *scanner) addName(c byte) {
	if len(s.name) == maxName {
		s.long = true
		return
	}
	s.name = append(s.name, c)
}

// local returns the local part of the name read, split at its colon as
// encoding/xml does, or "" for a name too long to be of interest.
func (s *scanner) local() string {
	if s.long {
		return ""
	}
	name := s.name
	if i := bytes.IndexByte(name, ':'); i > 0 && i < len(name)-1 {
		name = name[i+1:]
	}
	return string(name)
}

// isSpace reports whether c is XML whitespace.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n'
}
