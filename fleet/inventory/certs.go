package inventory

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Cert is a certificate the fleet issued to a device.
type Cert struct {
	Serial    string    `json:"serial"`              // hex
	NotAfter  time.Time `json:"not_after,omitzero"`  // zero when unknown (records from before Certs)
	Revoked   bool      `json:"revoked,omitempty"`   // refused by the broker, listed in the CRL
	RevokedAt time.Time `json:"revoked_at,omitzero"` // when it was revoked
	Reason    int       `json:"reason,omitempty"`    // RFC 5280 reason code of the revocation
}

// expired reports whether c's certificate is no longer valid at now.
func (c *Cert) expired(now time.Time) bool { return !c.NotAfter.IsZero() && !now.Before(c.NotAfter) }

// Certificates returns the certificates issued to d, oldest first: Certs,
// or for a record written before Certs existed, its superseded serials and
// its current one (expiring with the current one at the latest).
func (d *Device) Certificates() []Cert {
	if d.Certs != nil || d.CertSerial == "" {
		return d.Certs
	}
	var out []Cert
	for _, s := range append(slices.Clone(d.Superseded), d.CertSerial) {
		if s != "" && !slices.ContainsFunc(out, func(c Cert) bool { return c.Serial == s }) {
			out = append(out, Cert{Serial: s, NotAfter: d.CertExpiry, Revoked: slices.Contains(d.Revoked, s)})
		}
	}
	return out
}

// materialize makes Certs hold what Certificates returns, so that it can be
// changed in place.
func (d *Device) materialize() {
	if d.Certs == nil {
		d.Certs = d.Certificates()
		d.Superseded = nil
	}
}

// snapshot is a copy of d whose certificate and tag lists are its own.
func (d *Device) snapshot() Device {
	c := *d
	c.Certs = slices.Clone(d.Certs)
	c.Tags = slices.Clone(d.Tags)
	return c
}

// MaxCerts bounds the certificates a device may hold at once (its Certs,
// revoked or not, until they expire): the fleet refuses to issue more
// (CanIssue) rather than forget one.
const MaxCerts = 64

// ErrTooManyCerts is CanIssue's refusal.
var ErrTooManyCerts = errors.New("inventory: the device holds too many unexpired certificates")

// CanIssue reports whether the fleet may issue d another certificate at
// now: ErrTooManyCerts while d holds MaxCerts that have not expired (a
// device renewing or re-enrolling in a loop), nil otherwise.
func (d *Device) CanIssue(now time.Time) error {
	n := 0
	for _, c := range d.Certificates() {
		if !c.expired(now) {
			n++
		}
	}
	if n >= MaxCerts {
		return fmt.Errorf("%w (%d; they leave as they expire)", ErrTooManyCerts, n)
	}
	return nil
}

// Issued records a certificate the fleet just issued to d as its current
// one (check CanIssue first). The certificates it had stay as they are: a renewal revokes the
// ones it replaces once the device connected with the new one
// (RevokeBefore, through Store.RevokeSuperseded), a re-enrollment at once.
// It forgets the DER of the one before (CertDER); IssuedCertificate
// records a certificate with its DER.
func (d *Device) Issued(serial string, notBefore, notAfter time.Time) {
	d.materialize()
	d.Certs = append(d.Certs, Cert{Serial: serial, NotAfter: notAfter})
	d.CertSerial, d.CertIssued, d.CertExpiry, d.CertDER = serial, notBefore, notAfter, nil
}

// IssuedCertificate is Issued for cert (its serial in hex, its validity)
// that also keeps cert's DER as CertDER, for export.
func (d *Device) IssuedCertificate(cert *x509.Certificate) {
	d.Issued(hex.EncodeToString(cert.SerialNumber.Bytes()), cert.NotBefore, cert.NotAfter)
	d.CertDER = slices.Clone(cert.Raw)
}

