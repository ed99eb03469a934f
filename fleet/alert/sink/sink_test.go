package sink

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// engine opens an alert engine routing to one notifier and runs it until
// the test ends.
func engine(t *testing.T, rt alert.Route, rules ...alert.Rule) *alert.Engine {
	t.Helper()
	e, err := alert.Open(alert.Config{Path: filepath.Join(t.TempDir(), "alerts.db"), NoSync: true, Routes: []alert.Route{rt}, Resend: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if _, err := e.PutRule(r); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { e.Close() }) // after Run has stopped
	runtest.Start(t, e.Run)
	return e
}

func cloneRule(sev alert.Severity) alert.Rule {
	return alert.Rule{ID: "clone-suspect", Name: "Cloned | identity \\ suspected", Severity: sev,
		Description: "same EK under two identities", Event: &alert.EventMatch{Kind: alert.EventCloneSuspect}}
}

// tricky holds every character CEF and syslog must escape.
const tricky = "EK a|b\\c=d\nsecond line\r]\"end"

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	wait.For(t, "the condition", cond)
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received")
	}
	var zero T
	return zero
}

// Alertmanager.

var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// amReceiver decodes POST /api/v2/alerts as the Alertmanager does and
// applies its checks: a JSON array of postable alerts with no unknown
// fields, non-empty labels with valid names, endsAt not before startsAt.
func amReceiver(t *testing.T) (*httptest.Server, <-chan PostableAlert) {
	ch := make(chan PostableAlert, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v2/alerts" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "wrong endpoint", http.StatusNotFound)
			return
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		var alerts []PostableAlert
		if err := dec.Decode(&alerts); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, a := range alerts {
			if len(a.Labels) == 0 || a.StartsAt.IsZero() || a.EndsAt.Before(a.StartsAt) {
				http.Error(w, "invalid alert", http.StatusBadRequest)
				return
			}
			for k, v := range a.Labels {
				if !labelNameRE.MatchString(k) || v == "" {
					http.Error(w, "invalid label "+k, http.StatusBadRequest)
					return
				}
			}
			for k := range a.Annotations {
				if !labelNameRE.MatchString(k) {
					http.Error(w, "invalid annotation "+k, http.StatusBadRequest)
					return
				}
			}
			ch <- a
		}
	}))
	t.Cleanup(srv.Close)
	return srv, ch
}

func TestAlertmanagerReceivesAlerts(t *testing.T) {
	srv, got := amReceiver(t)
	am, err := NewAlertmanager(AlertmanagerConfig{URL: srv.URL + "/", GeneratorURL: "https://sigil.example/console"})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, alert.Route{Name: "am", Notifier: am, Transitions: []alert.Transition{alert.TransitionFiring, alert.TransitionRepeat, alert.TransitionResolved}},
		cloneRule(alert.SeverityCritical))
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	if err := e.Event("gw-7", alert.EventCloneSuspect, "", at, map[string]string{"detail": tricky, "peer ip": "10.0.0.9"}); err != nil {
		t.Fatal(err)
	}
	first := recv(t, got)
	want := map[string]string{"alertname": "Cloned | identity \\ suspected", "rule_id": "clone-suspect", "device_id": "gw-7", "severity": "critical", "kind": "event"}
	for k, v := range want {
		if first.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, first.Labels[k], v)
		}
	}
	if len(first.Labels) != len(want) {
		t.Errorf("labels %v, want exactly %v", first.Labels, want)
	}
	if !first.StartsAt.Equal(at) || !first.EndsAt.After(time.Now()) {
		t.Errorf("firing alert startsAt %v endsAt %v: want the event time and a future end", first.StartsAt, first.EndsAt)
	}
	if first.Annotations["summary"] != "clone-suspect: "+strings.ReplaceAll(strings.ReplaceAll(tricky, "\n", ""), "\r", "") ||
		first.Annotations["description"] != "same EK under two identities" || first.Annotations["evidence_peer_ip"] != "10.0.0.9" {
		t.Errorf("annotations %v", first.Annotations)
	}
	if !strings.HasPrefix(first.GeneratorURL, "https://sigil.example/console/alerts/") {
		t.Errorf("generatorURL %q", first.GeneratorURL)
	}
	// Open alerts are sent again, with the same identity and a later end.
	rep := recv(t, got)
	if rep.Labels["device_id"] != "gw-7" || rep.Labels["rule_id"] != "clone-suspect" || rep.EndsAt.Before(first.EndsAt) {
		t.Errorf("repeat %+v", rep)
	}
	open, _, err := e.Alerts(alert.Query{Open: true})
	if err != nil || len(open) != 1 {
		t.Fatalf("open: %v %v", open, err)
	}
	res, err := e.Resolve(open[0].ID, "alice", "re-enrolled")
	if err != nil {
		t.Fatal(err)
	}
	for {
		a := recv(t, got)
		if a.EndsAt.After(time.Now()) {
			continue // a repeat sent before the resolution
		}
		if !a.EndsAt.Equal(res.ResolvedAt.UTC()) || a.Annotations["state"] != "resolved" {
			t.Fatalf("resolved alert: %+v", a)
		}
		break
	}
}

