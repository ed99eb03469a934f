package browser

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// chromiumPath is Debian's Chromium; the tests never download a browser.
const chromiumPath = "/usr/bin/chromium"

// requireBrowser fails under CI=true, and skips otherwise, when Chromium,
// node or npm is missing.
func requireBrowser(t *testing.T) {
	t.Helper()
	swtpmtest.RequireBinaries(t, "node", "npm", "swtpm", "swtpm_setup")
	if _, err := os.Stat(chromiumPath); err != nil {
		msg := chromiumPath + " is missing (install the Debian package chromium; `make test` as root does)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// installPlaywright runs `npm ci` from the committed package-lock.json when
// playwright-core or axe-core is not installed yet (it never downloads a
// browser).
func installPlaywright(t *testing.T) {
	t.Helper()
	_, err1 := os.Stat(filepath.Join("node_modules", "playwright-core", "package.json"))
	_, err2 := os.Stat(filepath.Join("node_modules", "axe-core", "axe.min.js"))
	if err1 == nil && err2 == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
}

func logger() *slog.Logger {
	if os.Getenv("SIGIL_BROWSER_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// results are what the script reports on lines "RESULT <json>", for the
// test to check against the fleet's state.
type results struct {
	EnrollmentToken string `json:"enrollment_token"`
	APITokenName    string `json:"api_token_name"`
	CampaignID      string `json:"campaign_id"`
	AlertNote       string `json:"alert_note"`
}

// TestConsoleInChromium runs the operator scenarios in a real browser:
// log in, find a device by search and open it, create a firmware campaign
// from an approved release and watch it complete on the devices,
// approve a pending device, quarantine and release with a justification,
// create an enrollment token, create and revoke an API token, acknowledge
// an alert, check a viewer's view, and as an admin see the two-person
// rule on a release they uploaded, approve a request in the approvals
// inbox, verify the audit log and look at the risk ranking and the device
// page's telemetry, firmware, risk and audit sections; log out. The
// script checks what the browser shows; this test then checks the fleet's
// state behind it.
func TestConsoleInChromium(t *testing.T) {
	requireBrowser(t)
	installPlaywright(t)
	ctx := context.Background()

	vendor := swtpmtest.NewCA(t)
	trusted := []*swtpm.Instance{swtpmtest.New(t, vendor), swtpmtest.New(t, vendor)}
	untrusted := swtpmtest.New(t, nil) // its own CA: nothing vouches for it
	ekDir := t.TempDir()
	for name, read := range map[string]func() ([]byte, error){"root.pem": vendor.RootCertPEM, "intermediate.pem": vendor.IntermediateCertPEM} {
		b, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ekDir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	signer, releaseTrust := releaseKey(t)
	f, err := harness.StartFleet(ctx, server.Config{DataDir: t.TempDir(), EKCADir: ekDir, ManualApproval: true,
		ReleaseTrust: releaseTrust, TwoPersonRule: true}, logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })

	start := func(inst *swtpm.Instance, serial string) *harness.Device {
		dir := t.TempDir()
		d, err := f.StartDevice(ctx, harness.DeviceConfig{TPM: inst.URI(), Dir: dir, Model: "gw-1", Firmware: "1.4.2", Serial: serial,
			Tweak: func(c *agent.Config) {
				c.PendingRetry = agent.Duration(time.Minute)
				c.TelemetryInterval = agent.Duration(time.Second) // charts and the alert have points at once
			}}, logger())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Stop() })
		return d
	}
	searched := start(trusted[0], "SN-BROWSER-0001")
	other := start(trusted[1], "SN-BROWSER-0002")
	pending := start(untrusted, "SN-BROWSER-0003")
	stSearched := waitStatus(t, searched, harness.Connected)
	stOther := waitStatus(t, other, harness.Connected)
	waitStatus(t, pending, func(s agent.Status) bool { return s.Enrollment == "pending" })
	waiting, _, err := f.Inv.ListDevices(t.Context(), inventory.Filter{State: inventory.StatePending})
	if err != nil || len(waiting) != 1 {
		t.Fatalf("pending devices: %d, %v", len(waiting), err)
	}
	pendingID := waiting[0].ID
	// Enrolled by their EK certificates, the devices have only the model
	// they claim until the fleet assigns one, as an operator would here:
	// campaigns and policies go by the fleet's model.
	for id, owner := range map[string]string{stSearched.DeviceID: "plant-a", stOther.DeviceID: "plant-b"} {
		if err := f.Inv.Update(t.Context(), id, func(d *inventory.Device) error { d.Owner, d.Group, d.Model = owner, "gateways", "gw-1"; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// A reference policy learned from the first device's passing
	// attestation, for the policies page and the verdicts that cite it.
	var golden map[string]map[int]string
	wait.For(t, "a passing attestation to learn a policy from", func() bool {
		recs, err := f.Attest.History(ctx, stSearched.DeviceID, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Result == "pass" && len(r.PCRs) > 0 {
				golden = r.PCRs
				return true
			}
		}
		return false
	})
	if _, err := f.Policy.Put(ctx, policy.Policy{ID: "gw-base", Name: "Gateway baseline", Model: "gw-1", Action: policy.ActionAlert,
		PCRs: golden, Comment: "learned from " + stSearched.DeviceID}); err != nil {
		t.Fatal(err)
	}
	users := map[string]auth.Role{"olga": auth.RoleOperator, "vera": auth.RoleViewer, "ada": auth.RoleAdmin,
		"rita": auth.RoleReleaseApprover, "sam": auth.RoleSecurityAdmin}
	for name, role := range users {
		if _, err := f.Auth.CreateUser(ctx, name, "browser test password of "+name, role); err != nil {
			t.Fatal(err)
		}
	}

	prep := preparePages(t, f, signer, stSearched.DeviceID)

	shots := t.ArtifactDir()
	env := append(os.Environ(),
		"SIGIL_URL="+f.APIURL(), "SIGIL_CA="+f.CACertPath(), "SIGIL_CHROMIUM="+chromiumPath, "SIGIL_SCREENSHOTS="+shots,
		"SIGIL_OPERATOR=olga", "SIGIL_OPERATOR_PASSWORD=browser test password of olga",
		"SIGIL_VIEWER=vera", "SIGIL_VIEWER_PASSWORD=browser test password of vera",
		"SIGIL_ADMIN=ada", "SIGIL_ADMIN_PASSWORD=browser test password of ada",
		"SIGIL_SEARCH_SERIAL=SN-BROWSER-0001", "SIGIL_SEARCH_ID="+stSearched.DeviceID,
		"SIGIL_QUARANTINE_ID="+stOther.DeviceID, "SIGIL_PENDING_ID="+pendingID,
		"SIGIL_RELEASE=gw-os "+releaseVersion, "SIGIL_RELEASE_ID="+prep.release.ID, "SIGIL_UNAPPROVED_ID="+prep.unapproved.ID,
		"SIGIL_ALERT_RULE="+alertRuleName, "SIGIL_ALERT_ID="+strconv.FormatUint(prep.alert.ID, 10),
		"SIGIL_APPROVAL_ID="+prep.approval, "SIGIL_APPROVAL_WHY="+approvalWhy,
	)
	res := runSpec(t, env)

	// What the browser did, as the fleet records it.
	// The approved device enrolls (it is nudged at once) and connects.
	if st := waitStatus(t, pending, harness.Connected); st.DeviceID != pendingID {
		t.Fatalf("the approved device enrolled as %s", st.DeviceID)
	}
	if d, _ := f.Inv.Device(t.Context(), pendingID); d.State != inventory.StateActive || d.TrustPath != inventory.TrustApproval {
		t.Fatalf("approved device: %+v", d)
	}
	// Quarantined and released with the justifications typed in.
	evs, err := f.Inv.Events(t.Context(), stOther.DeviceID, 50)
	if err != nil {
		t.Fatal(err)
	}
	var log []string
	for _, e := range evs {
		log = append(log, e.Kind+": "+e.Detail)
	}
	all := strings.Join(log, "\n")
	for _, want := range []string{"quarantined by olga: suspicious outbound traffic seen by the IDS", "released by olga: traffic was the vendor's update check"} {
		if !strings.Contains(all, want) {
			t.Errorf("device events lack %q:\n%s", want, all)
		}
	}
	if d, _ := f.Inv.Device(t.Context(), stOther.DeviceID); d.State != inventory.StateActive {
		t.Errorf("released device is %s", d.State)
	}
	// The enrollment token shown once is a valid one.
	if _, err := f.Inv.CheckToken(t.Context(), res.EnrollmentToken, "gw-1", time.Now()); err != nil {
		t.Errorf("the enrollment token the console showed does not check: %v", err)
	}
	// The API token was created for the operator, then revoked.
	toks, err := f.Auth.Tokens(ctx, "olga")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, tok := range toks {
		if tok.Name == res.APITokenName {
			found = true
			if tok.Revoked.IsZero() {
				t.Errorf("API token %s was not revoked", tok.ID)
			}
		}
	}
	if !found {
		t.Errorf("no API token %q for olga: %+v", res.APITokenName, toks)
	}

	checkPages(t, f, prep, res)

	if os.Getenv("SIGIL_UPDATE_SCREENSHOTS") == "1" {
		updateScreenshots(t, shots)
	}
}

// waitStatus waits until d's status satisfies cond.
func waitStatus(t *testing.T, d *harness.Device, cond func(agent.Status) bool) agent.Status {
	t.Helper()
	st, err := d.Wait(context.Background(), 60*time.Second, cond)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// runSpec runs console.spec.js (runScript).
func runSpec(t *testing.T, env []string) results { return runScript(t, "console.spec.js", env) }

// runScript runs a script with node, streams its step lines into the test
// log and fails the test when it exits non-zero.
func runScript(t *testing.T, script string, env []string) results {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var res results
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if js, ok := strings.CutPrefix(line, "RESULT "); ok {
			if err := json.Unmarshal([]byte(js), &res); err != nil {
				t.Errorf("bad result line %q: %v", line, err)
			}
			continue
		}
		t.Log(line)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	return res
}

// updateScreenshots copies the screenshots into docs/screenshots.
func updateScreenshots(t *testing.T, from string) {
	t.Helper()
	to := filepath.Join("..", "..", "docs", "screenshots")
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(from, "*.png"))
	if len(files) == 0 {
		t.Fatal("no screenshots to copy")
	}
	for _, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, filepath.Base(src)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("copied %d screenshots to %s", len(files), to)
}
