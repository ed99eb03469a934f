package alert

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzRuleJSON: a rule as the API receives it is either refused with
// ErrInvalidRule or stored, read back unchanged and evaluated without
// panicking.
func FuzzRuleJSON(f *testing.F) {
	for _, r := range DefaultRules() {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"id":"t","severity":"info","threshold":{"metric":"cpu","op":">","value":1e308,"for":"1ns"}}`))
	f.Add([]byte(`{"id":"r","severity":"info","rate":{"metric":"x","op":"<","value":-1,"per":"1h"}}`))
	f.Add([]byte(`{"id":"b","severity":"info","baseline":{"metric":"x","k":0.0001,"alpha":0.999,"warmup":1,"consecutive":1}}`))
	f.Add([]byte(`{"id":"e","event":{"kind":"k","count":2,"window":"1s","key_attr":"p","clear_on":"c","clear_after":"1s"}}`))
	e, err := Open(Config{Path: filepath.Join(f.TempDir(), "alerts.db"), NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { e.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Rule
		if json.Unmarshal(b, &r) != nil {
			return
		}
		stored, err := e.PutRule(r)
		if err != nil {
			if !errors.Is(err, ErrInvalidRule) {
				t.Fatalf("refused without ErrInvalidRule: %v", err)
			}
			return
		}
		back, err := e.Rule(stored.ID)
		if err != nil {
			t.Fatal(err)
		}
		x, _ := json.Marshal(stored)
		y, _ := json.Marshal(back)
		if string(x) != string(y) {
			t.Fatalf("stored %s, read %s", x, y)
		}
		at := time.Unix(1_800_000_000, 0)
		for i := range 3 {
			at = at.Add(time.Minute)
			_ = e.Observe("d", at, map[string]float64{"cpu": float64(i * 50), "x": 1e300}, map[string][]string{"ports": {"a", "b"}})
			_ = e.Event("d", "k", "critical", at, map[string]string{"p": "1"})
		}
		e.sweep(at.Add(time.Hour))
		if err := e.DeleteRule(stored.ID); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzDeviceInput: whatever strings a device manages to get into its
// telemetry (set members, event attributes), the engine neither panics nor
// stores invalid text, and alerts stay consistent.
func FuzzDeviceInput(f *testing.F) {
	f.Add("gw-1", "tcp/22", "tcp/4444", "port", "4444", "detail", "a\x00b\nc")
	f.Add("", "", "", "", "", "", "")
	f.Add("d\x00", "\xff\xfe", "é", "\x7f", "x", "y", "z")
	e, err := Open(Config{Path: filepath.Join(f.TempDir(), "alerts.db"), NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { e.Close() })
	for _, r := range []Rule{
		{ID: "ports", Severity: SeverityWarning, NewMember: &NewMember{Set: "ports", Learn: dur(time.Minute)}},
		{ID: "ev", Event: &EventMatch{Kind: "new-listening-port", KeyAttr: "port"}},
	} {
		if _, err := e.PutRule(r); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, device, m1, m2, k1, v1, k2, v2 string) {
		at := time.Unix(1_800_000_000, 0)
		if err := e.Observe(device, at, nil, map[string][]string{"ports": {m1}}); err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatal(err)
			}
			return
		}
		_ = e.Observe(device, at.Add(2*time.Minute), nil, map[string][]string{"ports": {m1, m2}})
		_ = e.Event(device, "new-listening-port", v2, at, map[string]string{k1: v1, k2: v2})
		open, _, err := e.Alerts(Query{DeviceID: device, Open: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range open {
			if a.Fingerprint != Fingerprint(a.RuleID, a.DeviceID, a.Key) || !validText(a.Key) || !validText(a.Summary) {
				t.Fatalf("alert %+v", a)
			}
			for k, v := range a.Evidence {
				if !validText(k) || !validText(v) {
					t.Fatalf("evidence %q=%q", k, v)
				}
			}
		}
		if err := e.Forget(device); err != nil {
			t.Fatal(err)
		}
	})
}

// validText: UTF-8 without control characters.
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
