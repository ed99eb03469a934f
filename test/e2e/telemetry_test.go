package e2e

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// syslogMessage is one RFC 5424 message received by syslogReceiver, with
// its CEF body parsed.
type syslogMessage struct {
	Received  time.Time
	PRI       int
	Timestamp time.Time
	Hostname  string
	AppName   string
	MsgID     string // the transition: firing, resolved, ...
	SD        string
	CEF       cefEvent
}

// cefEvent is a parsed CEF:0 event.
type cefEvent struct {
	Vendor, Product, Version, SignatureID, Name string
	Severity                                    int
	Ext                                         map[string]string
}

// syslogReceiver is a TCP syslog receiver written for the tests: it reads
// octet-counted frames (RFC 6587), parses each as RFC 5424 and its MSG as
// CEF, and fails the test on anything malformed.
type syslogReceiver struct {
	t    testing.TB
	ln   net.Listener
	mu   sync.Mutex
	msgs []syslogMessage
	errs []error
	wg   sync.WaitGroup
}

func newSyslogReceiver(t testing.TB) *syslogReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &syslogReceiver{t: t, ln: ln}
	var conns sync.Map
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			r.wg.Go(func() { r.read(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		r.wg.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, err := range r.errs {
			t.Errorf("syslog receiver: %v", err)
		}
	})
	return r
}

func (r *syslogReceiver) Addr() string { return r.ln.Addr().String() }

func (r *syslogReceiver) read(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		lenText, err := br.ReadString(' ')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSuffix(lenText, " "))
		if err != nil || n <= 0 || n > 64<<10 {
			r.fail(fmt.Errorf("bad octet count %q", lenText))
			return
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(br, frame); err != nil {
			r.fail(fmt.Errorf("short frame: %v", err))
			return
		}
		m, err := parseRFC5424(string(frame))
		if err != nil {
			r.fail(fmt.Errorf("%v in %q", err, frame))
			continue
		}
		m.Received = time.Now()
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
	}
}

func (r *syslogReceiver) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

// wait returns the first message matching ok, waiting up to timeout.
func (r *syslogReceiver) wait(timeout time.Duration, ok func(syslogMessage) bool) (syslogMessage, bool) {
	var found syslogMessage
	held := wait.Poll(timeout, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, m := range r.msgs {
			if ok(m) {
				found = m
				return true
			}
		}
		return false
	})
	return found, held
}

// parseRFC5424 parses "<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG".
func parseRFC5424(s string) (syslogMessage, error) {
	var m syslogMessage
	if !strings.HasPrefix(s, "<") {
		return m, errors.New("no PRI")
	}
	end := strings.IndexByte(s, '>')
	if end < 2 || end > 4 {
		return m, errors.New("bad PRI")
	}
	pri, err := strconv.Atoi(s[1:end])
	if err != nil || pri < 0 || pri > 191 {
		return m, errors.New("PRI out of range")
	}
	m.PRI = pri
	rest, ok := strings.CutPrefix(s[end+1:], "1 ")
	if !ok {
		return m, errors.New("version is not 1")
	}
	f := strings.SplitN(rest, " ", 6)
	if len(f) != 6 {
		return m, errors.New("too few header fields")
	}
	if m.Timestamp, err = time.Parse(time.RFC3339Nano, f[0]); err != nil {
		return m, fmt.Errorf("timestamp: %v", err)
	}
	for i, field := range f[1:5] {
		if field == "" || len(field) > []int{255, 48, 128, 32}[i] || strings.IndexFunc(field, func(c rune) bool { return c < 33 || c > 126 }) >= 0 {
			return m, fmt.Errorf("header field %d %q not PRINTUSASCII", i+2, field)
		}
	}
	m.Hostname, m.AppName, m.MsgID = f[1], f[2], f[4]
	sd, msg, err := cutSD(f[5])
	if err != nil {
		return m, err
	}
	m.SD = sd
	m.CEF, err = parseCEF(msg)
	return m, err
}

// cutSD splits STRUCTURED-DATA (NILVALUE or [elements] with quoted,
// escaped values) from the MSG that follows a space.
func cutSD(s string) (sd, msg string, err error) {
	if strings.HasPrefix(s, "- ") {
		return "-", s[2:], nil
	}
	i := 0
	for i < len(s) && s[i] == '[' {
		inQuote := false
		for i++; i < len(s); i++ {
			c := s[i]
			switch {
			case inQuote && c == '\\':
				i++
			case c == '"':
				inQuote = !inQuote
			case !inQuote && c == ']':
				goto closed
			}
		}
		return "", "", errors.New("unterminated SD element")
	closed:
		i++
	}
	if i == 0 || i >= len(s) || s[i] != ' ' {
		return "", "", errors.New("no MSG after STRUCTURED-DATA")
	}
	return s[:i], s[i+1:], nil
}

