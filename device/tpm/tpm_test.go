package tpm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

var sha256Sel = func(pcrs ...int) wire.PCRSelection {
	return wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: pcrs}
}

func open(t *testing.T, inst *swtpm.Instance) *tpm.TPM {
	t.Helper()
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

func TestOpenErrors(t *testing.T) {
	if _, err := tpm.Open("sim://"); !errors.Is(err, tpm.ErrNoSimulator) {
		t.Fatalf("sim:// without tpmsim: %v", err)
	}
	if _, err := tpm.Open("bogus://x"); err == nil || !strings.HasPrefix(err.Error(), "tpm: ") {
		t.Fatalf("unknown scheme: %v", err)
	}
	if _, err := tpm.Open("/nonexistent/tpm"); err == nil {
		t.Fatal("missing device opened")
	}
	if _, err := tpm.Open("swtpm://nohostport"); err == nil {
		t.Fatal("bad swtpm address accepted")
	}
}

// TestSwtpm runs the device's TPM operations against a real swtpm and
// checks every result independently: Go crypto for signatures and
// certificates, tpm2-tools for what the TPM holds.
func TestSwtpm(t *testing.T) {
	ca := swtpmtest.NewCA(t)
	inst := swtpmtest.New(t, ca)
	tp := open(t, inst)

	ak, err := tp.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	tk, err := tp.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := tp.PublicKey(ak)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("EK", func(t *testing.T) {
		ek, err := tp.EK()
		if err != nil {
			t.Fatal(err)
		}
		if ek.Cert == nil {
			t.Fatal("swtpm EK has no certificate")
		}
		cert, err := x509.ParseCertificate(ek.Cert)
		if err != nil {
			t.Fatal(err)
		}
		// EK certificates carry a critical SAN with only a directoryName
		// and TCG's EKU; Go's verifier needs both relaxed.
		var unhandled []asn1.ObjectIdentifier
		for _, oid := range cert.UnhandledCriticalExtensions {
			if !oid.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
				unhandled = append(unhandled, oid)
			}
		}
		cert.UnhandledCriticalExtensions = unhandled
		roots, err := ca.Roots()
		if err != nil {
			t.Fatal(err)
		}
		inters, err := ca.Intermediates()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("EK certificate does not chain to the CA: %v", err)
		}
		if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ek.Key) {
			t.Fatal("EK certificate key differs from EK().Key")
		}
		p := decodePublic(t, ek.Public)
		if p.Type != tpm2.TPMAlgRSA || !p.ObjectAttributes.Restricted || !p.ObjectAttributes.Decrypt {
			t.Fatalf("EK public is not an RSA restricted decryption key: %+v", p.ObjectAttributes)
		}
		k, err := tpm2.Pub(*p)
		if err != nil {
			t.Fatal(err)
		}
		if !k.(interface{ Equal(crypto.PublicKey) bool }).Equal(ek.Key) {
			t.Fatal("EK.Public and EK.Key differ")
		}
		// The persistent EK tpm2-tools reads is the same key.
		pemFile := t.TempDir() + "/ek.pem"
		swtpmtest.Run(t, "tpm2_readpublic", "-T", inst.TCTI(), "-c", "0x81010001", "-f", "pem", "-o", pemFile)
		pemBytes, err := os.ReadFile(pemFile)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pemBytes)
		if blk == nil {
			t.Fatal("tpm2_readpublic wrote no PEM")
		}
		toolKey, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !toolKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ek.Key) {
			t.Fatal("tpm2-tools reads another EK at 0x81010001")
		}
	})

	t.Run("KeyAttributes", func(t *testing.T) {
		for _, c := range []struct {
			name       string
			blob       *tpm.KeyBlob
			restricted bool
		}{{"AK", ak, true}, {"TK", tk, false}} {
			p := decodePublic(t, c.blob.Public)
			a := p.ObjectAttributes
			if p.Type != tpm2.TPMAlgECC || p.NameAlg != tpm2.TPMAlgSHA256 {
				t.Errorf("%s: type 0x%x nameAlg 0x%x", c.name, uint16(p.Type), uint16(p.NameAlg))
			}
			if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.UserWithAuth || !a.NoDA || !a.SignEncrypt {
				t.Errorf("%s: missing required attributes: %+v", c.name, a)
			}
			if a.Restricted != c.restricted || a.Decrypt || a.EncryptedDuplication || a.AdminWithPolicy {
				t.Errorf("%s: wrong attributes: %+v", c.name, a)
			}
			ecc, err := p.Parameters.ECCDetail()
			if err != nil {
				t.Fatal(err)
			}
			if ecc.CurveID != tpm2.TPMECCNistP256 || ecc.Scheme.Scheme != tpm2.TPMAlgECDSA {
				t.Errorf("%s: curve 0x%x scheme 0x%x", c.name, uint16(ecc.CurveID), uint16(ecc.Scheme.Scheme))
			}
			if d, err := ecc.Scheme.Details.ECDSA(); err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
				t.Errorf("%s: scheme hash: %v", c.name, err)
			}
			if len(c.blob.Private) == 0 {
				t.Errorf("%s: no private blob", c.name)
			}
		}
	})

	t.Run("Certify", func(t *testing.T) {
		nonce := bytes.Repeat([]byte{7}, 32)
		attest, sig, err := tp.Certify(ak, tk, nonce)
		if err != nil {
			t.Fatal(err)
		}
		a := verifyAttest(t, akPub, attest, sig, tpm2.TPMSTAttestCertify, nonce)
		info, err := a.Attested.Certify()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(info.Name.Buffer, name(t, decodePublic(t, tk.Public))) {
			t.Fatal("certified name is not the transport key's")
		}
		// A different nonce or a tampered attest must not verify.
		tampered := bytes.Clone(attest)
		tampered[len(tampered)-1] ^= 1
		s, _ := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
		e, _ := s.Signature.ECDSA()
		d := sha256.Sum256(tampered)
		if ecdsa.Verify(akPub.(*ecdsa.PublicKey), d[:], new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)) {
			t.Fatal("tampered attestation verifies")
		}
	})

	t.Run("CertifyErrorFlushes", func(t *testing.T) {
		bad := &tpm.KeyBlob{Public: tk.Public, Private: bytes.Clone(tk.Private)}
		bad.Private[len(bad.Private)-1] ^= 0xff
		_, _, err := tp.Certify(ak, bad, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "tpm: certify: ") {
			t.Fatalf("certify with corrupt blob: %v", err)
		}
		if n := transientCount(t, inst); n != 0 {
			t.Fatalf("%d transient objects left after a failed certify", n)
		}
	})

	t.Run("Quote", func(t *testing.T) {
		nonce := bytes.Repeat([]byte{9}, 32)
		sel := sha256Sel(16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 23)
		q, err := tp.Quote(ak, nonce, sel)
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Validate(); err != nil {
			t.Fatal(err)
		}
		a := verifyAttest(t, akPub, q.Attest, q.Signature, tpm2.TPMSTAttestQuote, nonce)
		info, err := a.Attested.Quote()
		if err != nil {
			t.Fatal(err)
		}
		want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 23}
		if q.Hash != uint16(tpm2.TPMAlgSHA256) || len(q.PCRs) != len(want) || len(q.Values) != len(want) {
			t.Fatalf("quote shape: hash %x pcrs %v values %d", q.Hash, q.PCRs, len(q.Values))
		}
		for i := range want {
			if q.PCRs[i] != want[i] || len(q.Values[i]) != 32 {
				t.Fatalf("quote PCRs %v", q.PCRs)
			}
		}
		h := sha256.New()
		for _, v := range q.Values {
			h.Write(v)
		}
		if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
			t.Fatal("PCR values do not match the quoted digest")
		}
		if len(info.PCRSelect.PCRSelections) != 1 || !bytes.Equal(info.PCRSelect.PCRSelections[0].PCRSelect, []byte{0xff, 0x07, 0x81}) {
			t.Fatalf("quoted selection %+v", info.PCRSelect)
		}
	})

	t.Run("ActivateCredential", func(t *testing.T) {
		ek, err := tp.EK()
		if err != nil {
			t.Fatal(err)
		}
		secret := []byte("0123456789abcdef0123456789abcdef")
		akName := name(t, decodePublic(t, ak.Public))
		blob, enc := makeCredential(t, ek.Public, akName, secret)
		got, err := tp.ActivateCredential(ak, blob, enc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, secret) {
			t.Fatal("activated secret differs")
		}
		// Bound to another AK's name: refused.
		other, err := tp.CreateAK()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tp.ActivateCredential(other, blob, enc); err == nil {
			t.Fatal("credential for another AK activated")
		}
		// Made for another TPM's EK: refused.
		inst2 := swtpmtest.New(t, ca)
		tp2 := open(t, inst2)
		ek2, err := tp2.EK()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(ek2.Public, ek.Public) {
			t.Fatal("two swtpms share an EK")
		}
		blob2, enc2 := makeCredential(t, ek2.Public, akName, secret)
		if _, err := tp.ActivateCredential(ak, blob2, enc2); err == nil || !strings.HasPrefix(err.Error(), "tpm: activate credential: ") {
			t.Fatalf("credential for another TPM's EK: %v", err)
		}
		if n := transientCount(t, inst); n != 0 {
			t.Fatalf("%d transient objects left", n)
		}
	})

	t.Run("SignerTLS", func(t *testing.T) {
		s, err := tp.Signer(tk)
		if err != nil {
			t.Fatal(err)
		}
		tlsHandshake(t, s)
	})

	t.Run("SignerCSR", func(t *testing.T) {
		s, err := tp.Signer(tk)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, s)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatal(err)
		}
		if !csr.PublicKey.(*ecdsa.PublicKey).Equal(s.Public()) {
			t.Fatal("CSR key is not the TPM key")
		}
		if _, err := s.Sign(rand.Reader, make([]byte, 48), crypto.SHA384); err == nil {
			t.Fatal("SHA-384 digest accepted")
		}
	})

	t.Run("ConcurrentSign", func(t *testing.T) {
		s, err := tp.Signer(tk)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for g := range 8 {
			wg.Go(func() {
				for i := range 5 {
					d := sha256.Sum256([]byte{byte(g), byte(i)})
					sig, err := s.Sign(nil, d[:], crypto.SHA256)
					if err != nil {
						errs <- err
						return
					}
					if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
						errs <- errors.New("signature does not verify")
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})

	t.Run("Tpm2Tools", func(t *testing.T) {
		// The SRK is persisted at 0x81000001 as an ECC P-256 storage key.
		out := string(swtpmtest.Run(t, "tpm2_readpublic", "-T", inst.TCTI(), "-c", "0x81000001"))
		for _, want := range []string{"value: ecc", "NIST p256", "restricted", "decrypt", "fixedtpm"} {
			if !strings.Contains(strings.ToLower(out), strings.ToLower(want)) {
				t.Fatalf("SRK readpublic lacks %q:\n%s", want, out)
			}
		}
		// tpm2-tools loads the transport key blob under it and sees the
		// signer's public key, while tp stays open.
		pemBytes := swtpmtest.ReadPublicPEM(t, inst, tk.Public, tk.Private)
		blk, _ := pem.Decode(pemBytes)
		if blk == nil {
			t.Fatalf("no PEM from tpm2-tools: %s", pemBytes)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		s, err := tp.Signer(tk)
		if err != nil {
			t.Fatal(err)
		}
		if !k.(*ecdsa.PublicKey).Equal(s.Public()) {
			t.Fatal("tpm2-tools sees another key")
		}
		// PCR 16 follows an extend made by tpm2-tools.
		before, err := tp.ReadPCRs(sha256Sel(16))
		if err != nil {
			t.Fatal(err)
		}
		ext := bytes.Repeat([]byte{0xab}, 32)
		swtpmtest.Run(t, "tpm2_pcrextend", "-T", inst.TCTI(), "16:sha256="+hex.EncodeToString(ext))
		after, err := tp.ReadPCRs(sha256Sel(23, 16))
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(append(bytes.Clone(before[0]), ext...))
		if !bytes.Equal(after[1], want[:]) {
			t.Fatalf("PCR 16 = %x, want %x", after[1], want)
		}
		if !bytes.Equal(after[0], make([]byte, 32)) {
			t.Fatalf("PCR 23 = %x, want zero", after[0])
		}
		// The extend shows in a quote.
		q, err := tp.Quote(ak, nil, sha256Sel(16))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(q.Values[0], want[:]) {
			t.Fatal("quote shows an old PCR 16")
		}
	})

	t.Run("RebootAndRestart", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ek, err := tp.EK()
		if err != nil {
			t.Fatal(err)
		}
		swtpmtest.Run(t, "tpm2_pcrextend", "-T", inst.TCTI(), "16:sha256="+strings.Repeat("cd", 32))
		if v, err := tp.ReadPCRs(sha256Sel(16)); err != nil || bytes.Equal(v[0], make([]byte, 32)) {
			t.Fatalf("PCR 16 not extended: %x %v", v, err)
		}
		if err := inst.Reboot(ctx); err != nil {
			t.Fatal(err)
		}
		v, err := tp.ReadPCRs(sha256Sel(16))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v[0], make([]byte, 32)) {
			t.Fatalf("PCR 16 after reboot = %x, want zero", v[0])
		}
		checkKeysWork(t, tp, ak, tk)

		// Restart the process (orderly): the state, and so the SRK, EK and
		// the blobs, survive. The port may change: open again.
		if err := tp.Shutdown(); err != nil {
			t.Fatal(err)
		}
		if err := inst.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		tp2 := open(t, inst)
		ek2, err := tp2.EK()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ek.Public, ek2.Public) || !bytes.Equal(ek.Cert, ek2.Cert) {
			t.Fatal("EK changed across restart")
		}
		checkKeysWork(t, tp2, ak, tk)

		// Power loss (SIGKILL, no TPM2_Shutdown): the permanent state
		// survives and the noDA keys still work.
		if err := inst.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := inst.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		checkKeysWork(t, open(t, inst), ak, tk)
	})
}

func checkKeysWork(t *testing.T, tp *tpm.TPM, ak, tk *tpm.KeyBlob) {
	t.Helper()
	akPub, err := tp.PublicKey(ak)
	if err != nil {
		t.Fatal(err)
	}
	q, err := tp.Quote(ak, []byte("n"), sha256Sel(16))
	if err != nil {
		t.Fatal(err)
	}
	verifyAttest(t, akPub, q.Attest, q.Signature, tpm2.TPMSTAttestQuote, []byte("n"))
	s, err := tp.Signer(tk)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
}

// makeCredential makes a credential for an EK (TPMT_PUBLIC) and a key name,
// as the fleet does.
func makeCredential(t *testing.T, ekPublic, keyName, secret []byte) ([]byte, []byte) {
	t.Helper()
	encKey, err := tpm2.ImportEncapsulationKey(decodePublic(t, ekPublic))
	if err != nil {
		t.Fatal(err)
	}
	blob, enc, err := tpm2.CreateCredential(rand.Reader, encKey, keyName, secret)
	if err != nil {
		t.Fatal(err)
	}
	return blob, enc
}

// rawConn is an independent connection to swtpm's TPM port.
type rawConn struct{ net.Conn }

func (c rawConn) Send(cmd []byte) ([]byte, error) {
	if _, err := c.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	size := int(hdr[2])<<24 | int(hdr[3])<<16 | int(hdr[4])<<8 | int(hdr[5])
	rsp := append(hdr, make([]byte, size-10)...)
	_, err := io.ReadFull(c, rsp[10:])
	return rsp, err
}

var _ transport.TPM = rawConn{}

func dialRaw(t *testing.T, inst *swtpm.Instance) rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(inst.URI(), "swtpm://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return rawConn{c}
}

// transientCount counts the transient objects in the TPM.
func transientCount(t *testing.T, inst *swtpm.Instance) int {
	t.Helper()
	c := dialRaw(t, inst)
	defer c.Close()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 16}.Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return len(hs.Handle)
}

