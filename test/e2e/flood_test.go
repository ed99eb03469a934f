package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
)

// logBuffer collects a run's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count is the number of lines containing every one of subs.
func (l *logBuffer) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// startLoggedFleet runs a fleet whose log, at level, goes to buf.
func startLoggedFleet(t testing.TB, level slog.Level, buf *logBuffer, mutate func(*server.Config)) *harness.Fleet {
	t.Helper()
	requireTools(t)
	cfg := server.Config{DataDir: t.TempDir(), APIRateLimit: -1}
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := harness.StartFleet(context.Background(), cfg, slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	return f
}

// TestAnonymousFloodCountedNotLogged: one bootstrap client (a real
// mosquitto_pub) sends a thousand malformed enrollment messages, and a
// second one a hundred well-formed messages the enrollment service
// refuses. Every one is counted; the fleet log, at its default level,
// gets a few lines of each kind, not one per message.
func TestAnonymousFloodCountedNotLogged(t *testing.T) {
	var buf logBuffer
	f := startLoggedFleet(t, slog.LevelInfo, &buf, nil)
	host, port := hostPort(t, f)

	const garbage = 1000
	var lines strings.Builder
	for i := range garbage {
		fmt.Fprintf(&lines, "not an envelope %d\n", i)
	}
	cmd := exec.Command("mosquitto_pub", "-h", host, "-p", port, "--cafile", f.CACertPath(), "-V", "mqttv311",
		"-i", "flood-1", "-q", "1", "-l", "-t", wire.Topics{}.EnrollUp("flood-1", "enroll"))
	cmd.Stdin = strings.NewReader(lines.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}

	const wrong = 100
	pemBytes, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	conn, err := link.Dial(context.Background(), link.Config{Broker: f.MQTTAddr(), ClientID: "flood-2",
		TLS: &tls.Config{RootCAs: roots, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range wrong {
		b, err := wire.Encode(wire.TypeHello, nil, time.Now(), &wire.Hello{Firmware: "x"}) // not an enrollment message
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.Publish(context.Background(), wire.Topics{}.EnrollUp("flood-2", "enroll"), b); err != nil {
			t.Fatal(err)
		}
	}

	st := f.Enroll.Stats()
	waitFor(t, func() bool { return st.Malformed.Load() == garbage && st.Refused.Load() == garbage+wrong },
		"every message to be counted")
	malformed := buf.count(`msg="enrollment message refused"`, "flood-1")
	refused := buf.count(`msg="enrollment refused"`, "flood-2")
	if malformed == 0 || malformed > 5 || refused == 0 || refused > 5 {
		t.Fatalf("%d lines for %d malformed messages, %d for %d refused ones: want a few of each (1 to 5)",
			malformed, garbage, refused, wrong)
	}
	if n := f.Enroll.LogSuppressed(); n != garbage+wrong-uint64(malformed+refused) {
		t.Fatalf("LogSuppressed = %d, want every line not written (%d)", n, garbage+wrong-malformed-refused)
	}
	// The counts reach the metrics.
	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, f.APIURL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+f.AdminToken())
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(text), fmt.Sprintf("sigil_enroll_malformed_total %d\n", garbage)) || !strings.Contains(string(text), "sigil_log_lines_suppressed_total ") {
		t.Fatalf("metrics lack the counts:\n%s", text)
	}
}
