package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// GovernanceFile holds owners, the triage and block lists, clone incidents
// and risk scores, relative to DataDir.
const GovernanceFile = "governance.db"

// openGovernance opens identity governance over the inventory, the broker
// and the attestation history; it is called once these exist.
func (s *Server) openGovernance() error {
	c := s.cfg.GovernanceConfig
	var err error
	s.Governance, err = governance.Open(governance.Config{
		Path:    filepath.Join(s.cfg.DataDir, GovernanceFile),
		Devices: s.Inv, Revoker: s.revoker(),
		Quarantiner:  governance.InventoryQuarantiner{Inventory: s.Inv, Disconnect: s.Broker.Disconnect},
		Enroller:     triageEnroller{},
		Connected:    s.Broker.Connected,
		Alerter:      governance.AlerterFunc(s.governanceAlert),
		Attestations: s.history,
		// Both nil interfaces, not typed nils, when the part is absent.
		Anomalies:    s.openAlertsOf(),
		Exposure:     s.exposureOf(),
		Firmware:     s.firmwareTarget(),
		CertLifetime: time.Duration(s.cfg.DeviceLifetime),
		DormantAfter: time.Duration(c.DormantAfter), RevokeDormant: c.DormantRevoke,
		SilentAfter: time.Duration(c.SilentAfter), SweepInterval: time.Duration(c.GovernanceInterval),
		Logger: s.log.With("component", "governance"),
	})
	if err == nil {
		s.onClose(s.Governance.Close)
	}
	return err
}

// revoker revokes a device for governance and for alert rules: every
// unexpired certificate (inventory.Store.RevokeDevice), its sessions
// closed.
func (s *Server) revoker() governance.InventoryRevoker {
	return governance.InventoryRevoker{Inventory: s.Inv, Disconnect: s.Broker.Disconnect}
}

// rescore tells governance that a device's risk inputs changed: its
// score is computed again within seconds (governance.Service.Rescore),
// not at the next sweep.
func (s *Server) rescore(deviceID string) {
	if g := s.Governance; g != nil {
		g.Rescore(deviceID)
	}
}

// governanceAlert takes governance's findings. A device's finding is
// recorded as a lifecycle event of the device (and so in the audit log)
// and, when raised, handed to the alert engine as a security event;
// fleet-wide findings (shadow devices) are only logged, by governance.
func (s *Server) governanceAlert(a governance.Alert) {
	if a.DeviceID == "" {
		return
	}
	kind := a.Kind
	if a.Resolved {
		kind += "-resolved"
	}
	err := s.Inv.AddEvent(inventory.Event{Time: a.Time, DeviceID: a.DeviceID, Kind: kind, Detail: a.Summary})
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("governance: recording a finding failed", "device_id", a.DeviceID, "kind", kind, "err", err)
	}
	if a.Resolved {
		return
	}
	if s.feed != nil {
		s.feed.Governance(a)
	}
}

// governanceEvent feeds broker events to governance: every admitted
// device connection opens and closes a session (certificate clones), and
// refused connections from identities the fleet does not know go to the
// triage list. It runs on the broker's connection goroutines: governance
// works in memory here, and the inventory is only read.
func (s *Server) governanceEvent(ev broker.Event) {
	g := s.Governance
	if g == nil || ev.Identity.Fleet {
		return
	}
	id := ev.Identity
	switch ev.Kind {
	case broker.Connected:
		if id.DeviceID != "" && id.Cert != nil {
			g.SessionOpened(governance.Session{DeviceID: id.DeviceID, CertSerial: certSerial(id), Remote: ev.Remote, Time: ev.Time})
		}
	case broker.Disconnected, broker.Closed:
		if id.DeviceID != "" && id.Cert != nil {
			g.SessionClosed(governance.Session{DeviceID: id.DeviceID, CertSerial: certSerial(id), Remote: ev.Remote, Time: ev.Time})
		}
	case broker.Refused:
		a := governance.Attempt{ClientID: id.ClientID, Remote: ev.Remote, Reason: ev.Reason, Time: ev.Time}
		switch {
		case ev.Presented != nil:
			a.Kind, a.Cert = governance.AttemptForeignCert, ev.Presented
		case id.DeviceID != "":
			// A device certificate of this fleet: a shadow only when the
			// inventory does not hold the device (refusals of known
			// devices — revoked, quarantined, retired — are their own
			// business).
			if _, err := s.Inv.Device(id.DeviceID); !errors.Is(err, inventory.ErrNotFound) {
				return
			}
			a.Kind, a.Cert = governance.AttemptUnknownDevice, id.Cert
		default:
			a.Kind = governance.AttemptUnknownClient
		}
		if err := g.Observe(a); err != nil {
			s.log.Debug("governance: attempt not recorded", "err", err)
		}
	}
}

func certSerial(id broker.Identity) string { return hex.EncodeToString(id.Cert.SerialNumber.Bytes()) }

// screen is the broker's Screen: it refuses a CONNECT whose client ID,
// address, device ID or (for an enrolled device) EK is on the block list.
func (s *Server) screen(clientID, deviceID, remote string) error {
	g := s.Governance
	if g == nil {
		return nil
	}
	if b, ok := g.Blocked(clientID, remote, ""); ok {
		return blockedError(b)
	}
	if deviceID == "" {
		return nil
	}
	if b, ok := g.Blocked(deviceID, "", ""); ok {
		return blockedError(b)
	}
	if d, err := s.Inv.Device(deviceID); err == nil && d.EKFingerprint != "" {
		if b, ok := g.Blocked("", "", d.EKFingerprint); ok {
			return blockedError(b)
		}
	}
	return nil
}

