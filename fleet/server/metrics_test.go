package server

import (
	"os"
	"path"
	"regexp"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
)

// TestMetricsDocumented: every family of the fleet's own on /metrics
// (sigil_*) is named in docs/CONFIG.md's Prometheus section, by its name
// or a pattern such as sigil_broker_*, and every name and pattern the
// section gives is on /metrics, so that what operators read is what they
// can query. The scrape is read with expfmt (metricstest): each family has
// a help text, and a counter's name ends in _total.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n### Prometheus\n")
	if !ok {
		t.Fatal("docs/CONFIG.md has no Prometheus section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var documented []string
	for _, m := range regexp.MustCompile("`((?:sigil|process|go)_[a-z0-9_]*\\*?)`").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}
	if len(documented) < 10 {
		t.Fatalf("too few metric names in the Prometheus section: %v", documented)
	}

	s, err := New(Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	fams, _ := metricstest.Scrape(t, metrics.Handler(s.Metrics, nil))

	for _, d := range documented {
		n := 0
		for name := range fams {
			if ok, _ := path.Match(d, name); ok {
				n++
			}
		}
		if n == 0 {
			t.Errorf("docs/CONFIG.md names %s, which /metrics does not have", d)
		}
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no help text", name)
		}
		if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
		if !strings.HasPrefix(name, "sigil_") {
			continue
		}
		found := false
		for _, d := range documented {
			if ok, _ := path.Match(d, name); ok {
				found = true
			}
		}
		if !found {
			t.Errorf("/metrics has %s, which docs/CONFIG.md's Prometheus section does not name", name)
		}
	}
}
