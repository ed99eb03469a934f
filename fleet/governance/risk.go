package governance

import (
	"cmp"
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// Risk factor names.
const (
	FactorQuarantined         = "quarantined"
	FactorClone               = "clone-suspect"
	FactorAttestationFailing  = "attestation-failing"
	FactorAttestationNever    = "attestation-never"
	FactorAttestationStale    = "attestation-stale"
	FactorAttestationFailures = "attestation-failures"
	FactorCredentialExpired   = "credential-expired"
	FactorCredentialNear      = "credential-near-expiry"
	FactorRenewalOverdue      = "credential-renewal-overdue"
	FactorNeverRotated        = "credential-never-rotated"
	FactorFirmware            = "firmware-noncompliant"
	FactorFirmwareUnknown     = "firmware-unknown"
	FactorAlerts              = "open-alerts"
	FactorSilent              = "silent"
	FactorDormant             = "dormant"
	FactorListening           = "listening-ports"
	FactorNewPorts            = "new-listening-ports"
	FactorOrphaned            = "orphaned"
	FactorPurposeMissing      = "purpose-missing"
)

// Weights are the points each risk factor adds; a zero weight turns its
// factor off. The total is capped at 100.
type Weights struct {
	Quarantined        int // the device is quarantined
	Clone              int // flagged clone-suspect or an open clone incident
	AttestationFailing int // its last verdict failed
	AttestationNever   int // it has no verdict
	AttestationStale   int // its last verdict is older than Config.AttestStale
	AttestationFailure int // per failed verdict among the last Config.AttestWindow
	AttestationFailMax int // cap of the above
	CredentialExpired  int // its certificate expired
	CredentialNear     int // less than Config.NearExpiry left
	RenewalOverdue     int // past Config.RenewalDue of its lifetime without renewing
	NeverRotated       int // still the certificate of its enrollment, older than RenewalDue of a lifetime
	Firmware           int // not on its target version
	FirmwareUnknown    int // never reported a version (and has no target)
	AlertCritical      int // per open critical alert
	AlertWarning       int // per open warning
	AlertInfo          int // per other open alert
	AlertMax           int // cap of the three above
	Silent             int // unseen for Config.SilentAfter (or never seen)
	Dormant            int // unseen for Config.DormantAfter (instead of Silent)
	ListeningPort      int // per listening port
	ListeningMax       int // cap of the above
	NewPort            int // per listening port never seen before
	NewPortMax         int // cap of the above
	Orphaned           int // no live owner
	PurposeMissing     int // no purpose recorded
}

// DefaultWeights are the weights used when Config.Weights is nil. A device
// failing attestation (30 + up to 20 for its history) or suspected of
// being a clone (40) stands out against any amount of hygiene debt.
func DefaultWeights() Weights {
	return Weights{
		Quarantined:        20,
		Clone:              40,
		AttestationFailing: 30,
		AttestationNever:   15,
		AttestationStale:   10,
		AttestationFailure: 5,
		AttestationFailMax: 20,
		CredentialExpired:  20,
		CredentialNear:     10,
		RenewalOverdue:     10,
		NeverRotated:       10,
		Firmware:           15,
		FirmwareUnknown:    5,
		AlertCritical:      10,
		AlertWarning:       4,
		AlertInfo:          1,
		AlertMax:           25,
		Silent:             10,
		Dormant:            20,
		ListeningPort:      1,
		ListeningMax:       10,
		NewPort:            8,
		NewPortMax:         16,
		Orphaned:           15,
		PurposeMissing:     3,
	}
}

func (w Weights) validate() error {
	v := reflect.ValueOf(w)
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Int && f.Int() < 0 {
			return fmt.Errorf("%w: weight %s is negative", ErrInvalid, v.Type().Field(i).Name)
		}
	}
	return nil
}

// Factor is one contribution to a device's risk.
type Factor struct {
	Name     string `json:"name"`
	Points   int    `json:"points"`
	Evidence string `json:"evidence"`
}

