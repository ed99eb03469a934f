// Package fetch downloads a file, or the rest of one, over HTTPS. It is
// the device's HTTP client for firmware images: one HTTP/1.1 GET per
// connection, written with crypto/tls, net and bufio only, so that sigild
// carries no net/http (about 1.2 MiB on linux/arm64).
//
// It speaks the part of HTTP/1.1 a resumable download needs and refuses
// the rest with a clear error:
//
//   - Request.Offset > 0 sends "Range: bytes=Offset-", and with
//     Request.Validator (the ETag or Last-Modified of the response the
//     first bytes came from) "If-Range", so that a server whose file
//     changed sends the whole new file rather than the tail of it.
//     Request.Length > 0 bounds the range ("Range: bytes=Offset-Last"), for
//     fetching single blocks of an image (adaptive updates).
//   - 206 Partial Content is accepted only with a Content-Range that starts
//     at Offset (and, with an ETag validator, the same ETag); 200 OK means
//     the server sent the whole file (it ignored the range, or the
//     validator no longer matches): Response.Offset is 0 and the caller
//     starts over.
//   - Every other status is a *StatusError: 401, 403, 404 (and 410), 416
//     and 5xx match ErrUnauthorized, ErrForbidden, ErrNotFound,
//     ErrRangeNotSatisfiable and ErrServer with errors.Is. Redirects are
//     never followed (ErrRedirect).
//   - The body must have a length: Content-Length, or the range of a 206.
//     Transfer codings (chunked) and content codings are refused
//     (ErrUnsupported); Go's http.ServeContent, which the fleet serves
//     images with, sends neither.
//   - The response head is bounded in bytes and in header lines, and is
//     parsed strictly (ErrMalformed). Request.MaxSize bounds the file:
//     a response that announces more fails with ErrTooLarge before its
//     body is read, and no more than the announced length is ever read.
//
// The request's context bounds the whole exchange through deadlines on the
// connection; Config.StallTimeout fails a connection that stops making
// progress. Response.Body streams into whatever io.Writer the caller
// copies it to (a file, a hash), never held in memory.
package fetch

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultStallTimeout   = 60 * time.Second
	DefaultMaxHeaderBytes = 16 << 10
	DefaultMaxHeaders     = 64
	DefaultUserAgent      = "sigild"
)

// bufferSize is the size of the connection's read buffer: a TLS record
// and then some.
const bufferSize = 32 << 10

// Errors. A response with a status other than 200 or 206 is a
// *StatusError, which matches the status sentinels below.
var (
	// ErrTooLarge is a file larger than Request.MaxSize.
	ErrTooLarge = errors.New("fetch: file larger than allowed")
	// ErrMalformed is a response that breaks HTTP/1.1, or a 206 whose
	// range is not the one asked for.
	ErrMalformed = errors.New("fetch: malformed response")
	// ErrUnsupported is a response the client does not handle: a body
	// without a length, a transfer or content coding, a protocol switch.
	ErrUnsupported = errors.New("fetch: unsupported response")
	// ErrRedirect is a 3xx response; redirects are not followed.
	ErrRedirect = errors.New("fetch: redirect refused")

	ErrUnauthorized        = errors.New("fetch: unauthorized")          // 401
	ErrForbidden           = errors.New("fetch: forbidden")             // 403
	ErrNotFound            = errors.New("fetch: not found")             // 404, 410
	ErrRangeNotSatisfiable = errors.New("fetch: range not satisfiable") // 416
	ErrServer              = errors.New("fetch: server error")          // 5xx
)

// StatusError is a response whose status is neither 200 nor 206. It
// unwraps to the sentinel of its status class, if any.
type StatusError struct {
	Code   int
	Reason string // the status line's reason phrase, as the server sent it
	// Location is where a redirect points (not followed); "" otherwise.
	Location string
}

func (e *StatusError) Error() string {
	msg := "fetch: server answered " + strconv.Itoa(e.Code)
	if e.Reason != "" {
		msg += " " + clip(e.Reason)
	}
	if e.Location != "" {
		msg += " to " + strconv.Quote(clip(e.Location)) + " (redirects are not followed)"
	}
	return msg
}

// Unwrap returns the sentinel of e's status: ErrRedirect, ErrUnauthorized,
// ErrForbidden, ErrNotFound, ErrRangeNotSatisfiable, ErrServer, or nil.
func (e *StatusError) Unwrap() error {
	switch c := e.Code; {
	case c >= 300 && c < 400:
		return ErrRedirect
	case c == 401:
		return ErrUnauthorized
	case c == 403:
		return ErrForbidden
	case c == 404 || c == 410:
		return ErrNotFound
	case c == 416:
		return ErrRangeNotSatisfiable
	case c >= 500:
		return ErrServer
	}
	return nil
}

