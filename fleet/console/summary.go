package console

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Summary is the fleet's health at a glance, from one pass over the
// inventory.
type Summary struct {
	At    time.Time
	Total int
	// States counts devices per lifecycle state.
	States map[inventory.State]int
	// Connected counts devices with a live session.
	Connected int
	// Pass, Fail and Never count the last attestation verdict of devices
	// that are not decommissioned.
	Pass, Fail, Never int
	// TrustPaths counts how enrolled devices came to be trusted.
	TrustPaths map[string]int
	// Stale and CloneSuspect count flagged devices.
	Stale, CloneSuspect int
	// Expiring are active devices whose certificate expires within 24
	// hours, soonest first (at most 10); ExpiringTotal counts all of them
	// and Expired those already past expiry.
	Expiring      []inventory.Device
	ExpiringTotal int
	Expired       int
}

// expiringShown bounds Summary.Expiring.
const expiringShown = 10

// summaryPage is how many records one inventory read returns.
const summaryPage = 1000

// fleetSummary returns a summary no older than Config.SummaryMaxAge,
// computing a new one if needed; concurrent callers share one computation.
func (c *Console) fleetSummary() (*Summary, error) {
	c.summaryMu.Lock()
	defer c.summaryMu.Unlock()
	now := c.cfg.Now()
	if c.summary != nil && now.Sub(c.summary.At) < c.cfg.SummaryMaxAge && !now.Before(c.summary.At) {
		return c.summary, nil
	}
	s, err := c.summarize(now)
	if err != nil {
		return nil, err
	}
	c.summary = s
	return s, nil
}

func (c *Console) summarize(now time.Time) (*Summary, error) {
	s := &Summary{At: now, States: map[inventory.State]int{}, TrustPaths: map[string]int{}}
	soon := now.Add(24 * time.Hour)
	after := ""
	for {
		devs, next, err := c.cfg.Inventory.ListDevices(context.TODO(), inventory.Filter{After: after, Limit: summaryPage})
		if err != nil {
			return nil, err
		}
		for i := range devs {
			d := &devs[i]
			s.Total++
			s.States[d.State]++
			if c.connected(d) {
				s.Connected++
			}
			if d.State != inventory.StateDecommissioned {
				switch d.Attestation {
				case "pass":
					s.Pass++
				case "fail":
					s.Fail++
				default:
					s.Never++
				}
			}
			if d.TrustPath != "" {
				s.TrustPaths[d.TrustPath]++
			}
			if d.HasFlag(attest.FlagStale) {
				s.Stale++
			}
			if d.HasFlag("clone-suspect") {
				s.CloneSuspect++
			}
			if d.State == inventory.StateActive && !d.CertExpiry.IsZero() {
				switch {
				case !d.CertExpiry.After(now):
					s.Expired++
				case d.CertExpiry.Before(soon):
					s.ExpiringTotal++
					s.Expiring = keepSoonest(s.Expiring, *d)
				}
			}
		}
		if next == "" {
			return s, nil
		}
		after = next
	}
}

// keepSoonest inserts d into the list sorted by expiry, keeping at most
// expiringShown entries.
func keepSoonest(list []inventory.Device, d inventory.Device) []inventory.Device {
	i, _ := slices.BinarySearchFunc(list, d, func(a, b inventory.Device) int { return a.CertExpiry.Compare(b.CertExpiry) })
	if i >= expiringShown {
		return list
	}
	d.Flags, d.Revoked, d.Superseded, d.EKPublic, d.AKPublic, d.AKName = nil, nil, nil, nil, nil, nil
	d.Certs, d.Quarantine = nil, nil
	list = slices.Insert(list, i, d)
	if len(list) > expiringShown {
		list = list[:expiringShown]
	}
	return list
}

// connected reports a device's live session.
func (c *Console) connected(d *inventory.Device) bool {
	if c.cfg.Connected != nil {
		return c.cfg.Connected(d.ID)
	}
	return d.Connected
}

// verdictHours is how many hours the verdict chart shows.
const verdictHours = 24

// verdictCounter counts attestation verdicts per hour for the overview's
// chart; it lives in memory and starts empty at each start.
type verdictCounter struct {
	mu    sync.Mutex
	hours [verdictHours]hourCount
}

type hourCount struct {
	Hour       time.Time // start of the hour (UTC)
	Pass, Fail int
}

// ObserveVerdict counts a recorded attestation verdict for the overview's
// chart. Its signature fits attest.Service.OnVerdict; it never blocks for
// long.
func (c *Console) ObserveVerdict(_ string, rec *attest.Record, _ time.Duration) {
	if rec == nil || rec.DeviceError {
		return
	}
	t := rec.Time
	if t.IsZero() {
		t = c.cfg.Now()
	}
	h := t.UTC().Truncate(time.Hour)
	if h.Unix() < 0 {
		return
	}
	i := int((h.Unix() / 3600) % verdictHours)
	v := &c.verdicts
	v.mu.Lock()
	defer v.mu.Unlock()
	b := &v.hours[i]
	if !b.Hour.Equal(h) {
		if b.Hour.After(h) {
			return // older than the window
		}
		*b = hourCount{Hour: h}
	}
	if rec.Result == "pass" {
		b.Pass++
	} else {
		b.Fail++
	}
}

// lastHours returns the counts of the verdictHours hours up to now, oldest
// first; hours without verdicts count zero.
func (c *Console) lastHours(now time.Time) []hourCount {
	end := now.UTC().Truncate(time.Hour)
	out := make([]hourCount, verdictHours)
	v := &c.verdicts
	v.mu.Lock()
	defer v.mu.Unlock()
	for k := range verdictHours {
		h := end.Add(time.Duration(k-verdictHours+1) * time.Hour)
		out[k] = hourCount{Hour: h}
		if b := v.hours[int((h.Unix()/3600)%verdictHours)]; b.Hour.Equal(h) {
			out[k] = b
		}
	}
	return out
}
