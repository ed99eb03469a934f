package update_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// nvCounter reads the anti-rollback counter with tpm2_nvread, an
// independent client.
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

func extended(before, digest []byte) []byte {
	h := sha256.Sum256(append(bytes.Clone(before), digest...))
	return h[:]
}

// TestTPMAntiRollbackAndMeasurement runs updates against a real swtpm and
// checks the TPM with tpm2-tools: the NV counter holds the committed
// security version (and only after commit), a release below it is refused,
// and PCR 14 holds the running image's digest once per TPM boot.
func TestTPMAntiRollbackAndMeasurement(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvread", "tpm2_pcrread")
	inst := newTPM(t)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	e := newEnv(t)
	withTPM := func(c *update.Config) { c.Counter, c.Measurer = tp, tp }
	zero := make([]byte, 32)

	img := image("v2", 50000)
	d2 := sha256.Sum256(img)
	m, b := release("2.0.0", 3, img)
	if rep := e.run(e.engine(withTPM), "u1", m, b, e.srv.put("/v2.img", img)); rep.Phase != update.PhaseCommitted {
		t.Fatalf("u1: %+v", rep)
	}
	if v := nvCounter(t, inst); v != 3 {
		t.Fatalf("NV counter %d after committing security version 3", v)
	}
	if got, want := pcr14(t, inst), extended(zero, d2[:]); !bytes.Equal(got, want) {
		t.Fatalf("PCR 14 = %x, want SHA-256(zeros || image digest) = %x", got, want)
	}

	// sigild restarts (no reboot): the image is not measured again.
	if err := e.engine(withTPM).Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := pcr14(t, inst), extended(zero, d2[:]); !bytes.Equal(got, want) {
		t.Fatalf("PCR 14 extended again by a restart: %x", got)
	}

	// The device reboots (TPM reset, PCRs cleared): sigild measures the
	// running image at start-up, and the PCR has the same value again.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := inst.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pcr14(t, inst); !bytes.Equal(got, zero) {
		t.Fatalf("PCR 14 not reset by the reboot: %x", got)
	}
	if err := e.engine(withTPM).Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := pcr14(t, inst), extended(zero, d2[:]); !bytes.Equal(got, want) {
		t.Fatalf("PCR 14 after reboot and start-up = %x, want %x", got, want)
	}

	// A release below the counter is refused.
	old := image("v1.5", 50000)
	m, b = release("1.5.0", 2, old)
	rep := e.run(e.engine(withTPM), "u2", m, b, e.srv.put("/v15.img", old))
	if rep.Phase != update.PhaseFailed || rep.Reason != wire.ReasonFirmwareRollback || rep.Running != "2.0.0" {
		t.Fatalf("u2: %+v", rep)
	}
	if v := nvCounter(t, inst); v != 3 {
		t.Fatalf("NV counter %d after a refused release", v)
	}

	// A release that rolls back leaves the counter alone.
	bad := image("v4-unhealthy", 50000)
	m, b = release("4.0.0", 7, bad)
	if rep := e.run(e.engine(withTPM), "u3", m, b, e.srv.put("/v4.img", bad)); rep.Phase != update.PhaseRolledBack || rep.Running != "2.0.0" {
		t.Fatalf("u3: %+v", rep)
	}
	if v := nvCounter(t, inst); v != 3 {
		t.Fatalf("NV counter %d after a rolled-back release of security version 7", v)
	}

	// The same security version is accepted.
	img3 := image("v3", 50000)
	d3 := sha256.Sum256(img3)
	m, b = release("3.0.0", 3, img3)
	if rep := e.run(e.engine(withTPM), "u4", m, b, e.srv.put("/v3.img", img3)); rep.Phase != update.PhaseCommitted || rep.Slot != "a" {
		t.Fatalf("u4: %+v", rep)
	}
	if got, want := pcr14(t, inst), extended(extended(zero, d2[:]), d3[:]); !bytes.Equal(got, want) {
		t.Fatalf("PCR 14 after the second commit without TPM reset = %x, want %x", got, want)
	}
}

