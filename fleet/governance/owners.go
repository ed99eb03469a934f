package governance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// OwnerKind says whether an owner is a person or a team.
type OwnerKind string

// Owner kinds.
const (
	OwnerPerson OwnerKind = "person"
	OwnerTeam   OwnerKind = "team"
)

// OwnerStatus says whether an owner can still answer for its devices.
type OwnerStatus string

// Owner statuses. Only OwnerActive is a live owner.
const (
	OwnerActive   OwnerStatus = "active"
	OwnerInactive OwnerStatus = "inactive" // e.g. a team dissolved, on leave
	OwnerDeparted OwnerStatus = "departed" // left the organisation
)

func (s OwnerStatus) valid() bool {
	return s == OwnerActive || s == OwnerInactive || s == OwnerDeparted
}

// Owner is a person or team answerable for devices.
type Owner struct {
	ID      string      `json:"id"` // 1-128 of [A-Za-z0-9._@+-]
	Name    string      `json:"name,omitempty"`
	Kind    OwnerKind   `json:"kind"`
	Contact string      `json:"contact,omitempty"`
	Status  OwnerStatus `json:"status"`
	Created time.Time   `json:"created"`
	Updated time.Time   `json:"updated"`
}

// Assignment gives a device an owner and a purpose.
type Assignment struct {
	DeviceID string    `json:"device_id"`
	Owner    string    `json:"owner"`
	Purpose  string    `json:"purpose,omitempty"`
	By       string    `json:"by,omitempty"`
	At       time.Time `json:"at"`
}

// Status is what the sweep last concluded about a device.
type Status struct {
	DeviceID      string    `json:"device_id"`
	Orphaned      bool      `json:"orphaned,omitempty"`
	OrphanReason  string    `json:"orphan_reason,omitempty"`
	OrphanedSince time.Time `json:"orphaned_since,omitzero"`
	Dormant       bool      `json:"dormant,omitempty"`
	DormantSince  time.Time `json:"dormant_since,omitzero"`
	LastSeen      time.Time `json:"last_seen,omitzero"` // as judged at DormantSince
	// RevokedSerial is the serial revoked because the device was dormant.
	RevokedSerial string    `json:"revoked_serial,omitempty"`
	Checked       time.Time `json:"checked"`
}

func validOwnerID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '@', c == '+', c == '-':
		default:
			return false
		}
	}
	return true
}

// PutOwner creates or replaces an owner and returns the stored record.
// Kind defaults to OwnerPerson and Status to OwnerActive.
func (s *Service) PutOwner(o Owner) (*Owner, error) {
	if !validOwnerID(o.ID) {
		return nil, fmt.Errorf("%w: owner ID %q (1-128 of A-Z a-z 0-9 . _ @ + -)", ErrInvalid, clean(o.ID))
	}
	if o.Kind == "" {
		o.Kind = OwnerPerson
	}
	if o.Status == "" {
		o.Status = OwnerActive
	}
	if o.Kind != OwnerPerson && o.Kind != OwnerTeam {
		return nil, fmt.Errorf("%w: owner kind %q", ErrInvalid, clean(string(o.Kind)))
	}
	if !o.Status.valid() {
		return nil, fmt.Errorf("%w: owner status %q", ErrInvalid, clean(string(o.Status)))
	}
	o.Name, o.Contact = clean(o.Name), clean(o.Contact)
	now := s.cfg.Now().UTC()
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		old, err := get[Owner](tx, bucketOwners, []byte(o.ID))
		if err != nil {
			return err
		}
		o.Created = now
		if old != nil {
			o.Created = old.Created
		}
		o.Updated = now
		return put(tx, bucketOwners, []byte(o.ID), &o)
	})
	if err != nil {
		return nil, fmt.Errorf("governance: put owner: %w", err)
	}
	return &o, nil
}

// SetOwnerStatus changes an owner's status. Its devices become orphaned (or
// owned again) at the next sweep.
func (s *Service) SetOwnerStatus(id string, st OwnerStatus) error {
	if !st.valid() {
		return fmt.Errorf("%w: owner status %q", ErrInvalid, clean(string(st)))
	}
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		o, err := get[Owner](tx, bucketOwners, []byte(id))
		if err != nil {
			return err
		}
		if o == nil {
			return fmt.Errorf("%w: owner %q", ErrNotFound, clean(id))
		}
		o.Status, o.Updated = st, s.cfg.Now().UTC()
		return put(tx, bucketOwners, []byte(id), o)
	})
	if err == nil {
		s.RescoreAll() // owned or orphaned: every device of the owner
	}
	return err
}

