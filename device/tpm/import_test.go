package tpm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// wrapFor wraps secret to tp's EK as the fleet does.
func wrapFor(t testing.TB, tp *tpm.TPM, secret []byte, sel *wire.PCRSelection, values [][]byte) *secrets.Blob {
	t.Helper()
	ek, err := tp.EK()
	if err != nil {
		t.Fatal(err)
	}
	b, err := secrets.Wrap(rand.Reader, ek.Public, secret, sel, values)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// leftovers counts the transient objects and loaded sessions in the TPM.
func leftovers(t *testing.T, inst *swtpm.Instance) int {
	t.Helper()
	c := dialRaw(t, inst)
	defer c.Close()
	n := 0
	// Loaded sessions are listed from 0x02000000; policy session handles
	// start with 0x03.
	for _, r := range []struct{ first, lo, hi uint32 }{{0x80000000, 0x80, 0x80}, {0x02000000, 0x02, 0x03}} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: r.first, PropertyCount: 16}.Execute(c)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs.Handle {
			if typ := uint32(h) >> 24; typ >= r.lo && typ <= r.hi {
				n++
			}
		}
	}
	return n
}

func importBlob(tp *tpm.TPM, b *secrets.Blob) (*tpm.SealedBlob, error) {
	return tp.ImportSecret(b.Public, b.Duplicate, b.Seed, b.PCRs)
}

// TestSecretImport delivers secrets to two swtpm devices: each imports and
// unseals its own, and neither can use the other's blob.
func TestSecretImport(t *testing.T) {
	ca := swtpmtest.NewCA(t)
	instA, instB := swtpmtest.New(t, ca), swtpmtest.New(t, ca)
	a, b := open(t, instA), open(t, instB)
	secret := []byte("db-password: correct horse battery staple")

	blobA := wrapFor(t, a, secret, nil, nil)
	sealedA, err := importBlob(a, blobA)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealedA.Private, secret) || bytes.Contains(blobA.Duplicate, secret) {
		t.Fatal("secret in the clear in a blob")
	}
	got, err := a.Unseal(sealedA)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatalf("unsealed %q, want %q", got, secret)
	}
	// Unseal again: the blob is reusable, and nothing was left in the TPM.
	if got, err := a.Unseal(sealedA); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("second unseal: %q %v", got, err)
	}
	if n := leftovers(t, instA); n != 0 {
		t.Fatalf("%d transient objects or sessions left in the TPM", n)
	}

	t.Run("OtherDevice", func(t *testing.T) {
		if _, err := importBlob(b, blobA); err == nil {
			t.Fatal("device B imported device A's blob")
		} else if !strings.HasPrefix(err.Error(), "tpm: import secret: ") {
			t.Fatalf("error %q", err)
		}
		// A's imported blob, copied to B, does not load under B's EK.
		if _, err := b.Unseal(sealedA); err == nil {
			t.Fatal("device B unsealed device A's imported blob")
		}
		// B's own blob works on B.
		sealedB, err := importBlob(b, wrapFor(t, b, []byte("b"), nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := b.Unseal(sealedB); err != nil || string(got) != "b" {
			t.Fatalf("B unseal: %q %v", got, err)
		}
		if n := leftovers(t, instB); n != 0 {
			t.Fatalf("%d transient objects or sessions left in B", n)
		}
	})

	t.Run("Tampered", func(t *testing.T) {
		flip := func(b []byte, i int) []byte {
			b = bytes.Clone(b)
			b[i%len(b)] ^= 0x40
			return b
		}
		other := wrapFor(t, a, []byte("another secret"), nil, nil)
		for name, bl := range map[string]*secrets.Blob{
			"duplicate":       {Public: blobA.Public, Duplicate: flip(blobA.Duplicate, 40), Seed: blobA.Seed},
			"hmac":            {Public: blobA.Public, Duplicate: flip(blobA.Duplicate, 5), Seed: blobA.Seed},
			"seed":            {Public: blobA.Public, Duplicate: blobA.Duplicate, Seed: flip(blobA.Seed, 100)},
			"public (policy)": {Public: flip(blobA.Public, 20), Duplicate: blobA.Duplicate, Seed: blobA.Seed},
			"mixed blobs":     {Public: other.Public, Duplicate: blobA.Duplicate, Seed: blobA.Seed},
			"mixed seed":      {Public: blobA.Public, Duplicate: blobA.Duplicate, Seed: other.Seed},
		} {
			if _, err := importBlob(a, bl); err == nil {
				t.Errorf("%s: tampered blob imported", name)
			}
		}
		// A tampered private area of an imported blob does not load.
		bad := *sealedA
		bad.Private = flip(sealedA.Private, 50)
		if _, err := a.Unseal(&bad); err == nil {
			t.Error("tampered imported blob unsealed")
		}
		if n := leftovers(t, instA); n != 0 {
			t.Fatalf("%d transient objects or sessions left after failures", n)
		}
	})

	t.Run("EndorsementPassword", func(t *testing.T) {
		// With an endorsement password the EK's policy cannot be met: an
		// error, and the EK session and handles are flushed.
		swtpmtest.Run(t, "tpm2_changeauth", "-T", instA.TCTI(), "-c", "e", "sesame")
		defer swtpmtest.Run(t, "tpm2_changeauth", "-T", instA.TCTI(), "-c", "e", "-p", "sesame")
		if _, err := importBlob(a, blobA); err == nil || !strings.Contains(err.Error(), "policy secret") {
			t.Fatalf("import: %v", err)
		}
		if _, err := a.Unseal(sealedA); err == nil || !strings.Contains(err.Error(), "policy secret") {
			t.Fatalf("unseal: %v", err)
		}
		if n := leftovers(t, instA); n != 0 {
			t.Fatalf("%d transient objects or sessions left", n)
		}
	})

	t.Run("NotSealedData", func(t *testing.T) {
		// A key's public area is refused before the TPM sees it.
		ek, err := a.EK()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.ImportSecret(ek.Public, blobA.Duplicate, blobA.Seed, nil); err == nil {
			t.Fatal("imported with an EK's public area")
		}
		if _, err := a.ImportSecret(nil, nil, nil, nil); err == nil {
			t.Fatal("empty blob imported")
		}
		if _, err := a.Unseal(nil); err == nil {
			t.Fatal("nil blob unsealed")
		}
	})
}

// TestSecretPCRBound seals a secret to PCR 16's current value: it unseals,
// stops unsealing once tpm2-tools (an independent client) extends PCR 16,
// and unseals again after an orderly reboot resets PCR 16.
func TestSecretPCRBound(t *testing.T) {
	swtpmtest.RequireBinaries(t, "tpm2_pcrextend")
	inst := swtpmtest.New(t, nil)
	tp := open(t, inst)
	sel := sha256Sel(16, 9)
	values, err := tp.ReadPCRs(sel)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("bound to boot state")
	sealed, err := importBlob(tp, wrapFor(t, tp, secret, &sel, values))
	if err != nil {
		t.Fatal(err)
	}
	if sealed.PCRs == nil || len(sealed.PCRs.PCRs) != 2 {
		t.Fatalf("sealed blob lost its selection: %+v", sealed.PCRs)
	}
	if got, err := tp.Unseal(sealed); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal: %q %v", got, err)
	}

	// Bound to other values: never unseals.
	wrong := [][]byte{values[0], bytes.Repeat([]byte{1}, 32)}
	sealedWrong, err := importBlob(tp, wrapFor(t, tp, secret, &sel, wrong))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Unseal(sealedWrong); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("unseal with wrong PCR values: %v, want a policy failure", err)
	}
	// The selection is part of the policy: the same blob without it fails.
	noSel := *sealed
	noSel.PCRs = nil
	if _, err := tp.Unseal(&noSel); err == nil {
		t.Fatal("PCR-bound secret unsealed without its PCR policy")
	}

	swtpmtest.Run(t, "tpm2_pcrextend", "-T", inst.TCTI(), "16:sha256="+hex.EncodeToString(bytes.Repeat([]byte{0xee}, 32)))
	if _, err := tp.Unseal(sealed); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("unseal after PCR 16 changed: %v, want a policy failure", err)
	}
	if n := leftovers(t, inst); n != 0 {
		t.Fatalf("%d transient objects or sessions left after a refused unseal", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := inst.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := tp.Unseal(sealed); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal after reboot: %q %v", got, err)
	}
}

