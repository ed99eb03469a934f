package verifier

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// benchLog is a 50-event crypto-agile log that replays to the simulator's
// PCRs 0, 1, 7 (as the fixture extended them) and 23 (reset, then extended
// with the log's other events), and a quote of them by the fixture's AK.
type benchLog struct {
	raw     []byte
	q       *wire.Quote
	sel     wire.PCRSelection
	nonce   []byte
	digests [][]byte // SHA-256 digests of the 50 events, in order
}

func newBenchLog(b *testing.B) *benchLog {
	b.Helper()
	if _, err := (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 23, Auth: tpm2.PasswordAuth(nil)}}).Execute(fx.tpm); err != nil {
		b.Fatalf("PCR_Reset 23: %v", err)
	}
	l := eventlogtest.New()
	bl := &benchLog{nonce: nonce(b)}
	add := func(pcr int, typ uint32, data, measured []byte) {
		l.Add(pcr, typ, data, measured)
		if measured == nil {
			measured = data
		}
		d := sha256.Sum256(measured)
		bl.digests = append(bl.digests, d[:])
	}
	// The fixture extended PCRs 0, 1 and 7 with these.
	add(0, 0x01, []byte("measurement 0"), nil)
	add(1, 0x0A, []byte("measurement 1"), nil)
	add(7, 0x80000007, []byte("measurement 7"), nil)
	for i := range 47 {
		var data, measured []byte
		var typ uint32
		switch i % 4 {
		case 0:
			typ, data = 0x80000001, efiVar(fmt.Sprintf("Var%02d", i), make([]byte, 64))
		case 1:
			typ, data, measured = 0x80000003, imageLoad(fmt.Sprintf(`\EFI\vendor\component%02d.efi`, i)), []byte(fmt.Sprintf("image %d", i))
		case 2:
			typ, data, measured = 0x0D, []byte(fmt.Sprintf("grub_cmd: set option%02d=value\x00", i)), []byte(fmt.Sprintf("set option%02d=value", i))
		case 3:
			typ, data = 0x04, []byte{0, 0, 0, 0}
		}
		add(23, typ, data, measured)
		if measured == nil {
			measured = data
		}
		if err := fx.extend(23, measured); err != nil {
			b.Fatal(err)
		}
	}
	bl.raw = l.Bytes()
	bl.q = fx.quote(b, fx.ak, bl.nonce, tpm2.TPMAlgSHA256, 0, 1, 7, 23)
	bl.sel = wire.PCRSelection{Hash: bl.q.Hash, PCRs: bl.q.PCRs}
	return bl
}

// BenchmarkVerifyAttestation measures the fleet's judgement of one
// attestation with a measured-boot log: VerifyQuote + VerifyEventLog of a
// 50-event log ("verifier"), next to the cryptography it cannot avoid
// ("floor": one ECDSA P-256 verification of the quote, SHA-256 of the PCR
// values, and the 50 SHA-256 extends of the replay). Throughput ratio =
// floor ns/op / verifier ns/op.
func BenchmarkVerifyAttestation(b *testing.B) {
	bl := newBenchLog(b)
	ak := mustAK(b, fx.ak)
	b.Run("verifier", func(b *testing.B) {
		for b.Loop() {
			vq, err := VerifyQuote(ak, bl.nonce, bl.sel, bl.q)
			if err != nil {
				b.Fatal(err)
			}
			el, err := VerifyEventLog(bl.raw, vq)
			if err != nil {
				b.Fatal(err)
			}
			if len(el.Events) != 50 {
				b.Fatalf("%d events verified", len(el.Events))
			}
		}
	})
	b.Run("eventlog-only", func(b *testing.B) {
		vq, err := VerifyQuote(ak, bl.nonce, bl.sel, bl.q)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := VerifyEventLog(bl.raw, vq); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("floor", func(b *testing.B) {
		sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](bl.q.Signature)
		if err != nil {
			b.Fatal(err)
		}
		ec, err := sig.Signature.ECDSA()
		if err != nil {
			b.Fatal(err)
		}
		r, s := new(big.Int).SetBytes(ec.SignatureR.Buffer), new(big.Int).SetBytes(ec.SignatureS.Buffer)
		for b.Loop() {
			d := sha256.Sum256(bl.q.Attest)
			if !ecdsa.Verify(ak.Key, d[:], r, s) {
				b.Fatal("signature")
			}
			h := sha256.New()
			for _, v := range bl.q.Values {
				h.Write(v)
			}
			h.Sum(nil)
			pcr := make([]byte, 32)
			for _, d := range bl.digests {
				h.Reset()
				h.Write(pcr)
				h.Write(d)
				pcr = h.Sum(pcr[:0])
			}
		}
	})
}
