package governance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// SweepReport says what a sweep found.
type SweepReport struct {
	Devices  int // devices judged (not decommissioned)
	Orphaned int // orphaned now
	Dormant  int // dormant now
	Revoked  int // certificates revoked for dormancy in this sweep
	Clones   int // clone incidents raised in this sweep
	Scored   int // risk scores stored
	Failed   int // devices whose score could not be computed (kept from before)
}

// sweepPage is how many devices a sweep reads and writes at a time.
const sweepPage = 500

// Sweep judges every device once: orphaned, dormant (revoking by policy),
// flagged clone-suspect by enrollment, and its risk score, which it stores
// for Ranking. Devices that left the inventory or were decommissioned lose
// their stored status and score. It stops early when ctx ends.
func (s *Service) Sweep(ctx context.Context) (SweepReport, error) {
	var rep SweepReport
	now := s.cfg.Now().UTC()
	seen := map[string]struct{}{}
	after := ""
	for {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		devs, next, err := s.cfg.Devices.ListDevices(ctx, inventory.Filter{After: after, Limit: sweepPage})
		if err != nil {
			return rep, fmt.Errorf("governance: sweep: list devices: %w", err)
		}
		if err := s.sweepPage(devs, now, seen, &rep); err != nil {
			return rep, err
		}
		if next == "" {
			break
		}
		after = next
	}
	// Forget devices no longer judged.
	s.judgeMu.Lock()
	defer s.judgeMu.Unlock()
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		var gone [][]byte
		for _, b := range [][]byte{bucketStatus, bucketRisk} {
			err := tx.Bucket(b).ForEach(func(k, _ []byte) error {
				if _, ok := seen[string(k)]; !ok {
					gone = append(gone, append([]byte(nil), k...))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		for _, k := range gone {
			if err := deleteRisk(tx, string(k)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketStatus).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("governance: sweep: %w", err)
	}
	return rep, nil
}

func (s *Service) sweepPage(devs []inventory.Device, now time.Time, seen map[string]struct{}, rep *SweepReport) error {
	s.judgeMu.Lock()
	defer s.judgeMu.Unlock()
	owns := make([]ownership, len(devs))
	sts := make([]*Status, len(devs))
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		for i := range devs {
			var err error
			if owns[i], err = loadOwnership(tx, &devs[i]); err != nil {
				return err
			}
			if sts[i], err = get[Status](tx, bucketStatus, []byte(devs[i].ID)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("governance: sweep: %w", err)
	}
	risks := make([]*Risk, len(devs))
	for i := range devs {
		d := &devs[i]
		if d.State == inventory.StateDecommissioned {
			continue
		}
		seen[d.ID] = struct{}{}
		rep.Devices++
		st := sts[i]
		if st == nil {
			st = &Status{DeviceID: d.ID}
			sts[i] = st
		}
		s.applyOrphan(d, st, owns[i].orphanReason(), now)
		s.applyDormant(d, st, now, rep)
		// Retry quarantines that failed in an earlier pass.
		for _, c := range owns[i].Clones {
			if !c.Quarantined && s.cfg.Quarantiner != nil && d.State == inventory.StateActive {
				// A failure is logged and recorded on the incident.
				if s.quarantineClone(c) == nil {
					if fresh, err := s.cfg.Devices.Device(context.TODO(), d.ID); err == nil {
						*d = *fresh
					}
				}
			}
		}
		if d.HasFlag(FlagCloneSuspect) && len(owns[i].Clones) == 0 && cloneable(d) {
			isNew, err := s.raiseClone(Clone{DeviceID: d.ID, Kind: CloneEK, DetectedAt: now,
				Evidence: "enrollment flagged the device " + FlagCloneSuspect + ": its EK was proven by a client claiming another identity"})
			if err != nil {
				s.log.Error("governance: clone incident failed", "device_id", d.ID, "err", err)
			}
			if isNew {
				rep.Clones++
			}
			// The quarantine changed the device: judge its risk as it is now.
			if fresh, err := s.cfg.Devices.Device(context.TODO(), d.ID); err == nil {
				*d = *fresh
			}
			err = s.db.View(context.TODO(), func(tx kv.Tx) error {
				owns[i].Clones, err = openClones(tx, d.ID)
				return err
			})
			if err != nil {
				return fmt.Errorf("governance: sweep: %w", err)
			}
		}
		if st.Orphaned {
			rep.Orphaned++
		}
		if st.Dormant {
			rep.Dormant++
		}
		st.Checked = now
		r, err := s.riskOf(d, owns[i], now)
		if err != nil {
			rep.Failed++
			s.log.Warn("governance: risk score failed", "device_id", d.ID, "err", err)
			continue
		}
		risks[i] = r
	}
	err = s.db.Update(context.TODO(), func(tx kv.Tx) error {
		for i := range devs {
			if _, ok := seen[devs[i].ID]; !ok || sts[i] == nil {
				continue
			}
			if err := put(tx, bucketStatus, []byte(devs[i].ID), sts[i]); err != nil {
				return err
			}
			if risks[i] != nil {
				if err := putRisk(tx, risks[i]); err != nil {
					return err
				}
				rep.Scored++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("governance: sweep: %w", err)
	}
	return nil
}

// hasValidCredential reports whether d holds a certificate that would
// still get it in: a current serial neither revoked nor expired.
func hasValidCredential(d *inventory.Device, now time.Time) bool {
	return d.CertSerial != "" && !d.IsRevoked(d.CertSerial) &&
		(d.CertExpiry.IsZero() || now.Before(d.CertExpiry)) &&
		(d.State == inventory.StateActive || d.State == inventory.StateQuarantined)
}

// applyDormant moves st to the dormant verdict: flag, alert and, by
// policy, revoke when a device holding a valid credential has been unseen
// for DormantAfter; clear when it is seen again.
func (s *Service) applyDormant(d *inventory.Device, st *Status, now time.Time, rep *SweepReport) {
	seen, connected := s.lastSeen(d, now)
	unseen := !connected && !seen.IsZero() && now.Sub(seen) >= s.cfg.DormantAfter
	switch {
	case st.Dormant && !unseen:
		s.alert(Alert{Time: now, DeviceID: d.ID, Kind: KindDormant, Severity: SeverityInfo, Resolved: true,
			Summary: "dormant device seen again", Attrs: map[string]string{"dormant_since": stamp(st.DormantSince)}})
		st.Dormant, st.DormantSince, st.LastSeen, st.RevokedSerial = false, time.Time{}, time.Time{}, ""
	case !st.Dormant && unseen && hasValidCredential(d, now):
		st.Dormant, st.DormantSince, st.LastSeen = true, now, seen
		s.alert(Alert{Time: now, DeviceID: d.ID, Kind: KindDormant, Severity: SeverityWarning,
			Summary: fmt.Sprintf("device unseen since %s (%s) still holds valid certificate %s", stamp(seen), ago(now, seen), d.CertSerial),
			Attrs:   map[string]string{"last_seen": stamp(seen), "serial": d.CertSerial, "cert_expiry": stamp(d.CertExpiry)}})
	}
	if st.Dormant && s.cfg.RevokeDormant && st.RevokedSerial == "" && hasValidCredential(d, now) {
		// Every unexpired certificate, a renewed-away one too: the device
		// may prove itself again from its EK when it returns.
		revoked, err := s.cfg.Revoker.Revoke(d.ID, inventory.ReasonCessationOfOperation,
			"governance: dormant since "+stamp(st.LastSeen)+", revoked by policy")
		if err != nil && !errors.Is(err, inventory.ErrNotFound) {
			s.log.Error("governance: revoking a dormant device failed; retried at the next sweep", "device_id", d.ID, "err", err)
		} else if err == nil {
			st.RevokedSerial = d.CertSerial
			if fresh, err := s.cfg.Devices.Device(context.TODO(), d.ID); err == nil {
				*d = *fresh
			}
			if len(revoked) == 0 {
				revoked = []string{st.RevokedSerial} // revoked meanwhile by someone else
			}
			rep.Revoked++
			s.alert(Alert{Time: now, DeviceID: d.ID, Kind: KindDormantRevoked, Severity: SeverityWarning,
				Summary: fmt.Sprintf("certificates %s of a device dormant since %s revoked by policy", strings.Join(revoked, ", "), stamp(st.LastSeen)),
				Attrs:   map[string]string{"serial": st.RevokedSerial, "serials": strings.Join(revoked, ","), "last_seen": stamp(st.LastSeen)}})
		}
	}
	s.syncFlag(d, FlagDormant, st.Dormant)
}