// Admits reports whether a certificate with serial, presented at now, is
// one the fleet issued to d that is still current: recorded in its
// certificates, not revoked, not expired. The broker admits nothing else.
func (d *Device) Admits(serial string, now time.Time) bool {
	if serial == "" || slices.Contains(d.Revoked, serial) {
		return false
	}
	for _, c := range d.Certificates() {
		if c.Serial == serial {
			return !c.Revoked && !c.expired(now)
		}
	}
	return false
}

// IsRevoked reports whether serial was revoked.
func (d *Device) IsRevoked(serial string) bool {
	for _, c := range d.Certificates() {
		if c.Serial == serial && c.Revoked {
			return true
		}
	}
	return slices.Contains(d.Revoked, serial)
}

// Revoke records serial as revoked (reason unspecified, time unknown).
func (d *Device) Revoke(serial string) { d.RevokeSerial(serial, ReasonUnspecified, time.Time{}) }

// RevokeSerial records serial as revoked for reason at time at. A serial
// d's certificates do not hold is kept in Revoked.
func (d *Device) RevokeSerial(serial string, reason int, at time.Time) {
	if serial == "" || d.IsRevoked(serial) {
		return
	}
	d.materialize()
	for i := range d.Certs {
		if c := &d.Certs[i]; c.Serial == serial {
			c.Revoked, c.RevokedAt, c.Reason = true, at, reason
			return
		}
	}
	d.Revoked = append(d.Revoked, serial)
}

// RevokeAll revokes every certificate of d that is neither revoked nor
// expired at now, and returns their serials.
func (d *Device) RevokeAll(reason int, now time.Time) []string {
	return d.RevokeOthers("", reason, now)
}

// RevokeOthers revokes every certificate of d but keep that is neither
// revoked nor expired at now, and returns their serials.
func (d *Device) RevokeOthers(keep string, reason int, now time.Time) []string {
	d.materialize()
	var out []string
	for i := range d.Certs {
		c := &d.Certs[i]
		if c.Serial == keep || c.Revoked || c.expired(now) {
			continue
		}
		c.Revoked, c.RevokedAt, c.Reason = true, now, reason
		out = append(out, c.Serial)
	}
	return out
}

// RevokeBefore revokes for reason, at now, d's certificates issued before
// serial that are neither revoked nor expired, and returns their serials;
// nothing when d holds no certificate serial.
func (d *Device) RevokeBefore(serial string, reason int, now time.Time) []string {
	i := slices.IndexFunc(d.Certificates(), func(c Cert) bool { return c.Serial == serial })
	if serial == "" || i <= 0 {
		return nil
	}
	d.materialize()
	var out []string
	for j := range d.Certs[:i] {
		c := &d.Certs[j]
		if c.Revoked || c.expired(now) {
			continue
		}
		c.Revoked, c.RevokedAt, c.Reason = true, now, reason
		out = append(out, c.Serial)
	}
	return out
}

// pruneCerts drops the entries of certificates expired by now, except the
// current one's.
func (d *Device) pruneCerts(now time.Time) {
	if d.Certs == nil {
		return
	}
	d.Certs = slices.DeleteFunc(d.Certs, func(c Cert) bool { return c.Serial != d.CertSerial && c.expired(now) })
	if len(d.Certs) == 0 {
		d.Certs = nil
	}
}

// recordRevocations lists in the CRL bucket every certificate d marks
// revoked that old did not (the first record of a serial is kept).
func recordRevocations(tx tx, old, d *Device, now time.Time) error {
	was := map[string]bool{}
	if old != nil {
		for _, c := range old.Certificates() {
			if c.Revoked {
				was[c.Serial] = true
			}
		}
	}
	for _, c := range d.Certs {
		if !c.Revoked || was[c.Serial] {
			continue
		}
		if ok, err := tx.revoked(c.Serial); err != nil || ok {
			if err != nil {
				return err
			}
			continue
		}
		at := c.RevokedAt
		if at.IsZero() {
			at = now
		}
		if err := tx.putRevocation(&Revocation{Serial: c.Serial, DeviceID: d.ID, Reason: c.Reason, Time: at, Expires: c.NotAfter}); err != nil {
			return err
		}
	}
	return nil
}