// TestFlushesLeftovers fills swtpm's three transient slots from another
// client, then checks that Open and key creation still work.
func TestFlushesLeftovers(t *testing.T) {
	inst := swtpmtest.New(t, nil)
	c := dialRaw(t, inst)
	for range 3 {
		if _, err := (tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}).Execute(c); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if n := transientCount(t, inst); n != 3 {
		t.Fatalf("setup: %d transient objects, want 3", n)
	}
	tp := open(t, inst)
	if n := transientCount(t, inst); n != 0 {
		t.Fatalf("%d transient objects after Open", n)
	}
	if _, err := tp.CreateAK(); err != nil {
		t.Fatal(err)
	}
	if n := transientCount(t, inst); n != 0 {
		t.Fatalf("%d transient objects after CreateAK", n)
	}
}

// tlsHandshake runs a TLS 1.3 handshake whose client authenticates with a
// certificate over the signer's key, signing with it during the handshake.
func tlsHandshake(t *testing.T, s crypto.Signer) {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "device"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	clientDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := x509.ParseCertificate(clientDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := clientCert.CheckSignatureFrom(clientCert); err != nil {
		t.Fatal(err)
	}

	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "fleet"}, DNSNames: []string{"fleet"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, stmpl, stmpl, &serverKey.PublicKey, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, _ := x509.ParseCertificate(serverDER)

	clientCAs, roots := x509.NewCertPool(), x509.NewCertPool()
	clientCAs.AddCert(clientCert)
	roots.AddCert(serverCert)
	srvConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	}
	cliConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ServerName:   "fleet",
		RootCAs:      roots,
		Certificates: []tls.Certificate{{Certificate: [][]byte{clientDER}, PrivateKey: s}},
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv, cli := tls.Server(a, srvConf), tls.Client(b, cliConf)
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	st := srv.ConnectionState()
	if st.Version != tls.VersionTLS13 || len(st.PeerCertificates) != 1 || !st.PeerCertificates[0].Equal(clientCert) {
		t.Fatal("server did not authenticate the TPM-backed client certificate")
	}
}
