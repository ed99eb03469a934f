// Package credential checks the certificates the fleet issues for the
// device's TPM-held transport keys, at enrollment (device/enroll) and at
// each renewal (device/renew): a device stores a certificate only once it
// is for the key it asked for and chains to the trust bundle it came with.
package credential

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrWrongKey is a certificate for another key than the one the device
// asked a certificate for.
var ErrWrongKey = errors.New("credential: issued certificate is not for the transport key")

// Verify checks a certificate the fleet issued for the transport key key
// and returns it parsed. Its checks, in order:
//
//  1. der parses as an X.509 certificate;
//  2. its public key is ECDSA and equals key (else ErrWrongKey);
//  3. every entry of trust parses (the roots the fleet sent with it);
//  4. it chains to one of them through chain (entries that do not parse
//     are left out), is valid at now, and allows client authentication.
func Verify(der []byte, chain, trust [][]byte, key crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("credential: issued certificate: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key) {
		return nil, ErrWrongKey
	}
	roots := x509.NewCertPool()
	for _, b := range trust {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("credential: trust bundle: %w", err)
		}
		roots.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, b := range chain {
		if c, err := x509.ParseCertificate(b); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("credential: issued certificate does not verify: %w", err)
	}
	return cert, nil
}
