package inventory

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Secondary indexes. The device list of a large fleet sorts and filters
// by fields other than the ID; reading every record for that costs about
// 9 µs a record (JSON), 0.9 s for 100,000 devices. So each Field below
// has its own bucket whose keys are the field's value, a 0x00 byte and
// the device ID (values empty): a key range is the devices with one
// value, in ID order, and a walk over the bucket is the devices in the
// field's order. putDevice keeps them in step with the records in the
// transaction that writes a record, and keeps a count of devices per
// state, so a filter or an order never decodes a record it does not
// return, and totals need no scan.
//
// Strings are indexed in lower case (at most maxIndexValue bytes): filters
// on them ignore case, and the order is case-insensitive. Times are 8
// bytes big-endian (the zero time first). A file written before the
// indexes existed (schema 1) gets them when it is opened.

// Field names a device field the inventory indexes (Query.Where,
// Query.Order).
type Field string

// Indexed fields.
const (
	FieldID         Field = "id"
	FieldState      Field = "state"
	FieldModel      Field = "model"
	FieldFirmware   Field = "firmware"
	FieldOwner      Field = "owner"
	FieldGroup      Field = "group"
	FieldSerial     Field = "serial"
	FieldTag        Field = "tag" // one key per tag; a filter only, not an order
	FieldLastSeen   Field = "last_seen"
	FieldCertExpiry Field = "cert_expiry"
)

// maxIndexValue bounds an indexed string value; longer values share their
// first maxIndexValue bytes (filters then check the record itself).
const maxIndexValue = 200

// indexedFields lists the indexed fields, ID excepted (the devices bucket
// is its own index).
func indexedFields() []Field {
	return []Field{FieldState, FieldModel, FieldFirmware, FieldOwner, FieldGroup, FieldSerial, FieldTag, FieldLastSeen, FieldCertExpiry}
}

// Valid reports whether f is an indexed field.
func (f Field) Valid() bool { return f == FieldID || slices.Contains(indexedFields(), f) }

// Orderable reports whether devices can be listed in f's order.
func (f Field) Orderable() bool { return f.Valid() && f != FieldTag }

func indexBucket(f Field) []byte { return []byte("ix." + string(f)) }

// indexValue encodes a string for an index: lower case, no 0x00 (the
// separator), bounded.
func indexValue(s string) []byte {
	b := []byte(strings.ToLower(s))
	if len(b) > maxIndexValue {
		b = b[:maxIndexValue]
	}
	for i, c := range b {
		if c == 0 {
			b[i] = 1
		}
	}
	return b
}

// indexTime encodes a time so that byte order is time order: the zero
// time is all zeros, others their Unix nanoseconds with the sign bit
// flipped (clamped to what an int64 holds).
func indexTime(t time.Time) []byte {
	b := make([]byte, 8)
	if t.IsZero() {
		return b
	}
	var n int64
	switch {
	case t.Year() < 1678:
		n = -1 << 62
	case t.Year() > 2261:
		n = 1<<63 - 1
	default:
		n = t.UnixNano()
	}
	binary.BigEndian.PutUint64(b, uint64(n)^(1<<63)|1) // |1: never all zeros
	return b
}

// fieldValues returns d's encoded values of f (several for tags, one for
// the others).
func fieldValues(d *Device, f Field) [][]byte {
	switch f {
	case FieldState:
		return [][]byte{indexValue(string(d.State))}
	case FieldModel:
		return [][]byte{indexValue(d.Model)}
	case FieldFirmware:
		return [][]byte{indexValue(d.Firmware)}
	case FieldOwner:
		return [][]byte{indexValue(d.Owner)}
	case FieldGroup:
		return [][]byte{indexValue(d.Group)}
	case FieldSerial:
		return [][]byte{indexValue(d.Serial)}
	case FieldLastSeen:
		return [][]byte{indexTime(d.LastSeen)}
	case FieldCertExpiry:
		return [][]byte{indexTime(d.CertExpiry)}
	case FieldTag:
		out := make([][]byte, 0, len(d.Tags))
		for _, t := range d.Tags {
			v := indexValue(t)
			if !slices.ContainsFunc(out, func(x []byte) bool { return bytes.Equal(x, v) }) {
				out = append(out, v)
			}
		}
		return out
	}
	return nil
}

func indexKey(value []byte, id string) []byte {
	k := make([]byte, 0, len(value)+1+len(id))
	k = append(k, value...)
	k = append(k, 0)
	return append(k, id...)
}

// keyID returns the device ID of an index key (after its last 0x00: IDs
// hold none).
func keyID(k []byte) string {
	return string(k[bytes.LastIndexByte(k, 0)+1:])
}

