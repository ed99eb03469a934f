package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// CampaignOptions configures Campaign.
type CampaignOptions struct {
	// Devices is the number of simulated devices. Default 20.
	Devices int
	// ImageSize is the release image's size in bytes. Default 1 MiB.
	ImageSize int
	// Dir holds the TPM states, the fleet and the device state. Required.
	Dir string
	// Timeout bounds each wait: all devices connected, one campaign.
	// Default 10 minutes.
	Timeout time.Duration
	// Logger receives the fleet's and devices' logs; nil discards them.
	Logger *slog.Logger
}

// CampaignRun is one campaign to every device.
type CampaignRun struct {
	Name  string // "staged" (canary 1, then x2) or "one wave"
	Waves int
	// Wall is from the campaign's start to its completion with every
	// device committed; PerSecond is devices / Wall, MiBPerSecond the
	// image bytes the devices downloaded / Wall.
	Wall                    time.Duration
	PerSecond, MiBPerSecond float64
	// ToCommitted is each device's time from its announcement (the
	// campaign's record) to its committed report being recorded.
	ToCommitted Dist
	// WaveOpen is, per wave after the first, the time from the previous
	// wave's opening to its own: the previous wave's slowest device plus
	// the engine's tick.
	WaveOpen []time.Duration
	// CPUSelf and CPUSwtpm are the CPU time of this process (fleet,
	// broker, agents) and of the swtpm processes during the campaign.
	CPUSelf, CPUSwtpm time.Duration
	Committed         int
}

// CampaignResult is the outcome of Campaign.
type CampaignResult struct {
	Devices   int
	ImageSize int
	Setup     time.Duration
	Runs      []CampaignRun
}

// Campaign measures a firmware campaign end to end. Set-up, untimed: one
// swtpm per device, an in-process fleet with a release trust set, every
// sigild agent enrolled and connected over TPM-backed mTLS (file slot
// backend), and a release of ImageSize bytes signed, uploaded and approved
// by a second person. Then the clock starts as the campaign starts and
// stops when it completed with every device committed: each agent was
// announced the release over MQTT, verified its signature against the
// trust set from its enrollment and its TPM anti-rollback counter,
// downloaded the image over HTTPS with its TPM-backed identity, checked
// its digest, wrote the inactive slot, switched, passed its health check,
// committed, advanced its TPM NV counter, measured the image into PCR 14
// and reported each step. Two campaigns run: staged (canary 1, then twice
// as many per wave; each wave opens at the engine's next 1 s tick after
// the previous one committed) and one wave of every device (a second
// release of the same security version).
func Campaign(ctx context.Context, o CampaignOptions) (*CampaignResult, error) {
	if o.Devices == 0 {
		o.Devices = 20
	}
	if o.ImageSize == 0 {
		o.ImageSize = 1 << 20
	}
	if o.Devices < 1 || o.ImageSize < 1 {
		return nil, errors.New("bench: campaign: devices and image size must be at least 1")
	}
	if o.Dir == "" {
		return nil, errors.New("bench: campaign: no working directory")
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	setupStart := time.Now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := sign.New(sign.Config{Key: key})
	if err != nil {
		return nil, err
	}
	trust, err := verify.NewTrustSet(1, 1, key.Public())
	if err != nil {
		return nil, err
	}
	tb, err := trust.Marshal()
	if err != nil {
		return nil, err
	}
	trustFile := filepath.Join(o.Dir, "release-trust.json")
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(trustFile, tb, 0o644); err != nil {
		return nil, err
	}
	st, err := campaignFleet(ctx, o, trustFile)
	if err != nil {
		return nil, err
	}
	defer st.close()
	res := &CampaignResult{Devices: o.Devices, ImageSize: o.ImageSize}
	releases := make([]string, 2)
	for i, version := range []string{"2.0.0", "2.0.1"} {
		image := bytes.Repeat([]byte(fmt.Sprintf("bench-os %s ", version)), o.ImageSize/14+1)[:o.ImageSize]
		m := &manifest.Manifest{Name: "bench-os", Version: version, SecurityVersion: 2, Models: []string{"bench-gw"},
			Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)}
		raw, bundles, err := harness.SignRelease(m, signer)
		if err != nil {
			return nil, err
		}
		rel, err := st.fleet.Releases().Upload(ctx, "bench-uploader", raw, bundles, bytes.NewReader(image))
		if err != nil {
			return nil, err
		}
		if _, err := st.fleet.Releases().Approve(ctx, "bench-approver", rel.ID); err != nil {
			return nil, err
		}
		releases[i] = rel.ID
	}
	res.Setup = time.Since(setupStart)
	for i, w := range []struct {
		name  string
		waves campaign.Waves
	}{
		{"staged", campaign.Waves{Canary: 1, Growth: 2}},
		{"one wave", campaign.Waves{Sizes: []int{o.Devices}}},
	} {
		run, err := campaignRun(ctx, st.fleet, st.ids, releases[i], w.name, w.waves, o)
		if err != nil {
			return nil, err
		}
		res.Runs = append(res.Runs, *run)
	}
	return res, nil
}

