package verifier

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// This file decodes the TPM structures the fleet accepts, by hand: TPMS_ATTEST
// of a quote or a certify, TPMT_SIGNATURE with ECDSA over SHA-256, and
// TPMT_PUBLIC of RSA and ECC keys. The encoding is the TPM's (Part 2:
// Structures): big-endian integers, TPM2B fields as a 16-bit size and that
// many bytes, unions selected by an earlier field, TPM_ALG_NULL selecting
// nothing. Each parser is canonical: it consumes every byte, refuses
// trailing bytes, sizes that overrun their enclosing structure and a
// TPMI_YES_NO other than 0 or 1, so the bytes are exactly the encoding of
// the value decoded (which go-tpm's reflection-based Unmarshal followed by
// Marshal only establishes at about twenty times the cost). What each
// accepts is what go-tpm's decoder accepts for these types; the
// differential fuzz tests (tpmparse_test.go) hold them to it. Decoded byte
// fields alias the input; nothing here allocates on success except
// public.tpm.

// maxStruct bounds any TPM structure handed to a parser.
const maxStruct = 4096

// reader reads a TPM encoding. The first failure sticks: later reads return
// zero values, and err says what failed first.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string, need int) {
	if r.err == nil {
		r.err = fmt.Errorf("truncated: %s needs %d bytes, %d left", what, need, len(r.b))
	}
	r.b = nil
}

