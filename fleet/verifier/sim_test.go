package verifier

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/simulator"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// The in-process simulator exists once per process: TestMain starts it and
// builds every key the tests use, and tests share them.
var fx *fixture

// Persistent handles of the endorsement keys.
const (
	rsaEKHandle = tpm2.TPMHandle(0x81010001)
	eccEKHandle = tpm2.TPMHandle(0x81010002)
)

// simKey is a key created under the SRK: its blobs are loaded on demand
// because the simulator holds only three transient objects.
type simKey struct {
	pub      tpm2.TPMTPublic
	pubBytes []byte
	priv     tpm2.TPM2BPrivate
}

// testCA is a certificate authority in the shape of a TPM manufacturer's:
// a root and an intermediate that issues EK certificates.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

type fixture struct {
	tpm transport.TPMCloser
	srk tpm2.NamedHandle

	rsaEK, eccEK []byte // TPMT_PUBLIC of the endorsement keys

	ak, ak2                 *simKey // good attestation keys
	akUnrestricted, akNoTPM *simKey // attestation keys VerifyAK must refuse
	tk, tk2                 *simKey // transport keys

	vendor, rogue *testCA
}

func TestMain(m *testing.M) {
	f, err := newFixture()
	if err != nil {
		fmt.Fprintln(os.Stderr, "verifier tests: simulator fixture:", err)
		os.Exit(1)
	}
	fx = f
	code := m.Run()
	f.tpm.Close()
	os.Exit(code)
}

func newFixture() (*fixture, error) {
	tpm, err := simulator.OpenSimulator()
	if err != nil {
		return nil, err
	}
	f := &fixture{tpm: tpm}
	if f.rsaEK, err = f.persistEK(tpm2.RSAEKTemplate, rsaEKHandle); err != nil {
		return nil, fmt.Errorf("RSA EK: %w", err)
	}
	if f.eccEK, err = f.persistEK(tpm2.ECCEKTemplate, eccEKHandle); err != nil {
		return nil, fmt.Errorf("ECC EK: %w", err)
	}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("SRK: %w", err)
	}
	f.srk = tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}

	good := signingTemplate(true, true)
	for _, k := range []struct {
		dst  **simKey
		tmpl tpm2.TPMTPublic
	}{
		{&f.ak, good},
		{&f.ak2, good},
		{&f.akUnrestricted, signingTemplate(false, true)},
		{&f.akNoTPM, signingTemplate(true, false)},
		{&f.tk, signingTemplate(false, true)},
		{&f.tk2, signingTemplate(false, true)},
	} {
		if *k.dst, err = f.create(k.tmpl); err != nil {
			return nil, err
		}
	}
	// Give the PCRs the tests quote values other than zero.
	for _, pcr := range []int{0, 1, 7, 16} {
		if err := f.extend(pcr, []byte(fmt.Sprintf("measurement %d", pcr))); err != nil {
			return nil, err
		}
	}
	if f.vendor, err = newTestCA("Vendor", true); err != nil {
		return nil, err
	}
	if f.rogue, err = newTestCA("Rogue", false); err != nil {
		return nil, err
	}
	return f, nil
}

// signingTemplate is an ECDSA P-256 signing key; fixed sets both fixedTPM
// and fixedParent.
func signingTemplate(restricted, fixed bool) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            fixed,
			FixedParent:         fixed,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          restricted,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

func (f *fixture) persistEK(tmpl tpm2.TPMTPublic, h tpm2.TPMHandle) ([]byte, error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(f.tpm)
	if err != nil {
		return nil, err
	}
	defer tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(f.tpm)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		PersistentHandle: h,
	}).Execute(f.tpm); err != nil {
		return nil, err
	}
	return rsp.OutPublic.Bytes(), nil
}

func (f *fixture) create(tmpl tpm2.TPMTPublic) (*simKey, error) {
	rsp, err := tpm2.Create{ParentHandle: f.srk, InPublic: tpm2.New2B(tmpl)}.Execute(f.tpm)
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	return &simKey{pub: *pub, pubBytes: rsp.OutPublic.Bytes(), priv: rsp.OutPrivate}, nil
}

// load loads k and returns its handle with an empty password, and a
// function that flushes it.
func (f *fixture) load(k *simKey) (tpm2.AuthHandle, func(), error) {
	rsp, err := tpm2.Load{ParentHandle: f.srk, InPrivate: k.priv, InPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](k.pubBytes)}.Execute(f.tpm)
	if err != nil {
		return tpm2.AuthHandle{}, nil, fmt.Errorf("load key: %w", err)
	}
	h := tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}
	return h, func() { tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(f.tpm) }, nil
}

func (f *fixture) extend(pcr int, data []byte) error {
	d256, d1 := sha256.Sum256(data), sha1.Sum(data)
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA256, Digest: d256[:]},
			{HashAlg: tpm2.TPMAlgSHA1, Digest: d1[:]},
		}},
	}.Execute(f.tpm)
	return err
}

