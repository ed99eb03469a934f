package governance

import (
	"context"
	"fmt"
	"strings"
)

// What the fleet's other parts ask of governance.

// Screen is the broker's screen: it refuses a CONNECT whose client ID,
// address, device ID or (for an enrolled device) EK is on the block list.
func (s *Service) Screen(clientID, deviceID, remote string) error {
	if b, ok := s.Blocked(clientID, remote, ""); ok {
		return blockedError(b)
	}
	if deviceID == "" {
		return nil
	}
	if b, ok := s.Blocked(deviceID, "", ""); ok {
		return blockedError(b)
	}
	if d, err := s.cfg.Devices.Device(context.TODO(), deviceID); err == nil && d.EKFingerprint != "" {
		if b, ok := s.Blocked("", "", d.EKFingerprint); ok {
			return blockedError(b)
		}
	}
	return nil
}

func blockedError(b Block) error {
	return fmt.Errorf("on the block list (%s %s)", b.Kind, b.Value)
}

// TriageKey is the key of the triage entry for an identity of the kind:
// "<kind>/<what>:<value>", as Shadow.Key names them.
func TriageKey(kind AttemptKind, what, value string) string {
	return string(kind) + "/" + what + ":" + value
}

// TriageEnrolled reports whether an operator decided to enroll the triage
// entry key.
func (s *Service) TriageEnrolled(key string) bool {
	sh, err := s.Shadow(key)
	return err == nil && sh.Decision == DecisionEnroll
}

// TriageEnroller carries out an operator's decision to enroll a shadow
// device: the decision itself, recorded by governance, is what the fleet
// consults afterwards — enrollment trusts an unknown EK so decided
// (trust path "triage"), and with bootstrap_credential a client ID so
// decided may open a bootstrap session without a credential (its
// enrollment still needs a trust path for its EK).
type TriageEnroller struct{}

var _ Enroller = TriageEnroller{}

// Enroll implements Enroller.
func (TriageEnroller) Enroll(sh Shadow) error {
	switch {
	case sh.Kind == AttemptUnknownEK && sh.EKFingerprint != "":
		return nil
	case sh.Kind == AttemptUnknownClient && sh.ClientID != "":
		return nil
	}
	return fmt.Errorf("%w: a %s entry cannot be enrolled: the device must enroll with its TPM (token, EK CA, allow-list or approval); block or dismiss it",
		ErrInvalid, sh.Kind)
}

// Enrollment is enrollment's view of governance (enroll.Identities): the
// block list, the operators' triage decisions, unknown EKs for the triage
// list and EK clone incidents.
type Enrollment struct{ S *Service }

// Blocked reports whether a bootstrap client ID or an EK is blocked.
func (e Enrollment) Blocked(clientID, ek string) bool { return e.S.IsBlocked(clientID, "", ek) }

// Admitted reports whether an operator decided to enroll this EK.
func (e Enrollment) Admitted(ek string) bool {
	return e.S.TriageEnrolled(TriageKey(AttemptUnknownEK, "ek", strings.ToLower(ek)))
}

// UnknownEK records an enrollment refused for an EK no trust path accepts.
func (e Enrollment) UnknownEK(clientID, ek, reason string) {
	if err := e.S.Observe(Attempt{Kind: AttemptUnknownEK, ClientID: clientID, EKFingerprint: ek, Reason: reason}); err != nil {
		e.S.log.Debug("governance: attempt not recorded", "err", err)
	}
}

// CloneSuspect raises the EK clone incident of a device (EKConflict).
func (e Enrollment) CloneSuspect(deviceID, detail string) {
	if err := e.S.EKConflict(deviceID, detail); err != nil {
		e.S.log.Error("governance: EK clone incident failed; the next sweep retries it", "device_id", deviceID, "err", err)
	}
}
