package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// Filter selects entries for List. Zero fields match every entry.
type Filter struct {
	// Actor matches entries by this actor: Kind alone matches every actor
	// of that kind; Kind and ID one actor.
	Actor Actor
	// Action matches an action and those under it, by whole dotted words:
	// "device" matches "device.revoke" and "device.quarantine.release",
	// not "devices.list"; "device.revoke" matches itself.
	Action string
	// Target matches entries with exactly this target.
	Target string
	// Since (inclusive) and Until (exclusive) bound the entries' time.
	Since, Until time.Time
	// Before is the paging cursor: only entries with Seq < Before. 0 means
	// from the newest entry; pass Page.Next for the next page.
	Before uint64
	// Limit is the page size. 0 means 50; at most 1000.
	Limit int
}

// Page is one page of List, newest entry first.
type Page struct {
	Entries []Entry
	// Next is the cursor for the next page (Filter.Before); 0 when there
	// are no older entries to look at. A page may hold fewer than Limit
	// entries, even none, and still have a Next: List examines a bounded
	// number of entries per call so that a rare match does not make one
	// request scan the whole log.
	Next uint64
}

const (
	defaultLimit = 50
	maxLimit     = 1000
	scanPerEntry = 200 // entries List may examine per entry of the page
)

// List returns entries matching f, newest first. It uses the actor index
// when f names one actor, the target index when it names a target, and
// otherwise reads the log backwards from the newest entry before Until.
// Entry times never decrease along the log, so a Since bound ends the
// scan.
func (l *Log) List(ctx context.Context, f Filter) (Page, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultLimit
	}
	limit = min(limit, maxLimit)
	action := strings.TrimSuffix(f.Action, ".")
	match := func(e *Entry) bool {
		return (f.Actor.Kind == "" || e.Actor.Kind == f.Actor.Kind) &&
			(f.Actor.ID == "" || e.Actor.ID == f.Actor.ID) &&
			(action == "" || e.Action == action || strings.HasPrefix(e.Action, action+".")) &&
			(f.Target == "" || e.Target == f.Target) &&
			(f.Until.IsZero() || e.Time.Before(f.Until))
	}
	var page Page
	err := l.db.View(ctx, func(tx kv.Tx) error {
		page = Page{} // a transaction may run again
		entries := tx.Bucket(bucketEntries)
		budget := limit * scanPerEntry
		// visit examines entry seq; it reports whether to go on.
		visit := func(seq uint64) (bool, error) {
			v := entries.Get(seqKey(seq))
			if v == nil {
				return true, nil
			}
			e, err := decodeStored(seqKey(seq), v)
			if err != nil {
				return false, err
			}
			if !f.Since.IsZero() && e.Time.Before(f.Since) {
				page.Next = 0
				return false, nil
			}
			page.Next = seq
			if match(&e) {
				page.Entries = append(page.Entries, e)
			}
			budget--
			return len(page.Entries) < limit && budget > 0, nil
		}
		var prefix []byte
		var idx kv.Bucket
		switch {
		case f.Actor.Kind != "" && f.Actor.ID != "":
			prefix, idx = actorPrefix(f.Actor.Kind, f.Actor.ID), tx.Bucket(bucketByActor)
		case f.Target != "":
			prefix, idx = targetPrefix(f.Target), tx.Bucket(bucketByTarget)
		}
		if idx != nil {
			return scanIndex(idx, prefix, f.Before, visit, &page)
		}
		start := l.lastBefore(tx, f.Until)
		if f.Before != 0 {
			start = min(start, f.Before-1)
		}
		c := entries.Cursor()
		k, _ := c.Seek(seqKey(start))
		switch {
		case k == nil:
			k, _ = c.Last()
		case binary.BigEndian.Uint64(k) > start:
			k, _ = c.Prev()
		}
		page.Next = 0
		for ; k != nil; k, _ = c.Prev() {
			more, err := visit(binary.BigEndian.Uint64(k))
			if err != nil || !more {
				if page.Next == 1 {
					page.Next = 0
				}
				return err
			}
		}
		page.Next = 0
		return nil
	})
	if err != nil {
		return Page{}, fmt.Errorf("audit: list: %w", err)
	}
	return page, nil
}

// scanIndex visits the sequence numbers under prefix in idx, newest first,
// below before (0: all).
func scanIndex(idx kv.Bucket, prefix []byte, before uint64, visit func(uint64) (bool, error), page *Page) error {
	c := idx.Cursor()
	var k []byte
	if before != 0 {
		k, _ = c.Seek(binary.BigEndian.AppendUint64(bytes.Clone(prefix), before))
	} else {
		// Past the last key with this prefix: prefix ends in NUL, so
		// prefix with 0x01 in its place sorts after every one of them.
		end := bytes.Clone(prefix)
		end[len(end)-1] = 1
		k, _ = c.Seek(end)
	}
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	page.Next = 0
	for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Prev() {
		seq := binary.BigEndian.Uint64(k[len(prefix):])
		more, err := visit(seq)
		if err != nil || !more {
			if !more && page.Next != 0 && !hasOlder(c, prefix) {
				page.Next = 0
			}
			return err
		}
	}
	page.Next = 0
	return nil
}

// hasOlder reports whether the index has another key under prefix before
// the cursor's position.
func hasOlder(c kv.Cursor, prefix []byte) bool {
	k, _ := c.Prev()
	return k != nil && bytes.HasPrefix(k, prefix)
}

// lastBefore returns the newest entry whose time is before until (the
// newest entry when until is zero), by binary search: entry times never
// decrease along the log.
func (l *Log) lastBefore(tx kv.Tx, until time.Time) uint64 {
	entries := tx.Bucket(bucketEntries)
	k, _ := entries.Cursor().Last()
	if k == nil {
		return 0
	}
	hi := binary.BigEndian.Uint64(k)
	if until.IsZero() {
		return hi
	}
	lo := uint64(0) // entry lo is before until (0: none known)
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		v := entries.Get(seqKey(mid))
		e, err := decodeStored(seqKey(mid), v)
		if v == nil || err != nil || e.Time.Before(until) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}