func TestAlertmanagerEndsAtNeverBeforeStart(t *testing.T) {
	am, err := NewAlertmanager(AlertmanagerConfig{URL: "http://am:9093"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	n := alert.Notification{Transition: alert.TransitionResolved, At: now, Alert: alert.Alert{
		RuleID: "r", DeviceID: "d", State: alert.StateResolved, StartsAt: now, ResolvedAt: now.Add(-time.Hour)}}
	if p := am.Postable(&n); p.EndsAt.Before(p.StartsAt) {
		t.Fatalf("endsAt %v before startsAt %v", p.EndsAt, p.StartsAt)
	}
}

// Webhook.

func TestWebhookSignedPayload(t *testing.T) {
	secret := []byte("webhook-secret-value")
	got := make(chan WebhookPayload, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if _, err := VerifySignature(secret, r.Header.Get(SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var p WebhookPayload
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- p
	}))
	defer srv.Close()
	wh, err := NewWebhook(WebhookConfig{URL: srv.URL, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, alert.Route{Name: "hook", Notifier: wh}, cloneRule(alert.SeverityCritical))
	if err := e.Event("gw-7", alert.EventCloneSuspect, "", time.Now(), map[string]string{"detail": "two connections"}); err != nil {
		t.Fatal(err)
	}
	p := recv(t, got)
	if p.Version != WebhookVersion || p.Transition != alert.TransitionFiring || p.Alert.DeviceID != "gw-7" ||
		p.Alert.RuleID != "clone-suspect" || p.Alert.Evidence["detail"] != "two connections" || p.Alert.ID == 0 {
		t.Fatalf("payload %+v", p)
	}
	// A receiver with another secret refuses it: the route dead-letters.
	wrong, _ := NewWebhook(WebhookConfig{URL: srv.URL, Secret: []byte("another")})
	err = wrong.Notify(t.Context(), alert.Notification{Transition: alert.TransitionFiring, At: time.Now()})
	if !errors.Is(err, alert.ErrPermanent) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong secret: %v", err)
	}
}

func TestVerifySignature(t *testing.T) {
	secret := []byte("k")
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"version":1}`)
	h := Sign(secret, now, body)
	if ts, err := VerifySignature(secret, h, body, now.Add(time.Minute), 5*time.Minute); err != nil || !ts.Equal(now) {
		t.Fatalf("valid signature: %v %v", ts, err)
	}
	cases := map[string]struct {
		secret []byte
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		"tampered body":   {secret, h, []byte(`{"version":2}`), now, ErrSignature},
		"other secret":    {[]byte("x"), h, body, now, ErrSignature},
		"replayed later":  {secret, h, body, now.Add(10 * time.Minute), ErrStale},
		"from the future": {secret, Sign(secret, now.Add(time.Hour), body), body, now, ErrStale},
		"no v1":           {secret, "t=1800000000", body, now, ErrSignature},
		"garbage":         {secret, "sha256=abc", body, now, ErrSignature},
		"short v1":        {secret, "t=1800000000,v1=abcd", body, now, ErrSignature},
	}
	for name, c := range cases {
		if _, err := VerifySignature(c.secret, c.header, c.body, c.now, 5*time.Minute); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
}

// A failing sink retries with backoff, then dead-letters; once it works
// again, re-driving the dead letter delivers it.
func TestFailingSinkRetriesThenDeadLetters(t *testing.T) {
	var requests atomic.Int32
	var healthy atomic.Bool
	delivered := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if !healthy.Load() {
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
			return
		}
		delivered <- struct{}{}
	}))
	defer srv.Close()
	wh, _ := NewWebhook(WebhookConfig{URL: srv.URL})
	e := engine(t, alert.Route{Name: "hook", Notifier: wh, Attempts: 4, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond},
		cloneRule(alert.SeverityCritical))
	if err := e.Event("gw-7", alert.EventCloneSuspect, "", time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.Stats().DeadLettered == 1 })
	if n := requests.Load(); n != 4 {
		t.Fatalf("%d requests, want 4 attempts", n)
	}
	dls, _, err := e.DeadLetters(0, 10)
	if err != nil || len(dls) != 1 || dls[0].Attempts != 4 || !strings.Contains(dls[0].Error, "HTTP 503: overloaded") {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
	healthy.Store(true)
	if err := e.Redrive(dls[0].ID); err != nil {
		t.Fatal(err)
	}
	recv(t, delivered)
	waitFor(t, func() bool { return e.Stats().Delivered == 1 })
	if s := e.Stats(); s.Retried != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRefusedPayloadIsNotRetried(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, "bad payload", http.StatusBadRequest)
	}))
	defer srv.Close()
	wh, _ := NewWebhook(WebhookConfig{URL: srv.URL})
	e := engine(t, alert.Route{Name: "hook", Notifier: wh, Attempts: 4, Backoff: time.Millisecond}, cloneRule(alert.SeverityCritical))
	if err := e.Event("gw-7", alert.EventCloneSuspect, "", time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.Stats().DeadLettered == 1 })
	if n := requests.Load(); n != 1 {
		t.Fatalf("%d requests for a refused payload, want 1", n)
	}
}

func TestErrorsHideSecrets(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens: connection refused
	wh, err := NewWebhook(WebhookConfig{URL: "http://user:pw-SECRET1@" + addr + "/hook?token=SECRET2",
		Header: http.Header{"Authorization": {"Bearer SECRET3"}}, Secret: []byte("SECRET4")})
	if err != nil {
		t.Fatal(err)
	}
	err = wh.Notify(t.Context(), alert.Notification{Transition: alert.TransitionFiring, At: time.Now()})
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("error %v", err)
	}
	am, _ := NewAlertmanager(AlertmanagerConfig{URL: "http://" + addr + "/?token=SECRET5"})
	err = am.Notify(t.Context(), alert.Notification{Transition: alert.TransitionFiring, At: time.Now()})
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("error %v", err)
	}
	if _, err := NewWebhook(WebhookConfig{URL: "ftp://x/?token=SECRET6"}); err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("bad URL error %v", err)
	}
}

// Syslog.

// syslogListener accepts connections (TLS when cfg is set) and parses
// every frame strictly; it reports parse failures as errors on the
// channel.
type syslogListener struct {
	l      net.Listener
	frames chan result
	conns  atomic.Int32
	// closeAfter, when set, closes each connection after that many frames.
	closeAfter int
	wg         sync.WaitGroup
}

type result struct {
	msg *syslogMsg
	cef *cefEvent
	err error
}

func listenSyslog(t *testing.T, cfg *tls.Config, closeAfter int) *syslogListener {
	t.Helper()
	var l net.Listener
	var err error
	if cfg != nil {
		l, err = tls.Listen("tcp", "127.0.0.1:0", cfg)
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	s := &syslogListener{l: l, frames: make(chan result, 100), closeAfter: closeAfter}
	s.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for n := 1; ; n++ {
					b, err := readFrame(r)
					if err != nil {
						if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
							s.frames <- result{err: err}
						}
						return
					}
					m, err := parse5424(b)
					if err != nil {
						s.frames <- result{err: err}
						return
					}
					ev, err := parseCEF(m.Msg)
					s.frames <- result{msg: m, cef: ev, err: err}
					if n == s.closeAfter {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() { l.Close(); s.wg.Wait() })
	return s
}

func (s *syslogListener) next(t *testing.T) (*syslogMsg, *cefEvent) {
	t.Helper()
	r := recv(t, s.frames)
	if r.err != nil {
		t.Fatalf("receiver refused a frame: %v", r.err)
	}
	return r.msg, r.cef
}

func checkSyslog(t *testing.T, s *syslogListener, sink *Syslog, hostname string) {
	e := engine(t, alert.Route{Name: "siem", Notifier: sink}, cloneRule(alert.SeverityCritical))
	at := time.Now().Truncate(time.Millisecond)
	if err := e.Event("gw-7", alert.EventCloneSuspect, "", at, map[string]string{"detail": tricky}); err != nil {
		t.Fatal(err)
	}
	m, ev := s.next(t)
	open, _, _ := e.Alerts(alert.Query{Open: true})
	if len(open) != 1 {
		t.Fatalf("open %+v", open)
	}
	a := open[0]
	if m.Facility != 4 || m.Severity != 2 || m.Hostname != hostname || m.AppName != "sigil" || m.ProcID != "-" || m.MsgID != "firing" {
		t.Errorf("syslog header %+v", m)
	}
	if len(m.SD) != 1 || m.SD[0].ID != "origin" || m.SD[0].Params["software"] != "sigil" || m.SD[0].Params["swVersion"] != `1.2"3]` {
		t.Errorf("structured data %+v", m.SD)
	}
	if m.Timestamp.Location() != time.UTC || time.Since(m.Timestamp) > time.Minute {
		t.Errorf("timestamp %v", m.Timestamp)
	}
	if ev.Vendor != "Sigil" || ev.Product != "sigil" || ev.DeviceVersion != `1.2"3]` || ev.SignatureID != "clone-suspect" ||
		ev.Name != "Cloned | identity \\ suspected" || ev.Severity != 9 {
		t.Errorf("CEF header %+v", ev)
	}
	want := map[string]string{
		"msg": a.Summary, "cs1Label": "deviceId", "cs1": "gw-7", "act": "firing", "cat": "event", "cs4": "firing",
		"cs2": a.Fingerprint, "externalId": itoa(a.ID), "rt": itoa(uint64(ev.msTime(t, "rt"))), "cnt": "1",
		"start": itoa(uint64(at.UnixMilli())),
	}
	for k, v := range want {
		if ev.Ext[k] != v {
			t.Errorf("CEF %s = %q, want %q", k, ev.Ext[k], v)
		}
	}
	if !strings.Contains(a.Summary, "a|b\\c=d") || !strings.Contains(ev.Ext["cs5"], "detail: "+a.Evidence["detail"]) {
		t.Errorf("escaped text did not survive: summary %q, cs5 %q", a.Summary, ev.Ext["cs5"])
	}
	if _, err := e.Resolve(a.ID, "alice", "fixed"); err != nil {
		t.Fatal(err)
	}
	m, ev = s.next(t)
	if m.Severity != 5 || m.MsgID != "resolved" || ev.Ext["act"] != "resolved" || ev.Ext["cs4"] != "resolved" || ev.Ext["end"] == "" {
		t.Errorf("resolution: %+v %+v", m, ev.Ext)
	}
}