// updateIndexes moves d's index keys from what old had (nil for a new
// record) to what d has, and the state counts with them.
func updateIndexes(tx *bolt.Tx, old, d *Device) error {
	for _, f := range indexedFields() {
		b := tx.Bucket(indexBucket(f))
		var was, is [][]byte
		if old != nil {
			was = fieldValues(old, f)
		}
		if d != nil {
			is = fieldValues(d, f)
		}
		has := func(set [][]byte, v []byte) bool {
			return slices.ContainsFunc(set, func(x []byte) bool { return bytes.Equal(x, v) })
		}
		for _, v := range was {
			if !has(is, v) {
				if err := b.Delete(indexKey(v, old.ID)); err != nil {
					return err
				}
			}
		}
		for _, v := range is {
			if !has(was, v) {
				if err := b.Put(indexKey(v, d.ID), nil); err != nil {
					return err
				}
			}
		}
	}
	switch {
	case old == nil && d != nil:
		return addCount(tx, d.State, 1)
	case old != nil && d != nil && old.State != d.State:
		if err := addCount(tx, old.State, -1); err != nil {
			return err
		}
		return addCount(tx, d.State, 1)
	}
	return nil
}

func countKey(s State) []byte { return []byte("count." + string(s)) }

func addCount(tx *bolt.Tx, s State, delta int64) error {
	meta := tx.Bucket(bucketMeta)
	var n int64
	if v := meta.Get(countKey(s)); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	return meta.Put(countKey(s), binary.BigEndian.AppendUint64(nil, uint64(max(0, n+delta))))
}