// Config configures a Client.
type Config struct {
	// TLS holds the server trust and the device's client certificate
	// (TPM-backed, through Certificates with a crypto.Signer or
	// GetClientCertificate). nil means an empty tls.Config: the system's
	// roots and no client certificate. Each connection uses a clone
	// (Clone keeps certificates, signers, callbacks and the session cache)
	// with NextProtos set to HTTP/1.1 and, when empty, ServerName set to
	// the URL's host.
	TLS *tls.Config
	// Dial opens the TCP connection to "host:port"; nil means a
	// net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// StallTimeout fails a request whose connection makes no progress
	// for this long: connecting, or any one read or write (the TLS
	// handshake included). 0 means DefaultStallTimeout. It is measured by
	// connection deadlines, that is with the real clock.
	StallTimeout time.Duration
	// MaxHeaderBytes bounds a response head (status lines and header
	// lines with their line ends, interim 1xx responses included); 0
	// means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxHeaders bounds the number of header lines of a response head; 0
	// means DefaultMaxHeaders.
	MaxHeaders int
	// UserAgent is sent as User-Agent; "" means DefaultUserAgent.
	UserAgent string
}

// Client downloads files over HTTPS. It keeps no connection between
// requests and is safe for concurrent use.
type Client struct {
	cfg Config
}

