package inventory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// State is a device's lifecycle state.
//
// The lifecycle is one state machine, enforced on every write of a device
// record (PutDevice, Update, Upsert and the methods below): a state
// changes only along these edges, and staying in a state is always
// allowed.
//
//	(new record) ──enroll──▶ pending ──approve+enroll──▶ active
//	(new record) ──enroll──────────────────────────────▶ active
//	active      ──quarantine──▶ quarantined ──release──▶ active
//	pending, active, quarantined ──decommission──▶ decommissioned
//
// A pending record stays pending until an operator approved it and it
// enrolled: quarantine and clone handling never touch it. Decommissioned
// is terminal for the identity: no write moves a device out of it, and
// enrollment refuses its EK for good (to reuse the hardware, clear the
// TPM's endorsement hierarchy so that it has another EK). A refused
// change is a *TransitionError (errors.Is(err, ErrTransition)).
type State string

// Lifecycle states.
const (
	StatePending        State = "pending"        // waiting for operator approval; holds no certificate
	StateActive         State = "active"         // enrolled and trusted
	StateQuarantined    State = "quarantined"    // enrolled, restricted to proving itself (Cause says why)
	StateDecommissioned State = "decommissioned" // retired for good; refused at the broker and at enrollment
)

// Valid reports whether s is one of the lifecycle states.
func (s State) Valid() bool {
	switch s {
	case StatePending, StateActive, StateQuarantined, StateDecommissioned:
		return true
	}
	return false
}

// CanMove reports whether the lifecycle lets a device in state s move to
// state to (see State).
func (s State) CanMove(to State) bool {
	if !s.Valid() || !to.Valid() {
		return false
	}
	if s == to {
		return true
	}
	switch s {
	case StatePending:
		return to == StateActive || to == StateDecommissioned
	case StateActive:
		return to == StateQuarantined || to == StateDecommissioned
	case StateQuarantined:
		return to == StateActive || to == StateDecommissioned
	}
	return false // decommissioned is terminal
}

// ErrTransition is what a refused state change is (errors.Is).
var ErrTransition = errors.New("inventory: state change not allowed")

// TransitionError is a state change the lifecycle refused.
type TransitionError struct {
	DeviceID string
	From, To State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("inventory: device %s may not go from %s to %s", e.DeviceID, e.From, e.To)
}

// Is makes errors.Is(err, ErrTransition) hold.
func (e *TransitionError) Is(target error) bool { return target == ErrTransition }

// QuarantinedKinds are the up-topic kinds a quarantined device may publish:
// what lets it prove itself (attest, hello), be refused with a reason
// rather than disconnected (ssh, workload), and be watched (telemetry, and
// the operator sessions it reports: access).
func QuarantinedKinds() []string {
	return []string{"attest", "hello", "ssh", wire.KindTelemetry, wire.KindWorkload, wire.KindAccess}
}

// Accepts reports whether a device in state s may send messages of an
// up-topic kind: an active device every kind, a quarantined one only
// QuarantinedKinds, a pending or decommissioned one nothing.
func (s State) Accepts(kind string) bool {
	switch s {
	case StateActive:
		return true
	case StateQuarantined:
		return slices.Contains(QuarantinedKinds(), kind)
	}
	return false
}

// Quarantine causes (Cause.Source).
const (
	CauseAttestation = "attestation" // a failing verdict; Cause.Policy names its policy ("" when no policy judged it)
	CauseAlert       = "alert"       // an alert rule's action
	CauseClone       = "clone"       // a cloned identity (governance)
	CauseOperator    = "operator"    // an operator's request
)

// Cause is one reason a device is quarantined.
type Cause struct {
	Source string    `json:"source"`           // CauseAttestation, CauseAlert, CauseClone or CauseOperator
	Policy string    `json:"policy,omitempty"` // the policy whose failing verdict it was (CauseAttestation)
	Reason string    `json:"reason,omitempty"` // for people
	Time   time.Time `json:"time"`
}

