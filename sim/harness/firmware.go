package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/pkg/config"
)

// UpdateServer is the address devices of this fleet download firmware
// images from: the API listener on loopback.
func (f *Fleet) UpdateServer() string {
	u, err := url.Parse(f.APIURL())
	if err != nil {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", u.Port())
}

// SignRelease encodes m canonically and signs it with each signer: the
// manifest bytes and one bundle per signer, as `sigil firmware sign`
// writes them.
func SignRelease(m *manifest.Manifest, signers ...*sign.Signer) ([]byte, [][]byte, error) {
	raw, err := m.Marshal()
	if err != nil {
		return nil, nil, err
	}
	var bundles [][]byte
	for _, s := range signers {
		b, err := s.Sign(raw)
		if err != nil {
			return nil, nil, err
		}
		bundles = append(bundles, b)
	}
	return raw, bundles, nil
}

// ExpectedPCR14 is the SHA-256 PCR 14 of a device that booted with a
// freshly reset PCR and runs the image with this digest: the value the
// update engine's measurement leaves, SHA-256(32 zero bytes || digest).
func ExpectedPCR14(digest [32]byte) string {
	sum := sha256.Sum256(append(make([]byte, 32), digest[:]...))
	return hex.EncodeToString(sum[:])
}

// Demo release files, in DemoOptions.Dir/release.
const (
	demoReleaseDir = "release"
	demoKeyFile    = "release.key"
	demoPubFile    = "release.pub"
	demoTrustFile  = "trust.json"
)

// demoReleaseTrust makes the demo's release key (one key, threshold 1)
// and writes the trust set the fleet is configured with; it returns the
// trust set's path.
func demoReleaseTrust(dir string) (string, error) {
	rd := filepath.Join(dir, demoReleaseDir)
	if err := os.MkdirAll(rd, 0o700); err != nil {
		return "", err
	}
	key, pub, trustPath := filepath.Join(rd, demoKeyFile), filepath.Join(rd, demoPubFile), filepath.Join(rd, demoTrustFile)
	if _, err := os.Stat(key); errors.Is(err, os.ErrNotExist) {
		if _, err := sign.GenerateKey(sign.ECDSAP256, key, pub, nil); err != nil {
			return "", err
		}
	}
	pb, err := os.ReadFile(pub)
	if err != nil {
		return "", err
	}
	pk, err := verify.ParsePublicKey(pb)
	if err != nil {
		return "", err
	}
	ts, err := verify.NewTrustSet(1, 1, pk)
	if err != nil {
		return "", err
	}
	b, err := ts.Marshal()
	if err != nil {
		return "", err
	}
	return trustPath, os.WriteFile(trustPath, b, 0o644)
}

// demoFirmware runs a small campaign to the demo devices: a release of
// version 2.0.0 signed with the demo key, uploaded by the admin and
// approved by a second person (the uploader's own approval is refused),
// rolled out in waves of 1, then twice as many; it prints each wave's
// progress and the versions the devices run at the end, then shows their
// attestation passing against the policy the fleet prepared from the
// manifest's expected measurements.
func demoFirmware(ctx context.Context, o DemoOptions, fleet *Fleet, client *api.Client, devs []api.Device) error {
	rd := filepath.Join(o.Dir, demoReleaseDir)
	key, err := sign.LoadKeyFile(filepath.Join(rd, demoKeyFile), nil)
	if err != nil {
		return err
	}
	signer, err := sign.New(sign.Config{Key: key})
	if err != nil {
		return err
	}
	image := bytes.Repeat([]byte("demo-gateway firmware 2.0.0\n"), 1<<20/28)
	m := &manifest.Manifest{
		Name: "demo-os", Version: "2.0.0", SecurityVersion: 2, Models: []string{"demo-gateway"},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second),
	}
	m.Measurements = &manifest.Measurements{PCRs: map[string]map[int]string{"sha256": {14: ExpectedPCR14(m.SHA256)}}}
	raw, bundles, err := SignRelease(m, signer)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rd, "demo-os-2.0.0.img"), image, 0o644); err != nil {
		return err
	}
	// The second person exists before the upload: an account created after
	// it could not approve it.
	approver, err := secondPerson(ctx, fleet, client)
	if err != nil {
		return err
	}
	rel, err := client.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "\nFirmware: release %s (%s %s, security version %d, %d KiB) signed with %s, uploaded by %s.\n",
		rel.ID, rel.Name, rel.Version, rel.SecurityVersion, rel.Size>>10, filepath.Join(rd, demoKeyFile), rel.UploadedBy)
	var se *api.StatusError
	if _, err := client.ApproveRelease(ctx, rel.ID); errors.As(err, &se) {
		fmt.Fprintf(o.Out, "  approval by the uploader refused: %d %s\n", se.Status, se.Problem.Title)
	} else if err == nil {
		return errors.New("sigil-sim demo: the uploader approved their own release")
	}
	if rel, err = approver.ApproveRelease(ctx, rel.ID); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "  approved by %s: %s\n", rel.Approvals[0].By, rel.State)

	var ids []string
	for _, d := range devs {
		if d.State == "active" {
			ids = append(ids, d.ID)
		}
	}
	def := campaign.Definition{
		Name: "demo-os 2.0.0", Release: rel.ID, Targets: campaign.Selector{DeviceIDs: ids},
		Waves: campaign.Waves{Canary: 1, Growth: 2}, DeviceTimeout: config.Duration(2 * time.Minute),
	}
	c, err := client.CreateCampaign(ctx, def, "demo rollout")
	if err != nil {
		return err
	}
	if c, err = client.CampaignAction(ctx, c.ID, "start", "demo rollout", time.Time{}); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "Campaign %s: %d devices in %d waves (canary 1, then x2); images download over mTLS from %s/firmware/%s\n",
		c.ID, c.Total, len(c.Waves), fleet.APIURL(), rel.SHA256[:16]+"…")
	shown := map[int]bool{}
	err = poll(ctx, 120*time.Second, func() bool {
		cur, err := client.Campaign(ctx, c.ID)
		if err != nil {
			return false
		}
		for _, w := range cur.Waves {
			if !shown[w.Number] && w.Counts.Finished() == w.Size {
				shown[w.Number] = true
				fmt.Fprintf(o.Out, "  wave %d: %d/%d committed, %d failed\n", w.Number, w.Counts.Committed, w.Size, w.Counts.Failures())
			}
		}
		c = cur
		return cur.State == campaign.StateCompleted || cur.State == campaign.StatePaused || cur.State == campaign.StateAborted
	})
	if err != nil {
		return fmt.Errorf("sigil-sim demo: campaign %s did not finish (%s): %w", c.ID, c.State, err)
	}
	fmt.Fprintf(o.Out, "Campaign %s %s: %d committed, %d failed of %d.\n", c.ID, c.State, c.Counts.Committed, c.Counts.Failures(), c.Total)
	page, err := client.CampaignDevices(ctx, c.ID, campaign.DeviceFilter{Limit: 1000})
	if err != nil {
		return err
	}
	ids = ids[:0] // the campaign's devices: those still active when it was created
	for _, d := range page.Devices {
		ids = append(ids, d.ID)
	}
	var versions []string
	err = poll(ctx, 30*time.Second, func() bool {
		versions = versions[:0]
		done := true
		for _, id := range ids {
			d, err := client.Device(ctx, id)
			if err != nil {
				return false
			}
			versions = append(versions, fmt.Sprintf("%s %s", id, d.Firmware))
			done = done && d.Firmware == m.Version
		}
		return done
	})
	fmt.Fprintf(o.Out, "Running versions (from each device's hello):\n  %s\n", strings.Join(versions, "\n  "))
	if err != nil {
		return fmt.Errorf("sigil-sim demo: devices do not all report %s: %w", m.Version, err)
	}
	for _, id := range ids {
		rec, err := challengeAndWait(ctx, client, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "  %s attestation on %s: %s (policy %s)\n", id, m.Version, rec.Result, rec.PolicyID)
	}
	return nil
}

// secondPerson creates a release approver and returns an API client
// acting as them.
func secondPerson(ctx context.Context, fleet *Fleet, admin *api.Client) (*api.Client, error) {
	u, err := admin.CreateUser(ctx, api.UserRequest{Name: "rita", Role: auth.RoleReleaseApprover})
	var se *api.StatusError
	if err != nil && !(errors.As(err, &se) && se.Status == 409) {
		return nil, err
	}
	name := "rita"
	if u != nil && u.Name != "" {
		name = u.Name
	}
	secret, _, err := fleet.Auth.CreateToken(ctx, name, "demo", auth.RoleReleaseApprover, time.Hour)
	if err != nil {
		return nil, err
	}
	c := *admin
	c.Token = secret
	return &c, nil
}