// parseCEF parses "CEF:0|vendor|product|version|id|name|severity|ext".
func parseCEF(s string) (cefEvent, error) {
	var e cefEvent
	rest, ok := strings.CutPrefix(s, "CEF:0|")
	if !ok {
		return e, errors.New("MSG is not CEF:0")
	}
	var fields []string
	var b strings.Builder
	for i := 0; i < len(rest) && len(fields) < 6; i++ {
		switch c := rest[i]; {
		case c == '\\' && i+1 < len(rest):
			i++
			b.WriteByte(rest[i])
		case c == '|':
			fields = append(fields, b.String())
			b.Reset()
			if len(fields) == 6 {
				rest = rest[i+1:]
			}
		default:
			b.WriteByte(c)
		}
	}
	if len(fields) != 6 {
		return e, errors.New("CEF header has fewer than 7 fields")
	}
	e.Vendor, e.Product, e.Version, e.SignatureID, e.Name = fields[0], fields[1], fields[2], fields[3], fields[4]
	sev, err := strconv.Atoi(fields[5])
	if err != nil || sev < 0 || sev > 10 {
		return e, fmt.Errorf("CEF severity %q", fields[5])
	}
	e.Severity = sev
	e.Ext = map[string]string{}
	// Extension: key=value pairs; a value runs to the next " key=".
	var key string
	b.Reset()
	flush := func() {
		if key != "" {
			e.Ext[key] = strings.TrimRight(b.String(), " ")
		}
		b.Reset()
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if c == '\\' && i+1 < len(rest) {
			i++
			switch rest[i] {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			default:
				b.WriteByte(rest[i])
			}
			continue
		}
		if c == '=' {
			// The word before '=' is the next key.
			v := b.String()
			j := strings.LastIndexByte(v, ' ')
			next := v[j+1:]
			if j < 0 {
				v = ""
			} else {
				v = v[:j]
			}
			b.Reset()
			b.WriteString(v)
			flush()
			key = next
			continue
		}
		b.WriteByte(c)
	}
	flush()
	if e.Ext["rt"] == "" || e.Ext["act"] == "" {
		return e, errors.New("CEF extension lacks rt or act")
	}
	return e, nil
}

// amReceiver is an Alertmanager API v2 receiver: it records the alerts
// POSTed to /api/v2/alerts.
type amReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	alerts []amAlert
}

type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	received    time.Time
}

func newAMReceiver(t testing.TB) *amReceiver {
	r := &amReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost || req.URL.Path != "/api/v2/alerts" || req.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "not the alerts endpoint", http.StatusNotFound)
			return
		}
		var batch []amAlert
		dec := json.NewDecoder(req.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&batch); err != nil || len(batch) == 0 {
			http.Error(w, "bad alerts", http.StatusBadRequest)
			return
		}
		for i := range batch {
			if batch[i].Labels["alertname"] == "" || batch[i].StartsAt.IsZero() {
				http.Error(w, "alert without alertname or startsAt", http.StatusBadRequest)
				return
			}
			batch[i].received = time.Now()
		}
		r.mu.Lock()
		r.alerts = append(r.alerts, batch...)
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *amReceiver) wait(timeout time.Duration, ok func(amAlert) bool) (amAlert, bool) {
	var found amAlert
	held := wait.Poll(timeout, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, a := range r.alerts {
			if ok(a) {
				found = a
				return true
			}
		}
		return false
	})
	return found, held
}

// telemetryDevice starts an in-process device whose telemetry is sampled
// every interval and whose failed logins are counted in authLog.
func telemetryDevice(t testing.TB, f *harness.Fleet, interval time.Duration, authLog string) (*harness.Device, agent.Status) {
	t.Helper()
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agent.Config) {
		c.TelemetryInterval = agent.Duration(interval)
		c.TelemetryAuthLog = authLog
		c.EventLog = "-"
	}})
	return d, waitConnected(t, d)
}

// waitTelemetry waits until the fleet ingested at least n points of the
// device and returns its status.
func waitTelemetry(t testing.TB, f *harness.Fleet, deviceID string, n uint64) telemetry.DeviceStatus {
	t.Helper()
	var st telemetry.DeviceStatus
	waitFor(t, func() bool {
		var err error
		st, err = f.Telemetry.Device(deviceID)
		return err == nil && st.Counts.Ingested >= n
	}, fmt.Sprintf("%d telemetry points from %s", n, deviceID))
	return st
}

