package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// nvreadCounter reads the 8-byte counter at index with tpm2-tools, an
// independent client, authorized by the owner hierarchy.
func nvreadCounter(t *testing.T, inst *swtpm.Instance, index uint32) uint64 {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nv.bin")
	swtpmtest.Run(t, "tpm2_nvread", "-T", inst.TCTI(), "-C", "o", "-s", "8", "-o", out, fmt.Sprintf("0x%08x", index))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 8 {
		t.Fatalf("tpm2_nvread returned %d bytes", len(b))
	}
	return binary.BigEndian.Uint64(b)
}

// TestSecurityVersionCounter checks the anti-rollback counter on a real
// swtpm, reading it back with tpm2_nvread: it starts at 0, moves only up,
// cannot be written down by another client, and deleting and redefining the
// index does not lower it.
func TestSecurityVersionCounter(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvread", "tpm2_nvwrite", "tpm2_nvundefine", "tpm2_nvdefine")
	inst := swtpmtest.New(t, nil)
	tp := open(t, inst)

	if v, err := tp.SecurityVersion(); err != nil || v != 0 {
		t.Fatalf("fresh TPM: %d, %v", v, err)
	}
	if v, err := tp.AdvanceSecurityVersion(0); err != nil || v != 0 {
		t.Fatalf("advance to 0: %d, %v", v, err)
	}
	v, err := tp.AdvanceSecurityVersion(3)
	if err != nil || v != 3 {
		t.Fatalf("advance to 3: %d, %v", v, err)
	}
	if got := nvreadCounter(t, inst, tpm.SecurityVersionIndex); got != 3 {
		t.Fatalf("tpm2_nvread: counter holds %d, want 3", got)
	}
	if v, err := tp.AdvanceSecurityVersion(2); err != nil || v != 3 {
		t.Fatalf("advance to a lower value: %d, %v", v, err)
	}
	if v, err := tp.SecurityVersion(); err != nil || v != 3 {
		t.Fatalf("read: %d, %v", v, err)
	}

	// A counter cannot be written, not even by the owner.
	idx := fmt.Sprintf("0x%08x", tpm.SecurityVersionIndex)
	zero := filepath.Join(t.TempDir(), "zero")
	if err := os.WriteFile(zero, make([]byte, 8), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tpm2_nvwrite", "-T", inst.TCTI(), "-C", "o", "-i", zero, idx).CombinedOutput(); err == nil {
		t.Fatalf("tpm2_nvwrite wrote the counter: %s", out)
	}
	if got := nvreadCounter(t, inst, tpm.SecurityVersionIndex); got != 3 {
		t.Fatalf("after a refused write: %d", got)
	}

	// Deleting the index and defining it again starts above the old value.
	swtpmtest.Run(t, "tpm2_nvundefine", "-T", inst.TCTI(), "-C", "o", idx)
	if v, err := tp.SecurityVersion(); err != nil || v != 0 {
		t.Fatalf("undefined index: %d, %v", v, err)
	}
	v, err = tp.AdvanceSecurityVersion(1)
	if err != nil || v <= 3 {
		t.Fatalf("redefined counter: %d, %v (want above 3)", v, err)
	}
	if got := nvreadCounter(t, inst, tpm.SecurityVersionIndex); got != v {
		t.Fatalf("tpm2_nvread %d, AdvanceSecurityVersion %d", got, v)
	}

	// Too large a jump is refused before anything is written.
	if _, err := tp.AdvanceSecurityVersion(v + tpm.MaxCounterAdvance + 1); !errors.Is(err, tpm.ErrCounterJump) {
		t.Fatalf("jump: %v", err)
	}
	if got := nvreadCounter(t, inst, tpm.SecurityVersionIndex); got != v {
		t.Fatalf("after a refused jump: %d, want %d", got, v)
	}

	// An ordinary index is not a counter: its value could go down.
	const other = 0x01800101
	swtpmtest.Run(t, "tpm2_nvdefine", "-T", inst.TCTI(), "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite", fmt.Sprintf("0x%08x", other))
	if _, err := tp.Counter(other); !errors.Is(err, tpm.ErrNotCounter) {
		t.Fatalf("ordinary index as counter: %v", err)
	}
	if _, err := tp.AdvanceCounter(other, 5); !errors.Is(err, tpm.ErrNotCounter) {
		t.Fatalf("advance ordinary index: %v", err)
	}
	if _, err := tp.Counter(0x81000001); err == nil {
		t.Fatal("persistent handle accepted as NV index")
	}
}

// TestExtendPCR extends PCR 14 and reads it back with tpm2_pcrread.
func TestExtendPCR(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_pcrread")
	inst := swtpmtest.New(t, nil)
	tp := open(t, inst)

	read := func() []byte {
		t.Helper()
		out := filepath.Join(t.TempDir(), "pcr.bin")
		swtpmtest.Run(t, "tpm2_pcrread", "-T", inst.TCTI(), "sha256:14", "-o", out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := read()
	if !bytes.Equal(before, make([]byte, 32)) {
		t.Fatalf("PCR 14 of a fresh TPM is %x", before)
	}
	d := sha256.Sum256([]byte("image v2"))
	if err := tp.ExtendPCR(14, d[:]); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(before, d[:]...))
	if got := read(); !bytes.Equal(got, want[:]) {
		t.Fatalf("tpm2_pcrread: %x, want %x", got, want)
	}
	vals, err := tp.ReadPCRs(sha256Sel(14))
	if err != nil || !bytes.Equal(vals[0], want[:]) {
		t.Fatalf("ReadPCRs: %x, %v", vals, err)
	}
	if err := tp.ExtendPCR(24, d[:]); err == nil {
		t.Fatal("PCR 24 accepted")
	}
	if err := tp.ExtendPCR(14, d[:20]); err == nil {
		t.Fatal("20-byte digest accepted")
	}
	if got := read(); !bytes.Equal(got, want[:]) {
		t.Fatal("a refused extend changed the PCR")
	}
}
