package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fleetapi "github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// previousTag names the previous release; previousCommit is the commit it
// tags, pinned so that a clone without tags still finds the release's code
// and a moved tag is noticed.
const (
	previousTag    = "v0.1.0"
	previousCommit = "0db7374e63928b07f7f64402e457f79ebfb1c7c9"
)

// releaseBinaries are sigil and sigild built from the previous release.
type releaseBinaries struct {
	sigil, sigild string
}

// buildPreviousRelease extracts the previous release from git (git
// archive: the tag if the clone has it, else the pinned commit; both must
// agree) into a temporary directory and builds its sigil and sigild there,
// as a user of that release would. The go command may fetch the release's
// modules from the proxy. Without the release's history the test skips,
// and fails with CI=true.
func buildPreviousRelease(t *testing.T) releaseBinaries {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		fail("git rev-parse --show-toplevel: %v (the test needs the repository's history)", err)
	}
	repo := strings.TrimSpace(string(top))
	commit := previousCommit
	if out, err := exec.Command("git", "-C", repo, "rev-parse", "--verify", "--quiet", previousTag+"^{commit}").Output(); err == nil {
		if got := strings.TrimSpace(string(out)); got != previousCommit {
			t.Fatalf("tag %s is commit %s, the test pins %s: a release tag never moves", previousTag, got, previousCommit)
		}
	} else if err := exec.Command("git", "-C", repo, "cat-file", "-e", previousCommit+"^{commit}").Run(); err != nil {
		fail("neither tag %s nor commit %s is in this clone (fetch the tags): %v", previousTag, previousCommit, err)
	}
	src := t.TempDir()
	tarball := filepath.Join(t.TempDir(), "release.tar")
	if out, err := exec.Command("git", "-C", repo, "archive", "--format=tar", "-o", tarball, commit).CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", commit, err, out)
	}
	if out, err := exec.Command("tar", "-x", "-f", tarball, "-C", src).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	bin := t.TempDir()
	for _, b := range []string{"sigil", "sigild"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b), "./cmd/"+b)
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s of %s: %v\n%s", b, previousTag, err, out)
		}
	}
	return releaseBinaries{sigil: filepath.Join(bin, "sigil"), sigild: filepath.Join(bin, "sigild")}
}

// sigildProcess is a sigild process, of either release, with its
// configuration and state directory.
type sigildProcess struct {
	sigild, cfg, dir string
	proc             *exec.Cmd
}

