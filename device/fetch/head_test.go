package fetch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

func read(s string) (*head, error) {
	return readHead(bufio.NewReaderSize(strings.NewReader(s), 16), 4096, 16)
}

func TestReadHead(t *testing.T) {
	h, err := read("HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\ncontent-range:  bytes 5-14/20 \r\n" +
		"ETag: \"abc\"\r\nX-Other: whatever\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\r\nBODY")
	if err != nil {
		t.Fatal(err)
	}
	want := head{minor: 1, code: 206, reason: "Partial Content", contentLength: 10, contentRange: "bytes 5-14/20",
		etag: `"abc"`, date: "Mon, 02 Jan 2006 15:04:05 GMT"}
	if *h != want {
		t.Fatalf("got %+v\nwant %+v", *h, want)
	}

	// Interim responses are skipped; bare LF line ends are accepted; an
	// empty reason phrase too.
	h, err = read("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\nLink: </x>\n\nHTTP/1.0 200\r\nContent-Length: 3\r\n\r\n")
	if err != nil || h.code != 200 || h.minor != 0 || h.reason != "" || h.contentLength != 3 {
		t.Fatalf("got %+v, %v", h, err)
	}

	for _, c := range []struct{ name, in string }{
		{"empty", ""},
		{"HTTP/2", "HTTP/2 200 OK\r\n\r\n"},
		{"HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n"},
		{"short code", "HTTP/1.1 20 OK\r\n\r\n"},
		{"code out of range", "HTTP/1.1 999 OK\r\n\r\n"},
		{"no space after code", "HTTP/1.1 200OK\r\n\r\n"},
		{"control byte in reason", "HTTP/1.1 200 O\x01K\r\n\r\n"},
		{"no colon", "HTTP/1.1 200 OK\r\nContent-Length 3\r\n\r\n"},
		{"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\n"},
		{"folded line", "HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\n\r\n"},
		{"NUL in value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n"},
		{"bare CR in value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n"},
		{"negative length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"},
		{"signed length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n"},
		{"huge length", "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n"},
		{"conflicting lengths", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"},
		{"length list", "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"},
		{"repeated ETag", "HTTP/1.1 200 OK\r\nETag: \"a\"\r\nETag: \"b\"\r\n\r\n"},
		{"empty Content-Range", "HTTP/1.1 206 OK\r\nContent-Range:\r\n\r\n"},
		{"cut in the head", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"},
		{"cut in a line", "HTTP/1.1 200 OK\r\nContent-Len"},
	} {
		if h, err := read(c.in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %+v, %v; want ErrMalformed", c.name, h, err)
		}
	}
	if _, err := read("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("101: %v", err)
	}
	// Content-Length may repeat with the same value.
	if h, err := read("HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n"); err != nil || h.contentLength != 3 {
		t.Errorf("repeated equal Content-Length: %+v, %v", h, err)
	}
}

// TestReadHeadBounds: a head is refused once it passes the byte or line
// bound, however it is split (one long line, many lines, many interim
// responses), and accepted right at the bound.
func TestReadHeadBounds(t *testing.T) {
	status := "HTTP/1.1 200 OK\r\n"
	long := status + "X-Long: " + strings.Repeat("a", 200) + "\r\n\r\n"
	if _, err := readHead(bufio.NewReaderSize(strings.NewReader(long), 16), len(long), 10); err != nil {
		t.Fatalf("head of exactly the bound: %v", err)
	}
	if _, err := readHead(bufio.NewReaderSize(strings.NewReader(long), 16), len(long)-1, 10); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("head one byte over: %v", err)
	}
	many := status + strings.Repeat("X-A: 1\r\n", 11) + "\r\n"
	if _, err := readHead(bufio.NewReader(strings.NewReader(many)), 4096, 10); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("11 header lines with a bound of 10: %v", err)
	}
	if _, err := readHead(bufio.NewReader(strings.NewReader(many)), 4096, 11); err != nil {
		t.Fatalf("11 header lines with a bound of 11: %v", err)
	}
	interim := strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 1000) + status + "\r\n"
	if _, err := readHead(bufio.NewReader(strings.NewReader(interim)), 4096, 10); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("endless interim responses: %v", err)
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in                string
		first, last, size int64
	}{
		{"bytes 0-0/1", 0, 0, 1},
		{"bytes 5-9/10", 5, 9, 10},
		{"bytes 100-199/*", 100, 199, -1},
		{"bytes 0-999999999999999998/999999999999999999", 0, 999999999999999998, 999999999999999999},
	} {
		f, l, s, err := parseContentRange(c.in)
		if err != nil || f != c.first || l != c.last || s != c.size {
			t.Errorf("%q: %d %d %d %v", c.in, f, l, s, err)
		}
	}
	for _, in := range []string{"", "bytes", "bytes 5-9", "bytes */10", "bytes 9-5/10", "bytes 5-10/10",
		"items 0-1/2", "bytes -1-2/3", "bytes 1--2/3", "bytes 0-1/-3", "Bytes 0-1/2", "bytes  0-1/2", "bytes 0-1/2 ",
		"bytes 0-1/9999999999999999999", "bytes 0x1-2/3"} {
		if _, _, _, err := parseContentRange(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q accepted: %v", in, err)
		}
	}
}

