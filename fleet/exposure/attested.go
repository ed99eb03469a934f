package exposure

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// deviceState is what the service last saw of a device: the firmware PCR
// value of its newest verified quote and the release that value names
// ("" when unknown).
type deviceState struct {
	PCR     string `json:"pcr"`
	Release string `json:"release,omitempty"`
}

// Attested re-evaluates a device after its attestation verdict rec was
// recorded in the history: when the verdict's verified quote changes the
// device's attested release (a rollback, an update, a first attestation),
// the Alerter hears of each stored advisory that affects the release it
// runs now, with a Report holding that device's findings only.
//
// Its work is bounded per verdict: a verdict without a verified quote, or
// whose firmware PCR equals the one seen last for the device, costs one
// read; otherwise one history read (historyDepth records), the release
// list and the stored advisories. It is idempotent: the device's PCR and
// release are recorded, so the same release raises nothing again until
// the device runs another one (an advisory imported meanwhile alerts
// through ImportAdvisory, which records the devices it saw).
func (s *Service) Attested(ctx context.Context, rec *attest.Record) error {
	v := rec.PCRs["sha256"][s.cfg.PCR]
	if v == "" {
		return nil // no verified quote: nothing learnt
	}
	var was deviceState
	err := s.cfg.DB.View(ctx, func(tx kv.Tx) error {
		if bk := tx.Bucket(bucketDevices); bk != nil {
			if raw := bk.Get([]byte(rec.DeviceID)); raw != nil {
				return json.Unmarshal(raw, &was)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("exposure: device state: %w", err)
	}
	if was.PCR == v {
		return nil
	}
	sn, err := s.snapshot(ctx)
	if err != nil {
		return err
	}
	recs, err := s.cfg.Attestations.List(ctx, rec.DeviceID, historyDepth)
	if err != nil {
		return fmt.Errorf("exposure: attestations of %s: %w", rec.DeviceID, err)
	}
	run, rel := s.running(sn, recs)
	now := deviceState{PCR: v, Release: idOf(rel)}
	if now.Release != was.Release && rel != nil && sn.comps[rel.ID] != nil && s.cfg.Alerter != nil {
		d, err := s.cfg.Devices.Device(ctx, rec.DeviceID)
		if err != nil {
			return fmt.Errorf("exposure: device %s: %w", rec.DeviceID, err)
		}
		// Recorded only once told: a failed alert is tried again at the
		// device's next verdict (an alert still open absorbs a repeat).
		if err := s.alertRelease(ctx, sn, rel, []exposedDevice{{d: d, run: run}}); err != nil {
			return err
		}
	}
	return s.saveStates(ctx, map[string]deviceState{rec.DeviceID: now})
}

// exposedDevice is a device running a release with components, and since
// when.
type exposedDevice struct {
	d   *inventory.Device
	run *Running
}

// alertRelease tells the Alerter of each stored advisory that affects rel,
// with the findings of devs, which run it: one Report per advisory.
func (s *Service) alertRelease(ctx context.Context, sn *snapshot, rel *firmware.Release, devs []exposedDevice) error {
	var raws [][]byte
	err := s.cfg.DB.View(ctx, func(tx kv.Tx) error {
		bk := tx.Bucket(bucketAdvisories)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(_, v []byte) error {
			raws = append(raws, v)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("exposure: advisories: %w", err)
	}
	for _, raw := range raws {
		a, err := ParseOSV(raw)
		if err != nil {
			continue // stored only after parsing: not expected
		}
		r := &Report{Advisory: *a, Generated: s.cfg.Now().UTC(), Devices: []Finding{},
			ByGroup: map[string]int{}, ByModel: map[string]int{}, ByOwner: map[string]int{}}
		for _, x := range devs {
			exposed := false
			for _, c := range sn.comps[rel.ID] {
				if ok, fixed := a.Match(c); ok {
					f := finding(x.d, x.run, c)
					f.Fixed = fixed
					r.Devices = append(r.Devices, f)
					exposed = true
				}
			}
			if exposed {
				r.ByGroup[x.d.Group]++
				r.ByModel[x.d.Model]++
				r.ByOwner[x.d.Owner]++
			}
		}
		if len(r.Devices) == 0 {
			continue
		}
		if err := s.cfg.Alerter.Exposed(ctx, r); err != nil {
			return fmt.Errorf("exposure: alert: %w", err)
		}
	}
	return nil
}

// sbomAdded tells the Alerter of the stored advisories that affect the
// devices running rel, whose components were just stored: those devices
// ran a release of unknown components until now. One pass over the fleet.
func (s *Service) sbomAdded(ctx context.Context, rel *firmware.Release) error {
	if s.cfg.Alerter == nil {
		return nil
	}
	sn, err := s.snapshot(ctx)
	if err != nil {
		return err
	}
	var devs []exposedDevice
	var target *firmware.Release
	err = s.eachDevice(ctx, sn, func(d *inventory.Device, run *Running, r *firmware.Release) {
		if r != nil && r.ID == rel.ID {
			dc := *d
			devs, target = append(devs, exposedDevice{d: &dc, run: run}), r
		}
	})
	if err != nil || target == nil {
		return err
	}
	return s.alertRelease(ctx, sn, target, devs)
}

// saveStates records what was seen of devices.
func (s *Service) saveStates(ctx context.Context, states map[string]deviceState) error {
	if len(states) == 0 {
		return nil
	}
	err := s.cfg.DB.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketDevices)
		if err != nil {
			return err
		}
		for id, st := range states {
			b, err := json.Marshal(st)
			if err != nil {
				return err
			}
			if err := bk.Put([]byte(id), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("exposure: device state: %w", err)
	}
	return nil
}