// Quarantine restricts device id for cause c, in one transaction: an
// active device becomes quarantined, and every certificate it holds that
// has not expired is revoked (certificateHold) and listed in the CRL. A
// renewal that committed before is therefore revoked, and one that
// commits after finds the device quarantined and is refused (rotation
// checks the state in the transaction that records the new serial). A
// device already quarantined only gains the cause (which an auto-release
// then has to answer for); the certificate it re-enrolled with to prove
// itself stays, as restricted as before. A pending or decommissioned
// device is refused with a *TransitionError and left as it is. It returns
// the device as written and the serials it revoked.
func (s *Store) Quarantine(ctx context.Context, id string, c Cause) (*Device, []string, error) {
	if c.Time.IsZero() {
		c.Time = s.opts.now()
	}
	var out *Device
	var revoked []string
	err := s.transition(ctx, id, func(d *Device) error {
		if d.State != StateActive && d.State != StateQuarantined {
			return &TransitionError{DeviceID: id, From: d.State, To: StateQuarantined}
		}
		if !slices.ContainsFunc(d.Quarantine, func(x Cause) bool { return x.Source == c.Source && x.Policy == c.Policy }) {
			d.Quarantine = append(d.Quarantine, c)
		}
		revoked = nil
		if d.State == StateActive {
			d.State = StateQuarantined
			revoked = d.RevokeAll(ReasonCertificateHold, c.Time)
		}
		out = d
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, revoked, nil
}

// Release returns a quarantined device to active (an operator's decision)
// and forgets the causes of its quarantine. Its revoked certificates stay
// revoked. A device that is not quarantined: ErrNotQuarantined.
func (s *Store) Release(ctx context.Context, id string) (*Device, error) {
	return s.release(ctx, id, func(*Device) error { return nil })
}

// AutoRelease returns a quarantined device to active for a passing
// verdict under policy, which allows it: only when every cause of the
// quarantine is a failing verdict under that same policy (ErrOtherCause
// otherwise: a quarantine for an alert, a clone, an operator or another
// policy is lifted by an operator only).
func (s *Store) AutoRelease(ctx context.Context, id, policy string) (*Device, error) {
	return s.release(ctx, id, func(d *Device) error {
		for _, c := range d.Quarantine {
			if c.Source != CauseAttestation || c.Policy != policy || policy == "" {
				return fmt.Errorf("%w: %s", ErrOtherCause, c.Source)
			}
		}
		return nil
	})
}

func (s *Store) release(ctx context.Context, id string, allow func(*Device) error) (*Device, error) {
	var out *Device
	err := s.transition(ctx, id, func(d *Device) error {
		if d.State != StateQuarantined {
			return ErrNotQuarantined
		}
		if err := allow(d); err != nil {
			return err
		}
		d.State, d.Quarantine = StateActive, nil
		out = d
		return nil
	})
	return out, err
}

// Decommission retires device id for good, in one transaction: its state
// becomes decommissioned (from any state; again changes nothing but what
// is left to revoke) and every certificate it holds that has not expired
// is revoked (cessationOfOperation) and listed in the CRL. It returns the
// device as written and the serials it revoked. The caller closes the
// device's sessions whatever was revoked.
func (s *Store) Decommission(ctx context.Context, id string) (*Device, []string, error) {
	var out *Device
	var revoked []string
	now := s.opts.now()
	err := s.transition(ctx, id, func(d *Device) error {
		d.State, d.Quarantine = StateDecommissioned, nil
		revoked = d.RevokeAll(ReasonCessationOfOperation, now)
		out = d
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, revoked, nil
}

// RevokeDevice revokes every certificate device id holds that has not
// expired, for reason, in one transaction that also lists each in the CRL:
// the revocation of a device (an operator's, an alert rule's, the
// dormant-device policy's), as opposed to a renewal's revocation of the
// serials it superseded (RevokeSuperseded). The device keeps its state and
// its identity: it may prove itself again from its EK; to shut it out for
// good, decommission it. A renewal that commits after it finds the current
// certificate revoked and is refused (rotation checks it in the
// transaction that records the new serial); one that committed before is
// revoked with the others. A device with nothing left to revoke is left as
// it is. It returns the device as written and the serials it revoked; the
// caller closes the device's sessions whatever was revoked, as after
// Decommission. An unknown reason is ErrInvalid.
func (s *Store) RevokeDevice(ctx context.Context, id string, reason int) (*Device, []string, error) {
	if reason != ReasonUnspecified && ReasonName(reason) == ReasonName(ReasonUnspecified) {
		return nil, nil, fmt.Errorf("%w: revocation reason %d", ErrInvalid, reason)
	}
	var out *Device
	var revoked []string
	now := s.opts.now()
	err := s.transition(ctx, id, func(d *Device) error {
		revoked = d.RevokeAll(reason, now)
		out = d
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, revoked, nil
}

// RevokeSuperseded revokes (superseded) every certificate of device id
// issued before serial, once the device connected with serial: a device
// that switched to a renewed certificate never goes back to an older one
// (sigild forgets its key). Certificates issued after serial stay
// admitted: a renewal the device has not switched to yet (it reconnected
// with the certificate it holds). A serial the device does not hold
// revokes nothing. It returns what it revoked.
//
// It is called on every connection with a certificate, so it is cheap
// when there is nothing to do: a read finds nothing to revoke and nothing
// is written. The write, when there is one, is group-committed with the
// other device writes (Update): the devices that reconnect together after
// a forced re-key share transactions and fsyncs.
func (s *Store) RevokeSuperseded(ctx context.Context, id, serial string) ([]string, error) {
	now := s.opts.now()
	err := s.e.view(ctx, func(tx tx) error {
		d, err := tx.device(id)
		if err != nil {
			return err
		}
		if len(d.RevokeBefore(serial, ReasonSuperseded, now)) == 0 { // on the copy just read
			return errNothingToDo
		}
		return nil
	})
	if errors.Is(err, errNothingToDo) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var revoked []string
	err = s.e.write(ctx, func(tx tx) error {
		revoked = nil // a batch may run this again
		d, err := tx.device(id)
		if err != nil {
			return err
		}
		prev := d.snapshot()
		if revoked = d.RevokeBefore(serial, ReasonSuperseded, now); len(revoked) == 0 {
			return nil // another connection revoked them meanwhile
		}
		if err := validDevice(d); err != nil {
			return err
		}
		return putDevice(tx, &prev, d, now)
	})
	if err != nil {
		return nil, err
	}
	return revoked, nil
}

// errNothingToDo ends a read that found nothing to write.
var errNothingToDo = errors.New("inventory: nothing to do")

// transition applies fn to device id and writes it, in one transaction of
// its own (not shared by group commit). fn may run again if PostgreSQL
// could not serialize the transaction: it sets its results, never adds
// to them, so that the last run's are the ones returned.
func (s *Store) transition(ctx context.Context, id string, fn func(*Device) error) error {
	return s.e.update(ctx, func(tx tx) error {
		d, err := tx.device(id)
		if err != nil {
			return err
		}
		prev := d.snapshot()
		if err := fn(d); err != nil {
			return err
		}
		if err := validDevice(d); err != nil {
			return err
		}
		return putDevice(tx, &prev, d, s.opts.now())
	})
}
