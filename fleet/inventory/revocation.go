package inventory

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Revocation reasons (RFC 5280 CRLReason codes).
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6 // quarantine: suspended until the device proves itself
)

// ReasonName names an RFC 5280 reason code; ReasonCode parses one.
func ReasonName(code int) string {
	switch code {
	case ReasonKeyCompromise:
		return "keyCompromise"
	case ReasonAffiliationChanged:
		return "affiliationChanged"
	case ReasonSuperseded:
		return "superseded"
	case ReasonCessationOfOperation:
		return "cessationOfOperation"
	case ReasonCertificateHold:
		return "certificateHold"
	}
	return "unspecified"
}

// ReasonCode parses a reason name; ok is false for an unknown name.
func ReasonCode(name string) (code int, ok bool) {
	for _, c := range []int{ReasonUnspecified, ReasonKeyCompromise, ReasonAffiliationChanged, ReasonSuperseded, ReasonCessationOfOperation, ReasonCertificateHold} {
		if ReasonName(c) == name {
			return c, true
		}
	}
	return 0, false
}

// Revocation is one revoked certificate, for the CRL.
type Revocation struct {
	Serial   string    `json:"serial"` // hex
	DeviceID string    `json:"device_id"`
	Reason   int       `json:"reason"`
	Time     time.Time `json:"time"`
	Expires  time.Time `json:"expires,omitzero"` // the certificate's NotAfter, when known: CRLs may drop it after
}

// Revocations lists every recorded revocation whose certificate has not
// expired before now (zero now: all), in serial order.
func (s *Store) Revocations(ctx context.Context, now time.Time) ([]Revocation, error) {
	var out []Revocation
	err := s.e.view(ctx, func(tx tx) error {
		out = nil
		return tx.eachRevocation(func(r *Revocation) error {
			if now.IsZero() || r.Expires.IsZero() || r.Expires.After(now) {
				out = append(out, *r)
			}
			return nil
		})
	})
	return out, err
}

// Upsert reads the device with id (exists false and a zero record with only
// the ID set when there is none), lets fn change it, and stores it, in one
// transaction: decisions made in fn see the current record. A state change
// of an existing record follows the lifecycle (*TransitionError).
//
// PostgreSQL may run fn more than once (a transaction that failed to
// serialize runs again): it must only change the device it is given.
func (s *Store) Upsert(ctx context.Context, id string, fn func(d *Device, exists bool) error) error {
	return s.e.update(ctx, func(tx tx) error {
		old, err := tx.device(id)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		d := &Device{ID: id}
		var prev *Device
		if exists {
			p := old.snapshot()
			prev, d = &p, old
		}
		if err := fn(d, exists); err != nil {
			return err
		}
		if d.ID != id {
			return fmt.Errorf("%w: Upsert may not change the device ID", ErrInvalid)
		}
		if err := validDevice(d); err != nil {
			return err
		}
		return putDevice(tx, prev, d, s.opts.now())
	})
}

// TokenUsedBy returns the device that used a token ("" when unused), or
// ErrTokenInvalid for an unknown secret. Expiry is not checked: a known
// device may present the token it enrolled with when it re-enrolls.
func (s *Store) TokenUsedBy(ctx context.Context, secret string) (string, error) {
	var usedBy string
	err := s.e.view(ctx, func(tx tx) error {
		tok, err := lookupToken(tx, secret)
		if err != nil {
			return err
		}
		usedBy = tok.UsedBy
		return nil
	})
	return usedBy, err
}
