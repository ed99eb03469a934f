package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/policy"
)

// StartCampaign starts a draft campaign when its release may be offered,
// after preparing the attestation policies of the release (see
// preparePolicies).
func (s *Service) StartCampaign(id string, at time.Time, who, why string) error {
	if s == nil {
		return ErrOff
	}
	c, err := s.campaigns.Get(id)
	if err != nil {
		return err
	}
	r, err := s.store.Offerable(context.TODO(), c.Definition.Release, s.now())
	if err != nil {
		return err
	}
	if err := s.preparePolicies(r, who); err != nil {
		return err
	}
	return s.campaigns.Start(id, at, who, why)
}

// preparePolicies gives devices that will run release r a reference policy
// before any runs it, so that attestation expects the new measurements
// instead of raising a false alarm: for each model of the release whose
// manifest states expected measurements, the policy that applies to the
// model's devices (any firmware, any group) is copied into a policy for
// the release's version, with the manifest's PCR values in place of its
// own and the manifest's event digests added to those it allows. Models
// without a policy, or with one for this version already, are left alone.
func (s *Service) preparePolicies(r *firmware.Release, who string) error {
	m := r.Manifest
	ms := m.Measurements
	if s.policies == nil || ms == nil || len(ms.PCRs) == 0 && len(ms.EventDigests) == 0 {
		return nil
	}
	for _, model := range m.Models {
		base, err := s.policies.Select(context.Background(), model, "", "")
		if err != nil {
			return err
		}
		if base == nil {
			continue
		}
		if cur, err := s.policies.Select(context.Background(), model, m.Version, ""); err != nil {
			return err
		} else if cur != nil && cur.Firmware == m.Version {
			continue
		}
		p := *base
		p.ID = policyID(model, m.Version)
		p.Name = fmt.Sprintf("%s %s (from %s and the release manifest)", model, m.Version, base.ID)
		p.Model, p.Firmware, p.Group = model, m.Version, ""
		p.CreatedBy, p.Comment = who, "prepared for release "+r.ID
		for bank, values := range ms.PCRs {
			if p.PCRs == nil {
				p.PCRs = map[string]map[int]string{}
			}
			if p.PCRs[bank] == nil {
				p.PCRs[bank] = map[int]string{}
			}
			for pcr, v := range values {
				p.PCRs[bank][pcr] = v
			}
		}
		if p.Events != nil && p.Events.AllowedDigests != nil {
			for pcr, ds := range ms.EventDigests {
				for _, d := range ds {
					if !slices.Contains(p.Events.AllowedDigests[pcr], d) {
						p.Events.AllowedDigests[pcr] = append(p.Events.AllowedDigests[pcr], d)
					}
				}
			}
		}
		if _, err := s.policies.Put(context.Background(), p); err != nil && !errors.Is(err, policy.ErrConflict) {
			return fmt.Errorf("rollout: policy for %s %s: %w", model, m.Version, err)
		}
		s.log.Info("attestation policy prepared for a release", "policy", p.ID, "model", model, "version", m.Version, "from", base.ID)
	}
	return nil
}

// policyID names the policy preparePolicies makes for a model and version.
func policyID(model, version string) string {
	sum := sha256.Sum256([]byte(model + "\x00" + version))
	v := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '-'
	}, version)
	id := "fw-" + hex.EncodeToString(sum[:4]) + "-" + v
	if len(id) > 64 {
		id = id[:64]
	}
	return strings.TrimRight(id, ".-")
}
