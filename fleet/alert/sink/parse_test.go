package sink

// A strict reader of what the syslog sink sends, written from the RFCs and
// the CEF specification independently of the sink's formatting code: RFC
// 6587 octet-counted frames, RFC 5424 messages, CEF events.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// readFrame reads one octet-counted frame: MSG-LEN SP SYSLOG-MSG, where
// MSG-LEN is NONZERO-DIGIT *DIGIT.
func readFrame(r *bufio.Reader) ([]byte, error) {
	var n int
	for i := 0; ; i++ {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		if c == ' ' && i > 0 {
			break
		}
		if c < '0' || c > '9' || (i == 0 && c == '0') || i > 7 {
			return nil, fmt.Errorf("bad MSG-LEN byte %q", c)
		}
		n = n*10 + int(c-'0')
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

type sdElement struct {
	ID     string
	Params map[string]string
}

type syslogMsg struct {
	Facility, Severity int
	Timestamp          time.Time
	Hostname, AppName  string
	ProcID, MsgID      string
	SD                 []sdElement
	Msg                string
}

var timestampRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$`)

// parse5424 parses one RFC 5424 SYSLOG-MSG strictly.
func parse5424(b []byte) (*syslogMsg, error) {
	s := string(b)
	m := &syslogMsg{}
	if !strings.HasPrefix(s, "<") {
		return nil, errors.New("no PRI")
	}
	end := strings.IndexByte(s, '>')
	if end < 2 || end > 4 {
		return nil, errors.New("bad PRI")
	}
	digits := s[1:end]
	if len(digits) > 1 && digits[0] == '0' {
		return nil, errors.New("PRI with a leading zero")
	}
	pri, err := strconv.Atoi(digits)
	if err != nil || pri > 191 {
		return nil, errors.New("PRI out of range")
	}
	m.Facility, m.Severity = pri/8, pri%8
	s = s[end+1:]
	if !strings.HasPrefix(s, "1 ") {
		return nil, errors.New("VERSION is not 1")
	}
	s = s[2:]
	field := func(name string, max int) (string, error) {
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			return "", fmt.Errorf("%s: no SP after it", name)
		}
		v := s[:i]
		s = s[i+1:]
		if len(v) < 1 || len(v) > max {
			return "", fmt.Errorf("%s: length %d not in 1..%d", name, len(v), max)
		}
		for j := 0; j < len(v); j++ {
			if v[j] < 33 || v[j] > 126 {
				return "", fmt.Errorf("%s: byte %q is not PRINTUSASCII", name, v[j])
			}
		}
		return v, nil
	}
	ts, err := field("TIMESTAMP", 32)
	if err != nil {
		return nil, err
	}
	if ts != "-" {
		if !timestampRE.MatchString(ts) {
			return nil, fmt.Errorf("TIMESTAMP %q", ts)
		}
		if m.Timestamp, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return nil, fmt.Errorf("TIMESTAMP %q: %v", ts, err)
		}
	}
	if m.Hostname, err = field("HOSTNAME", 255); err != nil {
		return nil, err
	}
	if m.AppName, err = field("APP-NAME", 48); err != nil {
		return nil, err
	}
	if m.ProcID, err = field("PROCID", 128); err != nil {
		return nil, err
	}
	if m.MsgID, err = field("MSGID", 32); err != nil {
		return nil, err
	}
	// STRUCTURED-DATA = NILVALUE / 1*SD-ELEMENT
	if strings.HasPrefix(s, "-") {
		s = s[1:]
	} else {
		for strings.HasPrefix(s, "[") {
			el, rest, err := parseSDElement(s)
			if err != nil {
				return nil, err
			}
			m.SD = append(m.SD, el)
			s = rest
		}
		if len(m.SD) == 0 {
			return nil, errors.New("STRUCTURED-DATA missing")
		}
	}
	if s == "" {
		return m, nil
	}
	if s[0] != ' ' {
		return nil, errors.New("no SP before MSG")
	}
	s = s[1:]
	if strings.HasPrefix(s, "\xEF\xBB\xBF") && !utf8.ValidString(s[3:]) {
		return nil, errors.New("MSG-UTF8 is not UTF-8")
	}
	m.Msg = s
	return m, nil
}

func sdName(s string) (string, string, error) {
	i := 0
	for i < len(s) && i < 33 && s[i] >= 33 && s[i] <= 126 && s[i] != '=' && s[i] != ']' && s[i] != '"' {
		i++
	}
	if i == 0 || i > 32 {
		return "", "", errors.New("bad SD-NAME")
	}
	return s[:i], s[i:], nil
}

func parseSDElement(s string) (sdElement, string, error) {
	el := sdElement{Params: map[string]string{}}
	id, s, err := sdName(s[1:])
	if err != nil {
		return el, "", err
	}
	el.ID = id
	for {
		if strings.HasPrefix(s, "]") {
			return el, s[1:], nil
		}
		if !strings.HasPrefix(s, " ") {
			return el, "", errors.New("SD-PARAM not after SP")
		}
		var name string
		if name, s, err = sdName(s[1:]); err != nil {
			return el, "", err
		}
		if !strings.HasPrefix(s, `="`) {
			return el, "", errors.New(`SD-PARAM without ="`)
		}
		s = s[2:]
		var v strings.Builder
		for {
			if s == "" {
				return el, "", errors.New("unterminated PARAM-VALUE")
			}
			c := s[0]
			if c == '"' {
				s = s[1:]
				break
			}
			if c == ']' {
				return el, "", errors.New("unescaped ] in PARAM-VALUE")
			}
			if c == '\\' && len(s) > 1 && (s[1] == '"' || s[1] == '\\' || s[1] == ']') {
				v.WriteByte(s[1])
				s = s[2:]
				continue
			}
			v.WriteByte(c)
			s = s[1:]
		}
		if !utf8.ValidString(v.String()) {
			return el, "", errors.New("PARAM-VALUE is not UTF-8")
		}
		el.Params[name] = v.String()
	}
}

