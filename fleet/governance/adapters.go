package governance

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// What the fleet's other parts ask of governance, and the adapters that
// give governance what it reads of them.

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
	if d, err := s.cfg.Devices.Device(deviceID); err == nil && d.EKFingerprint != "" {
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

// RuleNewPort is the default alert rule whose alerts are new listening
// ports: they count as exposure, not as anomalies.
const RuleNewPort = "new-listening-port"

// AlertQuerier finds alerts (*alert.Engine).
type AlertQuerier interface {
	Alerts(q alert.Query) ([]alert.Alert, uint64, error)
}

// AlertAnomalies is Anomalies over the alert engine's open alerts, but
// those of RuleNewPort (exposure).
type AlertAnomalies struct{ Alerts AlertQuerier }

// OpenAlerts implements Anomalies.
func (a AlertAnomalies) OpenAlerts(deviceID string) ([]OpenAlert, error) {
	open, _, err := a.Alerts.Alerts(alert.Query{DeviceID: deviceID, Open: true, Limit: 1000})
	if err != nil {
		return nil, err
	}
	var out []OpenAlert
	for _, x := range open {
		kind := x.RuleID
		switch kind {
		case RuleNewPort:
			continue
		case alert.EventCloneSuspect:
			kind = KindClone // governance scores clones itself
		case alert.EventDormant:
			kind = KindDormant
		}
		out = append(out, OpenAlert{Kind: kind, Severity: string(x.Severity)})
	}
	return out, nil
}

// TelemetryDevices reads a device's latest telemetry (*telemetry.Ingester).
type TelemetryDevices interface {
	Device(deviceID string) (telemetry.DeviceStatus, error)
}

// TelemetryExposure is Exposure from telemetry's listening ports and,
// with Alerts, the ports never seen before (open alerts of RuleNewPort).
type TelemetryExposure struct {
	Telemetry TelemetryDevices
	Alerts    AlertQuerier // nil: no new ports
}

// Ports implements Exposure.
func (x TelemetryExposure) Ports(deviceID string) (Ports, error) {
	var p Ports
	st, err := x.Telemetry.Device(deviceID)
	if err == nil {
		for _, proto := range []string{"tcp", "udp"} {
			for _, port := range st.Sets["listen."+proto] {
				if _, err := strconv.Atoi(port); err == nil {
					p.Listening = append(p.Listening, proto+"/"+port)
				}
			}
		}
	} else if !errors.Is(err, telemetry.ErrUnknownDevice) {
		return p, err
	}
	if x.Alerts != nil {
		open, _, err := x.Alerts.Alerts(alert.Query{DeviceID: deviceID, RuleID: RuleNewPort, Open: true, Limit: 1000})
		if err != nil {
			return p, err
		}
		for _, a := range open {
			p.New = append(p.New, a.Key)
		}
	}
	return p, nil
}
