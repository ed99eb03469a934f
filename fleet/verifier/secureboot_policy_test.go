package verifier_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/verifier"
)

// TestSecureBootRuleInjectedDbx judges, with a policy that requires Secure
// Boot, the replayed log of a machine whose dbx was crafted so that
// go-attestation reads a revocation the firmware does not hold
// (GO-2026-5298 and its kin, see TestSecureBootInjectedDbx). The rule
// passes the real configuration and fails closed on the crafted one,
// saying which event and why.
func TestSecureBootRuleInjectedDbx(t *testing.T) {
	rule := policy.Policy{ID: "secure-boot", Name: "secure boot", Events: &policy.EventRules{SecureBoot: policy.SecureBootEnabled}}
	realDbx := verifier.WindowsVariable(t, "dbx")
	injected := verifier.InjectedDbx(t, realDbx, verifier.Digest("a boot loader revoked by the firmware"), verifier.Digest("a boot loader only the verifier thinks revoked"))
	judge := func(dbx []byte) policy.Verdict {
		raw, q := verifier.WindowsSecureBootLog(t, func(name string, v []byte) []byte {
			if name == "dbx" {
				return verifier.WithValue(v, dbx)
			}
			return v
		})
		el, err := verifier.VerifyEventLog(raw, q)
		if err != nil {
			t.Fatalf("the log does not verify: %v", err)
		}
		return rule.Evaluate(policy.NewEvidence("m", "f", el, q))
	}

	if v := judge(realDbx); !v.Pass {
		t.Fatalf("the real configuration fails: %+v", v.Failures)
	}
	v := judge(injected)
	i := slices.IndexFunc(v.Failures, func(f policy.Failure) bool { return f.Kind == policy.KindSecureBoot })
	if v.Pass || i < 0 {
		t.Fatalf("the crafted dbx passes the Secure Boot rule: %+v", v)
	}
	f := v.Failures[i]
	for _, part := range []string{"the Secure Boot state cannot be established from the event log", "EV_EFI_VARIABLE_DRIVER_CONFIG dbx",
		"not a whole number of 48-byte signatures", "the policy expects it enabled"} {
		if !strings.Contains(f.Message, part) {
			t.Fatalf("failure %q does not say %q", f.Message, part)
		}
	}
	if f.PCR != 7 || f.Actual != "unknown" {
		t.Fatalf("failure %+v", f)
	}
	t.Logf("refused: %s", f.Message)
}