// startOldDevice writes a configuration for the previous release's sigild
// (its keys, which the current one keeps) against a broker and starts it.
func startOldDevice(t *testing.T, sigild, broker, fleetCA, updateServer string) *sigildProcess {
	t.Helper()
	inst := newTPM(t)
	d := &sigildProcess{sigild: sigild, dir: t.TempDir()}
	d.cfg = filepath.Join(d.dir, "sigild.json")
	b, _ := json.Marshal(map[string]any{
		"tpm": inst.URI(), "state": filepath.Join(d.dir, "state.db"), "broker": broker, "server_name": "localhost",
		"fleet_ca": fleetCA, "model": "gw-1", "firmware": "1.0.0", "serial": "SN-" + filepath.Base(d.dir), "control": filepath.Join(d.dir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "2s", "event_log": "-", "update_server": updateServer,
	})
	if err := os.WriteFile(d.cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d.proc = startProcess(t, sigild, "run", "--config", d.cfg)
	return d
}

// deviceStatus is what `sigild status --json` reports, in both releases.
type deviceStatus struct {
	DeviceID    string `json:"device_id"`
	Enrollment  string `json:"enrollment"`
	Connected   bool   `json:"connected"`
	CertSerial  string `json:"cert_serial"`
	Firmware    string `json:"firmware"`
	LastReason  string `json:"last_reason"`
	LastVerdict string `json:"last_verdict"`
}

// status runs `sigild status --json`; ok is its exit status 0 (enrolled and
// connected).
func (d *sigildProcess) status(t *testing.T) (deviceStatus, bool) {
	t.Helper()
	out, err := exec.Command(d.sigild, "status", "--config", d.cfg, "--json").Output()
	var st deviceStatus
	if jerr := json.Unmarshal(out, &st); jerr != nil && err == nil {
		t.Fatalf("sigild status --json: %v\n%s", jerr, out)
	}
	return st, err == nil
}

// waitStatus waits until the device's status satisfies cond.
func (d *sigildProcess) waitStatus(t *testing.T, what string, cond func(deviceStatus) bool) deviceStatus {
	t.Helper()
	var st deviceStatus
	waitFor(t, func() bool {
		var ok bool
		st, ok = d.status(t)
		return ok && cond(st)
	}, what)
	return st
}

// TestPreviousRelease runs the previous release's programs with the current
// ones: its sigild against the current fleet, the current sigild against
// its fleet, and its fleet's data directory opened by the current sigil.
func TestPreviousRelease(t *testing.T) {
	requireTools(t)
	old := buildPreviousRelease(t)

	t.Run("OldDevice", func(t *testing.T) { testOldDevice(t, old) })
	t.Run("OldFleet", func(t *testing.T) { testOldFleet(t, old) })
}

// testOldDevice: the previous release's sigild (protocol version 4)
// enrolls with the current fleet, attests, renews in a forced rotation and
// takes a firmware update, each seen as an operator and the device's own
// status see it; the fleet keeps and shows the version it speaks to it.
func testOldDevice(t *testing.T, old releaseBinaries) {
	kit := newReleaseKit(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.ReleaseTrust = kit.trustFile }))
	admin, _ := f.Client()
	ctx := context.Background()
	api := strings.TrimPrefix(f.APIURL(), "https://")
	d := startOldDevice(t, old.sigild, f.MQTTAddr(), f.CACertPath(), api)
	st := d.waitStatus(t, "the previous release's sigild to enroll and connect", func(s deviceStatus) bool { return s.Enrollment == "enrolled" && s.Connected })
	id := st.DeviceID

	// Enrolled: the inventory holds it active, speaking version 4.
	dev, err := admin.Device(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if dev.State != "active" || dev.CertSerial != st.CertSerial || dev.Protocol != 4 {
		t.Fatalf("device as the API shows it: %+v; sigild reports serial %s", dev.Device, st.CertSerial)
	}
	// Attested: it asks on connect; the verdict reaches the API.
	waitFor(t, func() bool {
		l, err := admin.Attestations(ctx, id)
		return err == nil && len(l.Attestations) > 0 && l.Attestations[0].Result == "pass"
	}, "the old device's first attestation verdict")
	if err := admin.Attest(ctx, id); err != nil {
		t.Fatalf("attestation on demand: %v", err)
	}
	waitFor(t, func() bool {
		l, err := admin.Attestations(ctx, id)
		return err == nil && len(l.Attestations) > 1 && l.Attestations[0].Result == "pass"
	}, "the old device's verdict on demand")
	d.waitStatus(t, "sigild status to show the verdict", func(s deviceStatus) bool { return s.LastVerdict == "pass" })

	// Renewed: a forced rotation gives it a new certificate.
	job, err := admin.StartRotation(ctx, apiRotation(id))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		j, err := admin.Rotation(ctx, job.ID)
		return err == nil && j.State == "done" && j.Progress.Renewed == 1
	}, "the forced rotation of the old device to finish")
	renewed := d.waitStatus(t, "the old device to hold its renewed certificate", func(s deviceStatus) bool { return s.CertSerial != st.CertSerial })
	waitFor(t, func() bool {
		dev, err := admin.Device(ctx, id)
		return err == nil && dev.CertSerial == renewed.CertSerial && dev.Connected
	}, "the inventory to hold the renewed certificate, the device connected")

	// Updated: a campaign installs 2.0.0; the device reports each step in
	// version 4 and commits.
	assign(t, admin, id, "gw-1", "")
	ana := asUser(t, f, admin, "ana", auth.RoleOperator)
	bo := asUser(t, f, admin, "bo", auth.RoleReleaseApprover)
	image := bytes.Repeat([]byte("gw-os 2.0.0 "), 50_000/12)
	raw, bundles := kit.release(t, "2.0.0", 2, image, 2)
	rel, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bo.ApproveRelease(ctx, rel.ID); err != nil {
		t.Fatal(err)
	}
	ca, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: []string{id}},
		DeviceTimeout: config.Duration(60 * time.Second)}, "old device update")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ana.CampaignAction(ctx, ca.ID, "start", "old device update", time.Time{}); err != nil {
		t.Fatal(err)
	}
	c := waitCampaign(t, ana, ca.ID, 90*time.Second, "completed", func(c *campaign.Campaign) bool { return c.Counts.Finished() == 1 })
	if c.Counts.Committed != 1 {
		t.Fatalf("campaign: %+v, device %+v", c.Counts, campaignDevice(t, ana, ca.ID, id))
	}
	waitFirmware(t, f, id, "2.0.0")
	d.waitStatus(t, "the old device to report firmware 2.0.0", func(s deviceStatus) bool { return s.Firmware == "2.0.0" })
	if br := bootRecord(t, d.dir); br.Active != "b" || !bytes.Equal(slotImage(t, d.dir, "b"), image) {
		t.Fatalf("the old device boots %+v, or slot b does not hold the image", br)
	}
	if dev, err := admin.Device(ctx, id); err != nil || dev.Protocol != 4 || dev.State != "active" {
		t.Fatalf("after the update: %+v, %v", dev, err)
	}
}

