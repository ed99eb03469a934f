package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// SyslogConfig configures NewSyslog.
type SyslogConfig struct {
	// Addr is the receiver, host:port. Required.
	Addr string
	// TLS, when set, connects with TLS (RFC 5425; set RootCAs and, for a
	// mutual-TLS receiver, Certificates). Nil connects over plain TCP
	// (RFC 6587). Both use octet-counting framing.
	TLS *tls.Config
	// Hostname is the messages' HOSTNAME. Default: the host's name.
	Hostname string
	// AppName is the messages' APP-NAME. Default "sigil".
	AppName string
	// Facility is the syslog facility, 1-23. Default 4
	// (security/authorization).
	Facility int
	// Version is the CEF header's device version (Sigil's version).
	// Default "dev".
	Version string
	// MaxMessage bounds one message in bytes; CEF extension fields that do
	// not fit are left out. Default 8192 (RFC 5425's recommended minimum
	// receivers accept), at least 1024.
	MaxMessage int
	// Dialer connects. Nil: a net.Dialer with a 10s timeout.
	Dialer *net.Dialer
}

// Syslog sends each notification as one RFC 5424 message with a CEF body
// over a kept-open TCP or TLS connection, reconnecting after a failure.
// Like any syslog transport without application acknowledgements, a
// message written just as the receiver goes away can be lost; the
// connection is checked for a close by the receiver before each write.
type Syslog struct {
	cfg SyslogConfig

	mu   sync.Mutex // one writer at a time; guards conn
	conn *syslogConn
}

type syslogConn struct {
	net.Conn
	gone atomic.Bool // the receiver closed it (or it failed)
}

var _ alert.Notifier = (*Syslog)(nil)

// NewSyslog returns a syslog sink; it connects on the first notification.
func NewSyslog(cfg SyslogConfig) (*Syslog, error) {
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("sink: syslog: address %q is not host:port", cfg.Addr)
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	cfg.Hostname = printUSASCII(cfg.Hostname, 255)
	if cfg.AppName == "" {
		cfg.AppName = "sigil"
	}
	cfg.AppName = printUSASCII(cfg.AppName, 48)
	if cfg.Facility == 0 {
		cfg.Facility = 4
	}
	if cfg.Facility < 1 || cfg.Facility > 23 {
		return nil, fmt.Errorf("sink: syslog: facility %d is not 1-23", cfg.Facility)
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.MaxMessage == 0 {
		cfg.MaxMessage = 8192
	}
	if cfg.MaxMessage < 1024 {
		return nil, errors.New("sink: syslog: MaxMessage must be at least 1024")
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: 10 * time.Second}
	}
	return &Syslog{cfg: cfg}, nil
}

// printUSASCII keeps the characters RFC 5424 allows in header fields
// (33-126), at most n, "-" (NILVALUE) when none is left.
func printUSASCII(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if s[i] >= 33 && s[i] <= 126 {
			b.WriteByte(s[i])
		}
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

// syslogSeverity: critical 2 (crit), warning 4 (warning), info 6
// (informational); a resolution is 5 (notice).
func syslogSeverity(n *alert.Notification) int {
	if n.Transition == alert.TransitionResolved {
		return 5
	}
	switch n.Alert.Severity {
	case alert.SeverityCritical:
		return 2
	case alert.SeverityWarning:
		return 4
	}
	return 6
}

// sdValue escapes an SD-PARAM value (RFC 5424 6.3.3).
func sdValue(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, `]`, `\]`).Replace(s)
}

// Message renders n as an RFC 5424 message (without framing):
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [origin software="sigil" swVersion="..."] CEF:0|...
//
// TIMESTAMP is n.At in UTC with microseconds, MSGID the transition, and
// MSG the CEF event without a BOM (MSG-ANY).
func (s *Syslog) Message(n *alert.Notification) []byte {
	var b strings.Builder
	b.WriteString("<" + strconv.Itoa(s.cfg.Facility*8+syslogSeverity(n)) + ">1 ")
	b.WriteString(n.At.UTC().Format("2006-01-02T15:04:05.000000Z07:00"))
	b.WriteString(" " + s.cfg.Hostname + " " + s.cfg.AppName + " - " + printUSASCII(string(n.Transition), 32) + " ")
	b.WriteString(`[origin software="sigil" swVersion="` + sdValue(s.cfg.Version) + `"] `)
	b.WriteString(formatCEF(n, s.cfg.Version, s.cfg.MaxMessage-b.Len()))
	return []byte(b.String())
}

// Notify writes n as one octet-counted frame: "<length> <message>".
func (s *Syslog) Notify(ctx context.Context, n alert.Notification) error {
	msg := s.Message(&n)
	frame := append([]byte(strconv.Itoa(len(msg))+" "), msg...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && s.conn.gone.Load() {
		s.conn.Close()
		s.conn = nil
	}
	if s.conn == nil {
		c, err := s.dial(ctx)
		if err != nil {
			return err
		}
		s.conn = c
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Time{}
	}
	_ = s.conn.SetWriteDeadline(deadline)
	if _, err := s.conn.Write(frame); err != nil {
		// A partial frame would corrupt the stream: start a new one.
		s.conn.Close()
		s.conn = nil
		return fmt.Errorf("sink: syslog: write: %w", err)
	}
	return nil
}

func (s *Syslog) dial(ctx context.Context) (*syslogConn, error) {
	var c net.Conn
	var err error
	if s.cfg.TLS != nil {
		d := tls.Dialer{NetDialer: s.cfg.Dialer, Config: s.cfg.TLS}
		c, err = d.DialContext(ctx, "tcp", s.cfg.Addr)
	} else {
		c, err = s.cfg.Dialer.DialContext(ctx, "tcp", s.cfg.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("sink: syslog: connect: %w", err)
	}
	sc := &syslogConn{Conn: c}
	// A syslog receiver never sends: whatever Read returns means the
	// connection is over. The reader ends when the connection closes.
	go func() {
		_, _ = io.Copy(io.Discard, c)
		sc.gone.Store(true)
	}()
	return sc, nil
}

// Close closes the connection, if any; a later Notify reconnects.
func (s *Syslog) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}