func (ev *cefEvent) msTime(t *testing.T, k string) int64 {
	t.Helper()
	var n int64
	for _, c := range ev.Ext[k] {
		if c < '0' || c > '9' {
			t.Fatalf("%s = %q is not milliseconds", k, ev.Ext[k])
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func itoa(n uint64) string { return big.NewInt(0).SetUint64(n).String() }

func TestSyslogOverTCP(t *testing.T) {
	s := listenSyslog(t, nil, 0)
	sink, err := NewSyslog(SyslogConfig{Addr: s.l.Addr().String(), Hostname: "fleet-1", Version: `1.2"3]`})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	checkSyslog(t, s, sink, "fleet-1")
}

func TestSyslogOverTLS(t *testing.T) {
	serverCfg, roots := tlsPair(t)
	s := listenSyslog(t, serverCfg, 0)
	sink, err := NewSyslog(SyslogConfig{Addr: s.l.Addr().String(), Hostname: "fleet 1\n", Version: `1.2"3]`,
		TLS: &tls.Config{RootCAs: roots, ServerName: "syslog.test", MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	checkSyslog(t, s, sink, "fleet1") // header fields keep only PRINTUSASCII

	// A receiver with a certificate we do not trust gets nothing.
	other, _ := tlsPair(t)
	s2 := listenSyslog(t, other, 0)
	bad, _ := NewSyslog(SyslogConfig{Addr: s2.l.Addr().String(), TLS: &tls.Config{RootCAs: roots, ServerName: "syslog.test"}})
	err = bad.Notify(t.Context(), alert.Notification{Transition: alert.TransitionFiring, At: time.Now()})
	var uerr x509.UnknownAuthorityError
	if !errors.As(err, &uerr) {
		t.Fatalf("untrusted receiver: %v", err)
	}
}

func TestSyslogReconnectsAfterReceiverCloses(t *testing.T) {
	s := listenSyslog(t, nil, 1) // the receiver closes after each frame
	sink, err := NewSyslog(SyslogConfig{Addr: s.l.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	n := alert.Notification{Transition: alert.TransitionFiring, At: time.Now(), Alert: alert.Alert{RuleID: "r", RuleName: "r", DeviceID: "d", Summary: "one"}}
	if err := sink.Notify(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	s.next(t)
	waitFor(t, func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return sink.conn == nil || sink.conn.gone.Load()
	})
	n.Alert.Summary = "two"
	if err := sink.Notify(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	if _, ev := s.next(t); ev.Ext["msg"] != "two" {
		t.Fatalf("second frame %+v", ev.Ext)
	}
	if c := s.conns.Load(); c != 2 {
		t.Fatalf("%d connections, want 2", c)
	}
}

// Every character CEF escapes survives the trip through the syslog
// message, in the header and in extension values.
func TestCEFEscaping(t *testing.T) {
	sink, err := NewSyslog(SyslogConfig{Addr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	n := alert.Notification{Transition: alert.TransitionFiring, At: time.Now(), Alert: alert.Alert{
		RuleID: "r|1", RuleName: "name " + tricky, DeviceID: "dev=1 x", Key: "a\\b", Summary: tricky,
		Evidence: map[string]string{"k=1": "v|\n\n=\n"}, Severity: alert.SeverityWarning}}
	m, err := parse5424(sink.Message(&n))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := parseCEF(m.Msg)
	if err != nil {
		t.Fatalf("%v in %q", err, m.Msg)
	}
	if ev.SignatureID != "r|1" || ev.Name != "name EK a|b\\c=d second line ]\"end" || ev.Severity != 6 {
		t.Errorf("header %+v", ev)
	}
	if ev.Ext["msg"] != tricky || ev.Ext["cs1"] != "dev=1 x" || ev.Ext["cs3"] != "a\\b" || ev.Ext["cs5"] != "k=1: v|\n\n=\n" {
		t.Errorf("extension %q", ev.Ext)
	}
}

func TestSyslogBoundsMessageSize(t *testing.T) {
	sink, err := NewSyslog(SyslogConfig{Addr: "127.0.0.1:1", MaxMessage: 1024})
	if err != nil {
		t.Fatal(err)
	}
	ev := map[string]string{}
	for i := range 16 {
		ev[string(rune('a'+i))] = strings.Repeat("=", 200)
	}
	n := alert.Notification{Transition: alert.TransitionFiring, At: time.Now(), Alert: alert.Alert{
		RuleID: "r", RuleName: "r", DeviceID: "d", Summary: strings.Repeat("s", 300), Evidence: ev}}
	msg := sink.Message(&n)
	if len(msg) > 1024 {
		t.Fatalf("message of %d bytes", len(msg))
	}
	m, err := parse5424(msg)
	if err != nil {
		t.Fatal(err)
	}
	cef, err := parseCEF(m.Msg)
	if err != nil {
		t.Fatal(err)
	}
	if cef.Ext["msg"] != n.Alert.Summary || cef.Ext["cs5"] != "" || cef.Ext["cs5Label"] != "" {
		t.Fatalf("want the summary kept and the oversized evidence left out whole: %v", cef.Ext)
	}
}

// tlsPair returns a server TLS config with a fresh self-signed certificate
// for "syslog.test" and a pool trusting it.
func tlsPair(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "syslog.test"}, DNSNames: []string{"syslog.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}, pool
}

// Notifications queued while the Alertmanager route was busy go out in one
// request.
func TestAlertmanagerBatches(t *testing.T) {
	var requests atomic.Int32
	srv, got := amReceiver(t)
	counted := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		srv.Config.Handler.ServeHTTP(w, r)
	}))
	defer counted.Close()
	am, _ := NewAlertmanager(AlertmanagerConfig{URL: counted.URL})
	e, err := alert.Open(alert.Config{Path: filepath.Join(t.TempDir(), "alerts.db"), NoSync: true,
		Routes: []alert.Route{{Name: "am", Notifier: am, MaxBatch: 8}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.PutRule(cloneRule(alert.SeverityCritical)); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := e.Event("gw-"+itoa(uint64(i)), alert.EventCloneSuspect, "", time.Now(), nil); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	devices := map[string]bool{}
	for range 10 {
		devices[recv(t, got).Labels["device_id"]] = true
	}
	cancel()
	<-done
	if len(devices) != 10 || requests.Load() != 2 {
		t.Fatalf("%d devices in %d requests, want 10 in 2 (batches of at most 8)", len(devices), requests.Load())
	}
}
