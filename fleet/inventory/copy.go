package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Contents counts the records of an inventory and digests them (Digest):
// two inventories with equal Contents hold the same records, whatever
// their backends.
type Contents struct {
	Devices, Revocations, Tokens, Events int
	Digest                               [32]byte
}

// Digest reads every record of s in one read transaction: devices,
// revocations and enrollment tokens in key order, events in the order
// they were added.
func (s *Store) Digest(ctx context.Context) (Contents, error) {
	var c Contents
	err := s.e.view(ctx, func(t tx) error {
		c = Contents{}
		h := sha256.New()
		add := func(kind byte, v []byte) {
			h.Write([]byte{kind})
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(v))))
			h.Write(v)
		}
		each := func(kind byte, n *int) func(v []byte, err error) error {
			return func(v []byte, err error) error {
				if err != nil {
					return err
				}
				*n++
				add(kind, v)
				return nil
			}
		}
		if err := t.eachDevice(func(d *Device) error { return each('d', &c.Devices)(encode(d)) }); err != nil {
			return err
		}
		if err := t.eachRevocation(func(r *Revocation) error { return each('r', &c.Revocations)(encode(r)) }); err != nil {
			return err
		}
		if err := t.eachToken(func(tok *Token) error { return each('t', &c.Tokens)(encode(tok)) }); err != nil {
			return err
		}
		if err := t.eachEvent(func(e *Event) error { return each('e', &c.Events)(encode(e)) }); err != nil {
			return err
		}
		h.Sum(c.Digest[:0])
		return nil
	})
	if err != nil {
		return Contents{}, fmt.Errorf("inventory: digest: %w", err)
	}
	return c, nil
}

// Copy copies every record of src into dst in one transaction of dst
// (sigil migrate): devices with their indexes, revocations, enrollment
// tokens and events, in their order. dst should be empty: a record of
// the same key is replaced, and events are added to those dst holds.
// The hooks of dst do not run. Compare src's and dst's Digest after.
func Copy(ctx context.Context, dst, src *Store) error {
	var (
		devices []*Device
		revs    []*Revocation
		toks    []*Token
		events  []*Event
	)
	err := src.e.view(ctx, func(t tx) error {
		devices, revs, toks, events = nil, nil, nil, nil
		if err := t.eachDevice(func(d *Device) error { devices = append(devices, d); return nil }); err != nil {
			return err
		}
		if err := t.eachRevocation(func(r *Revocation) error { revs = append(revs, r); return nil }); err != nil {
			return err
		}
		if err := t.eachToken(func(tok *Token) error { toks = append(toks, tok); return nil }); err != nil {
			return err
		}
		return t.eachEvent(func(e *Event) error { events = append(events, e); return nil })
	})
	if err != nil {
		return fmt.Errorf("inventory: copy: read: %w", err)
	}
	err = dst.e.update(ctx, func(t tx) error {
		for _, d := range devices {
			old, err := t.device(d.ID)
			if errors.Is(err, ErrNotFound) {
				old, err = nil, nil
			}
			if err != nil {
				return err
			}
			if err := t.putDevice(old, d); err != nil {
				return fmt.Errorf("device %s: %w", d.ID, err)
			}
		}
		for _, r := range revs {
			if err := t.putRevocation(r); err != nil {
				return err
			}
		}
		for _, tok := range toks {
			if err := t.putToken(tok); err != nil {
				return err
			}
		}
		for _, e := range events {
			// The source kept its own limits: drop nothing.
			if err := t.addEvent(e, math.MaxInt32); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("inventory: copy: write: %w", err)
	}
	return nil
}
