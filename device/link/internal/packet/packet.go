// Package packet encodes and decodes MQTT 3.1.1 control packets for
// device/link.
//
// The decoder reads bytes from the network and trusts none of them: the
// remaining length is at most four bytes and minimally encoded, a packet
// larger than the caller's limit is refused before anything is allocated for
// it, fixed-header flags must be exactly what the specification prescribes,
// strings must be valid UTF-8 without U+0000, topic names must not hold
// wildcards, topic filters must place them correctly, packet identifiers of
// packets that carry one must not be zero, and every byte of the packet must
// be used. Encoding applies the same rules, so a packet that decodes encodes
// back to the same bytes.
//
// CONNECT is supported without will, user name and password, which the
// device never sends; it is decoded only so that tests can play the broker.
package packet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Type is an MQTT control packet type.
type Type byte

// Control packet types (MQTT 3.1.1 section 2.2.1).
const (
	Connect     Type = 1
	Connack     Type = 2
	Publish     Type = 3
	Puback      Type = 4
	Pubrec      Type = 5
	Pubrel      Type = 6
	Pubcomp     Type = 7
	Subscribe   Type = 8
	Suback      Type = 9
	Unsubscribe Type = 10
	Unsuback    Type = 11
	Pingreq     Type = 12
	Pingresp    Type = 13
	Disconnect  Type = 14
)

var typeNames = [...]string{"", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
	"SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT"}

func (t Type) String() string {
	if t >= Connect && t <= Disconnect {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", byte(t))
}

// SubackFailure is the SUBACK return code of a refused subscription.
const SubackFailure = 0x80

// MaxRemainingLength is the largest remaining length four bytes encode.
const MaxRemainingLength = 268435455

// Filter is one topic filter of a SUBSCRIBE or UNSUBSCRIBE.
type Filter struct {
	Topic string
	QoS   byte // requested QoS; always 0 in UNSUBSCRIBE
}

// Packet is one control packet. Which fields are used depends on Type; the
// others are zero.
type Packet struct {
	Type Type

	// PUBLISH.
	Dup     bool
	QoS     byte
	Retain  bool
	Topic   string
	Payload []byte

	// ID is the packet identifier of PUBLISH with QoS > 0, PUBACK, PUBREC,
	// PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.
	ID uint16

	// CONNECT.
	ClientID     string
	CleanSession bool
	KeepAlive    uint16 // seconds
	Username     string // sent when not empty or when Password is set
	Password     []byte // sent when not nil; at most 65535 bytes

	// CONNACK.
	SessionPresent bool
	ReturnCode     byte

	// SUBSCRIBE and UNSUBSCRIBE.
	Filters []Filter

	// SUBACK: one return code per filter (granted QoS or SubackFailure).
	Codes []byte
}

// Read reads one packet from r. A packet whose remaining length exceeds max
// is refused before its body is read. The returned packet's Payload is its
// own memory.
func Read(r *bufio.Reader, max int) (*Packet, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	n, err := readLength(r)
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("packet: %v of %d bytes exceeds the limit of %d", Type(h>>4), n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("packet: %v body: %w", Type(h>>4), err)
	}
	return parse(h, body)
}

// Decode decodes b, which must hold exactly one packet of at most max bytes
// of remaining length. The Payload of a PUBLISH aliases b.
func Decode(b []byte, max int) (*Packet, error) {
	if len(b) == 0 {
		return nil, errors.New("packet: empty")
	}
	br := byteReader(b[1:])
	n, err := readLength(&br)
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("packet: %v of %d bytes exceeds the limit of %d", Type(b[0]>>4), n, max)
	}
	if len(br) != n {
		return nil, fmt.Errorf("packet: %v: remaining length %d, have %d bytes", Type(b[0]>>4), n, len(br))
	}
	return parse(b[0], br)
}

type byteReader []byte

func (b *byteReader) ReadByte() (byte, error) {
	if len(*b) == 0 {
		return 0, io.EOF
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c, nil
}

// readLength decodes the variable-length remaining length: at most four
// bytes, and no longer than needed. It follows the first byte of a packet,
// so the end of input is unexpected.
func readLength(r io.ByteReader) (int, error) {
	n, shift := 0, 0
	for i := 0; i < 4; i++ {
		c, err := r.ReadByte()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, fmt.Errorf("packet: remaining length: %w", err)
		}
		if c == 0 && i > 0 {
			return 0, errors.New("packet: remaining length not minimally encoded")
		}
		n |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			return n, nil
		}
		shift += 7
	}
	return 0, errors.New("packet: remaining length longer than 4 bytes")
}

// flags returns the fixed-header flags a packet of type t must carry;
// PUBLISH is checked apart.
func flags(t Type) byte {
	switch t {
	case Pubrel, Subscribe, Unsubscribe:
		return 0x2
	}
	return 0
}