// buildIndexes (re)creates every index and the state counts from the
// records.
func buildIndexes(tx *bolt.Tx) error {
	for _, f := range indexedFields() {
		if tx.Bucket(indexBucket(f)) != nil {
			if err := tx.DeleteBucket(indexBucket(f)); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucket(indexBucket(f)); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	for _, s := range []State{StatePending, StateActive, StateQuarantined, StateDecommissioned} {
		if err := meta.Delete(countKey(s)); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		d, err := decode[Device](v)
		if err != nil {
			return fmt.Errorf("%w (device %q)", err, k)
		}
		return updateIndexes(tx, nil, d)
	})
}

// Counts returns the number of devices in each state (kept with the
// records: no scan).
func (s *Store) Counts() (map[State]int, error) {
	out := make(map[State]int)
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		for _, st := range []State{StatePending, StateActive, StateQuarantined, StateDecommissioned} {
			if v := meta.Get(countKey(st)); len(v) == 8 && binary.BigEndian.Uint64(v) > 0 {
				out[st] = int(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Query selects and orders devices (Store.Query).
type Query struct {
	// Where keeps devices whose field equals the value, ignoring case
	// (FieldTag: that carry the tag). Empty values are ignored. FieldID
	// and times are not filters.
	Where map[Field]string
	// Order is the field to list by (FieldID when empty); Desc reverses
	// it. Devices with equal values are in ID order.
	Order Field
	Desc  bool
	// After continues where the page that returned it as Next stopped.
	After string
	// Limit is the page size: default 100, at most 1000.
	Limit int
	// Match, when set, must also accept a device: a test the indexes
	// cannot make (a text search, a live connection). It sees decoded
	// records, at most Budget of them per call.
	Match  func(*Device) bool
	Budget int // default 10000
}

// Page is one page of a Query.
type Page struct {
	Devices []Device
	// Next continues the query (Query.After); "" when nothing is left.
	Next string
	// Examined counts the records decoded; Partial says Budget ran out
	// before the page filled (Next continues the search).
	Examined int
	Partial  bool
}

// ErrQuery: a Query names a field that is not indexed, or its cursor is
// not one Query returned.
var ErrQuery = errors.New("inventory: invalid query")

// smallSet is the largest number of candidates a filtered query collects
// to walk another field's order against (above it, it checks each key of
// that order against the filters' indexes instead).
const smallSet = 10000

// Query returns a page of the devices that match q, in q's order.
//
// The indexes do the work: the filters' key ranges give the candidates
// (the smallest range first, checked against the others' keys), and a
// walk over the order's index lists them, so no record outside the page
// is decoded unless q.Match needs it. Records are checked again once
// decoded (values longer than the index keeps).
func (s *Store) Query(q Query) (Page, error) {
	if q.Order == "" {
		q.Order = FieldID
	}
	if !q.Order.Orderable() {
		return Page{}, fmt.Errorf("%w: cannot order by %q", ErrQuery, q.Order)
	}
	where := map[Field][]byte{}
	for f, v := range q.Where {
		if v == "" {
			continue
		}
		if f == FieldID || f == FieldLastSeen || f == FieldCertExpiry || !f.Valid() {
			return Page{}, fmt.Errorf("%w: cannot filter by %q", ErrQuery, f)
		}
		where[f] = indexValue(v)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = defaultPageSize
	}
	limit = min(limit, maxPageSize)
	budget := q.Budget
	if budget <= 0 {
		budget = 10000
	}
	var after []byte
	if q.After != "" {
		if q.Order == FieldID {
			if !wire.ValidID(q.After) {
				return Page{}, fmt.Errorf("%w: bad cursor", ErrQuery)
			}
			after = []byte(q.After)
		} else {
			var err error
			if after, err = base64.RawURLEncoding.DecodeString(q.After); err != nil || bytes.IndexByte(after, 0) < 0 {
				return Page{}, fmt.Errorf("%w: bad cursor", ErrQuery)
			}
		}
	}
	var out Page
	err := s.db.View(func(tx *bolt.Tx) error {
		w := walker{tx: tx, where: where, q: q, limit: limit, budget: budget}
		return w.run(after, &out)
	})
	if err != nil {
		return Page{}, err
	}
	return out, nil
}

// Count returns how many devices match the filters (as Query.Where; nil
// or empty counts every device), from the indexes alone.
func (s *Store) Count(where map[Field]string) (int, error) {
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		ws := map[Field][]byte{}
		for f, v := range where {
			if v == "" {
				continue
			}
			if f == FieldID || f == FieldLastSeen || f == FieldCertExpiry || !f.Valid() {
				return fmt.Errorf("%w: cannot filter by %q", ErrQuery, f)
			}
			ws[f] = indexValue(v)
		}
		if len(ws) == 0 {
			meta := tx.Bucket(bucketMeta)
			for _, st := range []State{StatePending, StateActive, StateQuarantined, StateDecommissioned} {
				if v := meta.Get(countKey(st)); len(v) == 8 {
					n += int(binary.BigEndian.Uint64(v))
				}
			}
			return nil
		}
		first, _ := smallest(tx, ws, -1)
		return eachInRange(tx, first, ws[first], func(id string) bool {
			if memberOfAll(tx, ws, first, id) {
				n++
			}
			return true
		})
	})
	return n, err
}

// smallest returns the filter with the fewest keys, and that count (each
// range counted up to limit+1; limit < 0 counts all).
func smallest(tx *bolt.Tx, ws map[Field][]byte, limit int) (Field, int) {
	var best Field
	bestN := -1
	for _, f := range sortedFields(ws) {
		n := 0
		_ = eachInRange(tx, f, ws[f], func(string) bool {
			n++
			return limit < 0 || n <= limit
		})
		if bestN < 0 || n < bestN {
			best, bestN = f, n
		}
	}
	return best, bestN
}

func sortedFields(ws map[Field][]byte) []Field {
	fs := make([]Field, 0, len(ws))
	for f := range ws {
		fs = append(fs, f)
	}
	slices.Sort(fs)
	return fs
}

// eachInRange calls fn with the ID of each key of f's index whose value
// is v, in ID order, until fn returns false.
func eachInRange(tx *bolt.Tx, f Field, v []byte, fn func(id string) bool) error {
	prefix := append(bytes.Clone(v), 0)
	c := tx.Bucket(indexBucket(f)).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if bytes.IndexByte(k[len(prefix):], 0) >= 0 {
			continue
		}
		if !fn(string(k[len(prefix):])) {
			return nil
		}
	}
	return nil
}

// memberOfAll reports whether device id has every filter's value, but
// skip's (already known).
func memberOfAll(tx *bolt.Tx, ws map[Field][]byte, skip Field, id string) bool {
	for f, v := range ws {
		if f == skip {
			continue
		}
		if tx.Bucket(indexBucket(f)).Get(indexKey(v, id)) == nil {
			return false
		}
	}
	return true
}

// walker runs one Query in a read transaction.
type walker struct {
	tx     *bolt.Tx
	where  map[Field][]byte
	q      Query
	limit  int
	budget int
}

// run fills out, starting after the cursor key after (nil: from the
// start).
func (w *walker) run(after []byte, out *Page) error {
	devices := w.tx.Bucket(bucketDevices)
	// emit decodes the candidate at cursor key k and adds it if it
	// matches; it reports false once the page is done.
	var last []byte
	emit := func(k []byte, id string) (bool, error) {
		if len(out.Devices) == w.limit {
			out.Next = w.cursor(last)
			return false, nil
		}
		if out.Examined >= w.budget {
			out.Next, out.Partial = w.cursor(last), true
			return false, nil
		}
		v := devices.Get([]byte(id))
		last = k
		if v == nil {
			return true, nil
		}
		d, err := decode[Device](v)
		if err != nil {
			return false, fmt.Errorf("%w (device %q)", err, id)
		}
		out.Examined++
		if w.matches(d) {
			out.Devices = append(out.Devices, *d)
		}
		return true, nil
	}

	if w.q.Order == FieldID && len(w.where) > 0 {
		// The smallest filter's range is in ID order already.
		first, _ := smallest(w.tx, w.where, smallSet)
		prefix := append(bytes.Clone(w.where[first]), 0)
		c := w.tx.Bucket(indexBucket(first)).Cursor()
		k, _ := w.start(c, prefix, after, func(id []byte) []byte { return append(bytes.Clone(prefix), id...) })
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = w.step(c) {
			id := k[len(prefix):]
			if bytes.IndexByte(id, 0) >= 0 || !memberOfAll(w.tx, w.where, first, string(id)) {
				continue
			}
			if ok, err := emit(id, string(id)); !ok || err != nil {
				return err
			}
		}
		return nil
	}

	// Walk the order's index (or the records for ID order), keeping the
	// candidates: a collected set when the filters are selective, or a
	// check of each key against the filters' indexes.
	var set map[string]bool
	if len(w.where) > 0 {
		first, n := smallest(w.tx, w.where, smallSet)
		if n <= smallSet {
			set = make(map[string]bool, n)
			_ = eachInRange(w.tx, first, w.where[first], func(id string) bool {
				if memberOfAll(w.tx, w.where, first, id) {
					set[string(id)] = true
				}
				return true
			})
			if len(set) == 0 {
				return nil
			}
		}
	}
	var c *bolt.Cursor
	if w.q.Order == FieldID {
		c = devices.Cursor()
	} else {
		c = w.tx.Bucket(indexBucket(w.q.Order)).Cursor()
	}
	k, _ := w.start(c, nil, after, nil)
	for ; k != nil; k, _ = w.step(c) {
		id := string(k)
		if w.q.Order != FieldID {
			id = keyID(k)
		}
		switch {
		case set != nil && !set[id]:
			continue
		case set == nil && len(w.where) > 0 && !memberOfAll(w.tx, w.where, "", id):
			continue
		}
		if ok, err := emit(k, id); !ok || err != nil {
			return err
		}
	}
	return nil
}

// start positions c at the first key of the walk: after the cursor key
// after (made from an ID by fromID, when not nil, for walks of one range),
// or at the start (or end, descending) of the range prefix.
func (w *walker) start(c *bolt.Cursor, prefix, after []byte, fromID func([]byte) []byte) ([]byte, []byte) {
	if after != nil && fromID != nil {
		after = fromID(after)
	}
	if !w.q.Desc {
		if after == nil {
			if prefix != nil {
				return c.Seek(prefix)
			}
			return c.First()
		}
		k, v := c.Seek(after)
		if k != nil && bytes.Equal(k, after) {
			return c.Next()
		}
		return k, v
	}
	if after == nil {
		if prefix != nil {
			end := bytes.Clone(prefix)
			end[len(end)-1] = 1 // past every key of the range
			if k, _ := c.Seek(end); k == nil {
				return c.Last()
			}
			return c.Prev()
		}
		return c.Last()
	}
	if k, _ := c.Seek(after); k == nil {
		return c.Last()
	}
	return c.Prev() // the key before after (after itself was listed)
}

func (w *walker) step(c *bolt.Cursor) ([]byte, []byte) {
	if w.q.Desc {
		return c.Prev()
	}
	return c.Next()
}

// cursor turns the last key walked into Query.After.
func (w *walker) cursor(k []byte) string {
	if k == nil {
		return ""
	}
	if w.q.Order == FieldID {
		return string(k)
	}
	return base64.RawURLEncoding.EncodeToString(k)
}

func (w *walker) matches(d *Device) bool { return w.q.Matches(d) }

// Matches reports whether d passes q's filters (compared with the record
// itself) and q.Match: what Query checks on each record it returns.
func (q *Query) Matches(d *Device) bool {
	for f, v := range q.Where {
		if v == "" {
			continue
		}
		if f == FieldTag {
			if !slices.ContainsFunc(d.Tags, func(t string) bool { return strings.EqualFold(t, v) }) {
				return false
			}
			continue
		}
		var got string
		switch f {
		case FieldState:
			got = string(d.State)
		case FieldModel:
			got = d.Model
		case FieldFirmware:
			got = d.Firmware
		case FieldOwner:
			got = d.Owner
		case FieldGroup:
			got = d.Group
		case FieldSerial:
			got = d.Serial
		}
		if !strings.EqualFold(got, v) {
			return false
		}
	}
	return q.Match == nil || q.Match(d)
}