// certify has ak certify key with nonce and returns TPMS_ATTEST and
// TPMT_SIGNATURE as the device sends them.
func (f *fixture) certify(t testing.TB, ak, key *simKey, nonce []byte) (attest, sig []byte) {
	t.Helper()
	akh, flushAK, err := f.load(ak)
	if err != nil {
		t.Fatal(err)
	}
	defer flushAK()
	kh, flushKey, err := f.load(key)
	if err != nil {
		t.Fatal(err)
	}
	defer flushKey()
	rsp, err := tpm2.Certify{
		ObjectHandle:   kh,
		SignHandle:     akh,
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(f.tpm)
	if err != nil {
		t.Fatalf("TPM2_Certify: %v", err)
	}
	return rsp.CertifyInfo.Bytes(), tpm2.Marshal(rsp.Signature)
}

// quote has ak quote the PCRs of bank hash with nonce and returns the quote
// with the PCR values read from the TPM, as the device sends it.
func (f *fixture) quote(t testing.TB, ak *simKey, nonce []byte, hash tpm2.TPMAlgID, pcrs ...int) *wire.Quote {
	t.Helper()
	slices.Sort(pcrs)
	upcrs := make([]uint, len(pcrs))
	for i, p := range pcrs {
		upcrs[i] = uint(p)
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: hash, PCRSelect: tpm2.PCClientCompatible.PCRs(upcrs...)}}}
	akh, flush, err := f.load(ak)
	if err != nil {
		t.Fatal(err)
	}
	defer flush()
	rsp, err := tpm2.Quote{SignHandle: akh, QualifyingData: tpm2.TPM2BData{Buffer: nonce}, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}, PCRSelect: sel}.Execute(f.tpm)
	if err != nil {
		t.Fatalf("TPM2_Quote: %v", err)
	}
	q := &wire.Quote{Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), Hash: uint16(hash), PCRs: pcrs}
	for _, p := range pcrs { // one at a time: PCR_Read returns at most 8 values
		one := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: hash, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(p))}}}
		r, err := tpm2.PCRRead{PCRSelectionIn: one}.Execute(f.tpm)
		if err != nil || len(r.PCRValues.Digests) != 1 {
			t.Fatalf("PCR_Read %d: %v", p, err)
		}
		q.Values = append(q.Values, r.PCRValues.Digests[0].Buffer)
	}
	return q
}

// activate runs TPM2_ActivateCredential with the EK at ekHandle and the
// attestation key ak, authorizing the EK with its PolicySecret(endorsement)
// policy, and returns the recovered secret.
func (f *fixture) activate(ekHandle tpm2.TPMHandle, ak *simKey, blob, encSecret []byte) ([]byte, error) {
	akh, flush, err := f.load(ak)
	if err != nil {
		return nil, err
	}
	defer flush()
	ekPub, err := tpm2.ReadPublic{ObjectHandle: ekHandle}.Execute(f.tpm)
	if err != nil {
		return nil, err
	}
	policy := func(tpm transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: handle, NonceTPM: nonceTPM}.Execute(tpm)
		return err
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: akh,
		KeyHandle:      tpm2.AuthHandle{Handle: ekHandle, Name: ekPub.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, policy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: blob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
	}.Execute(f.tpm)
	if err != nil {
		return nil, err
	}
	return rsp.CertInfo.Buffer, nil
}

// newTestCA makes a root and an intermediate; RSA keys like most TPM
// vendors' CAs, or ECDSA.
func newTestCA(name string, useRSA bool) (*testCA, error) {
	newKey := func() (crypto.Signer, error) {
		if useRSA {
			return rsa.GenerateKey(rand.Reader, 2048)
		}
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	rootKey, err := newKey()
	if err != nil {
		return nil, err
	}
	interKey, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " EK Root CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(20 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	interTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " EK Intermediate CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	inter, _ := x509.ParseCertificate(interDER)
	return &testCA{root: root, inter: inter, rootKey: rootKey, interKey: interKey}, nil
}

var (
	oidTCGEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidTPMManufacturer  = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel         = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion       = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
)

// tcgSAN is a subject alternative name as the TCG EK credential profile
// writes it: a single directoryName with the TPM manufacturer, model and
// version.
func tcgSAN() []byte {
	rdn := pkix.RDNSequence{{
		{Type: oidTPMManufacturer, Value: "id:53494D55"},
		{Type: oidTPMModel, Value: "sigil-sim"},
		{Type: oidTPMVersion, Value: "id:00020000"},
	}}
	name, err := asn1.Marshal(rdn)
	if err != nil {
		panic(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	if err != nil {
		panic(err)
	}
	return san
}

// issueEK issues an EK certificate as TPM vendors do: empty subject,
// critical SAN with only a directoryName, the TCG EK extended key usage.
// san replaces the SAN when not nil.
func (ca *testCA) issueEK(t testing.TB, pub crypto.PublicKey, notAfter time.Time, san []byte) []byte {
	t.Helper()
	if san == nil {
		san = tcgSAN()
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl := &x509.Certificate{
		SerialNumber:       serial,
		NotBefore:          time.Now().Add(-time.Hour),
		NotAfter:           notAfter,
		KeyUsage:           x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidTCGEKCertificate},
		ExtraExtensions:    []pkix.Extension{{Id: oidSAN, Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.inter, pub, ca.interKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// ekKey returns the crypto public key of an EK public area.
func ekKey(t testing.TB, ekPublic []byte) crypto.PublicKey {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ekPublic)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func nonce(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