func blockedError(b governance.Block) error {
	return fmt.Errorf("on the block list (%s %s)", b.Kind, b.Value)
}

// triageKey is the key of governance's triage entry for an identity of
// the kind: "<kind>/<what>:<value>", as governance.Shadow.Key names them.
func triageKey(kind governance.AttemptKind, what, value string) string {
	return string(kind) + "/" + what + ":" + value
}

// triageEnrolled reports whether an operator decided to enroll the triage
// entry key.
func (s *Server) triageEnrolled(key string) bool {
	g := s.Governance
	if g == nil {
		return false
	}
	sh, err := g.Shadow(key)
	return err == nil && sh.Decision == governance.DecisionEnroll
}

// triageEnroller carries out an operator's decision to enroll a shadow
// device: the decision itself, recorded by governance, is what the fleet
// consults afterwards — enrollment trusts an unknown EK so decided
// (trust path "triage"), and with bootstrap_credential a client ID so
// decided may open a bootstrap session without a credential (its
// enrollment still needs a trust path for its EK).
type triageEnroller struct{}

var _ governance.Enroller = triageEnroller{}

func (triageEnroller) Enroll(sh governance.Shadow) error {
	switch {
	case sh.Kind == governance.AttemptUnknownEK && sh.EKFingerprint != "":
		return nil
	case sh.Kind == governance.AttemptUnknownClient && sh.ClientID != "":
		return nil
	}
	return fmt.Errorf("%w: a %s entry cannot be enrolled: the device must enroll with its TPM (token, EK CA, allow-list or approval); block or dismiss it",
		governance.ErrInvalid, sh.Kind)
}

// enrollIdentities is enrollment's view of governance (enroll.Identities).
type enrollIdentities struct{ s *Server }

var _ enroll.Identities = enrollIdentities{}

func (e enrollIdentities) Blocked(clientID, ek string) bool {
	g := e.s.Governance
	return g != nil && g.IsBlocked(clientID, "", ek)
}

func (e enrollIdentities) Admitted(ek string) bool {
	return e.s.triageEnrolled(triageKey(governance.AttemptUnknownEK, "ek", strings.ToLower(ek)))
}

func (e enrollIdentities) UnknownEK(clientID, ek, reason string) {
	if g := e.s.Governance; g != nil {
		if err := g.Observe(governance.Attempt{Kind: governance.AttemptUnknownEK, ClientID: clientID, EKFingerprint: ek, Reason: reason}); err != nil {
			e.s.log.Debug("governance: attempt not recorded", "err", err)
		}
	}
}

func (e enrollIdentities) CloneSuspect(deviceID, detail string) {
	if g := e.s.Governance; g != nil {
		if err := g.EKConflict(deviceID, detail); err != nil {
			e.s.log.Error("governance: EK clone incident failed; the next sweep retries it", "device_id", deviceID, "err", err)
		}
	}
}

// openAlertsOf feeds the alert engine's open alerts into risk scores;
// nil without an engine.
func (s *Server) openAlertsOf() governance.Anomalies {
	if s.Alerts == nil {
		return nil
	}
	return alertAnomalies{s.Alerts}
}

// ruleNewPort is the default rule whose alerts are new listening ports:
// they count as exposure, not as anomalies.
const ruleNewPort = "new-listening-port"

type alertAnomalies struct{ e *alert.Engine }

func (a alertAnomalies) OpenAlerts(deviceID string) ([]governance.OpenAlert, error) {
	open, _, err := a.e.Alerts(alert.Query{DeviceID: deviceID, Open: true, Limit: 1000})
	if err != nil {
		return nil, err
	}
	var out []governance.OpenAlert
	for _, x := range open {
		kind := x.RuleID
		switch kind {
		case ruleNewPort:
			continue
		case alert.EventCloneSuspect:
			kind = governance.KindClone // governance scores clones itself
		case alert.EventDormant:
			kind = governance.KindDormant
		}
		out = append(out, governance.OpenAlert{Kind: kind, Severity: string(x.Severity)})
	}
	return out, nil
}

// exposureOf feeds listening ports (telemetry) and ports never seen
// before (open alerts of the new-port rule) into risk scores; nil without
// telemetry.
func (s *Server) exposureOf() governance.Exposure {
	if s.Telemetry == nil {
		return nil
	}
	return telemetryExposure{in: s.Telemetry, alerts: s.Alerts}
}

type telemetryExposure struct {
	in     *telemetry.Ingester
	alerts *alert.Engine
}

func (x telemetryExposure) Ports(deviceID string) (governance.Ports, error) {
	var p governance.Ports
	st, err := x.in.Device(deviceID)
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
	if x.alerts != nil {
		open, _, err := x.alerts.Alerts(alert.Query{DeviceID: deviceID, RuleID: ruleNewPort, Open: true, Limit: 1000})
		if err != nil {
			return p, err
		}
		for _, a := range open {
			p.New = append(p.New, a.Key)
		}
	}
	return p, nil
}
