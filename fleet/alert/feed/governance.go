package feed

import (
	"errors"
	"strconv"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// What alerting and telemetry tell identity governance about a device,
// for its risk score.

// RuleNewPort is the default alert rule whose alerts are new listening
// ports: they count as exposure, not as anomalies.
const RuleNewPort = "new-listening-port"

// AlertQuerier finds alerts (*alert.Engine).
type AlertQuerier interface {
	Alerts(q alert.Query) ([]alert.Alert, uint64, error)
}

// Anomalies is governance.Anomalies over the alert engine's open alerts, but
// those of RuleNewPort (exposure).
type Anomalies struct{ Alerts AlertQuerier }

// OpenAlerts implements governance.Anomalies.
func (a Anomalies) OpenAlerts(deviceID string) ([]governance.OpenAlert, error) {
	open, _, err := a.Alerts.Alerts(alert.Query{DeviceID: deviceID, Open: true, Limit: 1000})
	if err != nil {
		return nil, err
	}
	var out []governance.OpenAlert
	for _, x := range open {
		kind := x.RuleID
		switch kind {
		case RuleNewPort:
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

// TelemetryDevices reads a device's latest telemetry (*telemetry.Ingester).
type TelemetryDevices interface {
	Device(deviceID string) (telemetry.DeviceStatus, error)
}

// Exposure is governance.Exposure from telemetry's listening ports and,
// with Alerts, the ports never seen before (open alerts of RuleNewPort).
type Exposure struct {
	Telemetry TelemetryDevices
	Alerts    AlertQuerier // nil: no new ports
}

// Ports implements governance.Exposure.
func (x Exposure) Ports(deviceID string) (governance.Ports, error) {
	var p governance.Ports
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
