package fetch

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// head is what the client keeps of a response head: the status and the
// header fields it acts on. Every other field is checked for syntax and
// dropped.
type head struct {
	minor            int // HTTP/1.minor
	code             int
	reason           string
	contentLength    int64 // -1 when absent
	contentRange     string
	transferEncoding string
	contentEncoding  string
	etag             string
	lastModified     string
	date             string
	location         string
}

// errHeadTooLarge is a response head past Config.MaxHeaderBytes or
// Config.MaxHeaders.
var errHeadTooLarge = fmt.Errorf("%w: response head too large", ErrMalformed)

// readHead reads a response head from br: interim (1xx) responses are
// skipped, and the first final one is returned. Together they may take at
// most maxBytes bytes (line ends included) and maxHeaders header lines.
// The reader is left at the first byte of the body.
func readHead(br *bufio.Reader, maxBytes, maxHeaders int) (*head, error) {
	budget, count := maxBytes, maxHeaders
	for {
		h, err := readOneHead(br, &budget, &count)
		if err != nil {
			return nil, err
		}
		switch {
		case h.code == 101:
			return nil, fmt.Errorf("%w: server switched protocols (101)", ErrUnsupported)
		case h.code < 200:
			continue // 100 Continue, 103 Early Hints: a final response follows
		}
		return h, nil
	}
}

// readOneHead reads one status line and its header lines, spending budget
// bytes and count header lines.
func readOneHead(br *bufio.Reader, budget, count *int) (*head, error) {
	line, err := readLine(br, budget)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: connection closed before a response", ErrMalformed)
		}
		return nil, err
	}
	h, err := parseStatusLine(line)
	if err != nil {
		return nil, err
	}
	for {
		line, err := readLine(br, budget)
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: connection closed inside the response head", ErrMalformed)
		}
		if err != nil {
			return nil, err
		}
		if line == "" {
			return h, nil
		}
		if *count--; *count < 0 {
			return nil, errHeadTooLarge
		}
		if err := h.field(line); err != nil {
			return nil, err
		}
	}
}

// readLine returns the next line without its end (CRLF, or a bare LF as
// RFC 9112 lets recipients accept), spending its length from budget.
func readLine(br *bufio.Reader, budget *int) (string, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if *budget -= len(frag); *budget < 0 {
			return "", errHeadTooLarge
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				return "", fmt.Errorf("%w: connection closed inside the response head", ErrMalformed)
			}
			return "", err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}

// parseStatusLine parses "HTTP/1.x NNN reason".
func parseStatusLine(line string) (*head, error) {
	bad := func() (*head, error) {
		return nil, fmt.Errorf("%w: status line %q", ErrMalformed, clip(line))
	}
	rest, ok := strings.CutPrefix(line, "HTTP/1.")
	if !ok || len(rest) < 5 || (rest[0] != '0' && rest[0] != '1') || rest[1] != ' ' {
		return bad()
	}
	code := 0
	for _, c := range []byte(rest[2:5]) {
		if c < '0' || c > '9' {
			return bad()
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 || code > 599 {
		return bad()
	}
	h := &head{minor: int(rest[0] - '0'), code: code, contentLength: -1}
	if len(rest) > 5 {
		if rest[5] != ' ' || !validValue(rest[6:]) {
			return bad()
		}
		h.reason = rest[6:]
	}
	return h, nil
}

// field parses one header line and keeps the fields the client acts on.
// Obsolete line folding (a line starting with white space) and white space
// before the colon are refused, as RFC 9112 requires.
func (h *head) field(line string) error {
	name, value, ok := strings.Cut(line, ":")
	if !ok || !validToken(name) {
		return fmt.Errorf("%w: header line %q", ErrMalformed, clip(line))
	}
	value = strings.Trim(value, " \t")
	if !validValue(value) {
		return fmt.Errorf("%w: value of header %q", ErrMalformed, clip(name))
	}
	var dst *string
	switch strings.ToLower(name) {
	case "content-length":
		n, err := parseLength(value)
		if err != nil || (h.contentLength >= 0 && h.contentLength != n) {
			return fmt.Errorf("%w: Content-Length %q", ErrMalformed, clip(value))
		}
		h.contentLength = n
		return nil
	case "content-range":
		dst = &h.contentRange
	case "transfer-encoding":
		dst = &h.transferEncoding
	case "content-encoding":
		dst = &h.contentEncoding
	case "etag":
		dst = &h.etag
	case "last-modified":
		dst = &h.lastModified
	case "date":
		dst = &h.date
	case "location":
		dst = &h.location
	default:
		return nil
	}
	if *dst != "" {
		// None of these may repeat (Transfer-Encoding may, as a list; it
		// is refused anyway).
		return fmt.Errorf("%w: header %q repeated", ErrMalformed, clip(name))
	}
	if value == "" {
		return fmt.Errorf("%w: header %q empty", ErrMalformed, clip(name))
	}
	*dst = value
	return nil
}

// parseLength parses a non-negative decimal of at most 18 digits (so it
// fits an int64 with room to add).
func parseLength(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, errors.New("bad length")
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, errors.New("bad length")
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// parseContentRange parses a satisfied byte range, "bytes FIRST-LAST/SIZE"
// (RFC 9110 14.4), where SIZE may be "*" (unknown; returned as -1). It
// checks that FIRST <= LAST and that LAST < SIZE when SIZE is known.
func parseContentRange(s string) (first, last, size int64, err error) {
	bad := func() (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("%w: Content-Range %q", ErrMalformed, clip(s))
	}
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return bad()
	}
	rng, total, ok := strings.Cut(rest, "/")
	if !ok {
		return bad()
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	if first, err = parseLength(a); err != nil {
		return bad()
	}
	if last, err = parseLength(b); err != nil || last < first {
		return bad()
	}
	size = -1
	if total != "*" {
		if size, err = parseLength(total); err != nil || last >= size {
			return bad()
		}
	}
	return first, last, size, nil
}

// validToken reports whether s is an RFC 9110 token (a field name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validValue reports whether s holds only field-value bytes: visible
// ASCII, space, tab and obs-text (0x80 and up); no other control bytes.
func validValue(s string) bool {
	for _, c := range []byte(s) {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// clip shortens text from the server for an error message.
func clip(s string) string {
	const n = 64
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
