package verifier

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// The hand-written parsers are held to go-tpm's decoder: for any input,
// they accept exactly when go-tpm's Unmarshal succeeds, Marshal gives the
// same bytes back (canonical) and the value is of a kind the parser is for;
// and then every decoded field equals go-tpm's. The fuzz targets check that
// on what the fuzzer makes; TestParsersAgreeWithGoTPM checks it on
// thousands of seeded mutations of real simulator output in every test
// run.

// goTPMDecode is the reference: go-tpm's Unmarshal, then Marshal back to the
// same bytes, with the size bound the parsers apply and a panic in go-tpm
// turned into an error.
func goTPMDecode[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (v *T, err error) {
	if err := bounded(b); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("go-tpm panicked: %v", r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, errors.New("not canonical")
	}
	return v, nil
}

// agreePublic fails unless parsePublic and go-tpm agree on b.
func agreePublic(t testing.TB, b []byte) bool {
	t.Helper()
	ref, refErr := goTPMDecode[tpm2.TPMTPublic](b)
	want := refErr == nil && (ref.Type == tpm2.TPMAlgRSA || ref.Type == tpm2.TPMAlgECC)
	p, err := parsePublic(b)
	if (err == nil) != want {
		t.Fatalf("TPMT_PUBLIC %x: parser error %v, go-tpm error %v (type in domain: %v)", b, err, refErr, want)
	}
	if err != nil {
		return false
	}
	if got := tpm2.Marshal(p.tpm()); !bytes.Equal(got, b) {
		t.Fatalf("TPMT_PUBLIC %x: the parsed value marshals to %x", b, got)
	}
	diff := func(field string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("TPMT_PUBLIC %x: %s = %v, go-tpm says %v", b, field, got, want)
		}
	}
	diff("type", p.typ, uint16(ref.Type))
	diff("nameAlg", p.nameAlg, uint16(ref.NameAlg))
	diff("objectAttributes", p.attrs, binary.BigEndian.Uint32(tpm2.Marshal(ref.ObjectAttributes)))
	diff("authPolicy", p.authPolicy, ref.AuthPolicy.Buffer)
	var (
		sym    tpm2.TPMTSymDefObject
		scheme tpm2.TPMUAsymScheme
	)
	switch ref.Type {
	case tpm2.TPMAlgRSA:
		parms, err := ref.Parameters.RSADetail()
		if err != nil {
			t.Fatal(err)
		}
		sym, scheme = parms.Symmetric, parms.Scheme.Details
		diff("scheme", p.scheme, uint16(parms.Scheme.Scheme))
		diff("keyBits", p.rsaBits, uint16(parms.KeyBits))
		diff("exponent", p.exponent, parms.Exponent)
		n, err := ref.Unique.RSA()
		if err != nil {
			t.Fatal(err)
		}
		diff("modulus", p.modulus, n.Buffer)
	case tpm2.TPMAlgECC:
		parms, err := ref.Parameters.ECCDetail()
		if err != nil {
			t.Fatal(err)
		}
		sym, scheme = parms.Symmetric, parms.Scheme.Details
		diff("scheme", p.scheme, uint16(parms.Scheme.Scheme))
		diff("curveID", p.curve, uint16(parms.CurveID))
		diff("kdf", p.kdf, uint16(parms.KDF.Scheme))
		if p.kdf != algNull {
			diff("kdf details", binary.BigEndian.AppendUint16(nil, p.kdfHash), tpm2.Marshal(parms.KDF)[2:])
		}
		pt, err := ref.Unique.ECC()
		if err != nil {
			t.Fatal(err)
		}
		diff("x", p.x, pt.X.Buffer)
		diff("y", p.y, pt.Y.Buffer)
	}
	diff("symmetric algorithm", p.symAlg, uint16(sym.Algorithm))
	switch p.symAlg {
	case algAES:
		bits, err1 := sym.KeyBits.AES()
		mode, err2 := sym.Mode.AES()
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		diff("symmetric keyBits", p.symKeyBits, uint16(*bits))
		diff("symmetric mode", p.symMode, uint16(*mode))
	case algXOR:
		h, err := sym.KeyBits.XOR()
		if err != nil {
			t.Fatal(err)
		}
		diff("symmetric XOR hash", p.symKeyBits, uint16(*h))
	}
	if p.scheme == algECDSA {
		d, err := scheme.ECDSA()
		if err != nil {
			t.Fatal(err)
		}
		diff("scheme hash", p.schemeHash, uint16(d.HashAlg))
	}
	if p.scheme != algNull {
		var detail []byte
		switch asymSchemeDetail(p.scheme) {
		case 2:
			detail = binary.BigEndian.AppendUint16(nil, p.schemeHash)
		case 4:
			detail = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, p.schemeHash), p.schemeCount)
		}
		diff("scheme details", detail, tpm2.Marshal(tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgID(p.scheme), Details: scheme})[2:])
	}
	return true
}

