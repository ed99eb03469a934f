package sshca

import (
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestIssueNeedsACurrentVerdict: a pass from long ago (an earlier session,
// before a reboot or re-enrollment) buys no SSH host certificate.
func TestIssueNeedsACurrentVerdict(t *testing.T) {
	f := newFleet(t, inventory.Device{ID: "dev1", State: inventory.StateActive, Attestation: wire.VerdictPass, LastAttested: t0.Add(-48 * time.Hour)})
	res, err := f.issuer.Issue("dev1", []string{authorized(hostKey(t))})
	if !isReason(err, wire.ReasonAttestationFailed) || res != nil {
		t.Fatalf("issued on a stale pass: %v %+v", err, res)
	}
}

// TestIssuerNeedsVerdicts: an issuer that could not ask whether a
// device's attestation is current is not built (deny by default).
func TestIssuerNeedsVerdicts(t *testing.T) {
	if _, err := NewIssuer(IssuerConfig{CA: openCA(t, t.TempDir()), Devices: &inventory.Store{}}); err == nil {
		t.Fatal("issuer built without Verdicts")
	}
}
