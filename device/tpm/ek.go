package tpm

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// EK is the endorsement key.
type EK struct {
	Public []byte           // marshaled TPMT_PUBLIC
	Cert   []byte           // DER certificate from the TPM's NV, or nil
	Key    crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
}

// ekInfo is the cached EK and how to get a handle to it.
type ekInfo struct {
	ek         EK
	pub        tpm2.TPMTPublic
	persistent tpm2.TPMHandle   // 0 when not persisted
	template   *tpm2.TPMTPublic // to recreate it when not persisted
}

// ekKind is one of the EK types the TCG EK profile defines, by where its
// certificate and (conventionally) its persistent key live.
type ekKind struct {
	name       string
	certIndex  tpm2.TPMHandle
	persistent tpm2.TPMHandle
	template   *tpm2.TPMTPublic // nil: only the persistent key is usable
	alg        tpm2.TPMAlgID
	curve      tpm2.TPMECCCurve
}

// ekKinds in order of preference.
var ekKinds = []ekKind{
	{name: "RSA-2048", certIndex: 0x01c00002, persistent: 0x81010001, template: &tpm2.RSAEKTemplate, alg: tpm2.TPMAlgRSA},
	{name: "ECC P-256", certIndex: 0x01c0000a, persistent: 0x81010002, template: &tpm2.ECCEKTemplate, alg: tpm2.TPMAlgECC, curve: tpm2.TPMECCNistP256},
	{name: "ECC P-384", certIndex: 0x01c00016, persistent: 0x81010016, alg: tpm2.TPMAlgECC, curve: tpm2.TPMECCNistP384},
}

// EK returns the endorsement key: the RSA-2048 EK and its certificate when
// the TPM has that certificate, else the first ECC EK with a certificate
// (P-256, then P-384), else the RSA-2048 EK without certificate. The key is
// read from its persistent handle when present there, or recreated from the
// TCG template (and flushed). A certificate whose public key differs from
// the EK's is dropped with a warning. The result is cached.
func (t *TPM) EK() (*EK, error) {
	var out *EK
	err := t.do("read EK", func(tr transport.TPM) error {
		info, err := t.ekLocked(tr)
		if err != nil {
			return err
		}
		ek := info.ek
		out = &ek
		return nil
	})
	return out, err
}

func (t *TPM) ekLocked(tr transport.TPM) (*ekInfo, error) {
	if t.ek != nil {
		return t.ek, nil
	}
	var info *ekInfo
	for _, k := range ekKinds {
		cert, err := readNV(tr, k.certIndex)
		if errors.Is(err, tpm2.TPMRCHandle) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s EK certificate: %w", k.name, err)
		}
		info, err = ekKey(tr, k)
		if err != nil {
			return nil, err
		}
		if info == nil {
			t.log.Warn("tpm: EK certificate without a usable EK", "kind", k.name)
			continue
		}
		info.ek.Cert = t.checkCert(cert, info.ek.Key, k.name)
		break
	}
	if info == nil {
		var err error
		if info, err = ekKey(tr, ekKinds[0]); err != nil {
			return nil, err
		}
		t.log.Info("tpm: EK has no certificate", "kind", ekKinds[0].name)
	}
	t.ek = info
	return info, nil
}

// ekKey finds the EK of a kind: at its persistent handle if that holds a key
// of the kind, else recreated from the template. It returns nil, nil when the
// kind has no persistent key and no template.
func ekKey(tr transport.TPM, k ekKind) (*ekInfo, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: k.persistent}.Execute(tr)
	if err == nil {
		pub, err := rp.OutPublic.Contents()
		if err != nil {
			return nil, fmt.Errorf("read %s EK: %w", k.name, err)
		}
		if k.matches(pub) {
			return newEKInfo(*pub, rp.OutPublic.Bytes(), k.persistent, nil)
		}
	} else if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, fmt.Errorf("read %s EK: %w", k.name, err)
	}
	if k.template == nil {
		return nil, nil
	}
	cp, err := createEK(tr, k.template)
	if err != nil {
		return nil, fmt.Errorf("create %s EK: %w", k.name, err)
	}
	flush(tr, cp.ObjectHandle)
	pub, err := cp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("create %s EK: %w", k.name, err)
	}
	return newEKInfo(*pub, cp.OutPublic.Bytes(), 0, k.template)
}