// agreeAttest fails unless parseAttest and go-tpm agree on b.
func agreeAttest(t testing.TB, b []byte) bool {
	t.Helper()
	ref, refErr := goTPMDecode[tpm2.TPMSAttest](b)
	want := refErr == nil && (ref.Type == tpm2.TPMSTAttestQuote || ref.Type == tpm2.TPMSTAttestCertify)
	var a attestation
	err := parseAttest(b, &a)
	if (err == nil) != want {
		t.Fatalf("TPMS_ATTEST %x: parser error %v, go-tpm error %v (type in domain: %v)", b, err, refErr, want)
	}
	if err != nil {
		return false
	}
	diff := func(field string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("TPMS_ATTEST %x: %s = %v, go-tpm says %v", b, field, got, want)
		}
	}
	diff("magic", a.magic, uint32(ref.Magic))
	diff("type", a.typ, uint16(ref.Type))
	diff("qualifiedSigner", a.qualifiedSigner, ref.QualifiedSigner.Buffer)
	diff("extraData", a.extraData, ref.ExtraData.Buffer)
	diff("clock", a.clock, ClockInfo{Clock: ref.ClockInfo.Clock, ResetCount: ref.ClockInfo.ResetCount,
		RestartCount: ref.ClockInfo.RestartCount, Safe: ref.ClockInfo.Safe})
	diff("firmwareVersion", a.firmwareVersion, ref.FirmwareVersion)
	switch ref.Type {
	case tpm2.TPMSTAttestQuote:
		q, err := ref.Attested.Quote()
		if err != nil {
			t.Fatal(err)
		}
		diff("PCR selection count", len(a.pcrSelect), len(q.PCRSelect.PCRSelections))
		for i, s := range q.PCRSelect.PCRSelections {
			diff(fmt.Sprintf("PCR selection %d", i), a.pcrSelect[i], pcrSelection{uint16(s.Hash), s.PCRSelect})
		}
		diff("pcrDigest", a.pcrDigest, q.PCRDigest.Buffer)
		diff("name", a.name, []byte(nil))
	case tpm2.TPMSTAttestCertify:
		c, err := ref.Attested.Certify()
		if err != nil {
			t.Fatal(err)
		}
		diff("name", a.name, c.Name.Buffer)
		diff("qualifiedName", a.qualifiedName, c.QualifiedName.Buffer)
		diff("PCR selection count", len(a.pcrSelect), 0)
	}
	return true
}

// agreeSignature fails unless parseSignature and go-tpm agree on b.
func agreeSignature(t testing.TB, b []byte) bool {
	t.Helper()
	ref, refErr := goTPMDecode[tpm2.TPMTSignature](b)
	want := false
	var ec *tpm2.TPMSSignatureECC
	if refErr == nil && ref.SigAlg == tpm2.TPMAlgECDSA {
		var err error
		if ec, err = ref.Signature.ECDSA(); err != nil {
			t.Fatal(err)
		}
		want = ec.Hash == tpm2.TPMAlgSHA256
	}
	s, err := parseSignature(b)
	if (err == nil) != want {
		t.Fatalf("TPMT_SIGNATURE %x: parser error %v, go-tpm error %v (ECDSA with SHA-256: %v)", b, err, refErr, want)
	}
	if err == nil && (!bytes.Equal(s.r, ec.SignatureR.Buffer) || !bytes.Equal(s.s, ec.SignatureS.Buffer)) {
		t.Fatalf("TPMT_SIGNATURE %x: r, s = %x, %x; go-tpm says %x, %x", b, s.r, s.s, ec.SignatureR.Buffer, ec.SignatureS.Buffer)
	}
	return err == nil
}