// waitAlert polls the API for an alert matching ok.
func waitAlert(t testing.TB, c *api.Client, q api.AlertQuery, timeout time.Duration, ok func(alert.Alert) bool) alert.Alert {
	t.Helper()
	var (
		found alert.Alert
		last  []alert.Alert
	)
	if !wait.Poll(timeout, func() bool {
		list, err := c.Alerts(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		last = list.Alerts
		for _, a := range list.Alerts {
			if ok(a) {
				found = a
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no alert matching within %v; alerts: %+v", timeout, last)
	}
	return found
}

func appendLines(t testing.TB, path string, lines ...string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	for _, l := range lines {
		if _, err := fmt.Fprintln(fh, l); err != nil {
			t.Fatal(err)
		}
	}
}

func failedLogin(i int) string {
	return fmt.Sprintf("%s gw sshd[%d]: Failed password for root from 192.0.2.%d port 22 ssh2", time.Now().Format(time.Stamp), 4000+i, 1+i%200)
}

// TestThresholdAlertFiresAndResolves: failed logins written to the device's
// auth log reach the fleet as telemetry (auth.failures); a threshold rule
// on them fires — the alert is in the API with its evidence, a syslog
// receiver gets an RFC 5424/CEF "firing" message and an Alertmanager the
// alert — and resolves at the next quiet point, which both sinks hear too.
func TestThresholdAlertFiresAndResolves(t *testing.T) {
	syslog, am := newSyslogReceiver(t), newAMReceiver(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) {
		c.AlertSinks = []server.AlertSink{
			{Name: "siem", Type: server.SinkSyslog, Addr: syslog.Addr()},
			{Name: "am", Type: server.SinkAlertmanager, URL: am.srv.URL},
		}
	}))
	c, _ := f.Client()
	ctx := context.Background()
	rule, err := c.PutAlertRule(ctx, alert.Rule{ID: "login-burst", Name: "Burst of failed logins", Severity: alert.SeverityCritical,
		Threshold: &alert.Threshold{Metric: "auth.failures", Op: alert.OpGE, Value: 3}})
	if err != nil || rule.Kind() != alert.KindThreshold {
		t.Fatalf("put rule: %+v %v", rule, err)
	}
	authLog := filepath.Join(t.TempDir(), "auth.log")
	appendLines(t, authLog, "boot")
	d, st := telemetryDevice(t, f, 150*time.Millisecond, authLog)
	_ = d
	waitTelemetry(t, f, st.DeviceID, 3)

	appendLines(t, authLog, failedLogin(1), failedLogin(2), failedLogin(3), failedLogin(4), "an unrelated line")
	fired := waitAlert(t, c, api.AlertQuery{RuleID: "login-burst"}, 15*time.Second, func(a alert.Alert) bool { return a.State == alert.StateFiring })
	if fired.DeviceID != st.DeviceID || fired.Evidence["value"] != "4" || fired.Severity != alert.SeverityCritical {
		t.Fatalf("fired alert %+v: want device %s, value 4", fired, st.DeviceID)
	}
	m, ok := syslog.wait(10*time.Second, func(m syslogMessage) bool {
		return m.MsgID == "firing" && m.CEF.SignatureID == "login-burst"
	})
	if !ok {
		t.Fatal("no firing message at the syslog receiver")
	}
	if m.CEF.Vendor != "Sigil" || m.CEF.Severity != 9 || m.CEF.Ext["cs1"] != st.DeviceID || m.CEF.Ext["externalId"] != strconv.FormatUint(fired.ID, 10) ||
		!strings.Contains(m.CEF.Ext["cs5"], "value: 4") || m.AppName != "sigil" || m.PRI != 4*8+2 {
		t.Fatalf("syslog message %+v", m)
	}
	if _, ok := am.wait(10*time.Second, func(a amAlert) bool {
		return a.Labels["rule_id"] == "login-burst" && a.Labels["device_id"] == st.DeviceID && a.EndsAt.After(a.received)
	}); !ok {
		t.Fatal("the Alertmanager did not get the open alert")
	}

	// The next point has no new failures: the condition clears.
	resolved := waitAlert(t, c, api.AlertQuery{RuleID: "login-burst"}, 15*time.Second, func(a alert.Alert) bool {
		return a.ID == fired.ID && a.State == alert.StateResolved
	})
	if resolved.ResolvedBy != "" {
		t.Fatalf("resolved by %q, want by itself", resolved.ResolvedBy)
	}
	if _, ok := syslog.wait(10*time.Second, func(m syslogMessage) bool {
		return m.MsgID == "resolved" && m.CEF.Ext["externalId"] == strconv.FormatUint(fired.ID, 10) && m.CEF.Ext["end"] != ""
	}); !ok {
		t.Fatal("no resolved message at the syslog receiver")
	}
	if _, ok := am.wait(10*time.Second, func(a amAlert) bool {
		return a.Labels["rule_id"] == "login-burst" && !a.EndsAt.After(a.received)
	}); !ok {
		t.Fatal("the Alertmanager was not told the alert ended")
	}
	// The failures also count as security events: four of them stay below
	// the default rule's five.
	if list, _ := c.Alerts(ctx, api.AlertQuery{RuleID: "auth-failures"}); len(list.Alerts) != 0 {
		t.Fatalf("default auth-failures rule fired on 4 failures: %+v", list.Alerts)
	}
	appendLines(t, authLog, failedLogin(5), failedLogin(6))
	waitAlert(t, c, api.AlertQuery{RuleID: "auth-failures"}, 15*time.Second, func(a alert.Alert) bool { return a.DeviceID == st.DeviceID })
}

// TestNewListeningPortAlert: after the device's ports were learned, a TCP
// port the test opens is reported by the device's collector, fires a
// new-member alert whose evidence is the port, reaching a syslog receiver
// and an Alertmanager; closing the port resolves it everywhere.
func TestNewListeningPortAlert(t *testing.T) {
	syslog, am := newSyslogReceiver(t), newAMReceiver(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) {
		c.AlertSinks = []server.AlertSink{
			{Name: "siem", Type: server.SinkSyslog, Addr: syslog.Addr(), MinSeverity: "warning"},
			{Name: "am", Type: server.SinkAlertmanager, URL: am.srv.URL},
		}
	}))
	c, _ := f.Client()
	ctx := context.Background()
	// The default rule learns for a day; learn for two seconds here.
	if _, err := c.PutAlertRule(ctx, alert.Rule{ID: "new-listening-port", Name: "New listening port", Severity: alert.SeverityWarning,
		NewMember: &alert.NewMember{Set: alert.SetPorts, Learn: config.Duration(2 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	// Every port the device reports while learning, to pick one it never
	// had, and the span of the points' clock.
	var (
		mu              sync.Mutex
		learned         = map[string]bool{}
		firstAt, lastAt time.Time // the points' clock
	)
	f.OnTelemetry(func(b telemetry.Batch) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range b.Points {
			for _, port := range p.Sets["listen.tcp"] {
				learned[port] = true
			}
			if firstAt.IsZero() || p.Time.Before(firstAt) {
				firstAt = p.Time
			}
			if p.Time.After(lastAt) {
				lastAt = p.Time
			}
		}
	})
	_, st := telemetryDevice(t, f, 150*time.Millisecond, "-")
	// The learning period ends on the points' clock: wait for a point
	// past it.
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !firstAt.IsZero() && lastAt.Sub(firstAt) >= 2500*time.Millisecond
	}, "a point 2.5 s after the first, past the learning period")
	cur := waitTelemetry(t, f, st.DeviceID, 1)
	waitTelemetry(t, f, st.DeviceID, cur.Counts.Ingested+2)

	var ln net.Listener
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		seen := learned[strconv.Itoa(l.Addr().(*net.TCPAddr).Port)]
		mu.Unlock()
		if !seen {
			ln = l
			break
		}
		defer l.Close()
	}
	if ln == nil {
		t.Fatal("every port the kernel gave was learned already")
	}
	opened := time.Now()
	key := "tcp/" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	fired := waitAlert(t, c, api.AlertQuery{RuleID: "new-listening-port", DeviceID: st.DeviceID}, 15*time.Second, func(a alert.Alert) bool {
		return a.Key == key && a.State == alert.StateFiring
	})
	if fired.Evidence["member"] != key || fired.Evidence["set"] != alert.SetPorts {
		t.Fatalf("evidence %+v, want member %s", fired.Evidence, key)
	}
	m, ok := syslog.wait(10*time.Second, func(m syslogMessage) bool {
		return m.MsgID == "firing" && m.CEF.Ext["cs3"] == key
	})
	if !ok {
		t.Fatalf("no firing message for %s at the syslog receiver", key)
	}
	if m.CEF.SignatureID != "new-listening-port" || m.CEF.Ext["cs1"] != st.DeviceID || !strings.Contains(m.CEF.Ext["cs5"], "member: "+key) ||
		m.CEF.Ext["cat"] != string(alert.KindNewMember) || m.CEF.Severity != 6 {
		t.Fatalf("syslog message %+v", m)
	}
	t.Logf("new port %s: at the syslog receiver %v after it was opened (sampling every 150ms)", key, m.Received.Sub(opened).Round(time.Millisecond))
	if a, ok := am.wait(10*time.Second, func(a amAlert) bool { return a.Labels["key"] == key }); !ok ||
		a.Labels["alertname"] != "New listening port" || a.Annotations["evidence_member"] != key {
		t.Fatalf("Alertmanager alert for %s: %+v (received %v)", key, a, ok)
	}

	ln.Close()
	waitAlert(t, c, api.AlertQuery{RuleID: "new-listening-port", DeviceID: st.DeviceID}, 15*time.Second, func(a alert.Alert) bool {
		return a.ID == fired.ID && a.State == alert.StateResolved && a.ResolvedBy == ""
	})
	if _, ok := syslog.wait(10*time.Second, func(m syslogMessage) bool { return m.MsgID == "resolved" && m.CEF.Ext["cs3"] == key }); !ok {
		t.Fatal("no resolved message at the syslog receiver")
	}
	if _, ok := am.wait(10*time.Second, func(a amAlert) bool { return a.Labels["key"] == key && !a.EndsAt.After(a.received) }); !ok {
		t.Fatal("the Alertmanager was not told the alert ended")
	}
}

