package sink

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// FuzzCEF: whatever text an alert carries, the syslog message parses
// strictly and every field comes back as it went in (header line breaks
// become spaces).
func FuzzCEF(f *testing.F) {
	f.Add("clone-suspect", "Cloned | identity", "gw-7", tricky, "detail", "a=b", "tcp/22")
	f.Add("r", `\\|`, `=`, "\\n\n\r\\r", "k\\=", "|=\\", "")
	f.Add("x", "", "d", "", "", "", "=")
	f.Fuzz(func(t *testing.T, ruleID, name, device, summary, evKey, evVal, key string) {
		for _, s := range []string{ruleID, name, device, summary, evKey, evVal, key} {
			if !utf8.ValidString(s) {
				return // the engine only produces UTF-8
			}
		}
		sink, err := NewSyslog(SyslogConfig{Addr: "127.0.0.1:1", MaxMessage: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		n := alert.Notification{Transition: alert.TransitionResolved, At: time.Unix(1_800_000_000, 0), Alert: alert.Alert{
			RuleID: ruleID, RuleName: name, DeviceID: device, Summary: summary, Key: key,
			Evidence: map[string]string{evKey: evVal}, State: alert.StateResolved, ResolvedAt: time.Unix(1_800_000_001, 0)}}
		m, err := parse5424(sink.Message(&n))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := parseCEF(m.Msg)
		if err != nil {
			t.Fatalf("%v in %q", err, m.Msg)
		}
		flat := strings.NewReplacer("\r", " ", "\n", " ")
		if ev.SignatureID != flat.Replace(ruleID) || ev.Name != flat.Replace(name) {
			t.Fatalf("header %q %q", ev.SignatureID, ev.Name)
		}
		if ev.Ext["msg"] != summary || ev.Ext["cs1"] != device || ev.Ext["cs5"] != evKey+": "+evVal || ev.Ext["act"] != "resolved" {
			t.Fatalf("extension %q", ev.Ext)
		}
		if key != "" && ev.Ext["cs3"] != key {
			t.Fatalf("key %q", ev.Ext["cs3"])
		}
	})
}

// FuzzVerifySignature: a header a receiver gets never panics the check,
// and only a header carrying the right MAC for the body verifies.
func FuzzVerifySignature(f *testing.F) {
	secret := []byte("k")
	now := time.Unix(1_800_000_000, 0)
	f.Add(Sign(secret, now, []byte("{}")), []byte("{}"))
	f.Add("t=1800000000,v1=00", []byte(""))
	f.Add("t=-9223372036854775808,v1=", []byte("x"))
	f.Add(",,,=", []byte(nil))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		ts, err := VerifySignature(secret, header, body, now, time.Hour)
		if err != nil {
			return
		}
		if _, err := VerifySignature([]byte("another key"), header, body, now, time.Hour); err == nil {
			t.Fatalf("%q verifies under two keys", header)
		}
		if ts.Unix() < now.Add(-time.Hour).Unix() || ts.Unix() > now.Add(time.Hour).Unix() {
			t.Fatalf("accepted a time outside the window: %v", ts)
		}
	})
}
