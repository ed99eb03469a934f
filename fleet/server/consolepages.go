package server

import "github.com/sigil-iot/sigil/fleet/console"

// consoleExtensions are the console's pages, overview tiles and device
// sections for the fleet's subsystems: firmware campaigns and releases
// (when release_trust is set), alerts, the approvals inbox (with
// two_person_rule), just-in-time SSH access, the audit log, telemetry
// charts, risk scores and shadow-device triage.
func (s *Server) consoleExtensions() []console.Extension {
	var exts []console.Extension
	if s.fw != nil {
		exts = append(exts, console.FirmwarePages{Releases: s.fw.Releases(), Campaigns: s.fw.Campaigns(), Exposure: s.fw.Exposure()}.Extension())
	}
	if s.Alerts != nil {
		exts = append(exts, console.AlertPages{Alerts: s.Alerts, Sinks: s.sinks}.Extension())
	}
	if s.Approvals != nil {
		exts = append(exts, console.ApprovalPages{Approvals: s.Approvals}.Extension())
	}
	exts = append(exts, console.AccessPages{Grants: s.Access}.Extension(), console.WorkloadPages{Workloads: s.Workload}.Extension(), console.BridgePages{Bridges: s.bridges}.Extension()) // JIT SSH access, workload identities, OT bridges
	if s.Audit != nil {
		exts = append(exts, console.AuditPages{Log: s.Audit}.Extension())
	}
	if s.Telemetry != nil {
		exts = append(exts, console.TelemetryCharts{Telemetry: s.Telemetry}.Extension())
	}
	if s.Governance != nil {
		exts = append(exts, console.RiskPages{Risk: s.Governance}.Extension(), console.TriagePages{Governance: s.Governance}.Extension())
	}
	return exts
}
