package eventlogtest_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
)

// TestLogReplays: the log written replays, in the fleet's verifier, to
// the PCR values it tracks, which are the TPM's extend of the measured
// digests; Ubuntu's fixture replays to UbuntuPCRs.
func TestLogReplays(t *testing.T) {
	l := eventlogtest.New()
	l.Add(9, 0x0D, []byte("/vmlinuz\x00"), []byte("the kernel"))
	l.Add(9, 3, []byte("no action"), nil)
	d := sha256.Sum256([]byte("the kernel"))
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if got := l.PCRs(tpm2.TPMAlgSHA256)[9]; !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR 9 = %x, want %x", got, want)
	}
	for _, bank := range []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256} {
		q := &verifier.VerifiedQuote{Hash: uint16(bank), PCRs: l.PCRs(bank)}
		if _, err := verifier.VerifyEventLog(l.Bytes(), q); err != nil {
			t.Fatalf("bank %v: %v", bank, err)
		}
	}
	q := &verifier.VerifiedQuote{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: map[int][]byte{}}
	for pcr, v := range eventlogtest.UbuntuPCRs(tpm2.TPMAlgSHA256) {
		q.PCRs[pcr] = unhex(t, v)
	}
	if _, err := verifier.VerifyEventLog(eventlogtest.Ubuntu(t), q); err != nil {
		t.Fatalf("Ubuntu: %v", err)
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