// campaignFleet sets up n connected devices with a fleet that has a
// release trust set.
func campaignFleet(ctx context.Context, o CampaignOptions, trustFile string) (*benchFleet, error) {
	tpms, ekCADir, stopTPMs, err := startTPMs(ctx, o.Dir, o.Devices, o.Logger)
	if err != nil {
		return nil, err
	}
	fleet, err := harness.StartFleet(ctx, server.Config{DataDir: filepath.Join(o.Dir, "fleet"), EKCADir: ekCADir, ReleaseTrust: trustFile},
		o.Logger.With("side", "fleet"))
	if err != nil {
		stopTPMs()
		return nil, err
	}
	b := &benchFleet{tpms: tpms, fleet: fleet, devices: make([]*harness.Device, o.Devices)}
	b.close = func() {
		for _, d := range b.devices {
			if d != nil {
				d.Stop()
			}
		}
		fleet.Stop()
		stopTPMs()
	}
	for i, inst := range tpms {
		b.devices[i], err = fleet.StartDevice(ctx, harness.DeviceConfig{
			TPM: inst.URI(), Dir: filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1)),
			Model: "bench-gw", Firmware: "1.0.0", Serial: fmt.Sprintf("BENCH-%04d", i+1),
			Tweak: func(c *agent.Config) { c.EventLog = "-" },
		}, o.Logger.With("side", "device", "n", i+1))
		if err != nil {
			b.close()
			return nil, err
		}
	}
	if b.ids, err = waitConnected(ctx, b.devices, o.Timeout); err != nil {
		b.close()
		return nil, err
	}
	if err := waitRecorded(ctx, fleet, b.ids, o.Timeout); err != nil {
		b.close()
		return nil, err
	}
	// Enrolled by their EK certificates, the devices have no model the
	// fleet assigned, and campaigns reach only the models of a release.
	for _, id := range b.ids {
		if err := fleet.Inv.Update(ctx, id, func(d *inventory.Device) error { d.Model = "bench-gw"; return nil }); err != nil {
			b.close()
			return nil, err
		}
	}
	return b, nil
}

