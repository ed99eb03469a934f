package rollout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// writeTrust writes the canonical trust set of keys (with a trailing
// newline, as editors leave it) and returns its path and bytes.
func writeTrust(t *testing.T, dir, name string, seq uint64, threshold int, keys ...*sign.Signer) (string, []byte) {
	t.Helper()
	b, err := signtest.Trust(t, seq, threshold, keys...).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// signFile writes one bundle per key over msg and returns their paths.
func signFile(t *testing.T, dir, name string, msg []byte, keys ...*sign.Signer) []string {
	t.Helper()
	var out []string
	for i, k := range keys {
		b, err := k.Sign(msg)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+"."+string(rune('a'+i))+".bundle")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// TestLoadReleaseTrust: the configured set, then each configured rotation
// verified with verify.Rotate; a rotation the current keys did not sign,
// or an old one, stops the fleet from starting.
func TestLoadReleaseTrust(t *testing.T) {
	dir := t.TempDir()
	k := signtest.Signers(t, 3)
	base, _ := writeTrust(t, dir, "trust-1.json", 1, 1, k[0], k[1])
	next, nextRaw := writeTrust(t, dir, "trust-2.json", 2, 2, k[1], k[2])

	chain, rots, err := LoadTrust(base, nil)
	if err != nil || len(chain) != 1 || chain[0].Sequence() != 1 || len(rots) != 0 {
		t.Fatalf("base alone: %v %v %v", chain, rots, err)
	}
	good := Rotation{Statement: next, Bundles: signFile(t, dir, "trust-2", nextRaw, k[1], k[2])}
	chain, rots, err = LoadTrust(base, []Rotation{good})
	if err != nil {
		t.Fatal(err)
	}
	cur := chain[len(chain)-1]
	if len(chain) != 2 || cur.Sequence() != 2 || cur.Threshold() != 2 || len(rots) != 1 || !bytes.Equal(rots[0].Statement, nextRaw) || len(rots[0].Bundles) != 2 {
		t.Fatalf("after the rotation: sequence %d, threshold %d, %d rotations", cur.Sequence(), cur.Threshold(), len(rots))
	}
	// A device holding the base set reaches the same set from the rotation.
	b0, _ := os.ReadFile(base)
	held, _ := verify.ParseTrustSet(bytes.TrimSuffix(b0, []byte("\n")))
	got, err := verify.Rotate(held, rots[0].Statement, rots[0].Bundles)
	if err != nil || got.Sequence() != 2 {
		t.Fatalf("device-side rotation: %v", err)
	}

	for name, rot := range map[string]Rotation{
		"new keys only":          {Statement: next, Bundles: signFile(t, dir, "only-new", nextRaw, k[2])},
		"not the new threshold":  {Statement: next, Bundles: signFile(t, dir, "one-new", nextRaw, k[0])},
		"missing statement file": {Statement: filepath.Join(dir, "nope.json"), Bundles: good.Bundles},
	} {
		if _, _, err := LoadTrust(base, []Rotation{rot}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := LoadTrust(base, []Rotation{good, good}); !errors.Is(err, verify.ErrStale) {
		t.Errorf("a rotation applied twice: %v, want ErrStale", err)
	}
	if _, _, err := LoadTrust(filepath.Join(dir, "missing.json"), nil); err == nil {
		t.Error("missing trust file accepted")
	}
}

// TestLoadReleaseTrustKeepsSignedBytes: a statement file that ends in a
// newline and was signed as it is (cosign sign-blob signs the file's
// bytes) is accepted, and devices get exactly those bytes, whose
// signatures they check. Bundles made over the statement without its
// newline (sigil firmware sign trims it) still count.
func TestLoadReleaseTrustKeepsSignedBytes(t *testing.T) {
	dir := t.TempDir()
	k := signtest.Signers(t, 2)
	base, _ := writeTrust(t, dir, "trust-1.json", 1, 1, k[0])
	next, canon := writeTrust(t, dir, "trust-2.json", 2, 1, k[1])
	file, err := os.ReadFile(next)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(file, []byte("\n")) {
		t.Fatal("the statement file does not end in a newline")
	}
	b0, _ := os.ReadFile(base)
	held, err := verify.ParseTrustSet(bytes.TrimSuffix(b0, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	for name, signed := range map[string][]byte{"the file as it is": file, "the file without its newline": canon} {
		t.Run(name, func(t *testing.T) {
			rot := Rotation{Statement: next, Bundles: signFile(t, t.TempDir(), "trust-2", signed, k[0], k[1])}
			chain, rots, err := LoadTrust(base, []Rotation{rot})
			if err != nil {
				t.Fatal(err)
			}
			if chain[len(chain)-1].Sequence() != 2 || len(rots) != 1 || !bytes.Equal(rots[0].Statement, signed) {
				t.Fatalf("sequence %d, %d rotations, statement %q; want the signed bytes %q", chain[len(chain)-1].Sequence(), len(rots), rots[0].Statement, signed)
			}
			// A device holding the base set verifies what the fleet sends.
			if got, err := verify.Rotate(held, rots[0].Statement, rots[0].Bundles); err != nil || got.Sequence() != 2 {
				t.Fatalf("device-side rotation: %v", err)
			}
		})
	}
}

// TestLoadReleaseTrustCosignStatement: the rotation of firmware/verify's
// vectors, a statement file as `sigil firmware trust > FILE` wrote it
// (ending in a newline) that the real cosign signed as it is, configured
// as release_trust_rotations: the fleet starts with it and sends devices
// the statement byte for byte.
func TestLoadReleaseTrustCosignStatement(t *testing.T) {
	const vectors = "../../firmware/verify/testdata/cosign"
	pubA, err := os.ReadFile(filepath.Join(vectors, "test-a.pub"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := verify.ParsePublicKey(pubA)
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := verify.NewTrustSet(1, 1, a)
	canon, _ := ts.Marshal()
	base := filepath.Join(t.TempDir(), "trust-1.json")
	if err := os.WriteFile(base, append(canon, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	stmt := filepath.Join(vectors, "rotation.json")
	file, err := os.ReadFile(stmt)
	if err != nil {
		t.Fatal(err)
	}
	chain, rots, err := LoadTrust(base, []Rotation{{Statement: stmt,
		Bundles: []string{filepath.Join(vectors, "rotation.a.bundle.json"), filepath.Join(vectors, "rotation.b.bundle.json")}}})
	if err != nil {
		t.Fatalf("cosign-signed statement ending in a newline: %v", err)
	}
	if len(chain) != 2 || chain[1].Sequence() != 2 || len(rots) != 1 || !bytes.Equal(rots[0].Statement, file) {
		t.Fatalf("chain of %d, %d rotations, statement %q; want the file's bytes %q", len(chain), len(rots), rots[0].Statement, file)
	}
	if _, err := verify.Rotate(ts, rots[0].Statement, rots[0].Bundles); err != nil {
		t.Fatalf("device-side rotation: %v", err)
	}
}

// TestLoadReleaseTrustNamesLegacyBundles: a rotation signed with bundles in
// cosign's old format stops the fleet with a message that says which
// format is expected.
func TestLoadReleaseTrustNamesLegacyBundles(t *testing.T) {
	dir := t.TempDir()
	k := signtest.Signers(t, 1)
	base, _ := writeTrust(t, dir, "trust-1.json", 1, 1, k[0])
	next, _ := writeTrust(t, dir, "trust-2.json", 2, 1, k[0])
	legacy := filepath.Join(dir, "trust-2.json.sig.bundle")
	if err := os.WriteFile(legacy, []byte(`{"base64Signature":"MEUCIQDx"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadTrust(base, []Rotation{{Statement: next, Bundles: []string{legacy}}})
	if !errors.Is(err, verify.ErrLegacyBundle) || !strings.Contains(err.Error(), "--new-bundle-format") {
		t.Fatalf("old-format bundle: %v, want ErrLegacyBundle and the expected format named", err)
	}
}

func newTestService(t *testing.T, keys ...*sign.Signer) *Service {
	t.Helper()
	dir := t.TempDir()
	st, err := firmware.Open(firmware.Config{Dir: filepath.Join(dir, "fw"), Trust: signtest.Trust(t, 1, 1, keys...), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &Service{store: st, staging: filepath.Join(dir, "staging"), maxImage: 1 << 20, now: time.Now,
		log: slog.New(slog.DiscardHandler)}
	if err := os.MkdirAll(f.staging, 0o700); err != nil {
		t.Fatal(err)
	}
	return f
}

func stagedFiles(t *testing.T, f *Service) []string {
	t.Helper()
	es, err := os.ReadDir(f.staging)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestStageImage: an image is kept under its digest only when its SHA-256
// is the one named; a wrong digest, an empty or oversized body, or a
// malformed digest leave nothing behind.
func TestStageImage(t *testing.T) {
	f := newTestService(t, signtest.Signers(t, 1)...)
	img := bytes.Repeat([]byte("image"), 1000)
	sum := sha256.Sum256(img)
	digest := hex.EncodeToString(sum[:])
	ctx := context.Background()
	for name, c := range map[string]struct {
		digest string
		body   []byte
		want   error
	}{
		"other digest":     {strings.Repeat("ab", 32), img, firmware.ErrInvalid},
		"empty":            {digest, nil, firmware.ErrInvalid},
		"too large":        {digest, make([]byte, f.maxImage+1), firmware.ErrTooLarge},
		"malformed digest": {"../" + digest[:61], img, firmware.ErrInvalid},
		"upper-case hex":   {strings.ToUpper(digest), img, firmware.ErrInvalid},
	} {
		if _, err := f.StageImage(ctx, c.digest, bytes.NewReader(c.body)); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if left := stagedFiles(t, f); len(left) != 0 {
		t.Fatalf("refused uploads left %v", left)
	}
	n, err := f.StageImage(ctx, digest, bytes.NewReader(img))
	if err != nil || n != int64(len(img)) {
		t.Fatalf("stage: %d %v", n, err)
	}
	if got, _ := os.ReadFile(filepath.Join(f.staging, digest)); !bytes.Equal(got, img) {
		t.Fatal("staged file differs from the image")
	}
}

// TestUploadTakesStagedImage: a manifest uploaded without an image takes
// the staged one, which is removed once the release is stored; without a
// staged image the store refuses it.
func TestUploadTakesStagedImage(t *testing.T) {
	k := signtest.Signers(t, 1)
	f := newTestService(t, k...)
	ctx := context.Background()
	img := bytes.Repeat([]byte("two-step"), 4096)
	m := &manifest.Manifest{Name: "gw-os", Version: "2.0.0", SecurityVersion: 2, Models: []string{"gw-1"},
		Size: int64(len(img)), SHA256: sha256.Sum256(img), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	raw, bundles := signtest.Release(t, m, k[0])
	if _, err := f.Upload(ctx, "ana", raw, bundles, nil); !errors.Is(err, firmware.ErrNoImage) {
		t.Fatalf("upload without an image: %v, want ErrNoImage", err)
	}
	if _, err := f.StageImage(ctx, hex.EncodeToString(m.SHA256[:]), bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	r, err := f.Upload(ctx, "ana", raw, bundles, nil)
	if err != nil {
		t.Fatal(err)
	}
	file, err := f.store.OpenImage(r.ImageDigest())
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if err := verify.Image(file, m); err != nil {
		t.Fatalf("stored image: %v", err)
	}
	if left := stagedFiles(t, f); len(left) != 0 {
		t.Fatalf("staged image kept after the upload: %v", left)
	}
}

// TestPreparePolicies: a release whose manifest states PCR values gets a
// policy for its version copied from the model's policy with those values;
// the next attestation of a device on that version selects it.
func TestPreparePolicies(t *testing.T) {
	ps, err := policy.Open(filepath.Join(t.TempDir(), "policies.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	zero, old := strings.Repeat("00", 32), strings.Repeat("11", 32)
	base, err := ps.Put(t.Context(), policy.Policy{ID: "gw-golden", Name: "golden", Model: "gw-1",
		PCRs: map[string]map[int]string{"sha256": {0: old, 14: zero}}})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Repeat("ab", 32)
	m := &manifest.Manifest{Name: "gw-os", Version: "2.0.0+build.7", SecurityVersion: 2, Models: []string{"gw-1", "gw-2"},
		Size: 1, SHA256: [32]byte{1}, Expires: time.Now().Add(time.Hour),
		Measurements: &manifest.Measurements{PCRs: map[string]map[int]string{"sha256": {14: want}}}}
	f := &Service{policies: ps, log: slog.New(slog.DiscardHandler)}
	r := &firmware.Release{ID: "rel", Manifest: m}
	for range 2 { // the second time finds the policy and leaves it
		if err := f.preparePolicies(r, "ana"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := ps.Select(t.Context(), "gw-1", "2.0.0+build.7", "")
	if err != nil || p == nil {
		t.Fatalf("no policy for the new version: %v", err)
	}
	if p.ID == base.ID || p.Version != 1 || p.Firmware != m.Version || p.PCRs["sha256"][14] != want || p.PCRs["sha256"][0] != old {
		t.Fatalf("prepared policy: %+v", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("prepared policy invalid: %v", err)
	}
	if q, _ := ps.Select(t.Context(), "gw-1", "1.0.0", ""); q == nil || q.ID != base.ID || q.PCRs["sha256"][14] != zero {
		t.Fatalf("devices on the old version lost their policy: %+v", q)
	}
	if q, _ := ps.Select(t.Context(), "gw-2", m.Version, ""); q != nil {
		t.Fatalf("a model without a policy got one: %+v", q)
	}
}

// TestStepOf: every phase a device may report maps to a campaign step, and
// final phases to finished steps.
func TestStepOf(t *testing.T) {
	for _, p := range []string{"announced", "downloading", "verifying", "installing", "switching", "rebooting",
		"health", "committing", "advancing_floor", "committed", "rolling_back", "rolled_back", "failed"} {
		s := stepOf(p)
		r := wire.FirmwareReport{Update: "cmp_1", Campaign: "cmp_1", Phase: p, Final: wire.FirmwareFinal(p)}
		if s == "" || r.Validate() != nil || s.Finished() != wire.FirmwareFinal(p) {
			t.Errorf("phase %s: step %q (finished %v)", p, s, s.Finished())
		}
	}
	if stepOf("done") != "" || stepOf("") != "" {
		t.Error("unknown phases map to a step")
	}
	if stepOf("rolled_back") != campaign.StepRolledBack {
		t.Error("rolled_back")
	}
}

// testRelease uploads and approves a release for models, signed by k.
func testRelease(t *testing.T, f *Service, k *sign.Signer, version string, models ...string) *firmware.Release {
	t.Helper()
	img := []byte("image " + version)
	m := &manifest.Manifest{Name: "gw-os", Version: version, SecurityVersion: 2, Models: models,
		Size: int64(len(img)), SHA256: sha256.Sum256(img), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	raw, bundles := signtest.Release(t, m, k)
	ctx := context.Background()
	r, err := f.Upload(ctx, "ana", raw, bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if r, err = f.store.Approve(ctx, "bo", r.ID); err != nil {
		t.Fatal(err)
	}
	return r
}

// testInventory opens an inventory for f.
func testInventory(t *testing.T, f *Service) *inventory.Store {
	t.Helper()
	inv := inventorytest.Open(t)
	f.inv = inv
	return inv
}

// TestCampaignTargetsByTags: a campaign's tag selector matches the active
// devices carrying every tag, together with model and group.
func TestCampaignTargetsByTags(t *testing.T) {
	k := signtest.Signers(t, 1)
	f := newTestService(t, k...)
	inv := testInventory(t, f)
	rel := testRelease(t, f, k[0], "2.0.0", "gw-1", "gw-2")
	put := func(id, model string, state inventory.State, tags ...string) {
		if err := inv.PutDevice(t.Context(), &inventory.Device{ID: id, Model: model, State: state, Tags: tags}); err != nil {
			t.Fatal(err)
		}
	}
	put("a", "gw-1", inventory.StateActive, "canary", "site:plant-7")
	put("b", "gw-1", inventory.StateActive, "site:plant-7")
	put("c", "gw-2", inventory.StateActive, "canary", "site:plant-7")
	put("d", "gw-1", inventory.StateQuarantined, "canary", "site:plant-7")
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "e", State: inventory.StateActive, Tags: []string{"Bad Tag"}}); err == nil {
		t.Fatal("an invalid tag was stored")
	}
	for _, tc := range []struct {
		sel  campaign.Selector
		want []string
	}{
		{campaign.Selector{Tags: []string{"site:plant-7"}}, []string{"a", "b", "c"}},
		{campaign.Selector{Tags: []string{"site:plant-7", "canary"}}, []string{"a", "c"}},
		{campaign.Selector{Model: "gw-1", Tags: []string{"canary"}}, []string{"a"}},
		{campaign.Selector{Tags: []string{"nowhere"}}, nil},
	} {
		got, err := f.resolve(context.Background(), rel.ID, tc.sel)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%+v: %v %v, want %v", tc.sel, got, err, tc.want)
		}
	}
}

// TestCampaignTargetsByFleetModel: a campaign targets only devices whose
// model, as the fleet assigned it, is among the release's manifest
// models, whatever the selector (all, a group, a model, explicit IDs): a
// device of another model, or one enrolled by its EK certificate with no
// model assigned (whatever it claims), is no target. An unknown release
// resolves nothing.
func TestCampaignTargetsByFleetModel(t *testing.T) {
	k := signtest.Signers(t, 1)
	f := newTestService(t, k...)
	inv := testInventory(t, f)
	rel := testRelease(t, f, k[0], "2.0.0", "gw-1")
	for _, d := range []inventory.Device{
		{ID: "a", Model: "gw-1", Group: "plant"},
		{ID: "b", Model: "gw-2", Group: "plant"},
		{ID: "c", ClaimedModel: "gw-1", Group: "plant"}, // enrolled by its EK certificate
	} {
		d.State = inventory.StateActive
		if err := inv.PutDevice(t.Context(), &d); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		sel  campaign.Selector
		want []string
	}{
		{campaign.Selector{}, []string{"a"}},
		{campaign.Selector{Group: "plant"}, []string{"a"}},
		{campaign.Selector{Model: "gw-2"}, nil},
		{campaign.Selector{DeviceIDs: []string{"c", "b", "a"}}, []string{"a"}},
	} {
		got, err := f.resolve(context.Background(), rel.ID, tc.sel)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%+v: %v %v, want %v", tc.sel, got, err, tc.want)
		}
	}
	if got, err := f.resolve(context.Background(), "rel_unknown", campaign.Selector{}); err == nil {
		t.Fatalf("an unknown release resolved %v", got)
	}
}

// TestAnnounceRefusesOtherModel: the announcement checks the device's
// fleet model again (it may have changed since the campaign was created,
// and rollback campaigns and explicit lists name devices): a device whose
// model is not among the release's, or that has none, is refused for good
// (campaign.IneligibleError, firmware_model) and sent nothing.
func TestAnnounceRefusesOtherModel(t *testing.T) {
	k := signtest.Signers(t, 1)
	f := newTestService(t, k...)
	inv := testInventory(t, f)
	var sent []string
	f.send = func(deviceID, _ string, _ []byte) error { sent = append(sent, deviceID); return nil }
	rel := testRelease(t, f, k[0], "2.0.0", "gw-1")
	for _, d := range []inventory.Device{{ID: "a", Model: "gw-1"}, {ID: "b", Model: "gw-2"}, {ID: "c", ClaimedModel: "gw-1"}} {
		d.State = inventory.StateActive
		if err := inv.PutDevice(t.Context(), &d); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	announce := func(id string) error {
		return f.announce(ctx, campaign.Announcement{Campaign: "cmp_0001", Device: id, Release: rel.ID, Attempt: 1})
	}
	if err := announce("a"); err != nil {
		t.Fatalf("device of the release's model: %v", err)
	}
	for _, id := range []string{"b", "c"} {
		ie, ok := errors.AsType[*campaign.IneligibleError](announce(id))
		if !ok || ie.Reason != wire.ReasonFirmwareModel {
			t.Fatalf("device %s: %v, want an IneligibleError (%v)", id, ie, wire.ReasonFirmwareModel)
		}
	}
	// An operator changes a's model after the campaign resolved it.
	if err := inv.Update(t.Context(), "a", func(d *inventory.Device) error { d.Model = "gw-2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok := errors.AsType[*campaign.IneligibleError](announce("a")); !ok {
		t.Fatal("device whose model changed: announced")
	}
	if !slices.Equal(sent, []string{"a"}) {
		t.Fatalf("announcements sent to %v, want [a]", sent)
	}
}

// TestAnnounceRefusesOldSigildNewManifest: a release whose manifest binds
// an SBOM or a block index is not announced to a device whose sigild last
// spoke protocol 4 (it would refuse the manifest): it fails for good with
// unsupported_version and is sent nothing; a device on protocol 5, or one
// not heard from yet, gets it, and a release without them reaches all.
func TestAnnounceRefusesOldSigildNewManifest(t *testing.T) {
	k := signtest.Signers(t, 1)
	f := newTestService(t, k...)
	inv := testInventory(t, f)
	var sent []string
	f.send = func(deviceID, _ string, _ []byte) error { sent = append(sent, deviceID); return nil }
	plain := testRelease(t, f, k[0], "2.0.0", "gw-1")
	img := []byte("image 3.0.0")
	m := &manifest.Manifest{Name: "gw-os", Version: "3.0.0", SecurityVersion: 3, Models: []string{"gw-1"},
		Size: int64(len(img)), SHA256: sha256.Sum256(img), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second),
		SBOM: &manifest.SBOM{Format: manifest.SBOMCycloneDX, SHA256: sha256.Sum256([]byte("{}"))}}
	raw, bundles := signtest.Release(t, m, k[0])
	withSBOM, err := f.Upload(t.Context(), "ana", raw, bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if withSBOM, err = f.store.Approve(t.Context(), "bo", withSBOM.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range []inventory.Device{{ID: "old", Protocol: 4}, {ID: "new", Protocol: 5}, {ID: "unheard"}} {
		d.State, d.Model = inventory.StateActive, "gw-1"
		if err := inv.PutDevice(t.Context(), &d); err != nil {
			t.Fatal(err)
		}
	}
	announce := func(id string, r *firmware.Release) error {
		return f.announce(t.Context(), campaign.Announcement{Campaign: "cmp_0001", Device: id, Release: r.ID, Attempt: 1})
	}
	ie, ok := errors.AsType[*campaign.IneligibleError](announce("old", withSBOM))
	if !ok || ie.Reason != wire.ReasonUnsupportedVersion {
		t.Fatalf("protocol 4 device, release with an SBOM: %v, want an IneligibleError (%v)", ie, wire.ReasonUnsupportedVersion)
	}
	for _, c := range []struct {
		id string
		r  *firmware.Release
	}{{"new", withSBOM}, {"unheard", withSBOM}, {"old", plain}} {
		if err := announce(c.id, c.r); err != nil {
			t.Errorf("device %s, release %s: %v", c.id, c.r.Manifest.Version, err)
		}
	}
	if !slices.Equal(sent, []string{"new", "unheard", "old"}) {
		t.Fatalf("announcements sent to %v", sent)
	}
}

// TestHelloRefusesDeviceWhoseModelChanged: a device announced a release
// and then given another model by an operator is not announced the
// release again when it says hello: it fails (firmware_model) before it
// started.
func TestHelloRefusesDeviceWhoseModelChanged(t *testing.T) {
	k := signtest.Signers(t, 1)
	f := newTestService(t, k...)
	inv := testInventory(t, f)
	var mu sync.Mutex
	var announced []string
	f.send = func(deviceID, _ string, payload []byte) error {
		if env, err := wire.Decode(payload); err == nil && env.Type == wire.TypeFirmwareAnnounce {
			mu.Lock()
			announced = append(announced, deviceID)
			mu.Unlock()
		}
		return nil
	}
	rel := testRelease(t, f, k[0], "2.0.0", "gw-1")
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "a", Model: "gw-1", State: inventory.StateActive}); err != nil {
		t.Fatal(err)
	}
	cs, err := campaign.Open(filepath.Join(t.TempDir(), "campaigns.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if f.campaigns, err = campaign.New(campaign.Config{Store: cs, Targets: campaign.TargetsFunc(f.resolve),
		Announcer: campaign.AnnouncerFunc(f.announce), Tick: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- f.campaigns.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	c, err := f.campaigns.Create(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: []string{"a"}},
		Waves: campaign.Waves{Sizes: []int{1}}, DeviceTimeout: config.Duration(time.Hour)}, "ana", "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.campaigns.Start(c.ID, time.Time{}, "ana", "test"); err != nil {
		t.Fatal(err)
	}
	step := func(want campaign.Step) campaign.Device {
		t.Helper()
		var d *campaign.Device
		wait.Until(t, func() error {
			var err error
			if d, err = f.campaigns.Device(c.ID, "a"); err != nil {
				return err
			}
			if d.Step != want {
				return fmt.Errorf("device a at %s, waiting for %s: %+v", d.Step, want, d)
			}
			return nil
		})
		return *d
	}
	step(campaign.StepAnnounced)
	// The step is recorded before the announcement is sent: wait for the
	// send, so that the model changes after it.
	wait.For(t, "device a to be sent its announcement", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(announced) > 0
	})
	if err := inv.Update(t.Context(), "a", func(d *inventory.Device) error { d.Model = "gw-2"; return nil }); err != nil {
		t.Fatal(err)
	}
	f.hello("a")
	if d := step(campaign.StepFailed); d.Reason != wire.ReasonFirmwareModel {
		t.Fatalf("device a failed with %v, want %v", d.Reason, wire.ReasonFirmwareModel)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(announced, []string{"a"}) {
		t.Fatalf("announcements to %v, want one to a (none at its hello)", announced)
	}
}

type releaseList []*firmware.Release

func (l releaseList) List(context.Context) ([]*firmware.Release, error) { return l, nil }

// TestFirmwareTarget: a device's target is the newest approved, unexpired
// release for its model; withdrawn, unapproved, expired and other models'
// releases do not count.
func TestFirmwareTarget(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	rel := func(version string, state firmware.State, expires time.Time, models ...string) *firmware.Release {
		return &firmware.Release{State: state, Manifest: &manifest.Manifest{Name: "fw", Version: version, Models: models, Expires: expires}}
	}
	later := now.Add(24 * time.Hour)
	rels := releaseList{
		rel("1.2.0", firmware.StateApproved, later, "gw-1"),
		rel("1.10.0", firmware.StateApproved, later, "gw-1"),
		rel("2.0.0", firmware.StateUploaded, later, "gw-1"),
		rel("3.0.0", firmware.StateApproved, now.Add(-time.Hour), "gw-1"),
		rel("4.0.0", firmware.StateApproved, later, "gw-2"),
	}
	for model, want := range map[string]string{"gw-1": "1.10.0", "gw-2": "4.0.0", "gw-3": ""} {
		got, err := newestFor(rels, model, now)
		if err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", model, got, err, want)
		}
	}
}