// Risk is a device's risk score and what makes it up.
type Risk struct {
	DeviceID string    `json:"device_id"`
	Score    int       `json:"score"` // 0-100
	Factors  []Factor  `json:"factors,omitempty"`
	At       time.Time `json:"at"`
}

// Factor returns the named factor and whether it is present.
func (r *Risk) Factor(name string) (Factor, bool) {
	for _, f := range r.Factors {
		if f.Name == name {
			return f, true
		}
	}
	return Factor{}, false
}

// Score rates a device now from its current inputs. It reads but never
// changes anything.
func (s *Service) Score(deviceID string) (*Risk, error) {
	d, err := s.cfg.Devices.Device(context.TODO(), deviceID)
	if err != nil {
		return nil, fmt.Errorf("governance: score: %w", err)
	}
	var own ownership
	err = s.db.View(context.TODO(), func(tx kv.Tx) error {
		own, err = loadOwnership(tx, d)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("governance: score: %w", err)
	}
	return s.riskOf(d, own, s.cfg.Now().UTC())
}

// lastSeen is when the device was last seen, and whether it is connected.
func (s *Service) lastSeen(d *inventory.Device, now time.Time) (time.Time, bool) {
	connected := d.Connected
	if s.cfg.Connected != nil {
		connected = s.cfg.Connected(d.ID)
	}
	if connected {
		return now, true
	}
	for _, t := range []time.Time{d.LastSeen, d.EnrolledAt, d.FirstSeen} {
		if !t.IsZero() {
			return t, false
		}
	}
	return time.Time{}, false
}

func ago(now, t time.Time) string {
	return now.Sub(t).Round(time.Minute).String() + " ago"
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// riskOf computes a device's risk from its record, ownership and the
// optional inputs.
func (s *Service) riskOf(d *inventory.Device, own ownership, now time.Time) (*Risk, error) {
	w, c := s.w, s.cfg
	r := &Risk{DeviceID: d.ID, At: now}
	add := func(name string, points int, evidence string, args ...any) {
		if points > 0 {
			r.Factors = append(r.Factors, Factor{Name: name, Points: points, Evidence: fmt.Sprintf(evidence, args...)})
		}
	}

	// Attestation state and history.
	if d.State == inventory.StateQuarantined {
		add(FactorQuarantined, w.Quarantined, "device is quarantined")
	}
	if len(own.Clones) > 0 {
		add(FactorClone, w.Clone, "open %s clone incident: %s", own.Clones[0].Kind, own.Clones[0].Evidence)
	} else if d.HasFlag(FlagCloneSuspect) {
		add(FactorClone, w.Clone, "flagged %s by enrollment", FlagCloneSuspect)
	}
	switch {
	case d.Attestation == "fail":
		add(FactorAttestationFailing, w.AttestationFailing, "last attestation failed at %s", stamp(d.LastAttested))
	case d.Attestation == "":
		add(FactorAttestationNever, w.AttestationNever, "no attestation verdict recorded")
	case now.Sub(d.LastAttested) > c.AttestStale:
		add(FactorAttestationStale, w.AttestationStale, "last attestation at %s (%s), older than %s", stamp(d.LastAttested), ago(now, d.LastAttested), c.AttestStale)
	}
	if c.Attestations != nil {
		recs, err := c.Attestations.Outcomes(context.Background(), d.ID, c.AttestWindow)
		if err != nil {
			return nil, fmt.Errorf("governance: attestation history of %s: %w", d.ID, err)
		}
		fails, latest := 0, ""
		for _, rec := range recs {
			if rec.Result == "fail" && !rec.DeviceError {
				if fails == 0 {
					latest = fmt.Sprintf("%s at %s", rec.Reason, stamp(rec.Time))
				}
				fails++
			}
		}
		if fails > 0 {
			add(FactorAttestationFailures, min(fails*w.AttestationFailure, w.AttestationFailMax),
				"%d of the last %d verdicts failed (latest: %s)", fails, len(recs), latest)
		}
	}

	// Credential hygiene, for a device holding a certificate.
	if d.CertSerial != "" && (d.State == inventory.StateActive || d.State == inventory.StateQuarantined) && !d.CertExpiry.IsZero() {
		left := d.CertExpiry.Sub(now)
		issued := d.CertIssued
		if issued.IsZero() { // recorded before the inventory kept issue times
			issued = d.CertExpiry.Add(-c.CertLifetime)
		}
		due := time.Duration(float64(c.CertLifetime) * c.RenewalDue)
		switch {
		case left <= 0:
			add(FactorCredentialExpired, w.CredentialExpired, "certificate %s expired at %s", d.CertSerial, stamp(d.CertExpiry))
		default:
			if left < c.NearExpiry {
				add(FactorCredentialNear, w.CredentialNear, "certificate %s expires at %s (in %s)", d.CertSerial, stamp(d.CertExpiry), left.Round(time.Minute))
			}
			if now.Sub(issued) >= due {
				add(FactorRenewalOverdue, w.RenewalOverdue, "certificate %s not renewed after %.0f%% of its %s lifetime", d.CertSerial, 100*c.RenewalDue, c.CertLifetime)
			}
		}
		if !renewed(d) && !d.EnrolledAt.IsZero() && now.Sub(d.EnrolledAt) >= due {
			add(FactorNeverRotated, w.NeverRotated, "certificate %s is the one issued at enrollment on %s; no earlier certificate recorded", d.CertSerial, stamp(d.EnrolledAt))
		}
	}

	// Firmware compliance.
	target := ""
	if c.Firmware != nil {
		t, err := c.Firmware.Target(d)
		if err != nil {
			return nil, fmt.Errorf("governance: firmware target of %s: %w", d.ID, err)
		}
		target = t
	}
	switch {
	case target != "" && d.Firmware == "":
		add(FactorFirmware, w.Firmware, "reports no firmware version; target %s", target)
	case target != "" && d.Firmware != target:
		add(FactorFirmware, w.Firmware, "runs firmware %s; target %s", d.Firmware, target)
	case target == "" && d.Firmware == "":
		add(FactorFirmwareUnknown, w.FirmwareUnknown, "never reported a firmware version")
	}

	// Anomalies: open alerts, except governance's own kinds, which have
	// factors of their own.
	if c.Anomalies != nil {
		open, err := c.Anomalies.OpenAlerts(d.ID)
		if err != nil {
			return nil, fmt.Errorf("governance: open alerts of %s: %w", d.ID, err)
		}
		var crit, warn, info int
		var kinds []string
		for _, a := range open {
			switch a.Kind {
			case KindOrphaned, KindDormant, KindDormantRevoked, KindClone:
				continue
			}
			switch a.Severity {
			case SeverityCritical:
				crit++
			case SeverityWarning:
				warn++
			default:
				info++
			}
			if !slices.Contains(kinds, a.Kind) {
				kinds = append(kinds, a.Kind)
			}
		}
		slices.Sort(kinds)
		add(FactorAlerts, min(crit*w.AlertCritical+warn*w.AlertWarning+info*w.AlertInfo, w.AlertMax),
			"%d critical, %d warning, %d other open alerts (%s)", crit, warn, info, strings.Join(kinds, ", "))
	}

	// Silence.
	if seen, connected := s.lastSeen(d, now); !connected {
		switch {
		case seen.IsZero():
			add(FactorSilent, w.Silent, "never seen")
		case now.Sub(seen) >= c.DormantAfter:
			add(FactorDormant, w.Dormant, "last seen %s (%s), dormant after %s", stamp(seen), ago(now, seen), c.DormantAfter)
		case now.Sub(seen) >= c.SilentAfter:
			add(FactorSilent, w.Silent, "last seen %s (%s)", stamp(seen), ago(now, seen))
		}
	}

	// Exposure.
	if c.Exposure != nil {
		p, err := c.Exposure.Ports(d.ID)
		if err != nil {
			return nil, fmt.Errorf("governance: ports of %s: %w", d.ID, err)
		}
		if n := len(p.Listening); n > 0 {
			add(FactorListening, min(n*w.ListeningPort, w.ListeningMax), "listens on %d ports: %s", n, listed(p.Listening))
		}
		if n := len(p.New); n > 0 {
			add(FactorNewPorts, min(n*w.NewPort, w.NewPortMax), "%d listening ports never seen before: %s", n, listed(p.New))
		}
	}

	// Owner status.
	if why := own.orphanReason(); why != "" {
		add(FactorOrphaned, w.Orphaned, "%s", why)
	}
	if own.Purpose == "" {
		add(FactorPurposeMissing, w.PurposeMissing, "no purpose recorded")
	}

	for _, f := range r.Factors {
		r.Score += f.Points
	}
	r.Score = min(r.Score, 100)
	slices.SortStableFunc(r.Factors, func(a, b Factor) int {
		return cmp.Or(cmp.Compare(b.Points, a.Points), strings.Compare(a.Name, b.Name))
	})
	return r, nil
}

// listed joins up to 10 cleaned items.
func listed(items []string) string {
	out := make([]string, 0, min(len(items), 10))
	for _, it := range items[:min(len(items), 10)] {
		out = append(out, clean(it))
	}
	s := strings.Join(out, ", ")
	if len(items) > 10 {
		s += fmt.Sprintf(" and %d more", len(items)-10)
	}
	return s
}

// rankKey orders risks by score, highest first, then by device ID.
func rankKey(score int, deviceID string) []byte {
	return fmt.Appendf(nil, "%03d:%s", 100-score, deviceID)
}

// putRisk stores r and its rank, replacing the device's previous one.
func putRisk(tx kv.Tx, r *Risk) error {
	if err := deleteRisk(tx, r.DeviceID); err != nil {
		return err
	}
	if err := put(tx, bucketRisk, []byte(r.DeviceID), r); err != nil {
		return err
	}
	return tx.Bucket(bucketRiskIdx).Put(rankKey(r.Score, r.DeviceID), []byte(r.DeviceID))
}

func deleteRisk(tx kv.Tx, deviceID string) error {
	old, err := get[Risk](tx, bucketRisk, []byte(deviceID))
	if err != nil || old == nil {
		return err
	}
	if err := tx.Bucket(bucketRiskIdx).Delete(rankKey(old.Score, deviceID)); err != nil {
		return err
	}
	return tx.Bucket(bucketRisk).Delete([]byte(deviceID))
}

// Ranking pages through the risks stored by the last sweep, highest score
// first (ties by device ID), with the cursor of the next page ("" when
// there is none). limit defaults to 100, at most 1000.
func (s *Service) Ranking(after string, limit int) ([]Risk, string, error) {
	return s.ranking(after, pageLimit(limit))
}

func (s *Service) ranking(after string, limit int) ([]Risk, string, error) {
	var out []Risk
	next := ""
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		rb := tx.Bucket(bucketRisk)
		c := tx.Bucket(bucketRiskIdx).Cursor()
		k, id := c.First()
		if after != "" {
			k, id = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, id = c.Next()
			}
		}
		var last string
		for ; k != nil; k, id = c.Next() {
			if len(out) == limit {
				next = last
				return nil
			}
			v := rb.Get(id)
			if v == nil {
				continue
			}
			r, err := decode[Risk](v)
			if err != nil {
				return err
			}
			out = append(out, *r)
			last = string(k)
		}
		return nil
	})
	return out, next, err
}

// renewed reports whether d's certificate was ever replaced: an earlier
// certificate is still recorded (until it expires), a revoked serial of an
// older record is, or the current certificate was issued after the
// enrollment.
func renewed(d *inventory.Device) bool {
	return len(d.Revoked) > 0 || len(d.Certificates()) > 1 || d.CertIssued.After(d.EnrolledAt)
}