// Owner returns an owner.
func (s *Service) Owner(id string) (*Owner, error) {
	var o *Owner
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		var err error
		o, err = get[Owner](tx, bucketOwners, []byte(id))
		return err
	})
	if err == nil && o == nil {
		err = fmt.Errorf("%w: owner %q", ErrNotFound, clean(id))
	}
	return o, err
}

// Owners returns owners in ID order after the cursor after, and the
// cursor of the next page ("" when there is none). limit defaults to 100,
// at most 1000.
func (s *Service) Owners(after string, limit int) ([]Owner, string, error) {
	var out []Owner
	next, err := s.page(bucketOwners, after, pageLimit(limit), func(_, v []byte) error {
		o, err := decode[Owner](v)
		if err == nil {
			out = append(out, *o)
		}
		return err
	})
	return out, next, err
}

// page calls fn for up to limit entries of bucket after the key after, and
// returns the last key when more follow.
func (s *Service) page(bucket []byte, after string, limit int, fn func(k, v []byte) error) (string, error) {
	next := ""
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		n := 0
		for ; k != nil; k, v = c.Next() {
			if n == limit {
				next = after
				return nil
			}
			if err := fn(k, v); err != nil {
				return err
			}
			after = string(k)
			n++
		}
		return nil
	})
	return next, err
}

// Assign gives a device an owner (who must exist) and a purpose, and
// re-judges whether the device is orphaned at once.
func (s *Service) Assign(a Assignment) error {
	d, err := s.cfg.Devices.Device(context.TODO(), a.DeviceID)
	if err != nil {
		return fmt.Errorf("governance: assign: %w", err)
	}
	a.Purpose, a.By = clean(a.Purpose), clean(a.By)
	a.At = s.cfg.Now().UTC()
	err = s.db.Update(context.TODO(), func(tx kv.Tx) error {
		o, err := get[Owner](tx, bucketOwners, []byte(a.Owner))
		if err != nil {
			return err
		}
		if o == nil {
			return fmt.Errorf("%w: owner %q", ErrNotFound, clean(a.Owner))
		}
		return put(tx, bucketAssign, []byte(d.ID), &a)
	})
	if err != nil {
		return fmt.Errorf("governance: assign: %w", err)
	}
	s.Rescore(d.ID)
	return s.judgeOwnership(d)
}

// Assignment returns a device's assignment.
func (s *Service) Assignment(deviceID string) (*Assignment, error) {
	var a *Assignment
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		var err error
		a, err = get[Assignment](tx, bucketAssign, []byte(deviceID))
		return err
	})
	if err == nil && a == nil {
		err = fmt.Errorf("%w: no assignment for device %q", ErrNotFound, clean(deviceID))
	}
	return a, err
}

// Status returns what the sweep last concluded about a device.
func (s *Service) Status(deviceID string) (*Status, error) {
	var st *Status
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		var err error
		st, err = get[Status](tx, bucketStatus, []byte(deviceID))
		return err
	})
	if err == nil && st == nil {
		err = fmt.Errorf("%w: no status for device %q", ErrNotFound, clean(deviceID))
	}
	return st, err
}

// Orphans pages through orphaned devices in ID order (see Owners for the
// cursor and limit).
func (s *Service) Orphans(after string, limit int) ([]Status, string, error) {
	return s.statuses(after, limit, func(st *Status) bool { return st.Orphaned })
}

// Dormant pages through dormant devices in ID order.
func (s *Service) Dormant(after string, limit int) ([]Status, string, error) {
	return s.statuses(after, limit, func(st *Status) bool { return st.Dormant })
}

func (s *Service) statuses(after string, limit int, keep func(*Status) bool) ([]Status, string, error) {
	limit = pageLimit(limit)
	var out []Status
	next := ""
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		c := tx.Bucket(bucketStatus).Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			st, err := decode[Status](v)
			if err != nil {
				return err
			}
			if !keep(st) {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].DeviceID
				return nil
			}
			out = append(out, *st)
		}
		return nil
	})
	return out, next, err
}

