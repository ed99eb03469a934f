package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/blockindex"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// noiseImage is n bytes in which no two 64 KiB blocks are alike.
func noiseImage(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	h := sha256.Sum256([]byte(seed))
	for len(out) < n {
		out = append(out, h[:]...)
		h = sha256.Sum256(h[:])
	}
	return out[:n]
}

// TestFirmwareAdaptive: a release that binds its block index, to real
// sigild devices on swtpm that run the previous image. A device fetches
// the index and the one block that differs (1 of 64), one whose booted
// slot has a corrupt block fetches that block too; each installs the image
// whose digest it verified, with the anti-rollback counter (tpm2_nvread)
// and PCR 14 (tpm2_pcrread) as for a full update; the campaign shows the
// bytes each device says it fetched. Once the index the fleet serves is
// tampered with, a device refuses it and falls back to the full image.
func TestFirmwareAdaptive(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvread", "tpm2_pcrread")
	kit := newReleaseKit(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.ReleaseTrust = kit.trustFile }))
	admin, _ := f.Client()
	ctx := context.Background()

	const block = blockindex.DefaultBlockSize
	v1 := noiseImage("gw-os 1.0.0", 64*block)
	v2 := bytes.Clone(v1)
	copy(v2[37*block+1000:], "/etc/os-release: VERSION=2.0.0") // one changed file
	index, err := blockindex.Build(bytes.NewReader(v2), block)
	if err != nil {
		t.Fatal(err)
	}

	type dev struct {
		d   *harness.Device
		dir string
		id  string
	}
	start := func(slotA []byte) *dev {
		v := &dev{dir: t.TempDir()}
		if err := os.MkdirAll(filepath.Join(v.dir, "slots"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(v.dir, "slots", "slot-a.img"), slotA, 0o600); err != nil {
			t.Fatal(err)
		}
		inst := newTPM(t)
		v.d = startDevice(t, f, inst, harness.DeviceConfig{Dir: v.dir, Firmware: "1.0.0", Tweak: func(c *agentConfig) { c.EventLog = "-" }})
		v.id = waitConnected(t, v.d).DeviceID
		waitFirmware(t, f, v.id, "1.0.0")
		assign(t, admin, v.id, "gw-1", "")
		t.Cleanup(func() {
			if t.Failed() {
				return
			}
			v.d.Stop()
			if got := nvCounter(t, inst); got != 2 {
				t.Errorf("device %s: anti-rollback counter %d, want 2", v.id, got)
			}
			d2 := sha256.Sum256(v2)
			if want, got := harness.ExpectedPCR14(d2), hex.EncodeToString(pcr14(t, inst)); got != want {
				t.Errorf("device %s: PCR 14 = %s, want %s", v.id, got, want)
			}
		})
		return v
	}
	clean := start(v1)
	rotten := bytes.Clone(v1)
	rotten[10*block+5] ^= 0x40 // the booted slot rotted since 1.0.0 was built
	corrupt := start(rotten)

	ana := asUser(t, f, admin, "ana", auth.RoleOperator)
	bo := asUser(t, f, admin, "bo", auth.RoleReleaseApprover)
	m := &manifest.Manifest{Name: "gw-os", Version: "2.0.0", SecurityVersion: 2, Models: []string{"gw-1"},
		Size: int64(len(v2)), SHA256: sha256.Sum256(v2), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second),
		Blocks: &manifest.Blocks{BlockSize: block, SHA256: sha256.Sum256(index)}}
	raw, bundles, err := harness.SignRelease(m, kit.signers[:2]...)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(v2), int64(len(v2)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bo.ApproveRelease(ctx, rel.ID); err != nil {
		t.Fatal(err)
	}

	run := func(why string, devs ...*dev) *campaign.Campaign {
		var ids []string
		for _, v := range devs {
			ids = append(ids, v.id)
		}
		c, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: ids},
			DeviceTimeout: config.Duration(30 * time.Second)}, why)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ana.CampaignAction(ctx, c.ID, "start", why, time.Time{}); err != nil {
			t.Fatal(err)
		}
		c = waitCampaign(t, ana, c.ID, 60*time.Second, "completed", func(c *campaign.Campaign) bool { return c.State == campaign.StateCompleted })
		if c.Counts.Committed != len(devs) {
			t.Fatalf("campaign %s: %+v", why, c.Counts)
		}
		for _, v := range devs {
			waitFirmware(t, f, v.id, "2.0.0")
			if br := bootRecord(t, v.dir); br.Active != "b" || br.Booted != "b" || !bytes.Equal(slotImage(t, v.dir, "b"), v2) {
				t.Fatalf("device %s boots %+v, or slot b does not hold the image", v.id, br)
			}
		}
		return c
	}
	indexSize := int64(len(index))
	c := run("adaptive", clean, corrupt)
	// Asserted in blocks: the index plus 1 block of 64, and 2 for the
	// device whose local block was corrupt.
	for v, blocks := range map[*dev]int64{clean: 1, corrupt: 2} {
		if got := campaignDevice(t, ana, c.ID, v.id).ClaimedFetchedBytes; got != blocks*block+indexSize {
			t.Fatalf("device %s says it fetched %d bytes, want %d blocks of 64 and the index (%d bytes)", v.id, got, blocks, blocks*block+indexSize)
		}
	}
	if c.ClaimedFetchedBytes != 3*block+2*indexSize {
		t.Fatalf("campaign: devices fetched %d bytes, want %d", c.ClaimedFetchedBytes, 3*block+2*indexSize)
	}

	// The fleet's copy of the index is tampered with: the device refuses
	// it (its digest is not the manifest's) and takes the whole image.
	indexFile := filepath.Join(f.Config.DataDir, server.FirmwareDir, firmware.ImagesDir, rel.SHA256+blockindex.Suffix)
	tampered := bytes.Clone(index)
	tampered[blockindex.HeaderSize+37*sha256.Size] ^= 1
	if err := os.WriteFile(indexFile, tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	late := start(v1)
	c = run("tampered index", late)
	if got := campaignDevice(t, ana, c.ID, late.id).ClaimedFetchedBytes; got != int64(len(v2))+indexSize {
		t.Fatalf("device with a tampered index says it fetched %d bytes, want the image and the index (%d)", got, int64(len(v2))+indexSize)
	}
}
