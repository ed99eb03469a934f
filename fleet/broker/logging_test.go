package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a log sink safe for the broker's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// debugLogger logs everything, as text and as JSON (the two handlers
// render values differently), into one buffer.
func debugLogger(buf *syncBuffer) *slog.Logger {
	o := &slog.HandlerOptions{Level: slog.LevelDebug}
	return slog.New(teeHandler{slog.NewTextHandler(buf, o), slog.NewJSONHandler(buf, o)})
}

type teeHandler []slog.Handler

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool { return true }
func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	for _, h := range t {
		if err := h.Handle(ctx, r.Clone()); err != nil {
			return err
		}
	}
	return nil
}
func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithAttrs(as)
	}
	return out
}
func (t teeHandler) WithGroup(name string) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithGroup(name)
	}
	return out
}

// secretForms are the ways a secret can show up in a log line: as is, in
// hex and base64, and as the decimal byte list fmt prints for a []byte.
func secretForms(secret string) []string {
	b := []byte(secret)
	dec := make([]string, len(b))
	for i, c := range b {
		dec[i] = strconv.Itoa(int(c))
	}
	return []string{
		secret, hex.EncodeToString(b),
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
		strings.Join(dec, " "), strings.Join(dec, ","),
	}
}

func assertNoSecret(t *testing.T, log, secret string) {
	t.Helper()
	for _, f := range secretForms(secret) {
		if i := strings.Index(log, f); i >= 0 {
			line := log[strings.LastIndexByte(log[:i], '\n')+1:]
			if j := strings.IndexByte(line, '\n'); j >= 0 {
				line = line[:j]
			}
			t.Fatalf("secret %q (as %q) reached the log:\n%s", secret, f, line)
		}
	}
}

// TestRefusedPublishNotLogged: a publish the broker refuses, from a real
// MQTT client, carries an enrollment token in its payload and its CONNECT
// password; no form of it reaches the broker's log, even at debug level.
func TestRefusedPublishNotLogged(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	var buf syncBuffer
	e := startBroker(t, func(c *Config) { c.Logger = debugLogger(&buf) })
	host, port, _ := net.SplitHostPort(e.addr)
	const token = "sgt_Q2hhbmdlLW1lLW5vdC1hLXJlYWwtdG9rZW4tMTIzNDU2"
	const password = "sgt_cGFzc3dvcmQtaW4tdGhlLWNvbm5lY3QtcGFja2V0LTk4"
	for _, qos := range []string{"0", "1"} {
		out, err := exec.Command(pub, "-h", host, "-p", port, "--cafile", e.ca.pem, "-V", "mqttv311",
			"-i", "boot-7", "-u", "token", "-P", password, "-q", qos,
			"-t", topics.EnrollUp("boot-8", "enroll"), "-m", `{"token":"`+token+`"}`).CombinedOutput()
		_ = out // refused: mosquitto_pub may or may not notice
		_ = err
	}
	// And one that is allowed, so that a packet logged on success counts too.
	if out, err := exec.Command(pub, "-h", host, "-p", port, "--cafile", e.ca.pem, "-V", "mqttv311",
		"-i", "boot-9", "-u", "token", "-P", password, "-q", "1",
		"-t", topics.EnrollUp("boot-9", "enroll"), "-m", token).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	eventually(t, "the forbidden publishes to be refused", func() bool { return e.b.Stats().ACLDenials >= 2 })
	eventually(t, "every client to be gone", func() bool { return e.b.Stats().BootstrapConnections == 0 })
	log := buf.String()
	if !strings.Contains(log, "publish refused") {
		t.Fatalf("the refusal was not logged at all:\n%s", log)
	}
	assertNoSecret(t, log, token)
	assertNoSecret(t, log, password)
}

func countLines(log, sub string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// TestAnonymousLinesRateLimited: what a client without certificate can
// repeat at will (refused subscriptions, refused CONNECTs) is counted,
// and written only a few times per source and interval; the same from a
// device is written every time.
func TestAnonymousLinesRateLimited(t *testing.T) {
	var buf syncBuffer
	e := startBroker(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	const n = 200
	boot := e.mustClient(t, "boot-1", nil)
	for i := range n {
		if code := subCode(t, boot.Subscribe(topics.Filter("enroll", fmt.Sprintf("other-%d", i), "down"), 1, nil)); code != 0x80 {
			t.Fatalf("forbidden subscription granted (%#x)", code)
		}
	}
	for range 20 {
		if _, err := e.client(t, "bad+id", nil, nil); err == nil {
			t.Fatal("invalid client ID admitted")
		}
	}
	certA := e.ca.device(t, devA)
	dev := e.mustClient(t, devA, &certA)
	for range 3 {
		if code := subCode(t, dev.Subscribe(topics.Filter("dev", devB, "down"), 1, nil)); code != 0x80 {
			t.Fatalf("forbidden subscription granted (%#x)", code)
		}
	}
	st := e.b.Stats()
	if st.ACLDenials != n+3 || st.AuthRefusals != 20 {
		t.Fatalf("stats = %+v: every refusal must be counted", st)
	}
	log := buf.String()
	anonSubs := countLines(log, `msg="broker: subscription refused" client_id=boot-1`)
	devSubs := countLines(log, `msg="broker: subscription refused" client_id=`+devA)
	refused := countLines(log, `msg="broker: connection refused"`)
	if anonSubs > 5 || refused > 5 {
		t.Fatalf("%d subscription refusals and %d CONNECT refusals of clients without certificate written, want at most 5 each", anonSubs, refused)
	}
	if anonSubs == 0 || refused == 0 {
		t.Fatalf("the first refusals were not written:\n%s", log)
	}
	if devSubs != 3 {
		t.Fatalf("%d refusals of a device written, want every one (3)", devSubs)
	}
	if st.LogSuppressed < n+20-10 {
		t.Fatalf("LogSuppressed = %d, want the lines not written counted", st.LogSuppressed)
	}
}

// TestMalformedPacketsCounted: connections without certificate that send
// bytes that are not MQTT are counted, and their ends logged only a few
// times.
func TestMalformedPacketsCounted(t *testing.T) {
	var buf syncBuffer
	e := startBroker(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	const n = 30
	for i := range n {
		c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.ca.Pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		garbage := []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'X', 4, 2, 0, 60, 0, 0} // CONNECT with a bad protocol name
		if i%2 == 1 {
			garbage = []byte{0x30, 0x05, 0, 1, 'x', 'y', 'z'} // PUBLISH before CONNECT
		}
		if _, err := c.Write(garbage); err != nil {
			t.Fatal(err)
		}
		_, _ = c.Read(make([]byte, 16)) // until the broker closes it
		c.Close()
	}
	eventually(t, "every malformed connection to be counted", func() bool { return e.b.Stats().MalformedPackets == n })
	if got := countLines(buf.String(), `msg="broker: connection ended"`); got == 0 || got > 5 {
		t.Fatalf("%d lines for %d malformed connections from one address, want 1 to 5", got, n)
	}
}
