package browser

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/pkitest"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// Flood of the operations scenario: floodDevices devices fail their logins
// under a limit of floodPerRule new alerts per rule; three fail attestation.
const (
	floodDevices = 90
	floodPerRule = 20
)

// TestConsoleOpsInChromium runs the operations scenarios in a real
// browser against a fleet: the console's 404 page for an unknown URL (the
// API keeps problem+json), a throttled login's one-sentence message, the
// alerts page after a flood (what flood control held back, the severity
// filter, grouping by rule, bulk acknowledgement of a group and of a
// selection), the issued enrollment tokens (never a secret), the triage
// page without "enroll" for a certificate from another CA, "sweep now" on
// the risk page, and a workload a security admin registers on the
// workloads page. axe-core checks each page for serious and critical
// accessibility violations. The test then checks the fleet's state behind
// what the browser did.
func TestConsoleOpsInChromium(t *testing.T) {
	requireBrowser(t)
	installPlaywright(t)
	ctx := context.Background()
	f, err := harness.StartFleet(ctx, server.Config{DataDir: t.TempDir(),
		AlertFlood: server.AlertFlood{PerRule: floodPerRule, Fleet: -1},
		// A failure's wait (a minute) outlasts the browser's second attempt however
		// slow the machine: that attempt is the throttled one.
		LoginThrottle: auth.ThrottleConfig{BaseDelay: config.Duration(time.Minute)}}, logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	for name, role := range map[string]auth.Role{"olga": auth.RoleOperator, "vera": auth.RoleViewer, "tess": auth.RoleViewer, "sara": auth.RoleSecurityAdmin} {
		if _, err := f.Auth.CreateUser(ctx, name, "browser test password of "+name, role); err != nil {
			t.Fatal(err)
		}
	}

	// The flood: failed logins on many devices, failed attestations on three.
	for _, r := range []alert.Rule{
		{ID: "ops-logins", Name: "Failed logins (ops)", Severity: alert.SeverityWarning, Event: &alert.EventMatch{Kind: "ops-login-failed"}},
		{ID: "ops-attest", Name: "Attestation failed (ops)", Severity: alert.SeverityCritical, Event: &alert.EventMatch{Kind: "ops-attest-failed"}},
	} {
		if _, err := f.Alerts.PutRule(r); err != nil {
			t.Fatal(err)
		}
	}
	dev := func(i int) string { return fmt.Sprintf("%08x%024x", 0x9e3779b1*uint32(i+1), i) }
	for i := range floodDevices {
		if err := f.Alerts.Event(dev(i), "ops-login-failed", "warning", time.Now(), nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if err := f.Alerts.Event(dev(100+i), "ops-attest-failed", "critical", time.Now(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if st := f.Alerts.Stats(); st.Held != floodDevices-floodPerRule {
		t.Fatalf("flood control held %d alerts, want %d", st.Held, floodDevices-floodPerRule)
	}

	// Issued enrollment tokens: one unused, one used by an enrolled device.
	_, unused, err := f.Inv.CreateToken(ctx, inventory.Grant{}, "plant-a", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	usedSecret, used, err := f.Inv.CreateToken(ctx, inventory.Grant{}, "plant-b", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	enrolled := inventorytest.NewDevice(7)
	enrolled.Attestation = "fail"
	if err := f.Inv.PutDevice(ctx, enrolled); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Inv.ConsumeToken(ctx, usedSecret, enrolled.ID, "", time.Now()); err != nil {
		t.Fatal(err)
	}

	// Shadow devices: a certificate from another CA, an unknown TPM.
	for _, a := range []governance.Attempt{
		{Kind: governance.AttemptForeignCert, ClientID: "gw-impostor", Cert: foreignCert(t), Remote: "198.51.100.7:40000", Reason: "certificate signed by unknown authority"},
		{Kind: governance.AttemptUnknownEK, ClientID: "boot-7", EKFingerprint: strings.Repeat("e7", 32), Remote: "203.0.113.7:5000", Reason: "EK not trusted"},
	} {
		if err := f.Governance.Observe(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Governance.Flush(); err != nil {
		t.Fatal(err)
	}

	shots := t.ArtifactDir()
	env := append(os.Environ(),
		"SIGIL_URL="+f.APIURL(), "SIGIL_CA="+f.CACertPath(), "SIGIL_CHROMIUM="+chromiumPath, "SIGIL_SCREENSHOTS="+shots,
		"SIGIL_OPERATOR=olga", "SIGIL_OPERATOR_PASSWORD=browser test password of olga",
		"SIGIL_VIEWER=vera", "SIGIL_VIEWER_PASSWORD=browser test password of vera",
		"SIGIL_THROTTLED=tess", "SIGIL_SECADMIN=sara", "SIGIL_SECADMIN_PASSWORD=browser test password of sara",
		fmt.Sprintf("SIGIL_HELD=%d", floodDevices-floodPerRule), fmt.Sprintf("SIGIL_OPENED=%d", floodPerRule),
		"SIGIL_TOKEN_UNUSED="+unused.ID, "SIGIL_TOKEN_USED="+used.ID, "SIGIL_ENROLLED="+enrolled.ID,
	)
	runScript(t, "ops.spec.js", env)

	// What the browser did, as the fleet records it: the group of failed
	// logins acknowledged by the operator, the attestation alerts she
	// selected too; nothing firing is left of either rule.
	for _, rule := range []string{"ops-logins", "ops-attest"} {
		open, _, err := f.Alerts.Alerts(alert.Query{RuleID: rule, Open: true, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		acked := 0
		for _, a := range open {
			if a.State == alert.StateFiring {
				t.Errorf("alert %d of %s still firing", a.ID, rule)
			}
			if a.AckedBy == "olga" {
				acked++
			}
		}
		if acked == 0 {
			t.Errorf("no alert of %s acknowledged by olga", rule)
		}
	}
	// The foreign certificate was not enrolled; the sweep scored the device.
	list, _, err := f.Governance.Triage(governance.TriageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range list {
		if sh.Kind == governance.AttemptForeignCert && sh.Decision == governance.DecisionEnroll {
			t.Errorf("the foreign certificate was enrolled: %+v", sh)
		}
	}
	ranking, _, err := f.Governance.Ranking("", 100)
	if err != nil || len(ranking) == 0 {
		t.Errorf("no risk scores after the sweep: %v", err)
	}
	// The workload the security admin registered in the browser.
	regs, err := f.Workload.Registrations(ctx)
	if err != nil || len(regs) != 1 || regs[0].Name != "collector" || regs[0].CreatedBy != "sara" || regs[0].Target != "kiosks" || regs[0].ExePath != "/usr/bin/collector" {
		t.Errorf("registrations after the browser: %+v %v", regs, err)
	}
	if os.Getenv("SIGIL_UPDATE_SCREENSHOTS") == "1" {
		updateScreenshots(t, shots)
	}
}

// foreignCert is a client certificate issued by a CA that is not the
// fleet's ("Acme Plant CA").
func foreignCert(t *testing.T) *x509.Certificate {
	t.Helper()
	return pkitest.NewCA(t, "Acme Plant CA").Client(t, "gw-impostor").Leaf
}
