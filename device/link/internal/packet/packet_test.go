package packet

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

const limit = 1<<20 + 64<<10

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vectors are packets written out by hand from the MQTT 3.1.1 specification.
var vectors = []struct {
	name string
	hex  string
	p    Packet
}{
	{"connect", "10 0f 0004 4d515454 04 02 003c 0003 646576", Packet{Type: Connect, ClientID: "dev", CleanSession: true, KeepAlive: 60}},
	{"connect-empty-id", "10 0c 0004 4d515454 04 00 0000 0000", Packet{Type: Connect}},
	{"connack-ok", "20 02 00 00", Packet{Type: Connack}},
	{"connack-session", "20 02 01 00", Packet{Type: Connack, SessionPresent: true}},
	{"connack-not-authorized", "20 02 00 05", Packet{Type: Connack, ReturnCode: 5}},
	{"publish-qos1", "32 09 0003 612f62 000a 6869", Packet{Type: Publish, QoS: 1, Topic: "a/b", ID: 10, Payload: []byte("hi")}},
	{"publish-qos0-retain", "31 05 0003 612f62", Packet{Type: Publish, Retain: true, Topic: "a/b", Payload: []byte{}}},
	{"publish-qos1-dup", "3a 06 0001 78 ffff 00", Packet{Type: Publish, Dup: true, QoS: 1, Topic: "x", ID: 0xffff, Payload: []byte{0}}},
	{"publish-qos2", "34 05 0001 78 0001", Packet{Type: Publish, QoS: 2, Topic: "x", ID: 1, Payload: []byte{}}},
	{"publish-utf8", "30 04 0002 c3a9", Packet{Type: Publish, Topic: "é", Payload: []byte{}}},
	{"puback", "40 02 000a", Packet{Type: Puback, ID: 10}},
	{"pubrec", "50 02 0001", Packet{Type: Pubrec, ID: 1}},
	{"pubrel", "62 02 0001", Packet{Type: Pubrel, ID: 1}},
	{"pubcomp", "70 02 0001", Packet{Type: Pubcomp, ID: 1}},
	{"subscribe", "82 08 0001 0003 612f23 01", Packet{Type: Subscribe, ID: 1, Filters: []Filter{{"a/#", 1}}}},
	{"subscribe-two", "82 0d 0002 0001 2b 00 0004 2f2b2f62 02", Packet{Type: Subscribe, ID: 2, Filters: []Filter{{"+", 0}, {"/+/b", 2}}}},
	{"suback", "90 04 0001 01 80", Packet{Type: Suback, ID: 1, Codes: []byte{1, 0x80}}},
	{"unsubscribe", "a2 05 0001 0001 23", Packet{Type: Unsubscribe, ID: 1, Filters: []Filter{{"#", 0}}}},
	{"unsuback", "b0 02 0001", Packet{Type: Unsuback, ID: 1}},
	{"pingreq", "c0 00", Packet{Type: Pingreq}},
	{"pingresp", "d0 00", Packet{Type: Pingresp}},
	{"disconnect", "e0 00", Packet{Type: Disconnect}},
}

func TestVectors(t *testing.T) {
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			b := unhex(t, v.hex)
			p, err := Decode(b, limit)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(*p, v.p) {
				t.Fatalf("Decode = %+v, want %+v", *p, v.p)
			}
			enc, err := v.p.Append(nil)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !bytes.Equal(enc, b) {
				t.Fatalf("Append = % x, want % x", enc, b)
			}
			rp, err := Read(bufio.NewReader(bytes.NewReader(b)), limit)
			if err != nil || !reflect.DeepEqual(rp, p) {
				t.Fatalf("Read = %+v, %v; want %+v", rp, err, p)
			}
		})
	}
}