// New returns a client; zero fields of cfg take their defaults.
func New(cfg Config) *Client {
	if cfg.TLS == nil {
		cfg.TLS = &tls.Config{}
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.MaxHeaders <= 0 {
		cfg.MaxHeaders = DefaultMaxHeaders
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	return &Client{cfg: cfg}
}

// Request is one GET.
type Request struct {
	// URL is an https URL without user information.
	URL string
	// Offset, when above 0, asks for the file from this byte on
	// ("Range: bytes=Offset-").
	Offset int64
	// Length, when above 0, asks for only Length bytes from Offset
	// ("Range: bytes=Offset-(Offset+Length-1)"), even from byte 0; a 206
	// must then cover exactly that range (or end at the file's end). A
	// 200 still means the whole file.
	Length int64
	// Validator, with Offset above 0, is sent as If-Range: the server
	// sends the range only while the file still has this validator, and
	// the whole file otherwise. Pass the Response.Validator of the
	// response the first bytes came from; "" asks for the range
	// unconditionally.
	Validator string
	// MaxSize, when above 0, bounds the file: a 200 whose Content-Length,
	// or a 206 whose range or complete length, goes past it fails with
	// ErrTooLarge before any of the body is read.
	MaxSize int64
}

// Response is a 200 or 206 response whose body is still to be read.
type Response struct {
	StatusCode int // 200 or 206
	// Offset is where Body starts in the file: Request.Offset for a 206,
	// 0 for a 200, when the server sent the whole file (it ignored the
	// range, or the file changed) and the caller must start over.
	Offset int64
	// Length is the number of bytes Body yields.
	Length int64
	// Size is the file's complete length: Length for a 200, the complete
	// length of a 206's Content-Range, or -1 if the server did not say.
	Size int64
	// Validator identifies this version of the file for a later
	// Request.Validator: its strong ETag, else its Last-Modified date when
	// that is a strong validator (at least a second before the response's
	// Date, RFC 9110 8.8.2.2); "" when it has neither.
	Validator string
	// Body yields exactly Length bytes, then io.EOF; a connection that
	// ends sooner gives an error wrapping io.ErrUnexpectedEOF. Its reads
	// are bounded by the request's context and Config.StallTimeout. The
	// caller must close it, which closes the connection.
	Body io.ReadCloser
}

// Get sends req and reads the response head. On success the caller reads
// and closes Response.Body; on error nothing is left open. An error caused
// by the context wraps the context's error.
func (c *Client) Get(ctx context.Context, req Request) (*Response, error) {
	t, err := parseTarget(req)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.StallTimeout)
	raw, err := c.cfg.Dial(dctx, "tcp", t.addr)
	cancel()
	if err != nil {
		return nil, c.fail(ctx, "connect "+t.addr, err)
	}
	dc := &deadlineConn{Conn: raw, stall: c.cfg.StallTimeout}
	if d, ok := ctx.Deadline(); ok {
		dc.deadline = d
	}
	stop := context.AfterFunc(ctx, dc.cancel)
	done := false
	defer func() {
		if !done {
			stop()
			raw.Close()
		}
	}()

	tc := c.cfg.TLS.Clone()
	tc.NextProtos = []string{"http/1.1"}
	if tc.ServerName == "" {
		tc.ServerName = t.serverName
	}
	conn := tls.Client(dc, tc)
	if err := conn.Handshake(); err != nil {
		return nil, c.fail(ctx, "TLS handshake with "+t.addr, err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "" && p != "http/1.1" {
		return nil, fmt.Errorf("%w: server chose protocol %q", ErrUnsupported, p)
	}
	if _, err := io.WriteString(conn, c.requestHead(t, req)); err != nil {
		return nil, c.fail(ctx, "send request", err)
	}
	br := bufio.NewReaderSize(conn, bufferSize)
	h, err := readHead(br, c.cfg.MaxHeaderBytes, c.cfg.MaxHeaders)
	if err != nil {
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupported) {
			return nil, err
		}
		return nil, c.fail(ctx, "read response", err)
	}
	resp, err := interpret(req, h)
	if err != nil {
		return nil, err
	}
	resp.Body = &body{ctx: ctx, c: c, r: br, raw: raw, stop: stop, remain: resp.Length, length: resp.Length}
	done = true
	return resp, nil
}

// fail wraps an I/O error of stage; when ctx is done it names the
// context's error instead of the connection deadline it caused.
func (c *Client) fail(ctx context.Context, stage string, err error) error {
	if cerr := ctxErr(ctx); cerr != nil {
		return fmt.Errorf("fetch: %s: %w", stage, cerr)
	}
	if errors.Is(err, errCanceled) {
		err = context.Canceled
	}
	return fmt.Errorf("fetch: %s: %w", stage, err)
}

// ctxErr is ctx's error, also when its deadline has passed but its timer
// has not fired yet (the connection deadline may go off first).
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// target is a parsed request URL.
type target struct {
	addr       string // host:port to dial
	host       string // Host header
	serverName string // TLS server name
	path       string // request target: path and query
}

func parseTarget(req Request) (*target, error) {
	u, err := url.Parse(req.URL)
	if err != nil {
		return nil, errors.New("fetch: URL does not parse")
	}
	switch {
	case u.Scheme != "https":
		return nil, errors.New("fetch: URL is not an https URL")
	case u.Host == "" || u.Opaque != "":
		return nil, errors.New("fetch: URL has no host")
	case u.User != nil:
		return nil, errors.New("fetch: URL carries user information")
	case req.Offset < 0:
		return nil, errors.New("fetch: negative offset")
	case req.MaxSize < 0:
		return nil, errors.New("fetch: negative maximum size")
	case !validValue(req.Validator) || len(req.Validator) > 1024:
		return nil, errors.New("fetch: validator is not a header value")
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	if !visible(path) || !visible(u.Host) || path[0] != '/' {
		return nil, errors.New("fetch: URL has characters a request cannot carry")
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return &target{addr: net.JoinHostPort(u.Hostname(), port), host: u.Host, serverName: u.Hostname(), path: path}, nil
}

// visible reports whether s holds only visible ASCII.
func visible(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// requestHead is the request line and header lines of req.
func (c *Client) requestHead(t *target, req Request) string {
	var b strings.Builder
	b.WriteString("GET " + t.path + " HTTP/1.1\r\nHost: " + t.host + "\r\n")
	b.WriteString("User-Agent: " + c.cfg.UserAgent + "\r\n")
	b.WriteString("Accept-Encoding: identity\r\nConnection: close\r\n")
	if req.Length > 0 {
		b.WriteString("Range: bytes=" + strconv.FormatInt(req.Offset, 10) + "-" + strconv.FormatInt(req.Offset+req.Length-1, 10) + "\r\n")
		if req.Validator != "" {
			b.WriteString("If-Range: " + req.Validator + "\r\n")
		}
	} else if req.Offset > 0 {
		b.WriteString("Range: bytes=" + strconv.FormatInt(req.Offset, 10) + "-\r\n")
		if req.Validator != "" {
			b.WriteString("If-Range: " + req.Validator + "\r\n")
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

// interpret checks a response head against the request and describes its
// body.
func interpret(req Request, h *head) (*Response, error) {
	if h.code != 200 && h.code != 206 {
		return nil, &StatusError{Code: h.code, Reason: h.reason, Location: h.location}
	}
	if h.transferEncoding != "" {
		return nil, fmt.Errorf("%w: Transfer-Encoding %q", ErrUnsupported, clip(h.transferEncoding))
	}
	if h.contentEncoding != "" && !strings.EqualFold(h.contentEncoding, "identity") {
		return nil, fmt.Errorf("%w: Content-Encoding %q", ErrUnsupported, clip(h.contentEncoding))
	}
	resp := &Response{StatusCode: h.code, Validator: validator(h)}
	if h.code == 200 {
		if h.contentLength < 0 {
			return nil, fmt.Errorf("%w: no Content-Length", ErrUnsupported)
		}
		if req.MaxSize > 0 && h.contentLength > req.MaxSize {
			return nil, fmt.Errorf("%w: %d bytes, at most %d allowed", ErrTooLarge, h.contentLength, req.MaxSize)
		}
		resp.Length, resp.Size = h.contentLength, h.contentLength
		return resp, nil
	}
	if req.Offset == 0 && req.Length == 0 {
		return nil, fmt.Errorf("%w: 206 to a request without a range", ErrMalformed)
	}
	if h.contentRange == "" {
		return nil, fmt.Errorf("%w: 206 without Content-Range", ErrMalformed)
	}
	first, last, size, err := parseContentRange(h.contentRange)
	if err != nil {
		return nil, err
	}
	n := last - first + 1
	switch {
	case first != req.Offset:
		return nil, fmt.Errorf("%w: range %q to a request from byte %d", ErrMalformed, clip(h.contentRange), req.Offset)
	case req.Length > 0 && (n > req.Length || n < req.Length && (size < 0 || last != size-1)):
		return nil, fmt.Errorf("%w: range %q to a request for %d bytes", ErrMalformed, clip(h.contentRange), req.Length)
	case h.contentLength >= 0 && h.contentLength != n:
		return nil, fmt.Errorf("%w: Content-Length %d for range %q", ErrMalformed, h.contentLength, clip(h.contentRange))
	case isETag(req.Validator) && h.etag != "" && h.etag != req.Validator:
		return nil, fmt.Errorf("%w: range of another version (ETag %q, asked for %q)", ErrMalformed, clip(h.etag), clip(req.Validator))
	case req.MaxSize > 0 && (last >= req.MaxSize || size > req.MaxSize):
		return nil, fmt.Errorf("%w: range %q, at most %d bytes allowed", ErrTooLarge, clip(h.contentRange), req.MaxSize)
	}
	resp.Offset, resp.Length, resp.Size = first, n, size
	return resp, nil
}

// httpDate is the IMF-fixdate format of HTTP dates.
const httpDate = "Mon, 02 Jan 2006 15:04:05 GMT"

// validator picks the validator of a response for If-Range: a strong ETag,
// else a Last-Modified date that is a strong validator.
func validator(h *head) string {
	if isETag(h.etag) {
		return h.etag
	}
	if h.lastModified == "" || h.date == "" {
		return ""
	}
	lm, err1 := time.Parse(httpDate, h.lastModified)
	d, err2 := time.Parse(httpDate, h.date)
	if err1 != nil || err2 != nil || d.Sub(lm) < time.Second {
		return ""
	}
	return h.lastModified
}

// isETag reports whether s is a strong entity tag: a quoted string, not
// "W/"-prefixed.
func isETag(s string) bool {
	return len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' && !strings.Contains(s[1:len(s)-1], `"`)
}

// body is a response body: Length bytes from the connection's buffer.
type body struct {
	ctx    context.Context
	c      *Client
	r      *bufio.Reader
	raw    net.Conn
	stop   func() bool
	remain int64
	length int64
	err    error // sticky; touched by Read only
	closed atomic.Bool
	once   sync.Once
}

// errClosedBody is a read after Close.
var errClosedBody = errors.New("fetch: read of a closed body")

func (b *body) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errClosedBody
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.remain == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.remain {
		p = p[:b.remain]
	}
	n, err := b.r.Read(p)
	b.remain -= int64(n)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF) && b.remain > 0:
		b.err = fmt.Errorf("fetch: body ended at byte %d of %d: %w", b.length-b.remain, b.length, io.ErrUnexpectedEOF)
	case errors.Is(err, io.EOF):
		// The last bytes and the end of the connection came together.
	case b.closed.Load():
		b.err = errClosedBody
	default:
		b.err = b.c.fail(b.ctx, fmt.Sprintf("read body at byte %d of %d", b.length-b.remain, b.length), err)
	}
	if b.err != nil {
		return n, b.err
	}
	return n, nil
}

// Close closes the connection; a Read blocked on it, or any later one,
// fails. It may be called from another goroutine than the reader's.
func (b *body) Close() error {
	b.once.Do(func() {
		b.closed.Store(true)
		b.stop()
		b.raw.Close()
	})
	return nil
}

// errCanceled is a read or write after the request's context ended.
var errCanceled = errors.New("fetch: request canceled")

// deadlineConn sets a deadline before each read and write: StallTimeout
// from now, or the context's deadline if sooner. cancel, called when the
// context ends, sets a past deadline that no later read or write replaces.
type deadlineConn struct {
	net.Conn
	stall    time.Duration
	deadline time.Time // the context's; zero if none
	mu       sync.Mutex
	canceled bool
}

func (c *deadlineConn) arm() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.canceled {
		return errCanceled
	}
	d := time.Now().Add(c.stall)
	if !c.deadline.IsZero() && c.deadline.Before(d) {
		d = c.deadline
	}
	return c.Conn.SetDeadline(d)
}

func (c *deadlineConn) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.canceled = true
	_ = c.Conn.SetDeadline(time.Unix(1, 0))
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	if err := c.arm(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if err := c.arm(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
