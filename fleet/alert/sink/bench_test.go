package sink

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// BenchmarkAlertLatency measures the time from an input (Event or Observe)
// to the sink's receiver getting the notification over loopback: rule
// evaluation, the alert's bbolt commit (with or without fsync), the route's
// queue and worker, encoding and the transport. Each iteration opens a new
// alert (a new device), so every one pays the commit. Reported: p50-µs and
// p99-µs.
func BenchmarkAlertLatency(b *testing.B) {
	for _, sync := range []bool{true, false} {
		mode := "fsync"
		if !sync {
			mode = "nosync"
		}
		b.Run("webhook/event/"+mode, func(b *testing.B) { benchLatency(b, "webhook", "event", sync) })
		b.Run("webhook/observe/"+mode, func(b *testing.B) { benchLatency(b, "webhook", "observe", sync) })
		b.Run("alertmanager/event/"+mode, func(b *testing.B) { benchLatency(b, "alertmanager", "event", sync) })
		b.Run("syslog-tcp/event/"+mode, func(b *testing.B) { benchLatency(b, "syslog", "event", sync) })
	}
}

func benchLatency(b *testing.B, kind, input string, fsync bool) {
	got := make(chan time.Time, 16)
	var n alert.Notifier
	switch kind {
	case "webhook", "alertmanager":
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- time.Now()
		}))
		defer srv.Close()
		if kind == "webhook" {
			n, _ = NewWebhook(WebhookConfig{URL: srv.URL, Secret: []byte("k")})
		} else {
			n, _ = NewAlertmanager(AlertmanagerConfig{URL: srv.URL})
		}
	case "syslog":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				if _, err := readFrame(r); err != nil {
					return
				}
				got <- time.Now()
			}
		}()
		s, _ := NewSyslog(SyslogConfig{Addr: l.Addr().String()})
		defer s.Close()
		n = s
	}
	e, err := alert.Open(alert.Config{Path: filepath.Join(b.TempDir(), "alerts.db"), NoSync: !fsync,
		Routes: []alert.Route{{Name: kind, Notifier: n, Transitions: []alert.Transition{alert.TransitionFiring}}}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	rule := alert.Rule{ID: "r", Severity: alert.SeverityCritical, Event: &alert.EventMatch{Kind: alert.EventCloneSuspect}}
	if input == "observe" {
		rule = alert.Rule{ID: "r", Severity: alert.SeverityCritical, Threshold: &alert.Threshold{Metric: "temp", Op: alert.OpGT, Value: 80}}
	}
	if _, err := e.PutRule(rule); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		dev := fmt.Sprintf("dev-%d", i)
		start := time.Now()
		if input == "observe" {
			err = e.Observe(dev, start, map[string]float64{"temp": 95}, nil)
		} else {
			err = e.Event(dev, alert.EventCloneSuspect, "critical", start, nil)
		}
		if err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			lat = append(lat, at.Sub(start))
		case <-time.After(10 * time.Second):
			b.Fatal("notification not received")
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds()), "p99-µs")
}
