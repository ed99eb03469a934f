package server

import (
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/admission"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/rollout"
)

// Firmware files, relative to DataDir.
const (
	FirmwareDir   = firmware.DataDir // the release store (fleet/firmware): firmware.db and images/
	StagingDir    = "firmware/new"   // images uploaded ahead of their release (two-step upload)
	CampaignsFile = campaign.File    // campaigns (fleet/campaign)
)

// ReleaseRotation names one rotation of the release trust set in the
// configuration (rollout.Rotation).
type ReleaseRotation = rollout.Rotation

// var _ guards the API's view of the firmware service.
var _ api.Firmware = (*rollout.Service)(nil)

// openFirmware opens the firmware service (fleet/rollout) when
// release_trust is set; without it firmware is off (s.fw stays nil, the
// API answers 501).
func (s *Server) openFirmware() (err error) {
	if s.cfg.ReleaseTrust == "" {
		s.log.Info("firmware releases off: no release_trust configured")
		return nil
	}
	s.fw, err = rollout.Open(rollout.Config{
		Dir: filepath.Join(s.cfg.DataDir, FirmwareDir), StagingDir: filepath.Join(s.cfg.DataDir, StagingDir),
		CampaignsPath: filepath.Join(s.cfg.DataDir, CampaignsFile), Database: s.db, Leases: s.leases, Attestations: s.history, Alert: s.attestAlert,
		TrustFile: s.cfg.ReleaseTrust, Rotations: s.cfg.ReleaseTrustRotations, Approvals: s.cfg.FirmwareApprovals,
		TrustDomain: s.cfg.TrustDomain, Devices: s.Inv, Policies: s.Policy, Audit: s.Audit, Send: s.sendDevice,
		Admit: admission.Gate{Devices: s.Inv, CA: s.CA}.AdmitActive, Logger: s.log.With("component", "firmware"),
	})
	if err == nil {
		s.onClose(s.fw.Close)
	}
	return err
}

// Releases returns the release store, or nil when firmware is off.
func (s *Server) Releases() *firmware.Store { return s.fw.Releases() }

// Campaigns returns the campaign manager, or nil when firmware is off.
func (s *Server) Campaigns() *campaign.Manager { return s.fw.Campaigns() }

// StartCampaign starts a draft campaign as the API does: once its release
// may be offered, with the release's attestation policies prepared
// (rollout.ErrOff when firmware is off).
func (s *Server) StartCampaign(id string, at time.Time, who, why string) error {
	return s.fw.StartCampaign(id, at, who, why)
}

// firmwareAPI is the API's view of the firmware service; nil (firmware
// off) makes the firmware routes answer 501.
func (s *Server) firmwareAPI() api.Firmware {
	if s.fw == nil {
		return nil
	}
	return s.fw
}

// firmwareTarget is governance's Firmware; nil when firmware is off.
func (s *Server) firmwareTarget() governance.Firmware {
	if s.fw == nil {
		return nil
	}
	return s.fw
}