// publicSeeds are real public areas from the simulator and re-encodings
// of them that reach every union member the parser knows.
func publicSeeds(t testing.TB) [][]byte {
	seeds := [][]byte{fx.rsaEK, fx.eccEK, fx.ak.pubBytes, fx.tk.pubBytes, fx.akUnrestricted.pubBytes,
		tpm2.Marshal(tpm2.RSASRKTemplate), tpm2.Marshal(tpm2.ECCSRKTemplate)}
	rsaEK, err := tpm2.Unmarshal[tpm2.TPMTPublic](fx.rsaEK)
	if err != nil {
		t.Fatal(err)
	}
	h := tpm2.TPMAlgSHA384
	for _, s := range []tpm2.TPMTRSAScheme{
		{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: h})},
		{Scheme: tpm2.TPMAlgRSAES, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAES, &tpm2.TPMSEncSchemeRSAES{})},
		{Scheme: tpm2.TPMAlgRSAPSS, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: h})},
		{Scheme: tpm2.TPMAlgOAEP, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgOAEP, &tpm2.TPMSEncSchemeOAEP{HashAlg: h})},
		{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: h})},
		{Scheme: tpm2.TPMAlgECDH, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDH, &tpm2.TPMSKeySchemeECDH{HashAlg: h})},
		{Scheme: tpm2.TPMAlgECMQV, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECMQV, &tpm2.TPMSKeySchemeECMQV{HashAlg: h})},
		{Scheme: tpm2.TPMAlgECDAA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDAA, &tpm2.TPMSSchemeECDAA{HashAlg: h, Count: 7})},
	} {
		seeds = append(seeds, marshalPublic(*rsaEK, func(p *tpm2.TPMTPublic) {
			parms, _ := p.Parameters.RSADetail()
			c := *parms
			c.Scheme = s
			c.Symmetric = tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgXOR,
				KeyBits: tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgXOR, tpm2.TPMAlgSHA256),
				Mode:    tpm2.NewTPMUSymMode(tpm2.TPMAlgXOR, tpm2.TPMSEmpty{})}
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &c)
		}))
	}
	for _, k := range []tpm2.TPMTKDFScheme{
		{Scheme: tpm2.TPMAlgMGF1, Details: tpm2.NewTPMUKDFScheme(tpm2.TPMAlgMGF1, &tpm2.TPMSKDFSchemeMGF1{HashAlg: h})},
		{Scheme: tpm2.TPMAlgECDH, Details: tpm2.NewTPMUKDFScheme(tpm2.TPMAlgECDH, &tpm2.TPMSKDFSchemeECDH{HashAlg: h})},
		{Scheme: tpm2.TPMAlgKDF1SP80056A, Details: tpm2.NewTPMUKDFScheme(tpm2.TPMAlgKDF1SP80056A, &tpm2.TPMSKDFSchemeKDF1SP80056A{HashAlg: h})},
		{Scheme: tpm2.TPMAlgKDF2, Details: tpm2.NewTPMUKDFScheme(tpm2.TPMAlgKDF2, &tpm2.TPMSKDFSchemeKDF2{HashAlg: h})},
		{Scheme: tpm2.TPMAlgKDF1SP800108, Details: tpm2.NewTPMUKDFScheme(tpm2.TPMAlgKDF1SP800108, &tpm2.TPMSKDFSchemeKDF1SP800108{HashAlg: h})},
	} {
		seeds = append(seeds, marshalPublic(fx.ak.pub, func(p *tpm2.TPMTPublic) {
			parms, _ := p.Parameters.ECCDetail()
			c := *parms
			c.KDF = k
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
			p.ObjectAttributes.SetReservedBit(24, true)
		}))
	}
	return seeds
}

// attestSeeds are quotes of both banks and a certify from the simulator,
// and re-encodings of a quote with two banks and with none; sigs are the
// simulator's signatures and an RSA and an HMAC signature.
func attestSeeds(t testing.TB) (attests, sigs [][]byte) {
	n := []byte("differential nonce")
	for _, bank := range []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1} {
		q := fx.quote(t, fx.ak, n, bank, 0, 1, 7, 16)
		attests, sigs = append(attests, q.Attest), append(sigs, q.Signature)
	}
	a, s := fx.certify(t, fx.ak, fx.tk, n)
	attests, sigs = append(attests, a), append(sigs, s)

	ref, err := tpm2.Unmarshal[tpm2.TPMSAttest](attests[0])
	if err != nil {
		t.Fatal(err)
	}
	q, _ := ref.Attested.Quote()
	for _, sels := range [][]tpm2.TPMSPCRSelection{
		append(q.PCRSelect.PCRSelections, tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA1, PCRSelect: []byte{1, 0, 0x80}}),
		nil,
	} {
		c := *q
		c.PCRSelect = tpm2.TPMLPCRSelection{PCRSelections: sels}
		edited := *ref
		edited.Attested = tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &c)
		attests = append(attests, tpm2.Marshal(edited))
	}
	sigs = append(sigs,
		tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgRSASSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA,
			&tpm2.TPMSSignatureRSA{Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}})}),
		tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgHMAC, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgHMAC,
			&tpm2.TPMTHA{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)})}),
	)
	return attests, sigs
}