// webhookReceiver accepts signed webhook POSTs, or refuses them with 500
// while failing is set.
type webhookReceiver struct {
	srv      *httptest.Server
	secret   []byte
	failing  atomic.Bool
	attempts atomic.Int64
	mu       sync.Mutex
	got      []map[string]any
	badSig   atomic.Int64
}

func newWebhookReceiver(t testing.TB, secret []byte) *webhookReceiver {
	r := &webhookReceiver{secret: secret}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.attempts.Add(1)
		body, _ := io.ReadAll(req.Body)
		if r.failing.Load() {
			http.Error(w, "receiver down", http.StatusInternalServerError)
			return
		}
		// X-Sigil-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
		var ts, sig string
		for _, part := range strings.Split(req.Header.Get("X-Sigil-Signature"), ",") {
			k, v, _ := strings.Cut(part, "=")
			switch k {
			case "t":
				ts = v
			case "v1":
				sig = v
			}
		}
		mac := hmac.New(sha256.New, r.secret)
		mac.Write([]byte(ts + "." + string(body)))
		want := hex.EncodeToString(mac.Sum(nil))
		if ts == "" || !hmac.Equal([]byte(sig), []byte(want)) {
			r.badSig.Add(1)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var n map[string]any
		if err := json.Unmarshal(body, &n); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, n)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// TestFailingSinkDeadLettersAndRedrive: a webhook that answers 500 is
// tried the configured number of times, then the notification is a dead
// letter in the API; once the receiver works, re-driving it delivers the
// signed notification and empties the dead letters.
func TestFailingSinkDeadLettersAndRedrive(t *testing.T) {
	secret := []byte("webhook-secret-for-the-test")
	secretFile := filepath.Join(t.TempDir(), "webhook.secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	wh := newWebhookReceiver(t, secret)
	wh.failing.Store(true)
	f := startFleet(t, withEKCA(t, func(c *server.Config) {
		c.AlertSinks = []server.AlertSink{{Name: "hook", Type: server.SinkWebhook, URL: wh.srv.URL, SecretFile: secretFile,
			Attempts: 3, Backoff: config.Duration(50 * time.Millisecond)}}
	}))
	c, _ := f.Client()
	ctx := context.Background()
	sinks, err := c.AlertSinks(ctx)
	if err != nil || len(sinks.Sinks) != 1 || !sinks.Sinks[0].Signed || sinks.Sinks[0].Target != wh.srv.URL {
		t.Fatalf("sinks %+v %v", sinks, err)
	}
	if _, err := c.PutAlertRule(ctx, alert.Rule{ID: "session-up", Severity: alert.SeverityInfo,
		Threshold: &alert.Threshold{Metric: "sigild.connected", Op: alert.OpEQ, Value: 1}}); err != nil {
		t.Fatal(err)
	}
	_, st := telemetryDevice(t, f, 200*time.Millisecond, "-")
	fired := waitAlert(t, c, api.AlertQuery{RuleID: "session-up"}, 15*time.Second, func(a alert.Alert) bool { return a.DeviceID == st.DeviceID })

	var dl alert.DeadLetter
	waitFor(t, func() bool {
		l, err := c.DeadLetters(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range l.DeadLetters {
			if d.Notification.Alert.ID == fired.ID {
				dl = d
				return true
			}
		}
		return false
	}, "the failed notification to become a dead letter")
	if dl.Route != "hook" || dl.Attempts != 3 || !strings.Contains(dl.Error, "500") || dl.Notification.Transition != alert.TransitionFiring {
		t.Fatalf("dead letter %+v", dl)
	}
	if n := wh.attempts.Load(); n < 3 {
		t.Fatalf("receiver saw %d attempts, want at least 3", n)
	}

	wh.failing.Store(false)
	if err := c.Redrive(ctx, dl.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		wh.mu.Lock()
		defer wh.mu.Unlock()
		for _, n := range wh.got {
			a, _ := n["alert"].(map[string]any)
			if a != nil && a["id"] == float64(fired.ID) && n["transition"] == "firing" && n["version"] == float64(1) {
				return true
			}
		}
		return false
	}, "the re-driven notification at the webhook")
	if wh.badSig.Load() != 0 {
		t.Fatalf("%d requests with a bad signature", wh.badSig.Load())
	}
	waitFor(t, func() bool {
		l, _ := c.DeadLetters(ctx, 0, 0)
		return l != nil && !slices.ContainsFunc(l.DeadLetters, func(d alert.DeadLetter) bool { return d.ID == dl.ID })
	}, "the re-driven dead letter to be gone")
	var se *api.StatusError
	if err := c.Redrive(ctx, dl.ID); !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("re-driving it again: %v, want 404", err)
	}
}

// TestMetricsEndpoint: GET /metrics with a viewer's API token is valid
// Prometheus text (read with expfmt, metricstest.Parse), carries the telemetry aggregates and
// the control plane's metrics, and has no per-device label; without a
// token it is refused.
func TestMetricsEndpoint(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	c, _ := f.Client()
	ctx := context.Background()
	_, st := telemetryDevice(t, f, 200*time.Millisecond, "-")
	waitTelemetry(t, f, st.DeviceID, 3)
	waitFor(t, func() bool { l, err := c.Attestations(ctx, st.DeviceID); return err == nil && len(l.Attestations) > 0 }, "a first verdict")

	// As docs/CONFIG.md says: a token scoped down to the viewer role.
	var created api.TokenCreated
	if err := c.Do(ctx, http.MethodPost, "/api/v1/tokens", api.TokenRequest{Name: "prometheus", Role: auth.RoleViewer, TTL: config.Duration(8760 * time.Hour)}, &created); err != nil {
		t.Fatal(err)
	}
	if created.Role != auth.RoleViewer {
		t.Fatalf("token %+v", created.Token)
	}
	token := created.Secret
	scrape := func(tok string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, f.APIURL()+"/metrics", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	if resp, _ := scrape(""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("scrape without a token: %d", resp.StatusCode)
	}
	resp, body := scrape(token)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("scrape: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	fams, err := metricstest.Parse(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("not valid Prometheus text: %v\n%s", err, body)
	}
	value := func(name string, labels ...string) float64 {
		v, ok := fams.Value(name, labels...)
		if !ok {
			t.Fatalf("no sample %s%v", name, labels)
		}
		return v
	}
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"sigil_telemetry_points_ingested_total", nil, 3},
		{"sigil_telemetry_batches_total", []string{"result", "accepted"}, 1},
		{"sigil_telemetry_devices", nil, 1},
		{"sigil_broker_device_connections", nil, 1},
		{"sigil_enroll_enrolled_total", nil, 1},
		{"sigil_attestation_verdicts_total", []string{"result", "pass"}, 1},
	} {
		if v := value(c.name, c.labels...); v < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, v, c.min)
		}
	}
	for _, name := range []string{"sigil_alerts_fired_total", "sigil_alert_notifications_dead_lettered_total", "sigil_renewals_total", "sigil_telemetry_cpu_busy_ratio"} {
		if fams[name] == nil {
			t.Errorf("no family %s", name)
		}
	}
	for _, s := range fams.Samples() {
		for k, v := range s.Labels {
			if strings.Contains(k, "device") || v == st.DeviceID {
				t.Errorf("per-device label on %s: %s=%q", s.Name, k, v)
			}
		}
	}
}

