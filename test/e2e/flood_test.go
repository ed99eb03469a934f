package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/fleet/audit"
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

	// Every message is counted, and each either written to the log or
	// counted as a line not written (the counters move before the line).
	st := f.Enroll.Stats()
	var malformed, refused int
	waitFor(t, func() bool {
		malformed = buf.count(`msg="enrollment message refused"`, "flood-1")
		refused = buf.count(`msg="enrollment refused"`, "flood-2")
		return st.Malformed.Load() == garbage && st.Refused.Load() == garbage+wrong &&
			f.Enroll.LogSuppressed() == uint64(garbage+wrong-malformed-refused)
	}, "every message to be counted, and its line written or counted")
	// A few lines per kind and interval: an interval that left lines out
	// ends with one summary line (a slow machine may see more than one).
	intervals := func(key string) int { return 1 + buf.count(`msg="log lines suppressed"`, "key="+key) }
	if malformed == 0 || malformed > 5*intervals("malformed") || refused == 0 || refused > 5*intervals("refused/bad_request") {
		t.Fatalf("%d lines for %d malformed messages, %d for %d refused ones: want a few of each (1 to 5 per interval)",
			malformed, garbage, refused, wrong)
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

// TestAnonymousRequestsSampledInAudit: three hundred state-changing API
// requests without a valid credential (real curl, one with a bogus bearer
// token) leave a bounded sample in the audit log and, once the interval
// is recorded (here when the fleet stops), one audit.sampled entry that
// counts the rest; the log still verifies.
func TestAnonymousRequestsSampledInAudit(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		requireTools(t)
		t.Fatal("curl not found")
	}
	f := startFleet(t, nil)
	const n = 300
	args := []string{"-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--cacert", f.CACertPath(),
		"-X", "POST", "-H", "Authorization: Bearer sgk_not-a-real-token", "-d", "{}"}
	for i := range n {
		args = append(args, fmt.Sprintf("%s/api/v1/devices/dev-%d/revoke", f.APIURL(), i))
	}
	out, err := exec.Command("curl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	if got := strings.Count(string(out), "401\n"); got != n {
		t.Fatalf("%d of %d requests answered 401:\n%s", got, n, out)
	}
	anon := audit.Filter{Actor: audit.System("api-anonymous"), Limit: 1000}
	page, err := f.Audit.List(t.Context(), anon)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) == 0 || len(page.Entries) > 20 {
		t.Fatalf("%d audit entries for %d anonymous requests, want a sample of at most 20", len(page.Entries), n)
	}
	recorded := len(page.Entries)

	path := filepath.Join(f.Config.DataDir, audit.File)
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(audit.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	page, err = l.List(t.Context(), audit.Filter{Action: audit.SampledAction})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 1 {
		t.Fatalf("%d audit.sampled entries, want 1", len(page.Entries))
	}
	if e := page.Entries[0]; e.Actor != audit.System("api-anonymous") || e.Details["left_out"] != strconv.Itoa(n-recorded) ||
		e.Details["api.devices.revoke.post"] != strconv.Itoa(n-recorded) {
		t.Fatalf("summary entry %+v, want %d left out", e, n-recorded)
	}
	pub, err := os.ReadFile(filepath.Join(f.Config.DataDir, server.AuditPubFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pub)
	if blk == nil {
		t.Fatal("audit.pub is not PEM")
	}
	key, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.VerifyStore(t.Context(), key); err != nil {
		t.Fatal(err)
	}
}