func TestRemainingLengthBoundaries(t *testing.T) {
	for _, c := range []struct{ n, bytes int }{{3, 1}, {127, 1}, {128, 2}, {16383, 2}, {16384, 3}, {2097151, 3}, {2097152, 4}} {
		// A PUBLISH with topic "x" and QoS 0 has 3 bytes before its payload.
		p := Packet{Type: Publish, Topic: "x", Payload: make([]byte, c.n-3)}
		b, err := p.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(b) - 1 - c.n; got != c.bytes {
			t.Errorf("remaining length %d: %d length bytes, want %d", c.n, got, c.bytes)
		}
		q, err := Decode(b, 3<<20)
		if err != nil {
			t.Fatalf("remaining length %d: %v", c.n, err)
		}
		if len(q.Payload) != c.n-3 {
			t.Fatalf("payload %d bytes, want %d", len(q.Payload), c.n-3)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, c := range []struct{ name, hex, want string }{
		{"empty", "", "empty"},
		{"length-5-bytes", "30 ff ff ff ff 01", "longer than 4 bytes"},
		{"length-not-minimal", "c0 80 00", "not minimally encoded"},
		{"length-truncated", "30 ff", "unexpected EOF"},
		{"over-limit", "30 ff ff ff 7f", "exceeds the limit"},
		{"body-short", "40 02 00", "have 1 bytes"},
		{"trailing", "40 03 0001 00", "left over"},
		{"type-0", "00 00", "invalid type"},
		{"type-15", "f0 00", "invalid type"},
		{"puback-flags", "41 02 0001", "invalid flags"},
		{"subscribe-flags", "80 08 0001 0003 612f23 01", "invalid flags"},
		{"pingresp-body", "d0 01 00", "left over"},
		{"publish-qos3", "36 05 0001 78 0001", "QoS 3"},
		{"publish-qos0-dup", "38 03 0001 78", "DUP"},
		{"publish-id-0", "32 05 0001 78 0000", "identifier 0"},
		{"publish-no-id", "32 03 0001 78", "unexpected EOF"},
		{"publish-empty-topic", "30 02 0000", "empty topic"},
		{"publish-plus", "30 05 0003 612f2b", "wildcard"},
		{"publish-hash", "30 03 0001 23", "wildcard"},
		{"publish-bad-utf8", "30 04 0002 c328", "UTF-8"},
		{"publish-surrogate", "30 05 0003 eda080", "UTF-8"},
		{"publish-nul", "30 03 0001 00", "U+0000"},
		{"publish-topic-beyond-body", "30 04 00ff 6162", "unexpected EOF"},
		{"puback-id-0", "40 02 0000", "identifier 0"},
		{"connack-reserved-code", "20 02 00 06", "reserved return code"},
		{"connack-reserved-flags", "20 02 02 00", "reserved flags"},
		{"connack-refused-with-session", "20 02 01 05", "session present"},
		{"connack-short", "20 01 00", "unexpected EOF"},
		{"connect-mqisdp", "10 0f 0006 4d5149736470 03 02 003c 0001 64", "protocol"},
		{"connect-level-3", "10 0d 0004 4d515454 03 02 003c 0001 64", "protocol level 3"},
		{"connect-will", "10 0d 0004 4d515454 04 06 003c 0001 64", "not supported"},
		{"connect-reserved", "10 0d 0004 4d515454 04 03 003c 0001 64", "not supported"},
		{"subscribe-no-filters", "82 02 0001", "without topic filters"},
		{"subscribe-qos3", "82 06 0001 0001 23 03", "requested QoS 3"},
		{"subscribe-hash-inside", "82 08 0001 0003 232f61 01", "'#' before the last level"},
		{"subscribe-plus-in-level", "82 07 0001 0002 612b 01", "wildcard within a level"},
		{"subscribe-empty-filter", "82 05 0001 0000 01", "empty topic filter"},
		{"subscribe-missing-qos", "82 06 0001 0002 612f", "unexpected EOF"},
		{"suback-no-codes", "90 02 0001", "without return codes"},
		{"suback-bad-code", "90 03 0001 03", "invalid return code"},
		{"unsubscribe-no-filters", "a2 02 0001", "without topic filters"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Decode(unhex(t, c.hex), limit)
			if err == nil {
				t.Fatalf("decoded %+v", p)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "packet: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
}

// TestReadRefusesBeforeAllocating: a header announcing more than the limit
// is refused without waiting for (or allocating) its body.
func TestReadRefusesBeforeAllocating(t *testing.T) {
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(unhex(t, "30 ff ff ff 7f")), blockingReader{}))
	if _, err := Read(r, limit); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("Read: %v", err)
	}
	big := append(unhex(t, "30 84 80 44"), make([]byte, 16)...) // remaining length 1,114,116
	if _, err := Read(bufio.NewReader(bytes.NewReader(big)), limit); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("Read just over the limit: %v", err)
	}
}

type blockingReader struct{}

func (blockingReader) Read([]byte) (int, error) { select {} }

func TestReadStream(t *testing.T) {
	var stream []byte
	for _, v := range vectors {
		stream = append(stream, unhex(t, v.hex)...)
	}
	r := bufio.NewReader(bytes.NewReader(stream))
	for _, v := range vectors {
		p, err := Read(r, limit)
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if p.Type != v.p.Type {
			t.Fatalf("%s: read %v", v.name, p.Type)
		}
	}
	if _, err := Read(r, limit); !errors.Is(err, io.EOF) {
		t.Fatalf("at end: %v, want EOF", err)
	}
	// A stream cut inside a packet is an unexpected EOF, not a clean end.
	for _, cut := range []string{"32", "32 09", "32 09 0003 61"} {
		if _, err := Read(bufio.NewReader(bytes.NewReader(unhex(t, cut))), limit); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut %q: %v, want unexpected EOF", cut, err)
		}
	}
}

