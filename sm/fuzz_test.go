package sm

import (
	"bytes"
	"encoding/xml"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseSM feeds arbitrary bytes, parsed with encoding/xml, to the Parse
// functions as if they were a stream management element. They must never
// panic, and an h that ParseH accepts must be an xs:unsignedInt whose value is
// the one it returns.
//
// Run it with: go test -fuzz=FuzzParseSM ./sm
func FuzzParseSM(f *testing.F) {
	seeds := []string{
		`<a xmlns='urn:xmpp:sm:3' h='0'/>`,
		`<a xmlns='urn:xmpp:sm:3' h='4294967295'/>`,
		`<a xmlns='urn:xmpp:sm:3' h='4294967296'/>`,
		`<a xmlns='urn:xmpp:sm:3' h='-1'/>`,
		`<a xmlns='urn:xmpp:sm:3' h='+1'/>`,
		`<a xmlns='urn:xmpp:sm:3' h='01'/>`,
		`<a xmlns='urn:xmpp:sm:3' h=' 1'/>`,
		`<a xmlns='urn:xmpp:sm:3' h='&#x31;'/>`,
		`<a xmlns='urn:xmpp:sm:3'/>`,
		`<r xmlns='urn:xmpp:sm:3'/>`,
		`<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='true' max='60'/>`,
		`<enabled xmlns='urn:xmpp:sm:3' resume='1'/>`,
		`<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='maybe' max='x'/>`,
		`<resumed xmlns='urn:xmpp:sm:3' previd='S1' h='10'/>`,
		`<resumed xmlns='urn:xmpp:sm:3' previd='S1'/>`,
		`<failed xmlns='urn:xmpp:sm:3' h='7'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>`,
		`<failed xmlns='urn:xmpp:sm:3'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</text></failed>`,
		`<failed xmlns='urn:xmpp:sm:3' h='1'><a><b><c/></b></a>`,
		`<failed xmlns='urn:xmpp:sm:3' h='1'></x>`,
		`<a h='1' h='2'/>`,
		`<a xmlns:p='urn:x' p:h='3' h='4'/>`,
		``,
		`<`,
		`not xml`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d := xml.NewDecoder(bytes.NewReader(b))
		var start xml.StartElement
		for {
			tok, err := d.Token()
			if err != nil {
				return
			}
			if s, ok := tok.(xml.StartElement); ok {
				start = s.Copy()
				break
			}
		}
		if h, err := ParseH(start); err == nil {
			v, _ := attr(start, "h")
			if got := strconv.FormatUint(uint64(h), 10); got != digits(v) {
				t.Fatalf("ParseH accepted h=%q as %d (%s)", v, h, got)
			}
		}
		ParseEnabled(start)
		if r, err := ParseResumed(start); err == nil {
			v, _ := attr(start, "h")
			if got := strconv.FormatUint(uint64(r.H), 10); got != digits(v) {
				t.Fatalf("ParseResumed accepted h=%q as %d", v, r.H)
			}
		}
		ParseFailed(start, nil)
		if fl, err := ParseFailed(start, d); err == nil && fl.HasH {
			v, _ := attr(start, "h")
			if got := strconv.FormatUint(uint64(fl.H), 10); got != digits(v) {
				t.Fatalf("ParseFailed accepted h=%q as %d", v, fl.H)
			}
		}
		Is(start, "a")
	})
}

// digits returns the canonical decimal form of an xs:unsignedInt's lexical
// form v (white space trimmed, sign and leading zeros dropped), or "" when v
// is not one.
func digits(v string) string {
	v = strings.Trim(v, " \t\r\n")
	neg := strings.HasPrefix(v, "-")
	v = strings.TrimLeft(strings.TrimPrefix(strings.TrimPrefix(v, "+"), "-"), "0")
	if v == "" {
		v = "0"
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return ""
		}
	}
	if neg && v != "0" {
		return ""
	}
	return v
}