func (r *reader) take(what string, n int) []byte {
	if r.err != nil || n > len(r.b) {
		r.fail(what, n)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(what string) uint8 {
	if v := r.take(what, 1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16(what string) uint16 {
	if v := r.take(what, 2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if v := r.take(what, 4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if v := r.take(what, 8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// tpm2b reads a TPM2B: a 16-bit size and that many bytes.
func (r *reader) tpm2b(what string) []byte {
	n := r.u16(what + " size")
	return r.take(what, int(n))
}

// invalid records a semantic failure (an unknown union selector).
func (r *reader) invalid(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
	r.b = nil
}

// done returns the first failure, or an error if bytes are left over.
func (r *reader) done() error {
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return fmt.Errorf("not canonical: %d trailing bytes", len(r.b))
	}
	return nil
}

// bounded refuses empty and oversized input before a parser starts.
func bounded(b []byte) error {
	if len(b) == 0 {
		return errors.New("empty")
	}
	if len(b) > maxStruct {
		return fmt.Errorf("%d bytes, more than %d", len(b), maxStruct)
	}
	return nil
}

// Algorithm and structure tags, as uint16 for switches on raw fields.
const (
	algRSA          = uint16(tpm2.TPMAlgRSA)
	algECC          = uint16(tpm2.TPMAlgECC)
	algNull         = uint16(tpm2.TPMAlgNull)
	algAES          = uint16(tpm2.TPMAlgAES)
	algXOR          = uint16(tpm2.TPMAlgXOR)
	algCFB          = uint16(tpm2.TPMAlgCFB)
	algSHA256       = uint16(tpm2.TPMAlgSHA256)
	algECDSA        = uint16(tpm2.TPMAlgECDSA)
	stAttestQuote   = uint16(tpm2.TPMSTAttestQuote)
	stAttestCertify = uint16(tpm2.TPMSTAttestCertify)
)

// errAttestType is returned by parseAttest for a well-formed header whose
// type is neither a quote nor a certify.
var errAttestType = errors.New("attestation type not accepted")

// pcrSelection is one TPMS_PCR_SELECTION.
type pcrSelection struct {
	hash   uint16
	bitmap []byte
}

// attestation is a decoded TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE or
// TPM_ST_ATTEST_CERTIFY.
type attestation struct {
	magic           uint32
	typ             uint16
	qualifiedSigner []byte
	extraData       []byte
	clock           ClockInfo
	firmwareVersion uint64

	// TPMS_QUOTE_INFO, when typ is TPM_ST_ATTEST_QUOTE.
	pcrSelect []pcrSelection
	pcrDigest []byte
	selBuf    [2]pcrSelection // backing store for pcrSelect

	// TPMS_CERTIFY_INFO, when typ is TPM_ST_ATTEST_CERTIFY.
	name, qualifiedName []byte
}

// parseAttest decodes a TPMS_ATTEST into a. The magic value is read but not
// judged (the caller checks it, to name the failed check). A header whose
// type is another attestation type fails with errAttestType, with a.magic
// and a.typ filled.
func parseAttest(b []byte, a *attestation) error {
	if err := bounded(b); err != nil {
		return err
	}
	r := reader{b: b}
	a.magic = r.u32("magic")
	a.typ = r.u16("type")
	if r.err == nil && a.typ != stAttestQuote && a.typ != stAttestCertify {
		return fmt.Errorf("%w: %#04x", errAttestType, a.typ)
	}
	a.qualifiedSigner = r.tpm2b("qualifiedSigner")
	a.extraData = r.tpm2b("extraData")
	a.clock.Clock = r.u64("clock")
	a.clock.ResetCount = r.u32("resetCount")
	a.clock.RestartCount = r.u32("restartCount")
	switch safe := r.u8("safe"); safe {
	case 0, 1:
		a.clock.Safe = safe == 1
	default:
		r.invalid("not canonical: safe is %d", safe)
	}
	a.firmwareVersion = r.u64("firmwareVersion")
	switch a.typ {
	case stAttestQuote:
		n := r.u32("pcrSelect count")
		// Each selection takes at least 3 bytes: a count beyond what is
		// left cannot be honest, and must not size an allocation.
		if r.err == nil && uint64(n)*3 > uint64(len(r.b)) {
			r.fail("pcrSelect", int(min(n, maxStruct))*3)
		}
		a.pcrSelect = a.selBuf[:0]
		for i := uint32(0); i < n && r.err == nil; i++ {
			s := pcrSelection{hash: r.u16("pcrSelect hash")}
			s.bitmap = r.take("pcrSelect bitmap", int(r.u8("sizeofSelect")))
			a.pcrSelect = append(a.pcrSelect, s)
		}
		a.pcrDigest = r.tpm2b("pcrDigest")
	case stAttestCertify:
		a.name = r.tpm2b("name")
		a.qualifiedName = r.tpm2b("qualifiedName")
	}
	return r.done()
}

// ecdsaSignature is a decoded TPMT_SIGNATURE with sigAlg TPM_ALG_ECDSA and
// hash TPM_ALG_SHA256.
type ecdsaSignature struct {
	r, s []byte
}

// parseSignature decodes a TPMT_SIGNATURE and accepts only ECDSA with
// SHA-256.
func parseSignature(b []byte) (ecdsaSignature, error) {
	if err := bounded(b); err != nil {
		return ecdsaSignature{}, err
	}
	r := reader{b: b}
	if alg := r.u16("sigAlg"); r.err == nil && alg != algECDSA {
		return ecdsaSignature{}, fmt.Errorf("signature scheme %#04x, want ECDSA", alg)
	}
	if h := r.u16("hash"); r.err == nil && h != algSHA256 {
		return ecdsaSignature{}, fmt.Errorf("signature hash %#04x, want SHA-256", h)
	}
	var sig ecdsaSignature
	sig.r = r.tpm2b("signatureR")
	sig.s = r.tpm2b("signatureS")
	return sig, r.done()
}

// Bits of TPMA_OBJECT the verifier judges.
const (
	attrFixedTPM            = 1 << 1
	attrFixedParent         = 1 << 4
	attrSensitiveDataOrigin = 1 << 5
	attrRestricted          = 1 << 16
	attrDecrypt             = 1 << 17
	attrSign                = 1 << 18
)

// public is a decoded TPMT_PUBLIC of an RSA or ECC key.
type public struct {
	typ, nameAlg uint16
	attrs        uint32
	authPolicy   []byte

	// TPMT_SYM_DEF_OBJECT: algorithm NULL, AES (keyBits, mode) or XOR
	// (keyBits holds the hash).
	symAlg, symKeyBits, symMode uint16
	// TPMT_RSA_SCHEME or TPMT_ECC_SCHEME: scheme, its hash unless the
	// scheme is NULL or RSAES, and ECDAA's count.
	scheme, schemeHash, schemeCount uint16

	// TPMS_RSA_PARMS and TPM2B_PUBLIC_KEY_RSA.
	rsaBits  uint16
	exponent uint32
	modulus  []byte

	// TPMS_ECC_PARMS and TPMS_ECC_POINT.
	curve, kdf, kdfHash uint16
	x, y                []byte
}

// asymSchemeDetail returns the size of TPMU_ASYM_SCHEME's member for
// scheme, or -1 when no member exists.
func asymSchemeDetail(scheme uint16) int {
	switch tpm2.TPMAlgID(scheme) {
	case tpm2.TPMAlgRSAES:
		return 0
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgOAEP,
		tpm2.TPMAlgECDSA, tpm2.TPMAlgECDH, tpm2.TPMAlgECMQV:
		return 2
	case tpm2.TPMAlgECDAA:
		return 4
	}
	return -1
}

// isKDF reports whether TPMU_KDF_SCHEME has a member for scheme.
func isKDF(scheme uint16) bool {
	switch tpm2.TPMAlgID(scheme) {
	case tpm2.TPMAlgMGF1, tpm2.TPMAlgECDH, tpm2.TPMAlgKDF1SP80056A, tpm2.TPMAlgKDF2, tpm2.TPMAlgKDF1SP800108:
		return true
	}
	return false
}

// parsePublic decodes a TPMT_PUBLIC whose type is RSA or ECC.
func parsePublic(b []byte) (*public, error) {
	if err := bounded(b); err != nil {
		return nil, err
	}
	r := reader{b: b}
	p := &public{}
	p.typ = r.u16("type")
	if r.err == nil && p.typ != algRSA && p.typ != algECC {
		return nil, fmt.Errorf("type %#04x, want RSA or ECC", p.typ)
	}
	p.nameAlg = r.u16("nameAlg")
	p.attrs = r.u32("objectAttributes")
	p.authPolicy = r.tpm2b("authPolicy")

	p.symAlg = r.u16("symmetric algorithm")
	switch p.symAlg {
	case algNull:
	case algAES:
		p.symKeyBits = r.u16("symmetric keyBits")
		p.symMode = r.u16("symmetric mode")
	case algXOR:
		p.symKeyBits = r.u16("symmetric XOR hash")
	default:
		r.invalid("symmetric algorithm %#04x not accepted", p.symAlg)
	}
	p.scheme = r.u16("scheme")
	if p.scheme != algNull {
		switch asymSchemeDetail(p.scheme) {
		case 0:
		case 2:
			p.schemeHash = r.u16("scheme hash")
		case 4:
			p.schemeHash = r.u16("scheme hash")
			p.schemeCount = r.u16("scheme count")
		default:
			r.invalid("scheme %#04x not accepted", p.scheme)
		}
	}
	switch p.typ {
	case algRSA:
		p.rsaBits = r.u16("keyBits")
		p.exponent = r.u32("exponent")
		p.modulus = r.tpm2b("modulus")
	case algECC:
		p.curve = r.u16("curveID")
		p.kdf = r.u16("kdf")
		if p.kdf != algNull {
			if isKDF(p.kdf) {
				p.kdfHash = r.u16("kdf hash")
			} else {
				r.invalid("kdf %#04x not accepted", p.kdf)
			}
		}
		p.x = r.tpm2b("x")
		p.y = r.tpm2b("y")
	}
	if err := r.done(); err != nil {
		return nil, err
	}
	return p, nil
}

// tpm returns p as go-tpm's TPMT_PUBLIC; marshalling it yields the bytes p
// was decoded from. Its buffers are copies.
func (p *public) tpm() tpm2.TPMTPublic {
	pub := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgID(p.typ),
		NameAlg:          tpm2.TPMAlgID(p.nameAlg),
		ObjectAttributes: objectAttributes(p.attrs),
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: slices.Clone(p.authPolicy)},
	}
	sym := tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgID(p.symAlg)}
	switch p.symAlg {
	case algAES:
		sym.KeyBits = tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(p.symKeyBits))
		sym.Mode = tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgID(p.symMode))
	case algXOR:
		sym.KeyBits = tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgXOR, tpm2.TPMAlgID(p.symKeyBits))
		sym.Mode = tpm2.NewTPMUSymMode(tpm2.TPMAlgXOR, tpm2.TPMSEmpty{})
	}
	scheme := p.asymScheme()
	switch p.typ {
	case algRSA:
		pub.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: sym,
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgID(p.scheme), Details: scheme},
			KeyBits:   tpm2.TPMKeyBits(p.rsaBits),
			Exponent:  p.exponent,
		})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: slices.Clone(p.modulus)})
	case algECC:
		kdf := tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgID(p.kdf)}
		h := tpm2.TPMAlgID(p.kdfHash)
		switch tpm2.TPMAlgID(p.kdf) {
		case tpm2.TPMAlgMGF1:
			kdf.Details = tpm2.NewTPMUKDFScheme(kdf.Scheme, &tpm2.TPMSKDFSchemeMGF1{HashAlg: h})
		case tpm2.TPMAlgECDH:
			kdf.Details = tpm2.NewTPMUKDFScheme(kdf.Scheme, &tpm2.TPMSKDFSchemeECDH{HashAlg: h})
		case tpm2.TPMAlgKDF1SP80056A:
			kdf.Details = tpm2.NewTPMUKDFScheme(kdf.Scheme, &tpm2.TPMSKDFSchemeKDF1SP80056A{HashAlg: h})
		case tpm2.TPMAlgKDF2:
			kdf.Details = tpm2.NewTPMUKDFScheme(kdf.Scheme, &tpm2.TPMSKDFSchemeKDF2{HashAlg: h})
		case tpm2.TPMAlgKDF1SP800108:
			kdf.Details = tpm2.NewTPMUKDFScheme(kdf.Scheme, &tpm2.TPMSKDFSchemeKDF1SP800108{HashAlg: h})
		}
		pub.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: sym,
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgID(p.scheme), Details: scheme},
			CurveID:   tpm2.TPMECCCurve(p.curve),
			KDF:       kdf,
		})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: slices.Clone(p.x)},
			Y: tpm2.TPM2BECCParameter{Buffer: slices.Clone(p.y)},
		})
	}
	return pub
}