// TestTPMFloorAdvanceFailsOnce: on a real swtpm, the NV counter refuses
// one advance (an injected fault). The update is not committed: it is
// recorded in advancing_floor and reported so, tpm2_nvread shows the old
// floor, and a lower release is not taken meanwhile. The next run advances
// the counter and commits; then the lower release is refused.
func TestTPMFloorAdvanceFailsOnce(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvread")
	inst := newTPM(t)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	e := newEnv(t)
	c := &flakyCounter{Counter: tp}
	withTPM := func(cfg *update.Config) { cfg.Counter, cfg.Measurer, cfg.MaxAttempts = c, tp, 1 }

	img := image("v2", 50000)
	m, b := release("2.0.0", 1, img)
	if rep := e.run(e.engine(withTPM), "u1", m, b, e.srv.put("/v2.img", img)); rep.Phase != update.PhaseCommitted {
		t.Fatalf("u1: %+v", rep)
	}

	c.failOnce = 1
	img3 := image("v3", 50000)
	m, b = release("3.0.0", 3, img3)
	eng := e.engine(withTPM)
	if err := eng.Announce(update.Announcement{ID: "u2", Manifest: m, Bundle: b, URL: e.srv.put("/v3.img", img3)}); err != nil {
		t.Fatal(err)
	}
	if err := eng.Resume(context.Background()); !errors.Is(err, update.ErrFloorNotAdvanced) {
		t.Fatalf("Resume: %v, want ErrFloorNotAdvanced", err)
	}
	if u, err := e.store.Update(); err != nil || u.ID != "u2" || u.Phase != string(update.PhaseAdvancingFloor) || u.Final {
		t.Fatalf("recorded %+v, %v", u, err)
	}
	if v := nvCounter(t, inst); v != 1 {
		t.Fatalf("NV counter %d while the advance failed", v)
	}
	last := e.rep.reports[len(e.rep.reports)-1]
	if last.ID != "u2" || last.Phase != update.PhaseAdvancingFloor || last.Final || !strings.Contains(last.Message, "anti-rollback counter not advanced") {
		t.Fatalf("last report %+v", last)
	}
	old := image("v1.5", 50000)
	m15, b15 := release("1.5.0", 2, old)
	if err := eng.Announce(update.Announcement{ID: "u3", Manifest: m15, Bundle: b15, URL: e.srv.put("/v15.img", old)}); !errors.Is(err, update.ErrBusy) {
		t.Fatalf("lower release announced while the floor is pending: %v", err)
	}

	if err := eng.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rep := e.final("u2"); rep.Phase != update.PhaseCommitted || rep.Running != "3.0.0" {
		t.Fatalf("u2: %+v", rep)
	}
	if v := nvCounter(t, inst); v != 3 {
		t.Fatalf("NV counter %d after commit, want 3", v)
	}
	rep := e.run(eng, "u3", m15, b15, e.srv.put("/v15.img", old))
	if rep.Phase != update.PhaseFailed || rep.Reason != wire.ReasonFirmwareRollback {
		t.Fatalf("u3: %+v", rep)
	}
}

// TestTPMCounterDeletedByOwner: a local process with the owner password
// (empty here, as on most devices) deletes the counter's NV index with
// tpm2_nvundefine, which the TPM allows. The device still refuses a
// release below the floor it committed to, and raises the counter again
// with the next commit.
func TestTPMCounterDeletedByOwner(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvread", "tpm2_nvundefine")
	inst := newTPM(t)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	e := newEnv(t)
	withTPM := func(cfg *update.Config) { cfg.Counter, cfg.Measurer = tp, tp }

	img := image("v3", 50000)
	m, b := release("3.0.0", 3, img)
	if rep := e.run(e.engine(withTPM), "u1", m, b, e.srv.put("/v3.img", img)); rep.Phase != update.PhaseCommitted {
		t.Fatalf("u1: %+v", rep)
	}
	swtpmtest.Run(t, "tpm2_nvundefine", "-T", inst.TCTI(), "-C", "o", fmt.Sprintf("0x%08x", tpm.SecurityVersionIndex))

	old := image("v2", 50000)
	m, b = release("2.0.0", 2, old)
	rep := e.run(e.engine(withTPM), "u2", m, b, e.srv.put("/v2.img", old))
	if rep.Phase != update.PhaseFailed || rep.Reason != wire.ReasonFirmwareRollback || rep.Running != "3.0.0" {
		t.Fatalf("u2 below the floor after the index was deleted: %+v", rep)
	}

	img4 := image("v4", 50000)
	m, b = release("4.0.0", 3, img4)
	if rep := e.run(e.engine(withTPM), "u3", m, b, e.srv.put("/v4.img", img4)); rep.Phase != update.PhaseCommitted {
		t.Fatalf("u3: %+v", rep)
	}
	if v := nvCounter(t, inst); v < 3 {
		t.Fatalf("NV counter %d after the next commit, want at least 3", v)
	}
}

// TestTPMForeignCounterIndex: an NV index someone defined at the
// counter's handle with other attributes (here a counter anyone may
// increment) is not trusted: no update goes past the floor check, the
// error says why, and the foreign index is not touched.
func TestTPMForeignCounterIndex(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvdefine", "tpm2_nvreadpublic")
	inst := newTPM(t)
	idx := fmt.Sprintf("0x%08x", tpm.SecurityVersionIndex)
	swtpmtest.Run(t, "tpm2_nvdefine", "-T", inst.TCTI(), "-C", "o", "-s", "8", "-a", "nt=counter|ownerwrite|ownerread|authread|authwrite|no_da", idx)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	e := newEnv(t)
	eng := e.engine(func(cfg *update.Config) { cfg.Counter, cfg.Measurer = tp, tp })
	img := image("v2", 50000)
	m, b := release("2.0.0", 1, img)
	if err := eng.Announce(update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: e.srv.put("/v2.img", img)}); err != nil {
		t.Fatal(err)
	}
	err = eng.Resume(context.Background())
	if !errors.Is(err, tpm.ErrCounterAttributes) {
		t.Fatalf("Resume: %v, want ErrCounterAttributes", err)
	}
	if u, _ := e.store.Update(); u.Phase != string(update.PhaseAnnounced) {
		t.Fatalf("update went on to %s", u.Phase)
	}
	if _, err := os.Stat(e.fb.Image("b")); err == nil {
		t.Fatal("slot b written")
	}
	if out := swtpmtest.Run(t, "tpm2_nvreadpublic", "-T", inst.TCTI(), idx); bytes.Contains(out, []byte("written")) {
		t.Fatalf("the foreign index was incremented:\n%s", out)
	}
}
