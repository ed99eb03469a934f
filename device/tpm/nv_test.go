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
	"strings"
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

	// Deleting the index and defining it again starts above the old value
	// once incremented. Until then it reads 0: the owner can lower what
	// the TPM says, which is why device/update also keeps the floor it
	// raised the counter to.
	swtpmtest.Run(t, "tpm2_nvundefine", "-T", inst.TCTI(), "-C", "o", idx)
	if _, err := tp.Counter(tpm.SecurityVersionIndex); !errors.Is(err, tpm.ErrCounterUndefined) {
		t.Fatalf("deleted index: %v", err)
	}
	if v, err := tp.SecurityVersion(); err != nil || v != 0 {
		t.Fatalf("undefined index, defined again: %d, %v", v, err)
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

// sigildCounterAttributes is what tpm2_nvreadpublic shows for the counter
// sigild defines: TPMA_NV_OWNERWRITE | TPM_NT_COUNTER | OWNERREAD |
// AUTHREAD | NO_DA, before its first increment.
const sigildCounterAttributes = "value: 0x2060012"

// nvReadPublic returns tpm2_nvreadpublic's description of index, and
// whether the index is defined.
func nvReadPublic(t *testing.T, inst *swtpm.Instance, index uint32) (string, bool) {
	t.Helper()
	out, err := exec.Command("tpm2_nvreadpublic", "-T", inst.TCTI(), fmt.Sprintf("0x%08x", index)).CombinedOutput()
	return string(out), err == nil
}

// TestCounterUndefined: an undefined counter does not read as 0; it reads
// as 0 only once SecurityVersion (about to use it) has defined it, with
// sigild's attributes, as tpm2_nvreadpublic shows.
func TestCounterUndefined(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvreadpublic")
	inst := swtpmtest.New(t, nil)
	tp := open(t, inst)

	if _, ok := nvReadPublic(t, inst, tpm.SecurityVersionIndex); ok {
		t.Fatal("a fresh TPM has the counter")
	}
	if v, err := tp.Counter(tpm.SecurityVersionIndex); !errors.Is(err, tpm.ErrCounterUndefined) {
		t.Fatalf("undefined counter: %d, %v; want ErrCounterUndefined", v, err)
	}
	if v, err := tp.SecurityVersion(); err != nil || v != 0 {
		t.Fatalf("SecurityVersion on a fresh TPM: %d, %v", v, err)
	}
	out, ok := nvReadPublic(t, inst, tpm.SecurityVersionIndex)
	if !ok || !strings.Contains(out, sigildCounterAttributes) || !strings.Contains(out, "size: 8") || strings.Contains(out, "authorization policy") {
		t.Fatalf("SecurityVersion did not define the counter as sigild does:\n%s", out)
	}
	if v, err := tp.Counter(tpm.SecurityVersionIndex); err != nil || v != 0 {
		t.Fatalf("defined, never incremented: %d, %v", v, err)
	}
}

// TestCounterRefusesForeignIndex: an index that someone with the owner
// password defined at the counter's handle, with anything but the
// attributes, size, name algorithm and (empty) policy sigild defines, is
// refused for reading and for advancing, and is not incremented.
func TestCounterRefusesForeignIndex(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_nvdefine", "tpm2_nvundefine", "tpm2_nvreadpublic")
	inst := swtpmtest.New(t, nil)
	tp := open(t, inst)
	policy := filepath.Join(t.TempDir(), "policy.bin")
	if err := os.WriteFile(policy, bytes.Repeat([]byte{0x5a}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	const attrs = "nt=counter|ownerwrite|ownerread|authread|no_da"
	idx := fmt.Sprintf("0x%08x", tpm.SecurityVersionIndex)
	for _, c := range []struct {
		name       string
		args       []string
		notCounter bool
	}{
		{name: "also written with the index password", args: []string{"-s", "8", "-a", attrs + "|authwrite"}},
		{name: "orderly", args: []string{"-s", "8", "-a", attrs + "|orderly"}},
		{name: "no owner read", args: []string{"-s", "8", "-a", "nt=counter|ownerwrite|authread|no_da"}},
		{name: "an authorization policy", args: []string{"-s", "8", "-a", attrs, "-L", policy}},
		{name: "SHA-384 name algorithm", args: []string{"-s", "8", "-a", attrs, "-g", "sha384"}},
		{name: "ordinary index", args: []string{"-s", "8", "-a", "ownerread|ownerwrite|authread|no_da"}, notCounter: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			swtpmtest.Run(t, "tpm2_nvdefine", append(append([]string{"-T", inst.TCTI(), "-C", "o"}, c.args...), idx)...)
			defer swtpmtest.Run(t, "tpm2_nvundefine", "-T", inst.TCTI(), "-C", "o", idx)
			check := func(op string, err error) {
				t.Helper()
				var ie *tpm.CounterIndexError
				if !errors.Is(err, tpm.ErrCounterAttributes) || !errors.As(err, &ie) || ie.Index != tpm.SecurityVersionIndex {
					t.Fatalf("%s: %v; want a *CounterIndexError for 0x%08x", op, err, tpm.SecurityVersionIndex)
				}
				if errors.Is(err, tpm.ErrNotCounter) != c.notCounter {
					t.Fatalf("%s: ErrNotCounter is %v, want %v: %v", op, errors.Is(err, tpm.ErrNotCounter), c.notCounter, err)
				}
			}
			_, err := tp.SecurityVersion()
			check("SecurityVersion", err)
			_, err = tp.AdvanceSecurityVersion(1)
			check("AdvanceSecurityVersion", err)
			if out, _ := nvReadPublic(t, inst, tpm.SecurityVersionIndex); strings.Contains(out, "written") {
				t.Fatalf("the foreign index was written to:\n%s", out)
			}
		})
	}
	// With the foreign index gone, sigild defines its own.
	if v, err := tp.AdvanceSecurityVersion(2); err != nil || v < 2 {
		t.Fatalf("after the foreign index was deleted: %d, %v", v, err)
	}
}