// apiRotation asks for a forced rotation of one device.
func apiRotation(id string) fleetapi.RotationRequest {
	return fleetapi.RotationRequest{Selector: rotation.Selector{DeviceIDs: []string{id}}, Reason: "mixed-version fleet"}
}

// testOldFleet runs the previous release's fleet and fills its data
// directory through its own CLI and devices: a device of its release
// enrolled and attested, a reference policy learned from it, a secret for
// it, a signed release uploaded, an operator created, with their audit
// entries. The current sigild is refused by that fleet (unsupported_version:
// devices are upgraded after the fleet, never before). Then the current
// sigil serve opens the same directory: the device is listed, the policy,
// secret and release are there, the audit log verifies with the fleet's
// key, and the running device reconnects without enrolling again.
func testOldFleet(t *testing.T, old releaseBinaries) {
	sigil, sigild := buildBinaries(t)
	data := t.TempDir()
	mqtt, apiAddr := freeAddr(t), freeAddr(t)
	apiPort := apiAddr[strings.LastIndexByte(apiAddr, ':')+1:]
	base := "https://localhost:" + apiPort
	work := t.TempDir()
	file := func(name string) string { return filepath.Join(work, name) }

	// A release key and the trust set the fleet is configured with, made
	// by the previous release's CLI.
	mustRun(t, old.sigil, "firmware", "keygen", "--key", file("release.key"), "--pub", file("release.pub"))
	mustRun(t, old.sigil, "firmware", "trust", "--threshold", "1", "--out", file("trust.json"), file("release.pub"))
	serveCfg := file("serve.json")
	b, _ := json.Marshal(map[string]any{"data_dir": data, "mqtt_addr": mqtt, "api_addr": apiAddr, "ek_ca_dir": ekCADir(t, vendorCA(t)),
		"hostnames": []string{"localhost", "127.0.0.1"}, "release_trust": file("trust.json")})
	if err := os.WriteFile(serveCfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	oldFleet := startProcess(t, old.sigil, "serve", "--config", serveCfg)
	waitFor(t, func() bool { _, err := os.Stat(filepath.Join(data, "admin.token")); return err == nil }, "the previous release's sigil serve to write its admin token")
	cli := func(bin string, args ...string) string {
		t.Helper()
		return mustRun(t, bin, append(args, "--data-dir", data, "--server", base)...)
	}

	// Content, through the previous release's CLI.
	d := startOldDevice(t, old.sigild, mqtt, filepath.Join(data, "ca", "ca.crt"), "localhost:"+apiPort)
	st := d.waitStatus(t, "the old device to enroll with the old fleet", func(s deviceStatus) bool { return s.Enrollment == "enrolled" && s.Connected })
	id := st.DeviceID
	waitFor(t, func() bool {
		out, err := run(t, old.sigil, "devices", "attestations", id, "--data-dir", data, "--server", base)
		return err == nil && strings.Contains(out, "pass")
	}, "the old fleet's first verdict on its device")
	cli(old.sigil, "policies", "learn", "--device", id, "--name", "gw-1-reference")
	if err := os.WriteFile(file("db.txt"), []byte("s3cret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli(old.sigil, "secrets", "put", "db-password", "--device", id, "--file", file("db.txt"))
	image := bytes.Repeat([]byte("gw-os 2.0.0 "), 1000)
	if err := os.WriteFile(file("image.img"), image, 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, old.sigil, "firmware", "sign", "--key", file("release.key"), "--image", file("image.img"), "--name", "gw-os", "--version", "2.0.0",
		"--security-version", "2", "--models", "gw-1", "--manifest-out", file("image.manifest.json"), "--bundle", file("image.bundle"))
	cli(old.sigil, "firmware", "upload", "--manifest", file("image.manifest.json"), "--bundle", file("image.bundle"), "--image", file("image.img"))
	cli(old.sigil, "users", "create", "olga", "--role", "operator")
	before := deviceJSON(t, cli(old.sigil, "devices", "show", id, "-o", "json"))

	// The current sigild is newer than this fleet: refused at enrollment
	// with unsupported_version.
	inst := newTPM(t)
	newDir := t.TempDir()
	newCfg := filepath.Join(newDir, "sigild.json")
	b, _ = json.Marshal(map[string]any{
		"tpm": inst.URI(), "state": filepath.Join(newDir, "state.db"), "broker": mqtt, "server_name": "localhost",
		"fleet_ca": filepath.Join(data, "ca", "ca.crt"), "model": "gw-1", "serial": "SN-NEW", "control": filepath.Join(newDir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "2s", "event_log": "-",
	})
	if err := os.WriteFile(newCfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	newDev := startProcess(t, sigild, "run", "--config", newCfg)
	waitFor(t, func() bool {
		out, _ := exec.Command(sigild, "status", "--config", newCfg, "--json").Output()
		var s deviceStatus
		return json.Unmarshal(out, &s) == nil && strings.HasPrefix(s.LastReason, "unsupported_version") && s.Enrollment != "enrolled"
	}, "the current sigild to be refused by the previous release's fleet with unsupported_version")
	stopProcess(t, newDev)

	// Upgrade the fleet: the old one stops, the current one opens its data
	// directory; the old device keeps running and reconnects.
	stopProcess(t, oldFleet)
	startProcess(t, sigil, "serve", "--config", serveCfg)
	var after apiDevice
	waitFor(t, func() bool {
		out, err := run(t, sigil, "devices", "show", id, "-o", "json", "--data-dir", data, "--server", base)
		if err != nil {
			return false
		}
		after = deviceJSON(t, out)
		return after.Connected && after.Protocol == 4
	}, "the current fleet to list the old device, connected again and speaking version 4")
	if after.State != "active" || after.CertSerial != before.CertSerial || !after.EnrolledAt.Equal(before.EnrolledAt) {
		t.Fatalf("the device after the upgrade: %+v, before %+v (it must not enroll again)", after, before)
	}
	if st2 := d.waitStatus(t, "the old device connected to the current fleet", func(s deviceStatus) bool { return s.Connected }); st2.CertSerial != st.CertSerial {
		t.Fatalf("the old device holds certificate %s, had %s: it enrolled again", st2.CertSerial, st.CertSerial)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"policies", "list"}, "gw-1-reference"},
		{[]string{"secrets", "list"}, "db-password"},
		{[]string{"firmware", "list"}, "2.0.0"},
		{[]string{"users", "list"}, "olga"},
		{[]string{"devices", "list"}, id},
	} {
		if out := cli(sigil, c.args...); !strings.Contains(out, c.want) {
			t.Errorf("sigil %s after the upgrade lacks %q:\n%s", strings.Join(c.args, " "), c.want, out)
		}
	}
	// The audit log the previous release wrote verifies, continued by the
	// current one.
	cli(sigil, "audit", "export", "--out", file("audit.jsonl"))
	if out := mustRun(t, sigil, "audit", "verify", file("audit.jsonl"), "--key", filepath.Join(data, "audit.pub")); !strings.HasPrefix(out, "audit log verifies: entries 1..") {
		t.Fatalf("sigil audit verify: %s", out)
	}
	out := cli(sigil, "audit", "list")
	for _, want := range []string{"device.enrolled", "api.policies.learn.post", "api.secrets.put", "firmware.upload", "api.users.post"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit list after the upgrade lacks the previous release's %q:\n%s", want, out)
		}
	}
	// Attestation goes on: a verdict on demand through the current fleet.
	cli(sigil, "devices", "attest", id)
	waitFor(t, func() bool {
		out, err := run(t, sigil, "devices", "attestations", id, "-o", "json", "--data-dir", data, "--server", base)
		var l struct {
			Attestations []struct{ Result string } `json:"attestations"`
		}
		return err == nil && json.Unmarshal([]byte(out), &l) == nil && len(l.Attestations) > 1 && l.Attestations[0].Result == "pass"
	}, "a verdict by the current fleet on the old device")

	// Then the device: the current sigild on the previous one's state and
	// configuration connects with the certificate it holds, and the fleet
	// speaks version 5 to it from its hello on.
	stopProcess(t, d.proc)
	up := &sigildProcess{sigild: sigild, cfg: d.cfg, dir: d.dir}
	up.proc = startProcess(t, sigild, "run", "--config", d.cfg)
	if st3 := up.waitStatus(t, "the upgraded sigild to connect", func(s deviceStatus) bool { return s.Connected }); st3.CertSerial != st.CertSerial || st3.DeviceID != id {
		t.Fatalf("the upgraded device: %+v; it had device %s, certificate %s", st3, id, st.CertSerial)
	}
	waitFor(t, func() bool {
		out, err := run(t, sigil, "devices", "show", id, "-o", "json", "--data-dir", data, "--server", base)
		if err != nil {
			return false
		}
		after = deviceJSON(t, out)
		return after.Connected && after.Protocol == wire.Version
	}, "the fleet to speak the current version to the upgraded device")
	if after.CertSerial != before.CertSerial || !after.EnrolledAt.Equal(before.EnrolledAt) {
		t.Fatalf("the upgraded device: %+v, before %+v (it must not enroll again)", after, before)
	}
	cli(sigil, "devices", "attest", id)
	up.waitStatus(t, "the upgraded device's verdict", func(s deviceStatus) bool { return s.LastVerdict == "pass" })
}

// apiDevice is what `sigil devices show -o json` prints of a device.
type apiDevice struct {
	State      string    `json:"state"`
	CertSerial string    `json:"cert_serial"`
	EnrolledAt time.Time `json:"enrolled_at"`
	Connected  bool      `json:"connected"`
	Protocol   int       `json:"protocol"`
}

func deviceJSON(t *testing.T, out string) apiDevice {
	t.Helper()
	var d apiDevice
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("sigil devices show -o json: %v\n%s", err, out)
	}
	return d
}

// stopProcess interrupts a process startProcess started and waits for it.
func stopProcess(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not stop within 20 s of SIGINT", cmd.Path)
	}
}
