package governance_test

import (
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestRiskUsesRecordedIssueTimeAndPurpose: a certificate's recorded issue
// time, not one estimated from the fleet's lifetime, decides whether its
// renewal is overdue; the inventory's purpose counts when no assignment
// names one.
func TestRiskUsesRecordedIssueTimeAndPurpose(t *testing.T) {
	f := newFleet(t, func(c *governance.Config) { c.CertLifetime = 24 * time.Hour })
	f.owner("plant-a", governance.OwnerActive)
	now := f.clock.Now()
	// Issued an hour ago: fresh. Issued 23h ago with 30 days left: an
	// issue time estimated from the 24h lifetime (expiry - 24h) would call
	// it fresh; the recorded one shows it is overdue.
	fresh := f.device(1, func(d *inventory.Device) {
		d.CertIssued, d.CertExpiry = now.Add(-time.Hour), now.Add(7*24*time.Hour-time.Hour)
		d.Purpose = "line 3 PLC gateway"
	})
	old := f.device(2, func(d *inventory.Device) {
		d.CertIssued, d.CertExpiry = now.Add(-23*time.Hour), now.Add(30*24*time.Hour)
	})
	r, err := f.svc.Score(fresh.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Factor(governance.FactorRenewalOverdue); ok {
		t.Fatalf("fresh certificate judged overdue: %+v", r.Factors)
	}
	if _, ok := r.Factor(governance.FactorPurposeMissing); ok {
		t.Fatalf("purpose from the inventory ignored: %+v", r.Factors)
	}
	r, err = f.svc.Score(old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Factor(governance.FactorRenewalOverdue); !ok {
		t.Fatalf("certificate issued 23h ago (due after 19h12m) not overdue: %+v", r.Factors)
	}
	if _, ok := r.Factor(governance.FactorPurposeMissing); !ok {
		t.Fatalf("device without purpose: %+v", r.Factors)
	}
}
