package update_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
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
	out := filepath.Join(t.TempDir(), "nv.bin")
	swtpmtest.Run(t, "tpm2_nvread", "-T", inst.TCTI(), "-C", "o", "-s", "8", "-o", out, fmt.Sprintf("0x%08x", tpm.SecurityVersionIndex))
	b, err := os.ReadFile(out)
	if err != nil || len(b) != 8 {
		t.Fatalf("tpm2_nvread: %x, %v", b, err)
	}
	return binary.BigEndian.Uint64(b)
}

// pcr14 reads PCR 14 of the SHA-256 bank with tpm2_pcrread.
func pcr14(t *testing.T, inst *swtpm.Instance) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pcr.bin")
	swtpmtest.Run(t, "tpm2_pcrread", "-T", inst.TCTI(), "sha256:14", "-o", out)
	b, err := os.ReadFile(out)
	if err != nil || len(b) != 32 {
		t.Fatalf("tpm2_pcrread: %x, %v", b, err)
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