// BenchmarkImportUnseal measures the device's cost of a delivered secret on
// swtpm: TPM2_Import, then Load + Unseal (PCR-bound). Without swtpm it is
// skipped, unless CI=true.
func BenchmarkImportUnseal(b *testing.B) {
	inst := swtpmtest.New(b, nil)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tp.Close() })
	sel := sha256Sel(16)
	values, err := tp.ReadPCRs(sel)
	if err != nil {
		b.Fatal(err)
	}
	blob := wrapFor(b, tp, bytes.Repeat([]byte{7}, 64), &sel, values)
	var sealed *tpm.SealedBlob
	b.Run("Import", func(b *testing.B) {
		for b.Loop() {
			if sealed, err = importBlob(tp, blob); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unseal", func(b *testing.B) {
		for b.Loop() {
			if _, err := tp.Unseal(sealed); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestFlushesLeftoverPolicySessions fills swtpm's session slots with policy
// sessions from another client (as a crash in the middle of Unseal or
// ActivateCredential would leave them): the next operation flushes them and
// its own policy sessions fit. The TPM lists loaded policy sessions, whose
// handles start with 0x03, under TPM_HT_LOADED_SESSION (0x02).
func TestFlushesLeftoverPolicySessions(t *testing.T) {
	inst := swtpmtest.New(t, nil)
	c := dialRaw(t, inst)
	for range 3 {
		if _, _, err := tpm2.PolicySession(c, tpm2.TPMAlgSHA256, 16); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if n := leftovers(t, inst); n != 3 {
		t.Fatalf("%d sessions, want 3", n)
	}
	tp := open(t, inst)
	sealed, err := importBlob(tp, wrapFor(t, tp, []byte("s"), nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tp.Unseal(sealed); err != nil || string(got) != "s" {
		t.Fatalf("unseal: %q %v", got, err)
	}
	if n := leftovers(t, inst); n != 0 {
		t.Fatalf("%d transient objects or sessions left", n)
	}
}
