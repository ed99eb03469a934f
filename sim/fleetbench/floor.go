package fleetbench

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"time"
)

// Floor is the cryptography the fleet cannot avoid for each operation
// with these devices (ECC P-256 EKs and keys, TLS 1.3 with the
// X25519MLKEM768 key exchange Go offers first and the fleet's ECDSA P-256
// server certificate), timed here in this process's CPU time, so that
// the fleet's CPU per operation can be set against it on the same machine
// at the same moment. Microseconds.
type Floor struct {
	ECDSASign   float64 `json:"ecdsa_sign_us"`
	ECDSAVerify float64 `json:"ecdsa_verify_us"`
	ECDHP256    float64 `json:"ecdh_p256_us"`    // an ephemeral key and a shared secret (ECC MakeCredential)
	KeyExchange float64 `json:"key_exchange_us"` // the server's share of X25519MLKEM768: X25519 key and secret, ML-KEM-768 encapsulation
	// Handshake is the server's side of a TLS 1.3 handshake: the key
	// exchange and the CertificateVerify signature. MTLSHandshake adds the
	// client's certificate: its CertificateVerify and its chain.
	Handshake     float64 `json:"handshake_us"`
	MTLSHandshake float64 `json:"mtls_handshake_us"`
	// Attestation verifies a quote. Renewal is a new mTLS session and the
	// quote, TPM2_Certify and CSR signatures, a certificate signed, and the
	// attestation on connect. Enrollment is the bootstrap handshake, the EK
	// certificate (intermediate cached), ECC MakeCredential, the certify,
	// quote and CSR signatures, a certificate signed, then the device's
	// mTLS session and its attestation on connect.
	Attestation float64 `json:"attestation_us"`
	Renewal     float64 `json:"renewal_us"`
	Enrollment  float64 `json:"enrollment_us"`
}

// measureFloor times the primitives (about a second of CPU).
func measureFloor() Floor {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("sigil fleet floor"))
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	xpeer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	dk, _ := mlkem.GenerateKey768()
	ek := dk.EncapsulationKey()
	var f Floor
	f.ECDSASign = perOp(func() { _, _ = ecdsa.SignASN1(rand.Reader, key, digest[:]) })
	f.ECDSAVerify = perOp(func() { ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) })
	f.ECDHP256 = perOp(func() {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		_, _ = k.ECDH(peer.PublicKey())
	})
	f.KeyExchange = perOp(func() {
		k, _ := ecdh.X25519().GenerateKey(rand.Reader)
		_, _ = k.ECDH(xpeer.PublicKey())
		_, _ = ek.Encapsulate()
	})
	f.Handshake = f.KeyExchange + f.ECDSASign
	f.MTLSHandshake = f.Handshake + 2*f.ECDSAVerify
	f.Attestation = f.ECDSAVerify
	f.Renewal = f.MTLSHandshake + 3*f.ECDSAVerify + f.ECDSASign + f.Attestation
	f.Enrollment = f.Handshake + f.ECDSAVerify + f.ECDHP256 + 3*f.ECDSAVerify + f.ECDSASign + f.MTLSHandshake + f.Attestation
	return f
}

// perOp runs fn for about 150 ms of CPU and returns its CPU time per call
// in microseconds (wall time where CPU time cannot be read).
func perOp(fn func()) float64 {
	fn() // warm
	c0, w0 := cpuTime(), time.Now()
	n := 0
	for time.Since(w0) < 150*time.Millisecond || n < 20 {
		fn()
		n++
	}
	d := cpuTime() - c0
	if d <= 0 {
		d = time.Since(w0)
	}
	return float64(d) / float64(time.Microsecond) / float64(n)
}