// campaignRun times one campaign of release to every device.
func campaignRun(ctx context.Context, fleet *harness.Fleet, ids []string, release, name string, waves campaign.Waves, o CampaignOptions) (*CampaignRun, error) {
	cm := fleet.Campaigns()
	c, err := cm.Create(ctx, campaign.Definition{Name: name, Release: release, Targets: campaign.Selector{DeviceIDs: ids},
		Waves: waves, DeviceTimeout: config.Duration(o.Timeout)}, "bench", "bench")
	if err != nil {
		return nil, err
	}
	selfBefore, tpmBefore := cpuTimes()
	start := time.Now()
	if err := fleet.StartCampaign(c.ID, time.Time{}, "bench", "bench"); err != nil {
		return nil, err
	}
	var done *campaign.Campaign
	err = poll(ctx, o.Timeout, 20*time.Millisecond, func() (bool, error) {
		cur, err := cm.Get(c.ID)
		if err != nil {
			return false, err
		}
		switch cur.State {
		case campaign.StateCompleted:
			done = cur
			return true, nil
		case campaign.StatePaused, campaign.StateAborted:
			return false, fmt.Errorf("bench: campaign %s %s: %+v", c.ID, cur.State, cur.Counts)
		}
		return false, nil
	}, func() error { return fmt.Errorf("bench: campaign %s not completed after %v", c.ID, o.Timeout) })
	if err != nil {
		return nil, err
	}
	wall := time.Since(start)
	selfAfter, tpmAfter := cpuTimes()
	run := &CampaignRun{Name: name, Waves: len(done.Waves), Wall: wall, Committed: done.Counts.Committed,
		CPUSelf: selfAfter - selfBefore, CPUSwtpm: tpmAfter - tpmBefore}
	if run.Committed != len(ids) {
		return nil, fmt.Errorf("bench: campaign %s: %d of %d committed", c.ID, run.Committed, len(ids))
	}
	run.PerSecond = float64(len(ids)) / wall.Seconds()
	run.MiBPerSecond = float64(len(ids)) * float64(o.ImageSize) / (1 << 20) / wall.Seconds()
	for i := 1; i < len(done.Waves); i++ {
		run.WaveOpen = append(run.WaveOpen, done.Waves[i].Opened.Sub(done.Waves[i-1].Opened))
	}
	var per []time.Duration
	after := ""
	for {
		devs, next, err := cm.Devices(c.ID, campaign.DeviceFilter{After: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		for _, d := range devs {
			per = append(per, d.Updated.Sub(d.Announced))
		}
		if next == "" {
			break
		}
		after = next
	}
	run.ToCommitted = dist(per)
	return run, nil
}

// Print writes the result as small tables.
func (r *CampaignResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "campaign\tdevices\timage\twaves\tstart -> all committed\tdevices/s\tMiB/s downloaded\tp50 announce -> committed\tp99\tmax\tsetup (not timed)\n")
	for _, run := range r.Runs {
		t := run.ToCommitted
		fmt.Fprintf(tw, "%s\t%d\t%.2f MiB\t%d\t%.2f s\t%.1f\t%.1f\t%s\t%s\t%s\t%.1f s\n", run.Name, run.Committed, float64(r.ImageSize)/(1<<20),
			run.Waves, run.Wall.Seconds(), run.PerSecond, run.MiBPerSecond, ms(t.P50), ms(t.P99), ms(t.Max), r.Setup.Seconds())
	}
	tw.Flush()
	for _, run := range r.Runs {
		if len(run.WaveOpen) > 0 {
			fmt.Fprintf(w, "%s: each wave opened after the previous one by", run.Name)
			for _, d := range run.WaveOpen {
				fmt.Fprintf(w, " %s", ms(d))
			}
			fmt.Fprintln(w, " (its slowest device, then the engine's 1 s tick)")
		}
		if n := float64(run.Committed); n > 0 && run.CPUSelf+run.CPUSwtpm > 0 {
			fmt.Fprintf(w, "%s: CPU %.1f ms per device in the fleet+agents process, %.1f ms in swtpm (%d CPUs %.0f%% busy)\n", run.Name,
				1e3*run.CPUSelf.Seconds()/n, 1e3*run.CPUSwtpm.Seconds()/n, numCPU(),
				100*(run.CPUSelf+run.CPUSwtpm).Seconds()/(run.Wall.Seconds()*float64(numCPU())))
		}
	}
}

// campaigns runs Campaign at each size (each with its own swtpms and
// fleet) and prints each.
func campaigns(ctx context.Context, out io.Writer, env string, devices int, sizes string, work string, log *slog.Logger) error {
	if devices == 0 {
		devices = 20
	}
	n := []int{devices}
	if sizes != "" {
		var err error
		if n, err = parseSizes(sizes); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "sigil-sim bench campaign (%s)\n", env)
	for _, d := range n {
		r, err := Campaign(ctx, CampaignOptions{Devices: d, Dir: filepath.Join(work, fmt.Sprintf("campaign-%d", d)), Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintln(out)
		r.Print(out)
	}
	return nil
}