// ownership is what governance knows about a device's owner.
type ownership struct {
	OwnerID string
	Purpose string
	Owner   *Owner // nil when OwnerID is not a registered owner
	Clones  []Clone
}

// orphanReason says why a device has no live owner ("" when it has one).
func (o ownership) orphanReason() string {
	switch {
	case o.OwnerID == "":
		return "no owner assigned"
	case o.Owner == nil:
		return fmt.Sprintf("owner %q is not a registered owner", o.OwnerID)
	case o.Owner.Status != OwnerActive:
		return fmt.Sprintf("owner %q is %s", o.OwnerID, o.Owner.Status)
	}
	return ""
}

func loadOwnership(tx kv.Tx, d *inventory.Device) (ownership, error) {
	o := ownership{OwnerID: d.Owner, Purpose: d.Purpose}
	a, err := get[Assignment](tx, bucketAssign, []byte(d.ID))
	if err != nil {
		return o, err
	}
	if a != nil {
		o.OwnerID, o.Purpose = a.Owner, a.Purpose
	}
	if o.OwnerID != "" {
		if o.Owner, err = get[Owner](tx, bucketOwners, []byte(o.OwnerID)); err != nil {
			return o, err
		}
	}
	o.Clones, err = openClones(tx, d.ID)
	return o, err
}

// judgeOwnership applies the orphan rule to one device now.
func (s *Service) judgeOwnership(d *inventory.Device) error {
	if d.State == inventory.StateDecommissioned {
		return nil
	}
	s.judgeMu.Lock()
	defer s.judgeMu.Unlock()
	var own ownership
	var st *Status
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		var err error
		if own, err = loadOwnership(tx, d); err != nil {
			return err
		}
		st, err = get[Status](tx, bucketStatus, []byte(d.ID))
		return err
	})
	if err != nil {
		return fmt.Errorf("governance: %w", err)
	}
	if st == nil {
		st = &Status{DeviceID: d.ID}
	}
	now := s.cfg.Now().UTC()
	s.applyOrphan(d, st, own.orphanReason(), now)
	st.Checked = now
	return s.db.Update(context.TODO(), func(tx kv.Tx) error { return put(tx, bucketStatus, []byte(d.ID), st) })
}

// applyOrphan moves st to the orphan verdict reason ("" = owned), alerting
// on a change and keeping the inventory flag in step.
func (s *Service) applyOrphan(d *inventory.Device, st *Status, reason string, now time.Time) {
	orphaned := reason != ""
	switch {
	case orphaned && !st.Orphaned:
		st.Orphaned, st.OrphanedSince, st.OrphanReason = true, now, reason
		s.alert(Alert{Time: now, DeviceID: d.ID, Kind: KindOrphaned, Severity: SeverityWarning,
			Summary: "device has no live owner: " + reason, Attrs: map[string]string{"reason": reason, "owner": d.Owner}})
	case !orphaned && st.Orphaned:
		s.alert(Alert{Time: now, DeviceID: d.ID, Kind: KindOrphaned, Severity: SeverityInfo, Resolved: true,
			Summary: "device has a live owner again", Attrs: map[string]string{"was": st.OrphanReason}})
		st.Orphaned, st.OrphanedSince, st.OrphanReason = false, time.Time{}, ""
	case orphaned:
		st.OrphanReason = reason
	}
	s.syncFlag(d, FlagOrphaned, st.Orphaned)
}

// syncFlag sets or clears an inventory flag when it differs from want.
func (s *Service) syncFlag(d *inventory.Device, flag string, want bool) {
	if d.HasFlag(flag) == want {
		return
	}
	err := s.cfg.Devices.Update(context.TODO(), d.ID, func(x *inventory.Device) error {
		x.Flags = withFlag(x.Flags, flag, want)
		return nil
	})
	if err == nil {
		d.Flags = withFlag(d.Flags, flag, want)
	} else if !errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("governance: inventory flag update failed", "device_id", d.ID, "flag", flag, "err", err)
	}
}

func withFlag(flags []string, flag string, on bool) []string {
	out := make([]string, 0, len(flags)+1)
	for _, f := range flags {
		if f != flag {
			out = append(out, f)
		}
	}
	if on {
		out = append(out, flag)
	}
	return out
}