func TestAppendRefusesInvalid(t *testing.T) {
	for _, p := range []Packet{
		{Type: Publish, Topic: "a/+", QoS: 1, ID: 1},
		{Type: Publish, Topic: "", QoS: 1, ID: 1},
		{Type: Publish, Topic: "a", QoS: 1},
		{Type: Publish, Topic: strings.Repeat("a", 0x10000)},
		{Type: Subscribe, ID: 1},
		{Type: Subscribe, ID: 1, Filters: []Filter{{"a/#/b", 1}}},
		{Type: Connect, ClientID: "bad\x00id"},
		{Type: Connect, ClientID: "\xff"},
		{Type: Puback},
		{Type: 0},
		{Type: 15},
	} {
		if b, err := p.Append(nil); err == nil {
			t.Errorf("Append(%+v) = % x, want an error", p, b)
		}
	}
}

func TestCheckFilter(t *testing.T) {
	for _, ok := range []string{"#", "+", "a/b", "a/+/c", "a/#", "+/+", "/", "$share/g/sigil/v1/dev/+/up/#", "sigil/v1/dev/x/down/#"} {
		if err := CheckFilter(ok); err != nil {
			t.Errorf("CheckFilter(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a#", "#/a", "a/b+", "a/#/", "++", "a/\x00"} {
		if CheckFilter(bad) == nil {
			t.Errorf("CheckFilter(%q) accepted", bad)
		}
	}
}

// FuzzDecodePacket feeds arbitrary bytes, as from the network, to the
// decoder: it must never panic, and what it accepts must encode back to the
// same bytes and read the same from a stream.
func FuzzDecodePacket(f *testing.F) {
	for _, v := range vectors {
		f.Add(unhex(f, v.hex))
	}
	f.Add(unhex(f, "30 ff ff ff 7f"))
	f.Add(unhex(f, "82 07 0001 0002 612b 01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode(b, 4096)
		rp, rerr := Read(bufio.NewReader(bytes.NewReader(b)), 4096)
		if err != nil {
			if rerr == nil && len(b) > 0 {
				// Read stops at the end of the first packet; Decode also
				// refuses what follows it.
				n, _ := rp.Append(nil)
				if len(n) >= len(b) {
					t.Fatalf("Read accepted % x that Decode refused: %v", b, err)
				}
			}
			return
		}
		enc, err := p.Append(nil)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", p, err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoded % x, input % x", enc, b)
		}
		if rerr != nil || !reflect.DeepEqual(rp, p) {
			t.Fatalf("Read = %+v, %v; Decode = %+v", rp, rerr, p)
		}
	})
}
