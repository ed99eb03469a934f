package memslots_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/memslots"
	"github.com/sigil-iot/sigil/sim/memstate"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// device is the update engine of a simulated device: memory slots, memory
// state, a software TPM for the counter and the measurement, and an image
// served from memory.
type device struct {
	tpm    *softtpm.TPM
	slots  *memslots.Backend
	engine *update.Engine
	final  chan update.Report
}

// release is the tests' manifest: what the engine's Verifier returns,
// without signatures (firmware/verify is not what is tested here).
type release struct {
	Version         string
	SecurityVersion uint64
	Size            int64
	SHA256          []byte
}

func newDevice(t *testing.T, image []byte, health func(context.Context, string, *memslots.Image) error) *device {
	t.Helper()
	tp, err := softtpm.New()
	if err != nil {
		t.Fatal(err)
	}
	d := &device{tpm: tp, slots: memslots.New(memslots.Config{Health: health}), final: make(chan update.Report, 4)}
	verify := update.VerifierFunc(func(manifest, _ []byte) (*update.Release, error) {
		var r release
		if err := json.Unmarshal(manifest, &r); err != nil {
			return nil, err
		}
		return &update.Release{Name: "gw-os", Version: r.Version, SecurityVersion: r.SecurityVersion, Size: r.Size, SHA256: r.SHA256}, nil
	})
	serve := update.FetcherFunc(func(_ context.Context, req fetch.Request) (*fetch.Response, error) {
		body := image[req.Offset:]
		return &fetch.Response{StatusCode: 206, Offset: req.Offset, Length: int64(len(body)), Size: int64(len(image)),
			Body: io.NopCloser(bytes.NewReader(body))}, nil
	})
	report := update.ReporterFunc(func(_ context.Context, r update.Report) error {
		if r.Final {
			d.final <- r
		}
		return nil
	})
	d.engine, err = update.New(update.Config{Store: memstate.New().Store(), Backend: d.slots, Verifier: verify, Counter: tp, Measurer: tp,
		Dir: t.TempDir(), Version: "1.0.0", Reporter: report, Fetcher: serve, RetryDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.engine.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

func (d *device) update(t *testing.T, image []byte, sv uint64) update.Report {
	t.Helper()
	sum := sha256.Sum256(image)
	m, _ := json.Marshal(release{Version: "2.0.0", SecurityVersion: sv, Size: int64(len(image)), SHA256: sum[:]})
	if err := d.engine.Announce(update.Announcement{ID: "c-1", Manifest: m, URL: "https://fleet.test/fw"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-d.final:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no final report in 30s")
	}
	return update.Report{}
}

// TestCommit: the engine installs into slot B in memory, boots it, finds
// it healthy and commits; the TPM's counter holds the security version and
// PCR 14 the image's measurement.
func TestCommit(t *testing.T) {
	image := bytes.Repeat([]byte("gw-os 2.0.0 "), 1<<20/12)
	d := newDevice(t, image, nil)
	r := d.update(t, image, 3)
	if r.Phase != update.PhaseCommitted || r.Running != "2.0.0" || r.Slot != memslots.SlotB {
		t.Fatalf("final report %+v, want committed on slot b running 2.0.0", r)
	}
	if st := d.slots.State(); st.Active != memslots.SlotB || st.Booted != memslots.SlotB || st.Pending != "" || st.Boot < 2 {
		t.Fatalf("boot record %+v", st)
	}
	sum := sha256.Sum256(image)
	if img := d.slots.Image(memslots.SlotB); img == nil || img.Size != int64(len(image)) || img.SHA256 != sum {
		t.Fatalf("slot b holds %+v", img)
	}
	if v, err := d.tpm.SecurityVersion(); err != nil || v != 3 {
		t.Fatalf("anti-rollback counter %d, %v", v, err)
	}
	pcr, err := d.tpm.ReadPCRs(wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{14}})
	want := sha256.Sum256(append(make([]byte, 32), sum[:]...))
	if err != nil || !bytes.Equal(pcr[0], want[:]) {
		t.Fatalf("PCR 14 = %x, %v; want %x", pcr, err, want)
	}
}

// TestRollback: a new slot that fails its health check is rolled back;
// the device boots slot A again and the counter stays.
func TestRollback(t *testing.T) {
	image := []byte("gw-os 2.0.0, broken")
	d := newDevice(t, image, func(_ context.Context, slot string, img *memslots.Image) error {
		if slot == memslots.SlotB {
			return memslots.ErrUnhealthy
		}
		return nil
	})
	r := d.update(t, image, 3)
	if r.Phase != update.PhaseRolledBack || r.Reason != wire.ReasonFirmwareHealth || r.Running != "1.0.0" {
		t.Fatalf("final report %+v, want rolled back on 1.0.0 for its health", r)
	}
	if st := d.slots.State(); st.Active != memslots.SlotA || st.Booted != memslots.SlotA {
		t.Fatalf("boot record %+v", st)
	}
	if v, _ := d.tpm.SecurityVersion(); v != 0 {
		t.Fatalf("counter advanced to %d by a rolled back update", v)
	}
}

// TestRefusals: the booted slot is never written, a slot without an image
// is never switched to, and slots are only A and B.
func TestRefusals(t *testing.T) {
	ctx := context.Background()
	b := memslots.New(memslots.Config{})
	if err := b.Install(ctx, memslots.SlotA, "/dev/null"); err == nil {
		t.Error("installed into the booted slot")
	}
	if err := b.Switch(ctx, memslots.SlotB); err == nil {
		t.Error("switched to an empty slot")
	}
	if err := b.Install(ctx, "c", "/dev/null"); err == nil {
		t.Error("installed into slot c")
	}
	if err := b.Commit(ctx, memslots.SlotB); err == nil {
		t.Error("committed a slot that is not booted")
	}
	if err := b.Install(ctx, memslots.SlotB, "/nonexistent"); err == nil {
		t.Error("installed a missing file")
	}
	if err := b.Health(ctx); err == nil || errors.Is(err, memslots.ErrUnhealthy) {
		t.Errorf("health of a factory slot the backend knows nothing of: %v", err)
	}
}
