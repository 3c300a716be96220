package sm

import (
	"encoding/xml"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"
)

// parseOne parses s, which must hold exactly one element, and returns its
// start element and a reader of its content (up to and including its end).
func parseOne(t testing.TB, s string) (xml.StartElement, *xml.Decoder) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		tok, err := d.Token()
		if err != nil {
			t.Fatalf("parsing %q: %v", s, err)
		}
		if start, ok := tok.(xml.StartElement); ok {
			return start, d
		}
	}
}

// checkWhole parses s and fails unless it is one well-formed element named
// {NS}local with exactly the attributes want.
func checkWhole(t *testing.T, s, local string, want map[string]string) {
	t.Helper()
	start, d := parseOne(t, s)
	if start.Name != (xml.Name{Space: NS, Local: local}) {
		t.Errorf("%s: name = %v, want {%s %s}", s, start.Name, NS, local)
	}
	got := map[string]string{}
	for _, a := range start.Attr {
		if a.Name.Space == "xmlns" || a.Name.Local == "xmlns" {
			continue
		}
		got[a.Name.Local] = a.Value
	}
	if len(got) != len(want) {
		t.Errorf("%s: attributes %v, want %v", s, got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s=%q, want %q", s, k, got[k], v)
		}
	}
	if err := d.Skip(); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	if tok, err := d.Token(); err != io.EOF {
		t.Errorf("%s: trailing %v (%v)", s, tok, err)
	}
}

func TestAppendAnswer(t *testing.T) {
	for _, h := range []uint32{0, 1, 10, 4294967295} {
		b := AppendAnswer([]byte("prefix"), h)
		if !strings.HasPrefix(string(b), "prefix") {
			t.Fatalf("AppendAnswer dropped what b held: %q", b)
		}
		checkWhole(t, string(b[len("prefix"):]), "a", map[string]string{"h": formatU(h)})
	}
}

func TestAppendEnable(t *testing.T) {
	tests := []struct {
		resume bool
		max    time.Duration
		want   map[string]string
	}{
		{false, 0, map[string]string{}},
		{true, 0, map[string]string{"resume": "true"}},
		{true, 300 * time.Second, map[string]string{"resume": "true", "max": "300"}},
		{false, 90 * time.Second, map[string]string{"max": "90"}},
		{true, -time.Second, map[string]string{"resume": "true"}},
	}
	for _, tc := range tests {
		checkWhole(t, string(AppendEnable(nil, tc.resume, tc.max)), "enable", tc.want)
	}
}

func TestAppendResume(t *testing.T) {
	tests := []struct {
		previd string
		h      uint32
	}{
		{"S1", 0},
		{"some-long-id==", 4294967295},
		{`it's "quoted" & <tagged>`, 7},
		{"'\"&<>", 1},
		{"tab\tnew\nline\rreturn", 2},
		{"", 3},
	}
	for _, tc := range tests {
		b := AppendResume(nil, tc.previd, tc.h)
		checkWhole(t, string(b), "resume", map[string]string{"previd": tc.previd, "h": formatU(tc.h)})
	}
}

func formatU(h uint32) string { return strconv.FormatUint(uint64(h), 10) }

func startWith(local string, attrs ...string) xml.StartElement {
	start := xml.StartElement{Name: xml.Name{Space: NS, Local: local}}
	for i := 0; i+1 < len(attrs); i += 2 {
		start.Attr = append(start.Attr, xml.Attr{Name: xml.Name{Local: attrs[i]}, Value: attrs[i+1]})
	}
	return start
}

func TestParseH(t *testing.T) {
	good := map[string]uint32{
		"0":          0,
		"1":          1,
		"10":         10,
		"2147483648": 2147483648,
		"4294967295": 4294967295,
		// xs:unsignedInt allows a sign, leading zeros and white space.
		"05":             5,
		"+5":             5,
		"00":             0,
		"-0":             0,
		" 7\n":           7,
		"+0004294967295": 4294967295,
	}
	for v, want := range good {
		got, err := ParseH(startWith("a", "h", v))
		if err != nil || got != want {
			t.Errorf("ParseH(h=%q) = %d, %v; want %d, nil", v, got, err, want)
		}
	}
	bad := []string{"", " ", "+", "-", "-1", "++1", "+-0", "4294967296", "18446744073709551616", "1.0", "1 2", "0x10", "1e3", "1_000", "٣", "abc", "\v1"}
	for _, v := range bad {
		got, err := ParseH(startWith("a", "h", v))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseH(h=%q) = %d, %v; want an error wrapping ErrMalformed", v, got, err)
		}
	}
	if _, err := ParseH(startWith("a")); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseH(<a/> without h): err = %v, want ErrMalformed", err)
	}
	// An h in some namespace is not the h attribute.
	nsH := xml.StartElement{Name: xml.Name{Space: NS, Local: "a"},
		Attr: []xml.Attr{{Name: xml.Name{Space: "urn:example", Local: "h"}, Value: "3"}}}
	if _, err := ParseH(nsH); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseH(<a ex:h='3'/>): err = %v, want ErrMalformed", err)
	}
}

