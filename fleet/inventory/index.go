package inventory

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Secondary indexes. The device list of a large fleet sorts and filters
// by fields other than the ID; reading every record for that costs about
// 9 µs a record (JSON), 0.9 s for 100,000 devices. So each Field below
// is indexed by its encoded value (indexValue, indexTime) and the device
// ID: in the bbolt file a bucket per field whose keys are the value, a
// 0x00 byte and the ID (values empty), so that a key range is the devices
// with one value, in ID order, and a walk over the bucket is the devices
// in the field's order (bolt.go); in PostgreSQL a bytea column per field
// with an index on (column, id), which orders the same (postgres.go).
// Every device write keeps them in step with the record in its
// transaction (bbolt also keeps a count of devices per state), so a
// filter or an order never decodes a record it does not return. Cursors
// (Page.Next) are the same in both: the ID, or the bbolt key in base64.
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
// The indexes do the work (bbolt: the filters' key ranges give the
// candidates, the smallest range first, checked against the others' keys,
// and a walk over the order's index lists them; PostgreSQL: the same
// encoded values in indexed columns), so no record outside the page is
// decoded unless q.Match needs it. Records are checked again once decoded
// (values longer than the index keeps).
func (s *Store) Query(ctx context.Context, q Query) (Page, error) {
	if q.Order == "" {
		q.Order = FieldID
	}
	if !q.Order.Orderable() {
		return Page{}, fmt.Errorf("%w: cannot order by %q", ErrQuery, q.Order)
	}
	where, err := encodeWhere(q.Where)
	if err != nil {
		return Page{}, err
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
			if after, err = base64.RawURLEncoding.DecodeString(q.After); err != nil || bytes.IndexByte(after, 0) < 0 {
				return Page{}, fmt.Errorf("%w: bad cursor", ErrQuery)
			}
		}
	}
	return s.e.query(ctx, &q, where, after, limit, budget)
}

// Count returns how many devices match the filters (as Query.Where; nil
// or empty counts every device), from the indexes alone.
func (s *Store) Count(ctx context.Context, where map[Field]string) (int, error) {
	ws, err := encodeWhere(where)
	if err != nil {
		return 0, err
	}
	return s.e.count(ctx, ws)
}

// encodeWhere checks filters and encodes their values for the indexes.
func encodeWhere(where map[Field]string) (map[Field][]byte, error) {
	ws := map[Field][]byte{}
	for f, v := range where {
		if v == "" {
			continue
		}
		if f == FieldID || f == FieldLastSeen || f == FieldCertExpiry || !f.Valid() {
			return nil, fmt.Errorf("%w: cannot filter by %q", ErrQuery, f)
		}
		ws[f] = indexValue(v)
	}
	return ws, nil
}

// Counts returns the number of devices in each state (bbolt keeps them
// with the records: no scan).
func (s *Store) Counts(ctx context.Context) (map[State]int, error) {
	return s.e.counts(ctx)
}

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