func parse(h byte, body []byte) (*Packet, error) {
	t := Type(h >> 4)
	if t < Connect || t > Disconnect {
		return nil, fmt.Errorf("packet: invalid type %d", byte(t))
	}
	p := &Packet{Type: t}
	if t == Publish {
		p.Dup, p.QoS, p.Retain = h&0x8 != 0, (h>>1)&0x3, h&0x1 != 0
	} else if h&0xf != flags(t) {
		return nil, fmt.Errorf("packet: %v with invalid flags %#x", t, h&0xf)
	}
	d := decoder{b: body}
	switch t {
	case Connect:
		if name := d.string(); name != "MQTT" && d.err == nil {
			return nil, fmt.Errorf("packet: CONNECT for protocol %q, want MQTT", name)
		}
		if lvl := d.byte(); lvl != 4 && d.err == nil {
			return nil, fmt.Errorf("packet: CONNECT with protocol level %d, want 4 (MQTT 3.1.1)", lvl)
		}
		f := d.byte()
		if f&^0xc2 != 0 && d.err == nil {
			return nil, fmt.Errorf("packet: CONNECT flags %#x not supported (only clean session, user name, password)", f)
		}
		if f&0x40 != 0 && f&0x80 == 0 && d.err == nil {
			return nil, errors.New("packet: CONNECT with a password but no user name")
		}
		p.CleanSession = f&0x2 != 0
		p.KeepAlive = d.uint16()
		p.ClientID = d.string()
		if f&0x80 != 0 {
			if p.Username = d.string(); p.Username == "" && f&0x40 == 0 && d.err == nil {
				return nil, errors.New("packet: CONNECT with an empty user name and no password")
			}
		}
		if f&0x40 != 0 {
			p.Password = d.binary()
		}
	case Connack:
		f := d.byte()
		if f&^0x1 != 0 && d.err == nil {
			return nil, fmt.Errorf("packet: CONNACK with reserved flags %#x", f)
		}
		p.SessionPresent = f&0x1 != 0
		p.ReturnCode = d.byte()
	case Publish:
		p.Topic = d.string()
		if p.QoS > 0 {
			p.ID = d.uint16()
		}
		if d.err == nil {
			p.Payload, d.b = d.b, nil
		}
	case Puback, Pubrec, Pubrel, Pubcomp, Unsuback:
		p.ID = d.uint16()
	case Subscribe, Unsubscribe:
		p.ID = d.uint16()
		for len(d.b) > 0 && d.err == nil {
			f := Filter{Topic: d.string()}
			if t == Subscribe {
				f.QoS = d.byte()
			}
			p.Filters = append(p.Filters, f)
		}
	case Suback:
		p.ID = d.uint16()
		if d.err == nil {
			p.Codes, d.b = d.b, nil
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("packet: %v: %w", t, d.err)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("packet: %v: %d bytes left over", t, len(d.b))
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// decoder reads fields from a packet body; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = io.ErrUnexpectedEOF
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uint16() uint16 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 2 {
		d.err = io.ErrUnexpectedEOF
		return 0
	}
	v := uint16(d.b[0])<<8 | uint16(d.b[1])
	d.b = d.b[2:]
	return v
}

// binary reads a length-prefixed byte string (never nil when read).
func (d *decoder) binary() []byte {
	n := int(d.uint16())
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = io.ErrUnexpectedEOF
		return nil
	}
	b := append([]byte{}, d.b[:n]...)
	d.b = d.b[n:]
	return b
}

func (d *decoder) string() string {
	n := int(d.uint16())
	if d.err != nil {
		return ""
	}
	if len(d.b) < n {
		d.err = io.ErrUnexpectedEOF
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// validate checks the rules that decoding and encoding share.
func (p *Packet) validate() error {
	switch p.Type {
	case Connect:
		if err := checkString(p.ClientID); err != nil {
			return fmt.Errorf("packet: CONNECT client ID: %w", err)
		}
		if err := checkString(p.Username); err != nil {
			return fmt.Errorf("packet: CONNECT user name: %w", err)
		}
		if len(p.Password) > 65535 {
			return errors.New("packet: CONNECT password too long")
		}
	case Connack:
		if p.ReturnCode > 5 {
			return fmt.Errorf("packet: CONNACK with reserved return code %d", p.ReturnCode)
		}
		if p.ReturnCode != 0 && p.SessionPresent {
			return errors.New("packet: CONNACK refusal with session present")
		}
	case Publish:
		if p.QoS > 2 {
			return errors.New("packet: PUBLISH with QoS 3")
		}
		if p.QoS == 0 && (p.Dup || p.ID != 0) {
			return errors.New("packet: PUBLISH with QoS 0 has DUP set or a packet identifier")
		}
		if p.QoS > 0 && p.ID == 0 {
			return errors.New("packet: PUBLISH with packet identifier 0")
		}
		if err := CheckTopic(p.Topic); err != nil {
			return fmt.Errorf("packet: PUBLISH: %w", err)
		}
	case Puback, Pubrec, Pubrel, Pubcomp, Unsuback:
		if p.ID == 0 {
			return fmt.Errorf("packet: %v with packet identifier 0", p.Type)
		}
	case Subscribe, Unsubscribe:
		if p.ID == 0 {
			return fmt.Errorf("packet: %v with packet identifier 0", p.Type)
		}
		if len(p.Filters) == 0 {
			return fmt.Errorf("packet: %v without topic filters", p.Type)
		}
		for _, f := range p.Filters {
			if err := CheckFilter(f.Topic); err != nil {
				return fmt.Errorf("packet: %v: %w", p.Type, err)
			}
			if f.QoS > 2 || (p.Type == Unsubscribe && f.QoS != 0) {
				return fmt.Errorf("packet: %v with requested QoS %d", p.Type, f.QoS)
			}
		}
	case Suback:
		if p.ID == 0 {
			return errors.New("packet: SUBACK with packet identifier 0")
		}
		if len(p.Codes) == 0 {
			return errors.New("packet: SUBACK without return codes")
		}
		for _, c := range p.Codes {
			if c > 2 && c != SubackFailure {
				return fmt.Errorf("packet: SUBACK with invalid return code %#x", c)
			}
		}
	case Pingreq, Pingresp, Disconnect:
	default:
		return fmt.Errorf("packet: invalid type %d", byte(p.Type))
	}
	return nil
}

// checkString applies the rules for MQTT UTF-8 strings.
func checkString(s string) error {
	if len(s) > 0xffff {
		return fmt.Errorf("string of %d bytes is too long", len(s))
	}
	if !utf8.ValidString(s) {
		return errors.New("invalid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("string contains U+0000")
	}
	return nil
}

// CheckTopic reports whether s may be the topic name of a PUBLISH.
func CheckTopic(s string) error {
	if s == "" {
		return errors.New("empty topic name")
	}
	if strings.ContainsAny(s, "+#") {
		return fmt.Errorf("topic name %q contains a wildcard", s)
	}
	if err := checkString(s); err != nil {
		return fmt.Errorf("topic name: %w", err)
	}
	return nil
}

// CheckFilter reports whether s is a valid topic filter: '#' only as the
// whole last level, '+' only as a whole level.
func CheckFilter(s string) error {
	if s == "" {
		return errors.New("empty topic filter")
	}
	if err := checkString(s); err != nil {
		return fmt.Errorf("topic filter: %w", err)
	}
	levels := strings.Split(s, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && len(l) != 1 {
			return fmt.Errorf("topic filter %q: wildcard within a level", s)
		}
		if l == "#" && i != len(levels)-1 {
			return fmt.Errorf("topic filter %q: '#' before the last level", s)
		}
	}
	return nil
}

// Append encodes p and appends it to dst.
func (p *Packet) Append(dst []byte) ([]byte, error) {
	dst, err := p.AppendHeader(dst)
	if err != nil {
		return dst, err
	}
	return append(dst, p.Payload...), nil
}

// AppendHeader appends everything of p but a PUBLISH's payload, so that a
// large payload can be written without copying it.
func (p *Packet) AppendHeader(dst []byte) ([]byte, error) {
	if err := p.validate(); err != nil {
		return dst, err
	}
	var v []byte // variable header and, except for PUBLISH, payload
	switch p.Type {
	case Connect:
		v = appendString(v, "MQTT")
		f := byte(0)
		if p.CleanSession {
			f |= 0x2
		}
		if p.Username != "" || p.Password != nil {
			f |= 0x80
		}
		if p.Password != nil {
			f |= 0x40
		}
		v = append(v, 4, f, byte(p.KeepAlive>>8), byte(p.KeepAlive))
		v = appendString(v, p.ClientID)
		if f&0x80 != 0 {
			v = appendString(v, p.Username)
		}
		if f&0x40 != 0 {
			v = append(v, byte(len(p.Password)>>8), byte(len(p.Password)))
			v = append(v, p.Password...)
		}
	case Connack:
		f := byte(0)
		if p.SessionPresent {
			f = 1
		}
		v = append(v, f, p.ReturnCode)
	case Publish:
		v = appendString(v, p.Topic)
		if p.QoS > 0 {
			v = append(v, byte(p.ID>>8), byte(p.ID))
		}
	case Puback, Pubrec, Pubrel, Pubcomp, Unsuback:
		v = append(v, byte(p.ID>>8), byte(p.ID))
	case Subscribe, Unsubscribe:
		v = append(v, byte(p.ID>>8), byte(p.ID))
		for _, f := range p.Filters {
			v = appendString(v, f.Topic)
			if p.Type == Subscribe {
				v = append(v, f.QoS)
			}
		}
	case Suback:
		v = append(v, byte(p.ID>>8), byte(p.ID))
		v = append(v, p.Codes...)
	}
	n := len(v)
	if p.Type == Publish {
		n += len(p.Payload)
	}
	if n > MaxRemainingLength {
		return dst, fmt.Errorf("packet: %v of %d bytes is too large", p.Type, n)
	}
	h := byte(p.Type)<<4 | flags(p.Type)
	if p.Type == Publish {
		h |= p.QoS << 1
		if p.Dup {
			h |= 0x8
		}
		if p.Retain {
			h |= 0x1
		}
	}
	dst = append(dst, h)
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			c |= 0x80
		}
		dst = append(dst, c)
		if n == 0 {
			break
		}
	}
	return append(dst, v...), nil
}

func appendString(b []byte, s string) []byte {
	b = append(b, byte(len(s)>>8), byte(len(s)))
	return append(b, s...)
}