func TestParseHFromXML(t *testing.T) {
	start, _ := parseOne(t, `<a xmlns='urn:xmpp:sm:3' h='42'/>`)
	if !Is(start, "a") || Is(start, "r") {
		t.Fatalf("Is: wrong answer for %v", start.Name)
	}
	h, err := ParseH(start)
	if err != nil || h != 42 {
		t.Fatalf("ParseH = %d, %v; want 42, nil", h, err)
	}
	other, _ := parseOne(t, `<a xmlns='urn:xmpp:sm:2' h='42'/>`)
	if Is(other, "a") {
		t.Fatalf("Is accepted the namespace %q", other.Name.Space)
	}
}

func TestParseEnabled(t *testing.T) {
	tests := []struct {
		xml  string
		want Enabled
		err  bool
	}{
		{xml: `<enabled xmlns='urn:xmpp:sm:3'/>`, want: Enabled{}},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='true' max='60'/>`,
			want: Enabled{ID: "S1", Resume: true, Max: 60 * time.Second}},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='1'/>`, want: Enabled{ID: "S1", Resume: true}},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='false'/>`, want: Enabled{ID: "S1"}},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' resume='0'/>`, want: Enabled{}},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='a&amp;b' resume='true' location='[::1]:5222'/>`,
			want: Enabled{ID: "a&b", Resume: true, Location: "[::1]:5222"}},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' resume='true'/>`, err: true},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='' resume='1'/>`, err: true},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='yes'/>`, err: true},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='TRUE'/>`, err: true},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='true' max='-1'/>`, err: true},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='true' max='soon'/>`, err: true},
		{xml: `<enabled xmlns='urn:xmpp:sm:3' id='S1' resume='true' max='4294967296'/>`, err: true},
	}
	for _, tc := range tests {
		start, _ := parseOne(t, tc.xml)
		got, err := ParseEnabled(start)
		if tc.err {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseEnabled(%s): err = %v, want ErrMalformed", tc.xml, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseEnabled(%s) = %+v, %v; want %+v, nil", tc.xml, got, err, tc.want)
		}
	}
}

func TestParseResumed(t *testing.T) {
	tests := []struct {
		xml  string
		want Resumed
		err  bool
	}{
		{xml: `<resumed xmlns='urn:xmpp:sm:3' previd='S1' h='7'/>`, want: Resumed{PrevID: "S1", H: 7}},
		{xml: `<resumed xmlns='urn:xmpp:sm:3' h='4294967295' previd='x'/>`, want: Resumed{PrevID: "x", H: 4294967295}},
		{xml: `<resumed xmlns='urn:xmpp:sm:3' h='0'/>`, want: Resumed{H: 0}},
		{xml: `<resumed xmlns='urn:xmpp:sm:3' previd='S1'/>`, err: true},
		{xml: `<resumed xmlns='urn:xmpp:sm:3' previd='S1' h='-3'/>`, err: true},
	}
	for _, tc := range tests {
		start, _ := parseOne(t, tc.xml)
		got, err := ParseResumed(start)
		if tc.err {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseResumed(%s): err = %v, want ErrMalformed", tc.xml, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseResumed(%s) = %+v, %v; want %+v, nil", tc.xml, got, err, tc.want)
		}
	}
}

func TestParseFailed(t *testing.T) {
	tests := []struct {
		name string
		xml  string
		want Failed
		err  bool
	}{
		{name: "empty", xml: `<failed xmlns='urn:xmpp:sm:3'/>`, want: Failed{}},
		{name: "h", xml: `<failed xmlns='urn:xmpp:sm:3' h='3'/>`, want: Failed{H: 3, HasH: true}},
		{name: "h zero", xml: `<failed xmlns='urn:xmpp:sm:3' h='0'/>`, want: Failed{H: 0, HasH: true}},
		{name: "h and condition",
			xml:  `<failed xmlns='urn:xmpp:sm:3' h='3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>`,
			want: Failed{H: 3, HasH: true, Condition: stanza.ItemNotFound}},
		{name: "condition without h",
			xml:  `<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>`,
			want: Failed{Condition: stanza.UnexpectedRequest}},
		{name: "condition then text",
			xml: `<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>` +
				`<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone</text></failed>`,
			want: Failed{Condition: stanza.ItemNotFound}},
		{name: "foreign child first",
			xml: `<failed xmlns='urn:xmpp:sm:3' h='1'><x xmlns='urn:example'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></x>` +
				`<feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>`,
			want: Failed{H: 1, HasH: true, Condition: stanza.FeatureNotImplemented}},
		{name: "bad h", xml: `<failed xmlns='urn:xmpp:sm:3' h='three'/>`, err: true},
		{name: "h too large", xml: `<failed xmlns='urn:xmpp:sm:3' h='4294967296'/>`, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start, d := parseOne(t, tc.xml)
			got, err := ParseFailed(start, d)
			if tc.err {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("ParseFailed: err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseFailed = %+v, %v; want %+v, nil", got, err, tc.want)
			}
			// The element was read to its end and no further.
			if tok, err := d.Token(); err != io.EOF {
				t.Fatalf("after ParseFailed the reader is at %#v (%v), want the end of input", tok, err)
			}
			// Without children only the attributes count.
			got, err = ParseFailed(start, nil)
			want := tc.want
			want.Condition = ""
			if err != nil || got != want {
				t.Fatalf("ParseFailed(nil children) = %+v, %v; want %+v, nil", got, err, want)
			}
		})
	}
}