// interesting16 are values a mutation writes over a 16-bit field: union
// selectors the parsers know and do not know, and sizes at the edges.
var interesting16 = []uint16{0, 1, 2, 3, 0x0004, 0x0006, 0x000A, 0x000B, 0x000C, 0x0010, 0x0014, 0x0015,
	0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x001B, 0x001D, 0x0020, 0x0023, 0x0025, 0x0043, 0x8014,
	0x8017, 0x8018, 0x8019, 0x00FF, 0x0100, 0x7FFF, 0x8000, 0xFFFF}

// mutate returns a copy of b changed in one to three random ways.
func mutate(r *rand.Rand, b []byte) []byte {
	b = bytes.Clone(b)
	for range 1 + r.IntN(3) {
		if len(b) == 0 {
			return append(b, byte(r.Uint32()))
		}
		i := r.IntN(len(b))
		switch r.IntN(8) {
		case 0: // flip a bit
			b[i] ^= 1 << r.IntN(8)
		case 1: // set a byte
			b[i] = byte(r.Uint32())
		case 2, 3: // write a 16-bit value: a selector or a size
			if i+2 <= len(b) {
				v := interesting16[r.IntN(len(interesting16))]
				if r.IntN(3) == 0 {
					v = binary.BigEndian.Uint16(b[i:]) + uint16(r.IntN(5)) - 2
				}
				binary.BigEndian.PutUint16(b[i:], v)
			}
		case 4: // truncate
			b = b[:i]
		case 5: // append
			b = append(b, make([]byte, 1+r.IntN(4))...)
		case 6: // delete a byte
			b = append(b[:i], b[i+1:]...)
		case 7: // insert a byte
			b = append(b[:i], append([]byte{byte(r.Uint32())}, b[i:]...)...)
		}
	}
	return b
}

// TestParsersAgreeWithGoTPM runs the differential check on the seeds and
// on seeded random mutations of them.
func TestParsersAgreeWithGoTPM(t *testing.T) {
	n := 4000
	if testing.Short() {
		n = 500
	}
	r := rand.New(rand.NewPCG(1, 2))
	attests, sigs := attestSeeds(t)
	for _, tc := range []struct {
		name  string
		seeds [][]byte
		agree func(testing.TB, []byte) bool
	}{
		{"TPMT_PUBLIC", publicSeeds(t), agreePublic},
		{"TPMS_ATTEST", attests, agreeAttest},
		{"TPMT_SIGNATURE", sigs, agreeSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range tc.seeds {
				tc.agree(t, s)
			}
			accepted, total := 0, 0
			count := func(ok bool) {
				total++
				if ok {
					accepted++
				}
			}
			for i := range n {
				b := mutate(r, tc.seeds[i%len(tc.seeds)])
				count(tc.agree(t, b))
				if i%4 == 0 { // mutations of mutations reach deeper
					count(tc.agree(t, mutate(r, b)))
				}
			}
			t.Logf("%d seeds, %d mutations, %d of them accepted by both", len(tc.seeds), total, accepted)
			// Both outcomes must be exercised, or the agreement proves
			// little.
			if accepted == 0 || accepted == total {
				t.Fatalf("%d of %d mutations accepted: the mutations do not exercise both outcomes", accepted, total)
			}
		})
	}
}

// FuzzParsePublic holds parsePublic to go-tpm's TPMT_PUBLIC decoder.
func FuzzParsePublic(f *testing.F) {
	for _, s := range publicSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) { agreePublic(t, b) })
}

// FuzzParseAttest holds parseAttest to go-tpm's TPMS_ATTEST decoder.
func FuzzParseAttest(f *testing.F) {
	attests, _ := attestSeeds(f)
	for _, s := range attests {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) { agreeAttest(t, b) })
}

// FuzzParseSignature holds parseSignature to go-tpm's TPMT_SIGNATURE
// decoder.
func FuzzParseSignature(f *testing.F) {
	_, sigs := attestSeeds(f)
	for _, s := range sigs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) { agreeSignature(t, b) })
}
