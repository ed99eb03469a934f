package server

import (
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/feed"
)

func testConfig(dir string, sinks ...AlertSink) Config {
	return Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", Hostnames: []string{"localhost"}, AlertSinks: sinks}
}

// closeUnstarted releases what New opened for a server that never ran.
func (s *Server) closeUnstarted() {
	s.close()
}

// TestDefaultRulesOnce: the first start installs the default rules; a rule
// an operator deleted stays deleted across a restart; a bad sink entry
// stops New with an error naming the entry.
func TestDefaultRulesOnce(t *testing.T) {
	dir := t.TempDir()
	s, err := New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := len(alert.DefaultRules()) + len(feed.Rules())
	if n := len(s.Alerts.Rules()); n != want {
		t.Fatalf("%d rules installed, want %d", n, want)
	}
	if err := s.Alerts.DeleteRule("new-process"); err != nil {
		t.Fatal(err)
	}
	s.closeUnstarted()

	s, err = New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Alerts.Rule("new-process"); err == nil || len(s.Alerts.Rules()) != want-1 {
		t.Fatalf("after a restart: %d rules, deleted rule back: %v", len(s.Alerts.Rules()), err == nil)
	}
	s.closeUnstarted()

	_, err = New(testConfig(dir, AlertSink{Name: "a", Type: SinkWebhook, URL: "http://x"}, AlertSink{Name: "a", Type: SinkWebhook, URL: "http://y"}), nil)
	if err == nil || !strings.Contains(err.Error(), `alert_sinks[1] "a"`) || !strings.Contains(err.Error(), "name used twice") {
		t.Fatalf("duplicate sink names: %v", err)
	}
	// The failed New released the stores: the fleet starts again.
	s, err = New(testConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.closeUnstarted()
}
