package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// releaseKit holds three release keys, a 2-of-3 trust set over them, and
// the fleet's trust set file.
type releaseKit struct {
	signers   []*sign.Signer
	trustFile string
}

func newReleaseKit(t *testing.T) *releaseKit {
	t.Helper()
	k := &releaseKit{}
	k.signers = signtest.Signers(t, 3)
	b, err := signtest.Trust(t, 1, 2, k.signers...).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	k.trustFile = filepath.Join(t.TempDir(), "trust.json")
	if err := os.WriteFile(k.trustFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

// release signs a release of image with the given number of keys.
func (k *releaseKit) release(t *testing.T, version string, sv uint64, image []byte, keys int) ([]byte, [][]byte) {
	t.Helper()
	m := &manifest.Manifest{Name: "gw-os", Version: version, SecurityVersion: sv, Models: []string{"gw-1"},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)}
	raw, bundles, err := harness.SignRelease(m, k.signers[:keys]...)
	if err != nil {
		t.Fatal(err)
	}
	return raw, bundles
}

// asUser returns an API client acting as a new user with the role.
func asUser(t *testing.T, f *harness.Fleet, admin *api.Client, name string, role auth.Role) *api.Client {
	t.Helper()
	if _, err := admin.CreateUser(context.Background(), api.UserRequest{Name: name, Role: role}); err != nil {
		t.Fatal(err)
	}
	secret, _, err := f.Auth.CreateToken(t.Context(), name, "e2e", role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := *admin
	c.Token = secret
	return &c
}

func status(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// waitCampaign polls a campaign until cond holds.
func waitCampaign(t *testing.T, c *api.Client, id string, timeout time.Duration, what string, cond func(*campaign.Campaign) bool) *campaign.Campaign {
	t.Helper()
	var (
		cur *campaign.Campaign
		err error
	)
	if !wait.Poll(timeout, func() bool {
		cur, err = c.Campaign(context.Background(), id)
		return err == nil && cond(cur)
	}) {
		t.Fatalf("campaign %s: %s not reached in %v: %+v (err %v)", id, what, timeout, cur, err)
	}
	return cur
}

func campaignDevice(t *testing.T, c *api.Client, id, device string) campaign.Device {
	t.Helper()
	page, err := c.CampaignDevices(context.Background(), id, campaign.DeviceFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range page.Devices {
		if d.ID == device {
			return d
		}
	}
	t.Fatalf("device %s not in campaign %s", device, id)
	return campaign.Device{}
}

// waitFirmware waits until the fleet's inventory shows the version the
// device said it runs in its hello.
func waitFirmware(t *testing.T, f *harness.Fleet, id, version string) {
	t.Helper()
	wait.Until(t, func() error {
		d, err := f.Inv.Device(t.Context(), id)
		if err != nil {
			return err
		}
		if d.Firmware != version {
			return fmt.Errorf("device %s: fleet records firmware %q, want %q", id, d.Firmware, version)
		}
		return nil
	})
}

// bootRecord reads a device's file-backend boot record.
func bootRecord(t *testing.T, dir string) update.FileState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "slots", "boot.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s update.FileState
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func slotImage(t *testing.T, dir, slot string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "slots", "slot-"+slot+".img"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// download GETs an image from the fleet's HTTPS listener, with the client
// certificate if given, and an optional Range.
func download(t *testing.T, f *harness.Fleet, digest string, cert *tls.Certificate, rng string) (int, []byte) {
	t.Helper()
	pemBytes, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	tc := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	req, _ := http.NewRequest(http.MethodGet, "https://"+f.UpdateServer()+"/firmware/"+digest, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, body
}

// TestFirmwareCampaign runs signed releases through the fleet to real
// sigild devices on swtpm: a 2-of-3 signed release uploaded by one person
// and approved by another (the uploader's approval refused), a campaign
// over five devices in waves of 1, 2 and 2 in which three commit (the
// canary starting from half an image an earlier attempt left), one fails
// its health check and rolls back to the version it ran, and one that is
// switched off times out; the failure pauses the campaign. The devices
// that committed report the new version in their hello, hold the new
// image in the slot they boot, have the security version in their TPM NV
// counter (tpm2_nvread) and the image measured into PCR 14
// (tpm2_pcrread). A rollback campaign to a release of equal security
// version restores the old image; a release below the counter is refused
// by the device; the download URL serves a range to the certificate of a
// device in flight and nothing without one.
func TestFirmwareCampaign(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvread", "tpm2_pcrread")
	kit := newReleaseKit(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.ReleaseTrust = kit.trustFile }))
	admin, _ := f.Client()
	ctx := context.Background()

	// Devices: three healthy, one whose health check fails, one that is
	// switched off before the campaign reaches it.
	failing := filepath.Join(t.TempDir(), "unhealthy.sh")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho \"slot $1: service did not come up\" >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	type dev struct {
		d    *harness.Device
		inst *swtpm.Instance
		dir  string
		id   string
	}
	devs := make([]*dev, 5)
	for i := range devs {
		v := &dev{inst: newTPM(t), dir: t.TempDir()}
		dc := harness.DeviceConfig{Dir: v.dir, Firmware: "1.0.0", Tweak: func(c *agentConfig) { c.EventLog = "-" }}
		if i == 3 {
			dc.Tweak = func(c *agentConfig) { c.EventLog, c.UpdateHealth = "-", failing }
		}
		v.d = startDevice(t, f, v.inst, dc)
		devs[i] = v
	}
	for _, v := range devs {
		v.id = waitConnected(t, v.d).DeviceID
		waitFirmware(t, f, v.id, "1.0.0")
	}
	good, bad, silent := devs[:3], devs[3], devs[4]

	// Releases: uploaded by an operator, approved by a release approver.
	ana := asUser(t, f, admin, "ana", auth.RoleOperator)
	bo := asUser(t, f, admin, "bo", auth.RoleReleaseApprover)
	image2 := bytes.Repeat([]byte("gw-os 2.0.0 "), 300_000/12)
	raw, bundles := kit.release(t, "2.0.0", 2, image2, 1)
	if _, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(image2), int64(len(image2))); status(err) != http.StatusUnprocessableEntity {
		t.Fatalf("release signed by 1 of the 2 required keys: %v, want 422", err)
	}
	upload := func(version string, sv uint64, image []byte) *api.Release {
		raw, bundles := kit.release(t, version, sv, image, 2)
		rel, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
		if err != nil {
			t.Fatalf("upload %s: %v", version, err)
		}
		if _, err := ana.ApproveRelease(ctx, rel.ID); status(err) != http.StatusForbidden {
			t.Fatalf("the uploader approved %s: %v, want 403", version, err)
		}
		if _, err := bo.ApproveRelease(ctx, rel.ID); err != nil {
			t.Fatalf("approve %s: %v", version, err)
		}
		if rel, err = ana.FirmwareRelease(ctx, rel.ID); err != nil || !rel.Offerable || rel.State != "approved" || rel.Approvals[0].By != "bo" {
			t.Fatalf("release %s after approval: %+v %v", version, rel, err)
		}
		return rel
	}
	rel2 := upload("2.0.0", 2, image2)
	imageOld := bytes.Repeat([]byte("gw-os 1.0.1 "), 200_000/12)
	relBack := upload("1.0.1", 2, imageOld)
	relLow := upload("0.9.0", 1, bytes.Repeat([]byte("gw-os 0.9.0 "), 1000))

	// Enrolled by their EK certificates, the devices have no model the
	// fleet assigned (the gw-1 they claim decides nothing): no release is
	// for them until an operator assigns one.
	var all []string
	for _, v := range devs {
		all = append(all, v.id)
	}
	if _, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel2.ID, Targets: campaign.Selector{DeviceIDs: all},
		Waves: campaign.Waves{Canary: 1, Growth: 2}}, "no model yet"); status(err) != http.StatusUnprocessableEntity {
		t.Fatalf("campaign for devices the fleet assigned no model: %v, want 422 (no targets)", err)
	}
	for _, v := range devs {
		assign(t, admin, v.id, "gw-1", "")
	}

	// The URL alone grants nothing.
	if code, _ := download(t, f, rel2.SHA256, nil, ""); code != http.StatusUnauthorized {
		t.Fatalf("download without a client certificate: %d, want 401", code)
	}

	// Campaign: waves of 1, 2, 2; any failure pauses it.
	def := campaign.Definition{
		Release: rel2.ID, Targets: campaign.Selector{DeviceIDs: []string{good[0].id, good[1].id, good[2].id, bad.id, silent.id}},
		Waves: campaign.Waves{Canary: 1, Growth: 2}, DeviceTimeout: config.Duration(15 * time.Second),
	}
	ca, err := ana.CreateCampaign(ctx, def, "e2e rollout")
	if err != nil {
		t.Fatal(err)
	}
	if len(ca.Waves) != 3 || ca.Waves[0].Size != 1 || ca.Waves[1].Size != 2 || ca.Waves[2].Size != 2 {
		t.Fatalf("waves: %+v", ca.Waves)
	}
	// The canary resumes a download an earlier attempt cut in the middle.
	updDir := filepath.Join(good[0].dir, "update")
	if err := os.MkdirAll(updDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(updDir, ca.ID+".part"), image2[:len(image2)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	silent.d.Stop()
	if _, err := ana.CampaignAction(ctx, ca.ID, "start", "e2e rollout", time.Time{}); err != nil {
		t.Fatal(err)
	}

	// While the silent device is in flight, its certificate may download
	// the image, with a range; a device not in flight may not.
	waitCampaign(t, ana, ca.ID, 40*time.Second, "the silent device announced", func(*campaign.Campaign) bool {
		return campaignDevice(t, ana, ca.ID, silent.id).Step == campaign.StepAnnounced
	})
	silentCert := deviceTLSCert(t, f, silent.id)
	if code, body := download(t, f, rel2.SHA256, silentCert, "bytes=1000-1999"); code != http.StatusPartialContent || !bytes.Equal(body, image2[1000:2000]) {
		t.Fatalf("range download by a device in flight: %d, %d bytes", code, len(body))
	}
	if code, _ := download(t, f, relLow.SHA256, silentCert, ""); code != http.StatusForbidden {
		t.Fatalf("download of an image the device is not in flight for: %d, want 403", code)
	}

	c := waitCampaign(t, ana, ca.ID, 60*time.Second, "paused with every device finished", func(c *campaign.Campaign) bool {
		return c.State == campaign.StatePaused && c.Counts.Finished() == c.Total
	})
	if c.Counts.Committed != 3 || c.Counts.RolledBack != 1 || c.Counts.TimedOut != 1 || !c.Waves[2].Tripped || c.ChangedBy != campaign.SystemActor {
		t.Fatalf("campaign after the failures: %+v", c)
	}
	if d := campaignDevice(t, ana, ca.ID, bad.id); d.Step != campaign.StepRolledBack || d.Reason != wire.ReasonFirmwareHealth || d.RunningVersion != "1.0.0" {
		t.Fatalf("unhealthy device: %+v, want rolled back on 1.0.0 with firmware_health", d)
	}
	if d := campaignDevice(t, ana, ca.ID, silent.id); d.Step != campaign.StepTimedOut || d.Reason != wire.ReasonFirmwareTimeout {
		t.Fatalf("silent device: %+v, want timed out", d)
	}
	if code, _ := download(t, f, rel2.SHA256, silentCert, ""); code != http.StatusForbidden {
		t.Fatalf("download after the device timed out: %d, want 403", code)
	}
	for _, v := range good {
		waitFirmware(t, f, v.id, "2.0.0")
		if d := campaignDevice(t, ana, ca.ID, v.id); d.Step != campaign.StepCommitted || d.RunningVersion != "2.0.0" {
			t.Fatalf("device %s: %+v", v.id, d)
		}
		if br := bootRecord(t, v.dir); br.Active != "b" || br.Booted != "b" || !bytes.Equal(slotImage(t, v.dir, "b"), image2) {
			t.Fatalf("device %s boots %+v, or slot b does not hold the image", v.id, br)
		}
	}
	if br := bootRecord(t, bad.dir); br.Active != "a" || br.Booted != "a" {
		t.Fatalf("unhealthy device boots %+v, want slot a", br)
	}
	if d, _ := f.Inv.Device(t.Context(), bad.id); d.Firmware != "1.0.0" {
		t.Fatalf("unhealthy device recorded on %q", d.Firmware)
	}

	// Rollback campaign: the three devices that committed go to 1.0.1,
	// the old code re-released at security version 2.
	rb, err := ana.RollbackCampaign(ctx, ca.ID, campaign.Definition{Release: relBack.ID, Waves: campaign.Waves{Canary: 1, Growth: 2},
		DeviceTimeout: config.Duration(15 * time.Second)}, "2.0.0 breaks the uplink")
	if err != nil {
		t.Fatal(err)
	}
	if rb.Total != 3 {
		t.Fatalf("rollback targets %d devices, want the 3 that committed", rb.Total)
	}
	if prev, _ := ana.Campaign(ctx, ca.ID); prev.State != campaign.StateAborted {
		t.Fatalf("rolled back campaign is %s, want aborted", prev.State)
	}
	if _, err := ana.CampaignAction(ctx, rb.ID, "start", "restore 1.0.x", time.Time{}); err != nil {
		t.Fatal(err)
	}
	c = waitCampaign(t, ana, rb.ID, 60*time.Second, "completed", func(c *campaign.Campaign) bool { return c.State == campaign.StateCompleted })
	if c.Counts.Committed != 3 {
		t.Fatalf("rollback campaign: %+v", c.Counts)
	}
	for _, v := range good {
		waitFirmware(t, f, v.id, "1.0.1")
		if br := bootRecord(t, v.dir); br.Active != "a" || !bytes.Equal(slotImage(t, v.dir, "a"), imageOld) {
			t.Fatalf("device %s after the rollback campaign: %+v", v.id, br)
		}
	}

	// A release below the anti-rollback counter is refused by the device.
	cl, err := ana.CreateCampaign(ctx, campaign.Definition{Release: relLow.ID, Targets: campaign.Selector{DeviceIDs: []string{good[1].id}},
		DeviceTimeout: config.Duration(15 * time.Second)}, "downgrade attempt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ana.CampaignAction(ctx, cl.ID, "start", "downgrade attempt", time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitCampaign(t, ana, cl.ID, 30*time.Second, "finished", func(c *campaign.Campaign) bool { return c.Counts.Finished() == 1 })
	if d := campaignDevice(t, ana, cl.ID, good[1].id); d.Step != campaign.StepFailed || d.Reason != wire.ReasonFirmwareRollback || d.RunningVersion != "1.0.1" {
		t.Fatalf("downgrade: %+v, want failed with firmware_rollback on 1.0.1", d)
	}

	// The TPM of a device that committed: NV counter at the security
	// version, PCR 14 extended with the 2.0.0 image then the 1.0.1 image.
	v := good[0]
	v.d.Stop()
	if got := nvCounter(t, v.inst); got != 2 {
		t.Fatalf("anti-rollback counter: %d, want 2", got)
	}
	d2, dOld := sha256.Sum256(image2), sha256.Sum256(imageOld)
	p1, _ := hex.DecodeString(harness.ExpectedPCR14(d2))
	want := sha256.Sum256(append(p1, dOld[:]...))
	if got := pcr14(t, v.inst); !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR 14 = %x, want %x", got, want)
	}
}

// deviceTLSCert issues a fleet certificate to a device over a
// software key: what a device in flight presents to download.
func deviceTLSCert(t *testing.T, f *harness.Fleet, id string) *tls.Certificate {
	t.Helper()
	certFile, keyFile := issuedIdentity(t, f, id)
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// nvCounter reads the anti-rollback counter with tpm2_nvread.
func nvCounter(t *testing.T, inst *swtpm.Instance) uint64 {
	t.Helper()
	return swtpmtest.ReadNVCounter(t, inst, tpm.SecurityVersionIndex)
}

// pcr14 reads PCR 14 of the SHA-256 bank with tpm2_pcrread.
func pcr14(t *testing.T, inst *swtpm.Instance) []byte {
	t.Helper()
	b := swtpmtest.ReadPCR(t, inst, "sha256", 14)
	if len(b) != 32 {
		t.Fatalf("tpm2_pcrread: %d bytes for a SHA-256 PCR", len(b))
	}
	return b
}

// TestFirmwareRoutesAuthorization: with firmware on, every firmware and
// campaign route called by every role with an empty body and made-up IDs
// is refused with 403 exactly when the role lacks its permission, and an
// allowed call fails on its input (never 401, 403 or 5xx).
func TestFirmwareRoutesAuthorization(t *testing.T) {
	kit := newReleaseKit(t)
	f := startFleet(t, func(c *server.Config) { c.ReleaseTrust = kit.trustFile })
	admin, _ := f.Client()
	ctx := context.Background()
	tokens := map[auth.Role]string{}
	for _, role := range auth.Roles() {
		u, err := admin.CreateUser(ctx, api.UserRequest{Name: "fw-" + string(role), Role: role})
		if err != nil {
			t.Fatal(err)
		}
		if tokens[role], _, err = f.Auth.CreateToken(ctx, u.Name, "matrix", role, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	checked := 0
	for _, r := range api.Routes(f.API()) {
		method, path := concrete(r.Pattern)
		if !strings.HasPrefix(path, "/api/v1/firmware") && !strings.HasPrefix(path, "/api/v1/campaigns") {
			continue
		}
		path = strings.ReplaceAll(path, "{sha256}", strings.Repeat("ab", 32))
		for _, role := range auth.Roles() {
			req, _ := http.NewRequestWithContext(ctx, method, f.APIURL()+path, strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+tokens[role])
			resp, err := admin.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got, allowed := resp.StatusCode, role.Has(r.Perm)
			switch {
			case allowed && (got == 401 || got == 403 || got >= 500):
				t.Errorf("%s as %s: %d", r.Pattern, role, got)
			case !allowed && got != 403:
				t.Errorf("%s as %s: %d, want 403", r.Pattern, role, got)
			}
			checked++
		}
	}
	if checked < 15*len(auth.Roles()) {
		t.Fatalf("only %d calls checked", checked)
	}
}

// TestFirmwareTrustRotation: the fleet's release keys are rotated (a
// statement signed by the current key and by both new keys, configured in
// release_trust_rotations); after a restart of the fleet the device, which
// enrolled trusting only the old key, gets the rotation after its hello,
// verifies it, and then installs a release signed by the two new keys —
// which its enrolled trust set alone would refuse.
func TestFirmwareTrustRotation(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	k := newReleaseKit(t).signers // three keys; the kit's own trust file is not used
	trustFile := func(name string, seq uint64, threshold int, signers ...*sign.Signer) (string, []byte) {
		var pubs []crypto.PublicKey
		for _, s := range signers {
			pubs = append(pubs, s.Public())
		}
		ts, err := verify.NewTrustSet(seq, threshold, pubs...)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := ts.Marshal()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p, b
	}
	base, _ := trustFile("trust-1.json", 1, 1, k[0])
	next, stmt := trustFile("trust-2.json", 2, 2, k[1], k[2])
	var bundles []string
	for i, s := range k {
		b, err := s.Sign(stmt)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("trust-2.%d.bundle", i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		bundles = append(bundles, p)
	}

	cfg := server.Config{DataDir: t.TempDir(), MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t)), ReleaseTrust: base}
	f, err := harness.StartFleet(context.Background(), cfg, logger(t).With("side", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Firmware: "1.0.0", Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	f.Stop()
	if _, err := d.Wait(context.Background(), 10*time.Second, func(s agentStatus) bool { return !s.Connected }); err != nil {
		t.Fatal(err)
	}

	cfg.ReleaseTrustRotations = []server.ReleaseRotation{{Statement: next, Bundles: bundles}}
	f, err = harness.StartFleet(context.Background(), cfg, logger(t).With("side", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	waitConnected(t, d)
	admin, _ := f.Client()
	assign(t, admin, id, "gw-1", "")
	ana := asUser(t, f, admin, "ana", auth.RoleOperator)
	bo := asUser(t, f, admin, "bo", auth.RoleReleaseApprover)
	ctx := context.Background()
	image := bytes.Repeat([]byte("gw-os 3.0.0 "), 10_000)
	m := &manifest.Manifest{Name: "gw-os", Version: "3.0.0", SecurityVersion: 3, Models: []string{"gw-1"},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	raw, oldOnly, err := harness.SignRelease(m, k[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ana.UploadRelease(ctx, raw, oldOnly, bytes.NewReader(image), int64(len(image))); status(err) != http.StatusUnprocessableEntity {
		t.Fatalf("release signed by the rotated-out key: %v, want 422", err)
	}
	_, newKeys, err := harness.SignRelease(m, k[1], k[2])
	if err != nil {
		t.Fatal(err)
	}
	rel, err := ana.UploadRelease(ctx, raw, newKeys, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bo.ApproveRelease(ctx, rel.ID); err != nil {
		t.Fatal(err)
	}
	c, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: []string{id}},
		DeviceTimeout: config.Duration(20 * time.Second)}, "new keys")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ana.CampaignAction(ctx, c.ID, "start", "new keys", time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitCampaign(t, ana, c.ID, 40*time.Second, "finished", func(c *campaign.Campaign) bool { return c.Counts.Finished() == 1 })
	if dv := campaignDevice(t, ana, c.ID, id); dv.Step != campaign.StepCommitted || dv.RunningVersion != "3.0.0" {
		t.Fatalf("device after the rotation: %+v (reason %s), want committed on 3.0.0", dv, dv.Reason)
	}
	waitFirmware(t, f, id, "3.0.0")
}