// fleetProc runs a fleet in-process on a fixed configuration, so that it
// can be stopped and started again on the same data directory and
// addresses; onBatch is registered before it serves.
type fleetProc struct {
	*server.Server
	cancel context.CancelFunc
	done   chan error
}

func runFleet(t testing.TB, cfg server.Config, onBatch func(telemetry.Batch)) *fleetProc {
	t.Helper()
	srv, err := server.New(cfg, logger(t).With("side", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	srv.OnTelemetry(onBatch)
	ctx, cancel := context.WithCancel(context.Background())
	p := &fleetProc{Server: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-p.done:
		t.Fatalf("fleet stopped: %v", err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *fleetProc) stop() {
	if p.cancel != nil {
		p.cancel()
		<-p.done
		p.cancel = nil
	}
}

// TestTelemetryOutboxExactlyOnce runs the real sigild with a small outbox
// and a short interval, SIGKILLs it mid-stream, stops the fleet long enough
// for the outbox to overflow, starts the fleet again and kills sigild once
// more. Afterwards, for the device's stream: every point up to the fleet's
// cursor was stored exactly once, in order, or counted as dropped; the
// counts add up across both fleet runs and agree with the device's outbox
// as read from its state store.
func TestTelemetryOutboxExactlyOnce(t *testing.T) {
	requireTools(t)
	sigil, sigild := buildBinaries(t)
	cfg := server.Config{DataDir: t.TempDir(), MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t)),
		Hostnames: []string{"localhost", "127.0.0.1"}}

	type got struct {
		seq        uint64
		deviceTime time.Time
	}
	var (
		mu      sync.Mutex
		points  = map[uint64]int{} // seq -> times stored
		order   []got
		dropped uint64
	)
	onBatch := func(b telemetry.Batch) {
		mu.Lock()
		defer mu.Unlock()
		dropped += b.Dropped
		for _, p := range b.Points {
			points[p.Seq]++
			order = append(order, got{p.Seq, p.DeviceTime})
		}
	}
	stored := func() int { mu.Lock(); defer mu.Unlock(); return len(points) }

	f1 := runFleet(t, cfg, onBatch)
	inst := newTPM(t)
	devDir := t.TempDir()
	devCfg := filepath.Join(devDir, "sigild.json")
	b, _ := json.Marshal(map[string]any{
		"tpm": inst.URI(), "state": filepath.Join(devDir, "state.db"), "broker": cfg.MQTTAddr, "server_name": "localhost",
		"fleet_ca": f1.CACertPath(), "model": "gw-1", "serial": "SN-OUTBOX", "control": filepath.Join(devDir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "500ms", "event_log": "-", "attest_interval": "-1s",
		"telemetry_interval": "100ms", "telemetry_outbox_points": 25, "telemetry_auth_log": "-",
	})
	if err := os.WriteFile(devCfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	start := func() {
		cmd = exec.Command(sigild, "run", "--config", devCfg)
		if os.Getenv("SIGIL_E2E_LOG") != "" {
			cmd.Stderr = os.Stderr
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	kill := func() { cmd.Process.Kill(); cmd.Wait() }
	start()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			kill()
		}
	})
	waitFor(t, func() bool { return stored() >= 10 }, "10 points from sigild")

	// SIGKILL mid-stream: the outbox survives in the state store.
	kill()
	start()
	n := stored()
	waitFor(t, func() bool { return stored() >= n+10 }, "points after sigild was killed")

	// The fleet goes away for longer than the outbox holds (25 points at
	// 100ms): the oldest points are dropped on the device.
	var firstID string
	for _, id := range f1.Telemetry.Devices() {
		firstID = id
	}
	f1.stop()
	counts1 := deviceCounts(t, f1.Telemetry, firstID)
	// sleep: the outage under test: sigild samples 40 points at 100 ms while its outbox holds 25
	time.Sleep(4 * time.Second)
	f2 := runFleet(t, cfg, onBatch)
	n = stored()
	waitFor(t, func() bool { return stored() >= n+30 }, "points after the fleet came back")

	kill()
	start()
	n = stored()
	waitFor(t, func() bool { return stored() >= n+10 }, "points after the second kill")

	// The operator's view through the real CLI.
	cli := func(args ...string) (string, int) {
		cmd := exec.Command(sigil, append(args, "--data-dir", cfg.DataDir, "--server", f2.APIURL())...)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	var deviceID string
	for _, id := range f2.Telemetry.Devices() {
		deviceID = id
	}
	if deviceID != firstID {
		t.Fatalf("device %q after the fleet restart, %q before", deviceID, firstID)
	}
	if out, code := cli("telemetry", deviceID); code != 0 || !strings.Contains(out, "points: ") || !strings.Contains(out, "sigild.connected") || !strings.Contains(out, "listen.tcp") {
		t.Fatalf("sigil telemetry: exit %d\n%s", code, out)
	}
	if out, code := cli("telemetry", deviceID, "--metric", "mem.used_ratio", "--since", "10m"); code != 0 || strings.Count(out, "\n") < 3 {
		t.Fatalf("sigil telemetry --metric: exit %d\n%s", code, out)
	}
	if out, code := cli("alerts", "rules"); code != 0 || !strings.Contains(out, "new-listening-port") || !strings.Contains(out, "telemetry-dropped") {
		t.Fatalf("sigil alerts rules: exit %d\n%s", code, out)
	}
	// The outage overflowed the outbox: the default rule says so.
	if out, code := cli("alerts", "list", "--rule", "telemetry-dropped"); code != 0 || !strings.Contains(out, deviceID) {
		t.Fatalf("sigil alerts list: exit %d\n%s", code, out)
	}
	if out, code := cli("alerts", "redrive"); code != 2 || !strings.Contains(out, "needs a dead letter ID or --all") {
		t.Fatalf("sigil alerts redrive without an ID: exit %d\n%s", code, out)
	}
	if out, code := cli("alerts", "show", "999999"); code != 4 {
		t.Fatalf("sigil alerts show of a missing alert: exit %d\n%s", code, out)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	// The fleet ingests and passes on batches on its own goroutines: wait
	// until its counts account for what it passed on (if they never do,
	// the checks below say how they differ).
	var st2 telemetry.DeviceStatus
	wait.Poll(10*time.Second, func() bool {
		var err error
		if st2, err = f2.Telemetry.Device(deviceID); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return counts1.Ingested+st2.Counts.Ingested == uint64(len(points)) && counts1.Dropped+st2.Counts.Dropped == dropped
	})
	counts2 := st2.Counts
	through := st2.Through

	s, err := state.Open(filepath.Join(devDir, "state.db"), state.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := s.Outbox(state.OutboxOptions{}).Stats()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	for seq, times := range points {
		if times != 1 {
			t.Errorf("point %d stored %d times", seq, times)
		}
		if seq > through {
			t.Errorf("point %d stored beyond the fleet's cursor %d", seq, through)
		}
	}
	if !sort.SliceIsSorted(order, func(i, j int) bool { return order[i].seq < order[j].seq }) {
		t.Error("points were not stored in sequence order")
	}
	for i := 1; i < len(order); i++ {
		if !order[i].deviceTime.After(order[i-1].deviceTime) {
			t.Errorf("point %d taken at %v, not after point %d at %v", order[i].seq, order[i].deviceTime, order[i-1].seq, order[i-1].deviceTime)
			break
		}
	}
	ingested := counts1.Ingested + counts2.Ingested
	if ingested != uint64(len(points)) || counts1.Dropped+counts2.Dropped != dropped {
		t.Errorf("fleet counts ingested %d dropped %d; observed %d stored, %d dropped", ingested, counts1.Dropped+counts2.Dropped, len(points), dropped)
	}
	if uint64(len(points))+dropped != through {
		t.Errorf("%d stored + %d dropped != cursor %d: a point was lost silently", len(points), dropped, through)
	}
	if dropped == 0 {
		t.Error("no point was dropped although the fleet was away for longer than the outbox holds")
	}
	if ob.Acked > through || through > ob.Next-1 {
		t.Errorf("device outbox acked %d, next %d; fleet cursor %d", ob.Acked, ob.Next, through)
	}
	if ob.Dropped < dropped || counts1.Rejected+counts2.Rejected != 0 {
		t.Errorf("device counted %d drops, fleet %d (rejected %d)", ob.Dropped, dropped, counts1.Rejected+counts2.Rejected)
	}
	if hex.EncodeToString(ob.Stream) != st2.Stream {
		t.Errorf("device stream %x, fleet %s", ob.Stream, st2.Stream)
	}
	t.Logf("device appended %d points (outbox holds %d, acked through %d, dropped %d); fleet cursor %d: %d stored once, %d counted dropped, %d duplicates skipped",
		ob.Next-1, ob.Points, ob.Acked, ob.Dropped, through, len(points), dropped, counts1.Duplicates+counts2.Duplicates)
}

func deviceCounts(t testing.TB, in *telemetry.Ingester, id string) telemetry.Counts {
	t.Helper()
	st, err := in.Device(id)
	if err != nil {
		t.Fatal(err)
	}
	return st.Counts
}

// BenchmarkAlertLatency measures how long a device event takes to reach an
// alert sink: failed logins are written to the device's auth log; sigild
// samples every 50ms into its outbox and sends the point; the fleet
// ingests it, the threshold rule fires and the syslog route delivers. It
// reports p50/p99 from the write to the receiver ("event-") and from the
// point's sampling time, the alert's start, to the receiver ("pipeline-").
func BenchmarkAlertLatency(b *testing.B) {
	syslog := newSyslogReceiver(b)
	f := startFleet(b, withEKCA(b, func(c *server.Config) {
		c.AlertSinks = []server.AlertSink{{Name: "siem", Type: server.SinkSyslog, Addr: syslog.Addr()}}
	}))
	c, _ := f.Client()
	if _, err := c.PutAlertRule(context.Background(), alert.Rule{ID: "login-failed", Severity: alert.SeverityWarning,
		Threshold: &alert.Threshold{Metric: "auth.failures", Op: alert.OpGE, Value: 1}}); err != nil {
		b.Fatal(err)
	}
	authLog := filepath.Join(b.TempDir(), "auth.log")
	appendLines(b, authLog, "boot")
	_, st := telemetryDevice(b, f, 50*time.Millisecond, authLog)
	waitTelemetry(b, f, st.DeviceID, 3)

	var event, pipeline []time.Duration
	b.ResetTimer()
	for i := range b.N {
		written := time.Now()
		appendLines(b, authLog, failedLogin(i))
		m, ok := syslog.wait(20*time.Second, func(m syslogMessage) bool {
			return m.MsgID == "firing" && m.CEF.SignatureID == "login-failed" && m.Received.After(written)
		})
		if !ok {
			b.Fatal("no firing message")
		}
		start, _ := strconv.ParseInt(m.CEF.Ext["start"], 10, 64)
		event = append(event, m.Received.Sub(written))
		pipeline = append(pipeline, m.Received.Sub(time.UnixMilli(start)))
		id := m.CEF.Ext["externalId"]
		if _, ok := syslog.wait(20*time.Second, func(m syslogMessage) bool {
			return m.MsgID == "resolved" && m.CEF.Ext["externalId"] == id
		}); !ok {
			b.Fatal("no resolved message")
		}
	}
	b.StopTimer()
	for name, d := range map[string][]time.Duration{"event": event, "pipeline": pipeline} {
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
		b.ReportMetric(float64(d[(len(d)*99)/100].Microseconds())/1000, name+"-p99-ms")
	}
}
