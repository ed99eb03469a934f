package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/update"
)

// serveControl answers each connection on a Unix socket: the client sends
// one JSON request ({"op":"status"}, {"op":"secrets"} or
// {"op":"secret","name":N}) and gets one JSON answer; a client that sends
// nothing gets the status after a second. The socket is mode 0600: status
// names the device and its broker, and secret answers carry TPM-wrapped
// blobs (useless without this TPM, never values).
func (a *Agent) serveControl(path string) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.answerControl(c)
			c.Close()
		}
	}()
	return func() { ln.Close(); os.Remove(path) }, nil
}

// answerControl reads one request and answers it.
func (a *Agent) answerControl(c net.Conn) {
	var req controlRequest
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if err := json.NewDecoder(io.LimitReader(c, 4096)).Decode(&req); err != nil {
		req = controlRequest{Op: "status"}
	}
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	switch req.Op {
	case "secret", "secrets":
		a.answerSecrets(c, req)
	default:
		_ = json.NewEncoder(c).Encode(a.Status())
	}
}

// ReadStatus asks a running sigild for its status over its control socket.
func ReadStatus(path string) (*Status, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("agent: sigild not reachable at %s: %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := json.NewEncoder(c).Encode(controlRequest{Op: "status"}); err != nil {
		return nil, fmt.Errorf("agent: status: %w", err)
	}
	var s Status
	if err := json.NewDecoder(c).Decode(&s); err != nil {
		return nil, fmt.Errorf("agent: status: %w", err)
	}
	return &s, nil
}

// CurrentStatus asks the running daemon; when none answers it reads the
// state store directly and reports the daemon as not running, with the
// firmware version the update record says the device runs
// (update.RecordedVersion), else the configured one.
func CurrentStatus(cfg Config) (*Status, error) {
	cfg.setDefaults()
	if cfg.Control != "-" {
		if s, err := ReadStatus(cfg.Control); err == nil {
			s.Running = true
			return s, nil
		}
	}
	st, err := state.Open(cfg.State, state.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, state.ErrLocked) {
			return nil, fmt.Errorf("agent: sigild holds the state store but its status socket %s does not answer", cfg.Control)
		}
		return nil, err
	}
	defer st.Close()
	id, err := st.Identity()
	if err != nil {
		return nil, err
	}
	fw, err := update.RecordedVersion(st, cfg.Firmware)
	if err != nil {
		return nil, fmt.Errorf("agent: installed firmware: %w", err)
	}
	a := &Agent{cfg: cfg}
	a.status = Status{Broker: cfg.Broker, Model: cfg.Model, Firmware: fw, Agent: Version}
	a.publishIdentity(id)
	s := a.Status()
	return &s, nil
}

// Text renders the status for people. Most of its strings came from the
// network (the last error names a server certificate's subjects, the
// reasons and issuer names are the fleet's): each value is printed as is
// only when it is valid UTF-8 of printable characters, and otherwise
// quoted with Go escapes, so no control sequence reaches the terminal.
func (s *Status) Text() string {
	var b strings.Builder
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%-13s %s\n", k+":", printable(v))
		}
	}
	row("daemon", map[bool]string{true: "running", false: "not running"}[s.Running])
	row("device id", s.DeviceID)
	row("enrollment", s.Enrollment)
	if s.Running {
		connected := fmt.Sprint(s.Connected)
		if d := s.Silence(time.Now()); d > 0 {
			last := "never"
			if !s.LastFleetMessage.IsZero() {
				last = s.LastFleetMessage.Format(time.RFC3339)
			}
			connected = "to the broker; no answer from the fleet for " + d.Round(time.Second).String() + " (last answer: " + last + ")"
		}
		row("connected", connected)
	}
	row("broker", s.Broker)
	row("cert serial", s.CertSerial)
	if !s.CertExpiry.IsZero() {
		row("cert expiry", s.CertExpiry.Format(time.RFC3339)+" (in "+time.Until(s.CertExpiry).Round(time.Minute).String()+")")
	}
	row("cert issuer", s.CertIssuer)
	roots := make([]string, len(s.TrustRoots))
	for i, r := range s.TrustRoots {
		roots[i] = printable(r)
	}
	row("trust roots", strings.Join(roots, "; "))
	if !s.EnrolledAt.IsZero() {
		row("enrolled at", s.EnrolledAt.Format(time.RFC3339))
	}
	row("last reason", s.LastReason)
	row("last error", s.LastError)
	row("model", s.Model)
	row("firmware", s.Firmware)
	row("agent", s.Agent)
	return b.String()
}

// JSON renders the status as indented JSON whose text is printable ASCII
// and line breaks: beyond the control characters encoding/json escapes,
// every character that is not printable (DEL, the C1 controls such as the
// 8-bit CSI, bidirectional overrides) is written as a \u escape, so the
// values decode unchanged but print safely.
func (s *Status) JSON() ([]byte, error) {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("agent: status: %w", err)
	}
	out := make([]byte, 0, len(raw)+1)
	for _, r := range string(raw) { // valid UTF-8: encoding/json replaced invalid bytes
		switch {
		case r == '\n' || (r >= 0x20 && r < 0x7f) || (r > 0x7f && strconv.IsPrint(r)):
			out = utf8.AppendRune(out, r)
		case r > 0xffff:
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	return append(out, '\n'), nil
}

// printable returns s unchanged when it is valid UTF-8 made of printable
// characters (strconv.IsPrint: letters, marks, numbers, punctuation,
// symbols and the ASCII space), and otherwise s quoted with Go escapes
// (strconv.Quote): control characters, escape sequences, bidirectional
// overrides and invalid bytes become visible text.
func printable(s string) string {
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