func TestValidator(t *testing.T) {
	for _, c := range []struct {
		h    head
		want string
	}{
		{head{etag: `"x"`}, `"x"`},
		{head{etag: `W/"x"`}, ""},
		{head{etag: `W/"x"`, lastModified: "Mon, 02 Jan 2006 15:04:05 GMT", date: "Mon, 02 Jan 2006 15:04:06 GMT"},
			"Mon, 02 Jan 2006 15:04:05 GMT"},
		// A date less than a second after the last change is weak.
		{head{lastModified: "Mon, 02 Jan 2006 15:04:05 GMT", date: "Mon, 02 Jan 2006 15:04:05 GMT"}, ""},
		{head{lastModified: "Mon, 02 Jan 2006 15:04:05 GMT"}, ""},
		{head{lastModified: "yesterday", date: "Mon, 02 Jan 2006 15:04:05 GMT"}, ""},
		{head{etag: `"a"b"`}, ""},
	} {
		if got := validator(&c.h); got != c.want {
			t.Errorf("%+v: %q, want %q", c.h, got, c.want)
		}
	}
}

// FuzzReadHead feeds arbitrary bytes to the head parser. It must not
// panic, must stay within its bounds, and, when both it and net/http's
// parser accept a head, must agree with net/http on the status and the
// fields the client acts on.
func FuzzReadHead(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-4/5\r\nContent-Length: 3\r\n\r\nllo"))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\nContent-Length: 0\n\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\n X: folded\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		const maxBytes, maxHeaders = 1024, 16
		src := bytes.NewReader(b)
		br := bufio.NewReaderSize(src, 16)
		h, err := readHead(br, maxBytes, maxHeaders)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fetch: ") {
				t.Fatalf("error without the package name: %v", err)
			}
			return
		}
		consumed := len(b) - src.Len() - br.Buffered()
		if consumed > maxBytes {
			t.Fatalf("accepted a head of %d bytes, bound %d", consumed, maxBytes)
		}
		if h.code < 200 || h.code > 599 || h.contentLength < -1 {
			t.Fatalf("accepted %+v", h)
		}
		if h.code == 206 && h.contentRange != "" {
			if first, last, size, err := parseContentRange(h.contentRange); err == nil && (first > last || (size >= 0 && last >= size)) {
				t.Fatalf("range %q gave %d-%d/%d", h.contentRange, first, last, size)
			}
		}
		// net/http as an independent parser of the same bytes.
		ref, rerr := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
		if rerr != nil || ref.StatusCode < 200 {
			return // net/http returns interim responses to its caller
		}
		defer ref.Body.Close()
		if ref.StatusCode != h.code {
			t.Fatalf("status %d, net/http %d", h.code, ref.StatusCode)
		}
		if ref.Header.Get("Content-Range") != h.contentRange || ref.Header.Get("ETag") != h.etag {
			t.Fatalf("fields %+v, net/http %v", h, ref.Header)
		}
		// (net/http gives bodiless statuses such as 204 a length of 0; the
		// client accepts only 200 and 206.)
		withBody := h.code == 200 || h.code == 206
		if withBody && len(ref.TransferEncoding) == 0 && ref.Header.Get("Content-Length") != "" && ref.ContentLength != h.contentLength {
			t.Fatalf("Content-Length %d, net/http %d", h.contentLength, ref.ContentLength)
		}
	})
}

// FuzzContentRange: whatever parses re-formats to the same text and
// satisfies first <= last < size.
func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 5-9/10", "bytes 1-2/*", "bytes */10", "bytes 9-5/10", "bytes 01-2/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, size, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first < 0 || first > last || (size >= 0 && last >= size) || size < -1 {
			t.Fatalf("%q: %d-%d/%d", s, first, last, size)
		}
		total := "*"
		if size >= 0 {
			total = strconv.FormatInt(size, 10)
		}
		again := fmt.Sprintf("bytes %d-%d/%s", first, last, total)
		f2, l2, s2, err := parseContentRange(again)
		if err != nil || f2 != first || l2 != last || s2 != size {
			t.Fatalf("%q -> %q -> %d-%d/%d %v", s, again, f2, l2, s2, err)
		}
	})
}