type cefEvent struct {
	Version, Vendor, Product, DeviceVersion, SignatureID, Name string
	Severity                                                   int
	Ext                                                        map[string]string
}

// parseCEF parses a CEF event strictly: seven header fields separated by
// unescaped pipes, where only \| and \\ are escapes and line breaks are
// not allowed; then key=value pairs separated by spaces, where values
// escape only \\ \= \n \r and an unescaped '=' only ever follows a key.
func parseCEF(s string) (*cefEvent, error) {
	if !strings.HasPrefix(s, "CEF:") {
		return nil, errors.New("no CEF: prefix")
	}
	s = s[4:]
	var hdr []string
	var cur strings.Builder
	i := 0
	for len(hdr) < 7 {
		if i >= len(s) {
			return nil, fmt.Errorf("header has %d fields, want 7", len(hdr))
		}
		c := s[i]
		switch {
		case c == '\\':
			if i+1 >= len(s) || (s[i+1] != '|' && s[i+1] != '\\') {
				return nil, errors.New("bad escape in header")
			}
			cur.WriteByte(s[i+1])
			i += 2
		case c == '|':
			hdr = append(hdr, cur.String())
			cur.Reset()
			i++
		case c == '\n' || c == '\r':
			return nil, errors.New("line break in header")
		default:
			cur.WriteByte(c)
			i++
		}
	}
	sev, err := strconv.Atoi(hdr[6])
	if err != nil || sev < 0 || sev > 10 {
		return nil, fmt.Errorf("severity %q", hdr[6])
	}
	if hdr[0] != "0" {
		return nil, fmt.Errorf("CEF version %q", hdr[0])
	}
	ev := &cefEvent{Version: hdr[0], Vendor: hdr[1], Product: hdr[2], DeviceVersion: hdr[3], SignatureID: hdr[4], Name: hdr[5], Severity: sev, Ext: map[string]string{}}
	ext := s[i:]
	isKey := func(k string) bool {
		if k == "" {
			return false
		}
		for _, c := range k {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				return false
			}
		}
		return true
	}
	for ext != "" {
		eq := strings.IndexByte(ext, '=')
		if eq < 0 || !isKey(ext[:eq]) {
			return nil, fmt.Errorf("bad extension key in %q", ext)
		}
		key := ext[:eq]
		ext = ext[eq+1:]
		var v strings.Builder
		j := 0
		next := ""
		for j < len(ext) {
			c := ext[j]
			if c == '\n' || c == '\r' {
				return nil, errors.New("raw line break in extension value")
			}
			if c == '\\' {
				if j+1 >= len(ext) {
					return nil, errors.New("dangling backslash")
				}
				switch ext[j+1] {
				case '\\':
					v.WriteByte('\\')
				case '=':
					v.WriteByte('=')
				case 'n':
					v.WriteByte('\n')
				case 'r':
					v.WriteByte('\r')
				default:
					return nil, fmt.Errorf("bad escape \\%c in extension", ext[j+1])
				}
				j += 2
				continue
			}
			if c == '=' {
				// Must end "... <value> <key>=": the value ends at the
				// last space, the word after it is the next key.
				val := v.String()
				sp := strings.LastIndexByte(val, ' ')
				if sp < 0 || !isKey(val[sp+1:]) {
					return nil, fmt.Errorf("unescaped = in value of %s", key)
				}
				next = val[sp+1:]
				v.Reset()
				v.WriteString(val[:sp])
				j++
				break
			}
			v.WriteByte(c)
			j++
		}
		if _, dup := ev.Ext[key]; dup {
			return nil, fmt.Errorf("key %s twice", key)
		}
		ev.Ext[key] = v.String()
		ext = ext[j:]
		if next != "" {
			ext = next + "=" + ext
		}
	}
	return ev, nil
}
