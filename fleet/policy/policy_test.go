package policy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

const (
	ubuntuShim    = "6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526" // \EFI\ubuntu\shimx64.efi, event 23
	ubuntuGrub    = "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595" // \EFI\ubuntu\grubx64.efi, event 27
	ubuntuCmdline = "/boot/vmlinuz-5.11.0-1006-gcp root=PARTUUID=6443a6ae-e5e9-4df7-9a06-d1329e50f33c ro console=ttyS0 panic=-1"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ubuntuEvidence is the Ubuntu machine's evidence over the given PCRs
// (all when none): the fixture has no quote by an AK of ours, so the
// quote stands for what verifier.VerifyQuote returned; the log is
// verified against it.
func ubuntuEvidence(t testing.TB, raw []byte, pcrs ...int) *Evidence {
	t.Helper()
	q := &verifier.VerifiedQuote{Hash: verifier.BankID("sha256"), PCRs: map[int][]byte{}}
	for i, v := range eventlogtest.UbuntuPCRs(tpm2.TPMAlgSHA256) {
		if len(pcrs) == 0 || slices.Contains(pcrs, i) {
			q.PCRs[i] = unhex(t, v)
		}
	}
	var log *verifier.EventLog
	if raw != nil {
		var err error
		if log, err = verifier.VerifyEventLog(raw, q); err != nil {
			t.Fatal(err)
		}
	}
	return NewEvidence("gce-vm", "ubuntu-21.04", log, q)
}

// syntheticEvidence has SHA-256 PCRs 0, 4 and 7 whose values are derived
// from firmware and no event log.
func syntheticEvidence(model, firmware string, pcr0 byte) *Evidence {
	v := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	return &Evidence{Model: model, Firmware: firmware, PCRs: map[string]map[int][]byte{
		"sha256": {0: v(pcr0), 4: v(0x44), 7: v(0x77)},
	}}
}

func wantFailure(t *testing.T, v Verdict, kind string, parts ...string) Failure {
	t.Helper()
	if v.Pass {
		t.Fatalf("verdict passes, want a %s failure", kind)
	}
	for _, f := range v.Failures {
		if f.Kind != kind {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(f.Message, p)
		}
		if ok {
			t.Logf("failure as expected: %s", f.Message)
			return f
		}
	}
	t.Fatalf("no %s failure naming %q in %+v", kind, parts, v.Failures)
	return Failure{}
}

func TestValidate(t *testing.T) {
	good := Policy{ID: "gw-1.2", Name: "Gateway 1.2", Model: "gw", Firmware: "1.2",
		PCRs:   map[string]map[int]string{"sha256": {0: strings.Repeat("ab", 32)}, "sha1": {7: strings.Repeat("cd", 20)}},
		Events: &EventRules{SecureBoot: "enabled", AllowedDigests: map[int][]string{4: {ubuntuShim}}, KernelCmdline: []string{"/vmlinuz ro*"}}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(p *Policy)
		wants []string
	}{
		{"bad id", func(p *Policy) { p.ID = "-Bad/ID" }, []string{`id "-Bad/ID"`}},
		{"no name", func(p *Policy) { p.Name = " " }, []string{"name missing"}},
		{"unknown action", func(p *Policy) { p.Action = "reboot" }, []string{`action "reboot"`}},
		{"bad hex", func(p *Policy) { p.PCRs["sha256"][0] = "zz" }, []string{"PCR 0 (sha256): value is not hex"}},
		{"wrong digest length", func(p *Policy) { p.PCRs["sha256"][0] = strings.Repeat("ab", 20) }, []string{"PCR 0 (sha256): value of 20 bytes, the bank's digests have 32"}},
		{"PCR out of range", func(p *Policy) { p.PCRs["sha256"][24] = strings.Repeat("ab", 32) }, []string{"PCR 24 (sha256) is not 0-23"}},
		{"unknown bank", func(p *Policy) { p.PCRs["md5"] = map[int]string{0: "00"} }, []string{`bank "md5"`}},
		{"secure boot word", func(p *Policy) { p.Events.SecureBoot = "on" }, []string{`secure_boot "on"`}},
		{"bad allowed digest", func(p *Policy) { p.Events.AllowedDigests[4] = []string{"abc"} }, []string{`PCR 4: "abc"`}},
		{"empty allowed list", func(p *Policy) { p.Events.AllowedDigests[9] = nil }, []string{"PCR 9 has an empty list"}},
		{"cmdline wildcard", func(p *Policy) { p.Events.KernelCmdline = []string{"*"} }, []string{"allows anything"}},
		{"checks nothing", func(p *Policy) { p.PCRs, p.Events = nil, nil }, []string{"checks nothing"}},
		{"several at once", func(p *Policy) { p.ID, p.Action, p.PCRs["sha1"][7] = "", "x", "00" },
			[]string{`id ""`, `action "x"`, "PCR 7 (sha1): value of 1 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good.clone()
			tc.edit(&p)
			err := p.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if n := len(tc.wants); n > 1 && strings.Count(err.Error(), "\n")+1 < n {
				t.Errorf("%d problems joined in %q, want %d", strings.Count(err.Error(), "\n")+1, err, n)
			}
		})
	}
	if good.PCRs["sha256"][0] != strings.Repeat("ab", 32) {
		t.Fatal("clone shares maps with the original")
	}
}

func TestSelect(t *testing.T) {
	ps := []Policy{
		{ID: "any", Name: "n"},
		{ID: "model", Name: "n", Model: "gw"},
		{ID: "model-fw", Name: "n", Model: "gw", Firmware: "2.0"},
		{ID: "model-group", Name: "n", Model: "gw", Group: "lab"},
		{ID: "fw", Name: "n", Firmware: "2.0"},
		{ID: "group", Name: "n", Group: "lab"},
		{ID: "model-fw-group", Name: "n", Model: "gw", Firmware: "2.0", Group: "lab"},
		{ID: "deleted", Name: "n", Model: "gw", Firmware: "3.0", Deleted: true},
		{ID: "other-model", Name: "n", Model: "cam", Firmware: "2.0"},
	}
	for _, tc := range []struct{ model, fw, group, want string }{
		{"gw", "2.0", "lab", "model-fw-group"},
		{"gw", "2.0", "", "model-fw"},
		{"gw", "1.0", "lab", "model-group"},
		{"gw", "1.0", "", "model"},
		{"gw", "3.0", "", "model"}, // the deleted policy is ignored
		{"sensor", "2.0", "lab", "fw"},
		{"sensor", "2.0", "", "fw"},
		{"sensor", "1.0", "lab", "group"},
		{"sensor", "1.0", "", "any"},
		{"cam", "2.0", "", "other-model"},
	} {
		got := Select(ps, tc.model, tc.fw, tc.group)
		if got == nil || got.ID != tc.want {
			t.Errorf("Select(%q, %q, %q) = %v, want %s", tc.model, tc.fw, tc.group, got, tc.want)
		}
	}
	if got := Select(ps[1:3], "cam", "1.0", ""); got != nil {
		t.Errorf("Select without a matching policy = %s", got.ID)
	}
	// Equal scope: the smallest ID, whatever the order.
	tie := []Policy{{ID: "b", Model: "gw"}, {ID: "a", Model: "gw"}}
	if got := Select(tie, "gw", "", ""); got.ID != "a" {
		t.Errorf("tie went to %s", got.ID)
	}
}

func TestEvaluatePCRs(t *testing.T) {
	ev := syntheticEvidence("gw", "2.0", 0x20)
	p := Learn("Gateway 2.0", ev, nil)
	if p.ID != "gateway-2.0" || p.Model != "gw" || p.Firmware != "2.0" || len(p.PCRs["sha256"]) != 3 || p.Events != nil {
		t.Fatalf("learned %+v", p)
	}
	if v := p.Evaluate(ev); !v.Pass || v.Summary() != "pass" || v.Reason() != wire.ReasonOK {
		t.Fatalf("golden evidence fails: %+v", v)
	}

	changed := syntheticEvidence("gw", "2.0", 0x20)
	changed.PCRs["sha256"][7] = bytes.Repeat([]byte{0x3d}, 32)
	v := p.Evaluate(changed)
	f := wantFailure(t, v, KindPCR, "PCR 7 (Secure Boot state, sha256) is 3d3d3d3d… but the policy expects 77777777…: the Secure Boot configuration changed")
	if f.PCR != 7 || f.Bank != "sha256" || f.Expected != strings.Repeat("77", 32) || f.Actual != strings.Repeat("3d", 32) || f.EventIndex != -1 {
		t.Fatalf("failure %+v", f)
	}
	if len(v.Failures) != 1 || v.Reason() != wire.ReasonPolicyViolation || v.PolicyID != p.ID {
		t.Fatalf("verdict %+v", v)
	}

	missing := syntheticEvidence("gw", "2.0", 0x20)
	delete(missing.PCRs["sha256"], 4)
	wantFailure(t, p.Evaluate(missing), KindMissing, "PCR 4 (boot loader, sha256) was not quoted")

	bad := *p
	bad.Action = "explode"
	wantFailure(t, bad.Evaluate(ev), KindMissing, "the policy is invalid")
}

// A policy for firmware B refuses a device that runs firmware A, whatever
// the device claims.
func TestFirmwareMeasurementsDecide(t *testing.T) {
	a, b := syntheticEvidence("gw", "A", 0xaa), syntheticEvidence("gw", "B", 0xbb)
	policies := []Policy{*Learn("gw A", a, []int{0}), *Learn("gw B", b, []int{0})}
	for i := range policies {
		if err := policies[i].Validate(); err != nil {
			t.Fatal(err)
		}
	}

	liar := syntheticEvidence("gw", "B", 0xaa) // says B, measured A
	p := Select(policies, liar.Model, liar.Firmware, "")
	if p == nil || p.ID != "gw-b" {
		t.Fatalf("selected %v", p)
	}
	f := wantFailure(t, p.Evaluate(liar), KindPCR, "PCR 0 (firmware code, sha256)", "the firmware changed")
	if f.Actual != strings.Repeat("aa", 32) || f.Expected != strings.Repeat("bb", 32) {
		t.Fatalf("failure %+v", f)
	}

	// Evaluated against B's policy directly, A's honest evidence fails on
	// scope and measurements.
	v := policies[1].Evaluate(a)
	wantFailure(t, v, KindScope, `reports firmware "A" but the policy is for firmware "B"`)
	wantFailure(t, v, KindPCR, "PCR 0")
	if v := policies[1].Evaluate(b); !v.Pass {
		t.Fatalf("B fails B's policy: %+v", v.Failures)
	}
}

func TestLearnRoundTrip(t *testing.T) {
	raw := eventlogtest.Ubuntu(t)
	golden := ubuntuEvidence(t, raw)
	p := Learn("GCE Ubuntu 21.04", golden, []int{0, 4, 7, 8, 9})
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(p.PCRs["sha256"]) != 5 || p.Events == nil || p.Events.SecureBoot != SecureBootDisabled ||
		!slices.Equal(p.Events.KernelCmdline, []string{ubuntuCmdline}) ||
		!slices.Contains(p.Events.AllowedDigests[4], ubuntuShim) || !slices.Contains(p.Events.AllowedDigests[4], ubuntuGrub) {
		t.Fatalf("learned %+v %+v", p, p.Events)
	}
	if v := p.Evaluate(golden); !v.Pass {
		t.Fatalf("golden evidence fails what was learned from it: %+v", v.Failures)
	}
	// Survives a store round trip.
	s := openStore(t, filepath.Join(t.TempDir(), "policies.db"))
	stored, err := s.Put(t.Context(), *p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(t.Context(), stored.ID)
	if err != nil {
		t.Fatal(err)
	}
	if v := got.Evaluate(golden); !v.Pass {
		t.Fatalf("stored policy fails: %+v", v.Failures)
	}

	changed := ubuntuEvidence(t, raw)
	changed.PCRs["sha256"][9] = bytes.Clone(changed.PCRs["sha256"][9])
	changed.PCRs["sha256"][9][0] ^= 1
	v := got.Evaluate(changed)
	wantFailure(t, v, KindPCR, "PCR 9 (kernel and initrd (grub), sha256)", "the kernel, initrd or boot loader files changed")
	if len(v.Failures) != 1 {
		t.Fatalf("one PCR changed, failures %+v", v.Failures)
	}
}

func TestEventRules(t *testing.T) {
	raw := eventlogtest.Ubuntu(t)
	ev := ubuntuEvidence(t, raw)
	eval := func(r EventRules, ev *Evidence) Verdict {
		p := Policy{ID: "rules", Name: "rules", Events: &r}
		return p.Evaluate(ev)
	}
	if v := eval(EventRules{SecureBoot: SecureBootDisabled, AllowedDigests: map[int][]string{4: {ubuntuShim, strings.ToUpper(ubuntuGrub)}},
		KernelCmdline: []string{"/boot/vmlinuz-5.11.0-1006-gcp root=PARTUUID=*"}}, ev); !v.Pass {
		t.Fatalf("rules the log meets fail: %+v", v.Failures)
	}

	f := wantFailure(t, eval(EventRules{SecureBoot: SecureBootEnabled}, ev), KindSecureBoot, "Secure Boot is disabled but the policy expects it enabled")
	if f.PCR != 7 {
		t.Fatalf("failure %+v", f)
	}

	f = wantFailure(t, eval(EventRules{AllowedDigests: map[int][]string{4: {ubuntuShim}}}, ev), KindEvent,
		`event 27 (EV_EFI_BOOT_SERVICES_APPLICATION \EFI\ubuntu\grubx64.efi) on PCR 4 (boot loader) has digest b0a836fe…`, "an unapproved boot application ran")
	if f.EventIndex != 27 || f.Actual != ubuntuGrub || f.PCR != 4 {
		t.Fatalf("failure %+v", f)
	}

	f = wantFailure(t, eval(EventRules{KernelCmdline: []string{"/boot/vmlinuz-5.11.0-1006-gcp ro"}}, ev), KindCmdline,
		`kernel command line "`+ubuntuCmdline+`" (event 96) is not one the policy allows`)
	if f.EventIndex != 96 || f.Actual != ubuntuCmdline {
		t.Fatalf("failure %+v", f)
	}

	// A command line edited in the log still replays, but is not proved.
	altered := bytes.Clone(raw)
	i := bytes.Index(altered, []byte("kernel_cmdline: /boot/vmlinuz"))
	altered[i+len("kernel_cmdline: /boot/vmlinuz")-1] = 'Z'
	f = wantFailure(t, eval(EventRules{KernelCmdline: []string{"/boot/vmlinuZ*"}}, ubuntuEvidence(t, altered)), KindCmdline,
		"event 96", "cannot be trusted")
	if f.EventIndex != 96 {
		t.Fatalf("failure %+v", f)
	}

	// What the evidence cannot show fails.
	wantFailure(t, eval(EventRules{SecureBoot: SecureBootDisabled}, ubuntuEvidence(t, nil)), KindMissing, "no verified event log")
	wantFailure(t, eval(EventRules{KernelCmdline: []string{"x"}}, ubuntuEvidence(t, raw, 0, 4, 7)), KindMissing, "no verified kernel command line")
	wantFailure(t, eval(EventRules{AllowedDigests: map[int][]string{9: {ubuntuShim}}}, ubuntuEvidence(t, raw, 0, 4, 7)), KindMissing, "PCR 9 (kernel and initrd (grub)) has no verified events")
	wantFailure(t, eval(EventRules{SecureBoot: SecureBootDisabled}, ubuntuEvidence(t, raw, 0, 4)), KindSecureBoot, "cannot be established", "PCR 7 was not verified")
}

func TestSelections(t *testing.T) {
	p := Policy{ID: "x", Name: "x",
		PCRs:   map[string]map[int]string{"sha1": {0: strings.Repeat("00", 20)}, "sha256": {4: strings.Repeat("00", 32), 0: strings.Repeat("00", 32)}},
		Events: &EventRules{SecureBoot: SecureBootEnabled, KernelCmdline: []string{"a"}, AllowedDigests: map[int][]string{9: {ubuntuShim}}}}
	got := p.Selections()
	want := []wire.PCRSelection{{Hash: verifier.BankID("sha1"), PCRs: []int{0, 7, 8, 9}}, {Hash: verifier.BankID("sha256"), PCRs: []int{0, 4, 7, 8, 9}}}
	if len(got) != 2 || got[0].Hash != want[0].Hash || !slices.Equal(got[0].PCRs, want[0].PCRs) || got[1].Hash != want[1].Hash || !slices.Equal(got[1].PCRs, want[1].PCRs) {
		t.Fatalf("selections %+v, want %+v", got, want)
	}
	for _, s := range got {
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	only := Policy{ID: "y", Name: "y", Events: &EventRules{SecureBoot: SecureBootEnabled}}
	if got := only.Selections(); len(got) != 1 || got[0].Hash != verifier.BankID("sha256") || !slices.Equal(got[0].PCRs, []int{7}) {
		t.Fatalf("selections %+v", got)
	}
}

func TestVerdictSummary(t *testing.T) {
	v := Verdict{Failures: []Failure{{Message: "first"}, {Message: "second"}, {Message: "third"}}}
	if got := v.Summary(); got != "first (and 2 more)" {
		t.Fatalf("summary %q", got)
	}
}

func TestDecode(t *testing.T) {
	good := `{"id":"gw-2","name":"Gateway","model":"gw","firmware":"2.0","action":"alert",
		"pcrs":{"sha256":{"7":"` + strings.Repeat("ab", 32) + `"}},
		"events":{"secure_boot":"enabled","allowed_digests":{"4":["` + ubuntuShim + `"]},"kernel_cmdline":["/vmlinuz ro*"]}}`
	p, err := Decode(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if p.PCRs["sha256"][7] != strings.Repeat("ab", 32) || p.Events.AllowedDigests[4][0] != ubuntuShim || p.Action != ActionAlert {
		t.Fatalf("decoded %+v", p)
	}
	for name, in := range map[string]string{
		"unknown field":  `{"id":"a","name":"a","pcrs":{"sha256":{"0":"` + strings.Repeat("00", 32) + `"}},"colour":"red"}`,
		"trailing data":  good + `{}`,
		"trailing brace": good + `}`,
		"invalid":        `{"id":"a","name":"a"}`,
		"not JSON":       `id: a`,
		"bad PCR key":    `{"id":"a","name":"a","pcrs":{"sha256":{"seven":"00"}}}`,
		"too large":      `{"id":"a","name":"` + strings.Repeat("x", maxPolicySize) + `"}`,
	} {
		if _, err := Decode(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzDecode feeds JSON to Decode: whatever it accepts validates and
// survives an encode/decode round trip unchanged.
func FuzzDecode(f *testing.F) {
	f.Add(`{"id":"gw-2","name":"Gateway","pcrs":{"sha256":{"7":"` + strings.Repeat("ab", 32) + `"}}}`)
	f.Add(`{"id":"x","name":"x","events":{"secure_boot":"disabled","kernel_cmdline":["a*"]}}`)
	f.Add(`{"id":"x","name":"x","events":{"allowed_digests":{"4":["` + ubuntuShim + `"]}},"action":"alert","auto_release":true}`)
	f.Fuzz(func(t *testing.T, in string) {
		p, err := Decode(strings.NewReader(in))
		if err != nil {
			if p != nil {
				t.Fatal("refused policy returned")
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted an invalid policy: %v", err)
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		q, err := Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("re-encoded policy refused: %v\n%s", err, b)
		}
		b2, _ := json.Marshal(q)
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the policy:\n%s\n%s", b, b2)
		}
		_ = p.Evaluate(syntheticEvidence("m", "f", 1)) // must not panic
		_ = p.Selections()
	})
}