func newEKInfo(pub tpm2.TPMTPublic, raw []byte, h tpm2.TPMHandle, tmpl *tpm2.TPMTPublic) (*ekInfo, error) {
	key, err := tpm2.Pub(pub)
	if err != nil {
		return nil, fmt.Errorf("EK public key: %w", err)
	}
	return &ekInfo{ek: EK{Public: bytes.Clone(raw), Key: key}, pub: pub, persistent: h, template: tmpl}, nil
}

// matches reports whether p is an EK of kind k: a restricted decryption key
// of the kind's algorithm (and curve).
func (k ekKind) matches(p *tpm2.TPMTPublic) bool {
	a := p.ObjectAttributes
	if p.Type != k.alg || !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM {
		return false
	}
	if k.alg == tpm2.TPMAlgECC {
		ecc, err := p.Parameters.ECCDetail()
		return err == nil && ecc.CurveID == k.curve
	}
	return true
}

func createEK(tr transport.TPM, tmpl *tpm2.TPMTPublic) (*tpm2.CreatePrimaryResponse, error) {
	return tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(*tmpl),
	}.Execute(tr)
}

// checkCert parses an EK certificate read from NV (which may be padded) and
// returns its DER if its public key is the EK's, else nil.
func (t *TPM) checkCert(nv []byte, key crypto.PublicKey, kind string) []byte {
	var raw asn1.RawValue
	if _, err := asn1.Unmarshal(nv, &raw); err != nil {
		t.log.Warn("tpm: EK certificate is not DER; ignoring it", "kind", kind, "err", err)
		return nil
	}
	cert, err := x509.ParseCertificate(raw.FullBytes)
	if err != nil {
		t.log.Warn("tpm: EK certificate does not parse; ignoring it", "kind", kind, "err", err)
		return nil
	}
	eq, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(key) {
		t.log.Warn("tpm: EK certificate is for another key; ignoring it", "kind", kind)
		return nil
	}
	return bytes.Clone(raw.FullBytes)
}

// nvChunk is the largest NV read issued at once; every TPM supports at
// least this TPM_PT_NV_BUFFER_MAX.
const nvChunk = 512

// readNV reads a whole NV index, authorizing with the index itself and, if
// that is refused, with the owner hierarchy (both with empty passwords).
// A missing index yields an error matching tpm2.TPMRCHandle.
func readNV(tr transport.TPM, idx tpm2.TPMHandle) ([]byte, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(tr)
	if err != nil {
		return nil, err
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	index := tpm2.NamedHandle{Handle: idx, Name: rp.NVName}
	var lastErr error
	for _, auth := range []tpm2.AuthHandle{
		{Handle: idx, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
		{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
	} {
		out := make([]byte, 0, pub.DataSize)
		err = nil
		for off := uint16(0); off < pub.DataSize; {
			n := min(pub.DataSize-off, nvChunk)
			var rsp *tpm2.NVReadResponse
			rsp, err = tpm2.NVRead{AuthHandle: auth, NVIndex: index, Size: n, Offset: off}.Execute(tr)
			if err != nil {
				break
			}
			out = append(out, rsp.Data.Buffer...)
			off += n
		}
		lastErr = err
		if lastErr == nil && len(out) == int(pub.DataSize) {
			return out, nil
		}
		if lastErr == nil {
			lastErr = errors.New("short read")
		}
	}
	return nil, fmt.Errorf("read NV 0x%x: %w", uint32(idx), lastErr)
}