// asymScheme returns the TPMU_ASYM_SCHEME member for p's scheme.
func (p *public) asymScheme() tpm2.TPMUAsymScheme {
	h := tpm2.TPMAlgID(p.schemeHash)
	switch s := tpm2.TPMAlgID(p.scheme); s {
	case tpm2.TPMAlgRSASSA:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSSigSchemeRSASSA{HashAlg: h})
	case tpm2.TPMAlgRSAES:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSEncSchemeRSAES{})
	case tpm2.TPMAlgRSAPSS:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: h})
	case tpm2.TPMAlgOAEP:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSEncSchemeOAEP{HashAlg: h})
	case tpm2.TPMAlgECDSA:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSSigSchemeECDSA{HashAlg: h})
	case tpm2.TPMAlgECDH:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSKeySchemeECDH{HashAlg: h})
	case tpm2.TPMAlgECMQV:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSKeySchemeECMQV{HashAlg: h})
	case tpm2.TPMAlgECDAA:
		return tpm2.NewTPMUAsymScheme(s, &tpm2.TPMSSchemeECDAA{HashAlg: h, Count: p.schemeCount})
	}
	return tpm2.TPMUAsymScheme{}
}

// objectAttributes returns a TPMA_OBJECT with exactly the bits of v,
// reserved bits included.
func objectAttributes(v uint32) tpm2.TPMAObject {
	bit := func(n int) bool { return v&(1<<n) != 0 }
	a := tpm2.TPMAObject{
		FixedTPM:             bit(1),
		STClear:              bit(2),
		FixedParent:          bit(4),
		SensitiveDataOrigin:  bit(5),
		UserWithAuth:         bit(6),
		AdminWithPolicy:      bit(7),
		FirmwareLimited:      bit(8),
		NoDA:                 bit(10),
		EncryptedDuplication: bit(11),
		Restricted:           bit(16),
		Decrypt:              bit(17),
		SignEncrypt:          bit(18),
		X509Sign:             bit(19),
	}
	for _, n := range []int{0, 3, 9, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31} {
		if bit(n) {
			a.SetReservedBit(n, true)
		}
	}
	return a
}
