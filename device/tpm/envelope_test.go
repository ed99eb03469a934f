package tpm_test

import (
	"crypto/rand"
	"testing"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/envelope/envelopetest"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// BenchmarkEnvelopeSign measures one signed envelope (pkg/envelope) made
// with the device's TPM-resident transport key on swtpm: the TPM2_Sign
// (key load, sign, flush) behind the crypto.Signer plus the COSE
// encoding; Verify checks each, so the benchmark cannot pass on a broken
// signature. Without swtpm it is skipped, unless CI=true.
func BenchmarkEnvelopeSign(b *testing.B) {
	inst := swtpmtest.New(b, nil)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tp.Close() })
	tk, err := tp.CreateTransportKey()
	if err != nil {
		b.Fatal(err)
	}
	s, err := tp.Signer(tk)
	if err != nil {
		b.Fatal(err)
	}
	payload := envelopetest.Payload()
	h := envelope.Header{KeyID: "4a1b2c3d", Topic: "sigil/v1/dev/d1/up/telemetry"}
	for b.Loop() {
		h.Counter++
		msg, err := envelope.Sign(rand.Reader, s, h, payload)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := envelope.Verify(msg, envelope.Expect{Key: s.Public(), KeyID: h.KeyID, Topic: h.Topic, After: h.Counter - 1}); err != nil {
			b.Fatal(err)
		}
	}
}
