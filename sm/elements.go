package sm

import (
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"mellium.im/xmpp/stanza"

	xstanza "github.com/xmpptrack/xmpptrack/stanza"
)

// NS is the XEP-0198 namespace this package speaks.
const NS = "urn:xmpp:sm:3"

// ErrMalformed is wrapped by the errors of the Parse functions when a stream
// management element is not as XEP-0198 defines it.
var ErrMalformed = errors.New("sm: malformed stream management element")

// Is reports whether start is the stream management element with the given
// local name ("a", "r", "enabled", …).
func Is(start xml.StartElement, local string) bool {
	return start.Name.Space == NS && start.Name.Local == local
}

// Request is the <r/> nonza: please tell me how many stanzas you handled.
const Request = `<r xmlns='urn:xmpp:sm:3'/>`

// AppendAnswer appends the <a h='…'/> nonza that answers a request.
func AppendAnswer(b []byte, h uint32) []byte {
	b = append(b, `<a xmlns='urn:xmpp:sm:3' h='`...)
	b = strconv.AppendUint(b, uint64(h), 10)
	return append(b, `'/>`...)
}

// AppendEnable appends <enable/>, asking for resumption when resume is true
// and for a maximum resumption time when max is positive.
func AppendEnable(b []byte, resume bool, max time.Duration) []byte {
	b = append(b, `<enable xmlns='urn:xmpp:sm:3'`...)
	if resume {
		b = append(b, ` resume='true'`...)
	}
	if max > 0 {
		b = append(b, ` max='`...)
		b = strconv.AppendInt(b, int64(max/time.Second), 10)
		b = append(b, '\'')
	}
	return append(b, `/>`...)
}

// AppendResume appends <resume previd='…' h='…'/>.
func AppendResume(b []byte, previd string, h uint32) []byte {
	b = append(b, `<resume xmlns='urn:xmpp:sm:3' previd='`...)
	b = xstanza.AppendEscaped(b, previd)
	b = append(b, `' h='`...)
	b = strconv.AppendUint(b, uint64(h), 10)
	return append(b, `'/>`...)
}

// HandledCountTooHigh returns the body of the stream error a client sends
// when the server acknowledged more than was sent: the
// <handled-count-too-high/> application condition of XEP-0198 with the
// server's h and our send count.
func HandledCountTooHigh(h, sendCount uint32) string {
	return fmt.Sprintf(`<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>`+
		`<handled-count-too-high xmlns='urn:xmpp:sm:3' h='%d' send-count='%d'/></stream:error>`, h, sendCount)
}

// Enabled is the server's <enabled/> answer.
type Enabled struct {
	ID       string        // the resumption id, empty when resumption is off
	Resume   bool          // whether the session can be resumed
	Max      time.Duration // how long the server keeps a broken session, 0 if not said
	Location string        // where to reconnect to resume, if the server says
}

// Resumed is the server's <resumed/> answer.
type Resumed struct {
	PrevID string
	H      uint32
}

// Failed is the server's <failed/> answer to <enable/> or <resume/>.
type Failed struct {
	// H is the server's count of stanzas it handled, when HasH is true.
	H    uint32
	HasH bool
	// Condition is the stanza error condition inside, if any.
	Condition stanza.Condition
}

// Error implements error.
func (f Failed) Error() string {
	s := "sm: server refused stream management"
	if f.Condition != "" {
		s += ": " + string(f.Condition)
	}
	return s
}

// ParseH reads the h attribute of <a/>.
func ParseH(start xml.StartElement) (uint32, error) {
	v, ok := attr(start, "h")
	if !ok {
		return 0, fmt.Errorf("%w: <%s/> without h", ErrMalformed, start.Name.Local)
	}
	return parseCount(v)
}

// ParseEnabled reads <enabled/>.
func ParseEnabled(start xml.StartElement) (Enabled, error) {
	var e Enabled
	e.ID, _ = attr(start, "id")
	e.Location, _ = attr(start, "location")
	if v, ok := attr(start, "resume"); ok {
		b, err := parseBool(v)
		if err != nil {
			return e, err
		}
		e.Resume = b
	}
	if v, ok := attr(start, "max"); ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return e, fmt.Errorf("%w: max=%q", ErrMalformed, v)
		}
		e.Max = time.Duration(n) * time.Second
	}
	if e.Resume && e.ID == "" {
		return e, fmt.Errorf("%w: resumable <enabled/> without id", ErrMalformed)
	}
	return e, nil
}

// ParseResumed reads <resumed/>.
func ParseResumed(start xml.StartElement) (Resumed, error) {
	var r Resumed
	r.PrevID, _ = attr(start, "previd")
	h, err := ParseH(start)
	r.H = h
	return r, err
}

// ParseFailed reads <failed/>; children is the element's content, from which
// the first stanza error condition is taken. Pass nil to read only the
// attributes.
func ParseFailed(start xml.StartElement, children xml.TokenReader) (Failed, error) {
	var f Failed
	if v, ok := attr(start, "h"); ok {
		h, err := parseCount(v)
		if err != nil {
			return f, err
		}
		f.H, f.HasH = h, true
	}
	if children == nil {
		return f, nil
	}
	depth := 0
	for {
		tok, err := children.Token()
		if err != nil {
			// The end of the element (or of a reader limited to its
			// content) ends the search.
			return f, nil
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && f.Condition == "" && t.Name.Space == stanza.NSError {
				f.Condition = stanza.Condition(t.Name.Local)
			}
			depth++
		case xml.EndElement:
			if depth == 0 {
				return f, nil
			}
			depth--
		}
	}
}

func attr(start xml.StartElement, local string) (string, bool) {
	for _, a := range start.Attr {
		if a.Name.Local == local && a.Name.Space == "" {
			return a.Value, true
		}
	}
	return "", false
}

// parseCount reads an h: an xs:unsignedInt, so surrounding white space, a
// leading + (or - before a zero) and leading zeros are all valid, as long as
// the value fits in 32 bits.
func parseCount(v string) (uint32, error) {
	bad := fmt.Errorf("%w: h=%q is not an unsigned 32-bit integer", ErrMalformed, v)
	d := strings.Trim(v, " \t\r\n")
	neg := false
	if d != "" && (d[0] == '+' || d[0] == '-') {
		neg = d[0] == '-'
		d = d[1:]
	}
	if d == "" || d[0] < '0' || d[0] > '9' {
		return 0, bad
	}
	n, err := strconv.ParseUint(d, 10, 32)
	if err != nil || (neg && n != 0) {
		return 0, bad
	}
	return uint32(n), nil
}

func parseBool(v string) (bool, error) {
	switch v {
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("%w: resume=%q", ErrMalformed, v)
}