// TestParseFailedStopsAtEnd checks that ParseFailed reads no further than the
// end of <failed/> when it is followed by more of the stream.
func TestParseFailedStopsAtEnd(t *testing.T) {
	const s = `<stream><failed xmlns='urn:xmpp:sm:3' h='2'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed><message id='next'/></stream>`
	d := xml.NewDecoder(strings.NewReader(s))
	d.Token() // <stream>
	tok, _ := d.Token()
	f, err := ParseFailed(tok.(xml.StartElement), d)
	if err != nil || f != (Failed{H: 2, HasH: true, Condition: stanza.ItemNotFound}) {
		t.Fatalf("ParseFailed = %+v, %v", f, err)
	}
	tok, err = d.Token()
	start, ok := tok.(xml.StartElement)
	if err != nil || !ok || start.Name.Local != "message" {
		t.Fatalf("next token after <failed/> = %#v, %v; want <message>", tok, err)
	}
}

func TestFailedError(t *testing.T) {
	var err error = Failed{Condition: stanza.ItemNotFound}
	if !strings.Contains(err.Error(), "item-not-found") {
		t.Errorf("Failed.Error() = %q, want the condition in it", err)
	}
	if (Failed{}).Error() == "" {
		t.Error("Failed{}.Error() is empty")
	}
	var f Failed
	if !errors.As(err, &f) || f.Condition != stanza.ItemNotFound {
		t.Errorf("errors.As(Failed) = %+v", f)
	}
}

func TestHandledCountTooHigh(t *testing.T) {
	type condition struct {
		XMLName   xml.Name
		H         string `xml:"h,attr"`
		SendCount string `xml:"send-count,attr"`
	}
	var got struct {
		XMLName    xml.Name
		Conditions []condition `xml:",any"`
	}
	s := HandledCountTooHigh(50, 10)
	// The stream prefix is declared by the stream header; give it one here.
	doc := `<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>` + s + `</stream:stream>`
	d := xml.NewDecoder(strings.NewReader(doc))
	d.Token()
	tok, err := d.Token()
	if err != nil {
		t.Fatal(err)
	}
	start := tok.(xml.StartElement)
	if err := d.DecodeElement(&got, &start); err != nil {
		t.Fatalf("decoding %s: %v", s, err)
	}
	if got.XMLName != (xml.Name{Space: "http://etherx.jabber.org/streams", Local: "error"}) {
		t.Fatalf("root = %v, want stream:error", got.XMLName)
	}
	want := []condition{
		{XMLName: xml.Name{Space: "urn:ietf:params:xml:ns:xmpp-streams", Local: "undefined-condition"}},
		{XMLName: xml.Name{Space: NS, Local: "handled-count-too-high"}, H: "50", SendCount: "10"},
	}
	if len(got.Conditions) != len(want) {
		t.Fatalf("children = %+v, want %+v", got.Conditions, want)
	}
	for i := range want {
		if got.Conditions[i] != want[i] {
			t.Errorf("child %d = %+v, want %+v", i, got.Conditions[i], want[i])
		}
	}
	if s2 := HandledCountTooHigh(4294967295, 0); !strings.Contains(s2, "h='4294967295' send-count='0'") {
		t.Errorf("HandledCountTooHigh(max, 0) = %s", s2)
	}
}

func TestRequestIsR(t *testing.T) {
	checkWhole(t, Request, "r", map[string]string{})
}
