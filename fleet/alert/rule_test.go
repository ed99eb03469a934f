package alert

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestDefaultRulesValid(t *testing.T) {
	seen := map[Kind]bool{}
	for _, r := range DefaultRules() {
		if err := r.Validate(); err != nil {
			t.Errorf("default rule %s: %v", r.ID, err)
		}
		seen[r.Kind()] = true
	}
	for _, k := range []Kind{KindAbsence, KindEvent, KindBaseline, KindNewMember} {
		if !seen[k] {
			t.Errorf("no default rule of kind %s", k)
		}
	}
}

func TestRuleValidate(t *testing.T) {
	good := func() Rule {
		return Rule{ID: "cpu-hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "cpu", Op: OpGT, Value: 90}}
	}
	cases := []struct {
		name string
		edit func(r *Rule)
		want string // in the error
	}{
		{"bad id", func(r *Rule) { r.ID = "CPU hot" }, "id must be"},
		{"empty id", func(r *Rule) { r.ID = "" }, "id must be"},
		{"severity", func(r *Rule) { r.Severity = "loud" }, "severity"},
		{"no condition", func(r *Rule) { r.Threshold = nil }, "exactly one"},
		{"two conditions", func(r *Rule) { r.Absence = &Absence{After: dur(time.Minute)} }, "exactly one"},
		{"op", func(r *Rule) { r.Threshold.Op = "=>" }, "op"},
		{"nan", func(r *Rule) { r.Threshold.Value = math.NaN() }, "finite"},
		{"no metric", func(r *Rule) { r.Threshold.Metric = "" }, "metric"},
		{"negative for", func(r *Rule) { r.Threshold.For = dur(-time.Second) }, "negative"},
		{"reserved label", func(r *Rule) { r.Labels = map[string]string{"severity": "x"} }, "set by the engine"},
		{"label name", func(r *Rule) { r.Labels = map[string]string{"team-name": "x"} }, "label name"},
		{"action", func(r *Rule) { r.Action = "reboot" }, "action"},
		{"absence", func(r *Rule) { r.Threshold, r.Absence = nil, &Absence{} }, "absence after"},
		{"rate per", func(r *Rule) {
			r.Threshold, r.Rate = nil, &Rate{Metric: "rx", Op: OpGT, Value: 1, Per: dur(-time.Second)}
		}, "rate per"},
		{"event window", func(r *Rule) { r.Threshold, r.Event = nil, &EventMatch{Kind: "auth-failure", Count: 3} }, "window"},
		{"event count", func(r *Rule) {
			r.Threshold, r.Event = nil, &EventMatch{Kind: "x", Count: 5000, Window: dur(time.Minute)}
		}, "count"},
		{"event clear on itself", func(r *Rule) { r.Threshold, r.Event = nil, &EventMatch{Kind: "x", ClearOn: "x"} }, "clear_on"},
		{"baseline alpha", func(r *Rule) { r.Threshold, r.Baseline = nil, &Baseline{Metric: "cpu", Alpha: 1.5} }, "alpha"},
		{"baseline direction", func(r *Rule) { r.Threshold, r.Baseline = nil, &Baseline{Metric: "cpu", Direction: "up"} }, "direction"},
		{"baseline sigma", func(r *Rule) { r.Threshold, r.Baseline = nil, &Baseline{Metric: "cpu", MinSigma: -1} }, "min_sigma"},
		{"set", func(r *Rule) { r.Threshold, r.NewMember = nil, &NewMember{Set: "a\nb"} }, "set"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := good()
			c.edit(&r)
			r.SetDefaults()
			err := r.Validate()
			if !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an ErrInvalidRule mentioning %q", err, c.want)
			}
		})
	}
	r := good()
	r.SetDefaults()
	if err := r.Validate(); err != nil {
		t.Fatalf("good rule refused: %v", err)
	}
	// Every problem is reported at once.
	bad := Rule{ID: "X", Severity: "loud", Action: "reboot"}
	err := bad.Validate()
	for _, want := range []string{"id must be", "severity", "action", "exactly one"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("joined error lacks %q: %v", want, err)
		}
	}
}

func TestRuleJSON(t *testing.T) {
	const in = `{"id":"auth-failures","severity":"warning","labels":{"team":"ops"},
		"event":{"kind":"auth-failure","count":5,"window":"10m","clear_after":"30m","key_attr":"user"}}`
	var r Rule
	must(t, json.Unmarshal([]byte(in), &r))
	r.SetDefaults()
	must(t, r.Validate())
	if r.Kind() != KindEvent || time.Duration(r.Event.Window) != 10*time.Minute || r.Name != "auth-failures" {
		t.Fatalf("decoded %+v / %+v", r, r.Event)
	}
	var bad Rule
	if err := json.Unmarshal([]byte(`{"id":"x","absence":{"after":"soon"}}`), &bad); err == nil {
		t.Fatal("a duration that does not parse was accepted")
	}
}

func TestPutRuleKeepsStateAcrossCosmeticChange(t *testing.T) {
	f := newFixture(t, Config{})
	r := f.put(t, Rule{ID: "cpu", Severity: SeverityInfo, Baseline: &Baseline{Metric: "cpu", Warmup: 5, Consecutive: 1}})
	at := f.clock.Now()
	for i := range 10 {
		must(t, f.e.Observe("d1", at.Add(time.Duration(i)*time.Second), map[string]float64{"cpu": 10}, nil))
	}
	r.Severity = SeverityCritical
	f.put(t, *r)
	d := f.e.device("d1")
	if n := d.Rules["cpu"].EWMA.N; n != 10 {
		t.Fatalf("baseline after a severity change has %d samples, want 10", n)
	}
	must(t, f.e.Observe("d1", at.Add(30*time.Second), map[string]float64{"cpu": 99}, nil))
	if open := f.open(t, "d1"); len(open) != 1 {
		t.Fatalf("anomaly: %+v", open)
	}
	r.Baseline.K = 6
	f.put(t, *r)
	if open := f.open(t, "d1"); len(open) != 0 {
		t.Fatalf("alert of the old condition left open: %+v", open)
	}
	must(t, f.e.Observe("d1", at.Add(time.Minute), map[string]float64{"cpu": 10}, nil))
	if n := d.Rules["cpu"].EWMA.N; n != 1 {
		t.Fatalf("baseline after a condition change has %d samples, want 1 (relearning)", n)
	}
}
