// Package stanza holds the small wire helpers that the stream, MUC and
// one-to-one layers share: stanza ids, XEP-0359 origin-id and stanza-id, XML
// escaping for stanzas built by hand, and reading the ids and error of a
// received stanza.
//
// It builds on mellium.im/xmpp/stanza (whose types it uses for errors and
// stanza headers) and does not replace it: use mellium's package for
// everything else.
package stanza

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/xml"
	"io"
	"unicode/utf8"

	mstanza "mellium.im/xmpp/stanza"
)

// NSSID is the namespace of XEP-0359 unique and stable stanza ids.
const NSSID = "urn:xmpp:sid:0"

// NewID returns a random identifier for a stanza or an origin-id: 16 random
// bytes, base64url without padding (22 characters), safe in any attribute.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// AppendEscaped appends s to b escaped for use in XML character data or in an
// attribute value quoted with either quote character. Tab, newline and
// carriage return are written as character references, so that they survive
// a parser's normalisation of attribute values and line ends.
func AppendEscaped(b []byte, s string) []byte {
	last := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '&':
			esc = "&amp;"
		case '<':
			esc = "&lt;"
		case '>':
			esc = "&gt;"
		case '\'':
			esc = "&apos;"
		case '"':
			esc = "&quot;"
		case '\t':
			esc = "&#x9;"
		case '\n':
			esc = "&#xA;"
		case '\r':
			esc = "&#xD;"
		default:
			continue
		}
		b = append(b, s[last:i]...)
		b = append(b, esc...)
		last = i + 1
	}
	return append(b, s[last:]...)
}

// IDs are the identifiers a received stanza carries.
type IDs struct {
	// ID is the stanza's id attribute.
	ID string
	// OriginID is the XEP-0359 <origin-id/> the sender chose.
	OriginID string
	// StanzaID and StanzaIDBy are the first XEP-0359 <stanza-id/> and the
	// JID that assigned it (a room or a server archive).
	StanzaID, StanzaIDBy string
}

// ReadIDs collects the ids of a stanza from its start element and the
// tokens of its content (as read after the start element). It looks only at
// direct children.
func ReadIDs(start xml.StartElement, inner []xml.Token) IDs {
	ids := IDs{ID: Attr(start, "id")}
	depth := 0
	for _, tok := range inner {
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && t.Name.Space == NSSID {
				switch t.Name.Local {
				case "origin-id":
					if ids.OriginID == "" {
						ids.OriginID = Attr(t, "id")
					}
				case "stanza-id":
					if ids.StanzaID == "" {
						ids.StanzaID, ids.StanzaIDBy = Attr(t, "id"), Attr(t, "by")
					}
				}
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return ids
}

// Attr returns the value of the unqualified attribute local of start, or "".
func Attr(start xml.StartElement, local string) string {
	for _, a := range start.Attr {
		if a.Name.Local == local && a.Name.Space == "" {
			return a.Value
		}
	}
	return ""
}

// Error finds the <error/> child of an error stanza, given the tokens of its
// content, and parses it with mellium. It reports false when there is none.
func Error(inner []xml.Token) (*mstanza.Error, bool) {
	depth := 0
	for i, tok := range inner {
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && t.Name.Local == "error" {
				var e mstanza.Error
				// The decoder must read the start element itself: mellium's
				// UnmarshalXML relies on the decoder's own element stack.
				d := xml.NewTokenDecoder(&sliceReader{toks: inner[i:]})
				if err := d.Decode(&e); err != nil {
					return nil, false
				}
				return &e, true
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return nil, false
}

type sliceReader struct{ toks []xml.Token }

func (r *sliceReader) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	return t, nil
}

// ValidText reports whether s is valid UTF-8 made only of characters that
// XML 1.0 allows, so that it can be sent as character data. A stanza with
// anything else would be not-well-formed and end the stream.
func ValidText(s string) bool {
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b < 0x20 && b != '\t' && b != '\n' && b != '\r' {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			return false
		}
		if (r >= 0xD800 && r <= 0xDFFF) || r == 0xFFFE || r == 0xFFFF {
			return false
		}
		i += n
	}
	return true
}

// WithoutNSDecls returns start without the namespace declarations (xmlns
// and xmlns:prefix attributes) that encoding/xml's decoder leaves among the
// attributes. Its encoder declares namespaces from the names themselves, so
// a start element read by a decoder must lose them before it is encoded
// again, or they are written twice, which no XML parser accepts.
func WithoutNSDecls(start xml.StartElement) xml.StartElement {
	keep := 0
	for _, a := range start.Attr {
		if !isNSDecl(a) {
			keep++
		}
	}
	if keep == len(start.Attr) {
		return start
	}
	attrs := make([]xml.Attr, 0, keep)
	for _, a := range start.Attr {
		if !isNSDecl(a) {
			attrs = append(attrs, a)
		}
	}
	start.Attr = attrs
	return start
}

func isNSDecl(a xml.Attr) bool {
	return (a.Name.Space == "" && a.Name.Local == "xmlns") || a.Name.Space == "xmlns"
}
