package attest

import (
	"bytes"
	"context"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// HistoryFile is the attestation history's bbolt file in the fleet's
// data directory.
const HistoryFile = "attestations.db"

// Record is one verdict in a device's attestation history.
type Record struct {
	Seq            uint64                    `json:"seq"`
	Time           time.Time                 `json:"time"`
	DeviceID       string                    `json:"device_id"`
	Result         string                    `json:"result"` // "pass" or "fail"
	Reason         string                    `json:"reason"` // wire reason name
	Code           wire.Reason               `json:"code"`   // wire reason code
	Message        string                    `json:"message,omitempty"`
	PolicyID       string                    `json:"policy_id,omitempty"`
	PolicyVersion  int                       `json:"policy_version,omitempty"`
	Failures       []policy.Failure          `json:"failures,omitempty"`
	EvidenceDigest string                    `json:"evidence_digest"` // SHA-256 of the evidence message, hex
	Firmware       string                    `json:"firmware,omitempty"`
	PCRs           map[string]map[int]string `json:"pcrs,omitempty"`
	EventLog       bool                      `json:"event_log"`
	Events         int                       `json:"events,omitempty"`
	ResetCount     uint32                    `json:"reset_count"`
	RestartCount   uint32                    `json:"restart_count"`
	Clock          uint64                    `json:"clock"`
	Rebooted       bool                      `json:"rebooted,omitempty"` // reset or restart counter moved since the last verdict
	Action         string                    `json:"action,omitempty"`   // "quarantined", "released", "alert"
	// PolicyAction is what a failure asks for: the strictest action of the
	// policies the device could be judged by whatever firmware it claims
	// (policy.Choice.Action). AutoRelease is the evaluated policy's.
	PolicyAction string `json:"policy_action,omitempty"`
	AutoRelease  bool   `json:"auto_release,omitempty"`
	// DeviceError: the device reported it could not quote (not a verdict
	// on its state; counted as unanswered and alerted).
	DeviceError bool `json:"device_error,omitempty"`
}

// History keeps verdicts per device, newest last, bounded: a bucket per
// device (named by its ID) of records keyed by their sequence number, in
// a bbolt file (OpenHistory) or in PostgreSQL (OpenHistoryPostgres). A
// summary of each device's newest records — their outcomes and the newest
// TPM counters, what the checks on every verdict and the risk score read —
// is kept beside them (bucketSummaries), in the same transaction, so
// those reads decode no record.
type History struct {
	db  kv.DB
	max int
}

// SummariesBucket names the bucket holding each device's summary by
// device ID: the one bucket of the history that is not a device's. Its
// name starts with a zero byte, which no device ID does (Add refuses one).
const SummariesBucket = "\x00summaries"

var bucketSummaries = []byte(SummariesBucket)

// SummaryOutcomes is how many of a device's newest outcomes its summary
// keeps: Outcomes for as many as that decodes no record.
const SummaryOutcomes = 32

// OpenHistory opens (or creates) the history file.
func OpenHistory(path string, maxPerDevice int) (*History, error) {
	if maxPerDevice <= 0 {
		maxPerDevice = 1000
	}
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: [][]byte{bucketSummaries}}, boltdb.Options{Name: "attest: history"})
	if err != nil {
		return nil, err
	}
	return &History{db: kv.Bolt(db), max: maxPerDevice}, nil
}

// historyMigrations are the history's tables in PostgreSQL (component
// "attest_history" in schema_migrations).
//
//go:embed migrations/*.sql
var historyMigrations embed.FS

// HistoryTable is the PostgreSQL table holding the history (kv.Postgres);
// every bucket of the bbolt file is a device's but the summaries'
// (bucketSummaries), and sigil migrate copies them all.
const HistoryTable = "attest_history_kv"

// OpenHistoryPostgres opens the history in the PostgreSQL database db,
// bringing its tables up to date first. Close leaves db open.
func OpenHistoryPostgres(ctx context.Context, db *postgres.DB, maxPerDevice int) (*History, error) {
	if maxPerDevice <= 0 {
		maxPerDevice = 1000
	}
	if err := db.Migrate(ctx, "attest_history", historyMigrations); err != nil {
		return nil, fmt.Errorf("attest: history: %w", err)
	}
	k, err := kv.Postgres(db, HistoryTable)
	if err != nil {
		return nil, fmt.Errorf("attest: history: %w", err)
	}
	return &History{db: k, max: maxPerDevice}, nil
}

// Close closes the file.
func (h *History) Close() error { return h.db.Close() }

// Add appends r to its device's history and sets r.Seq.
func (h *History) Add(ctx context.Context, r *Record) error {
	return h.db.Write(ctx, func(tx kv.Tx) error { return h.add(tx, r) })
}

// AddAll appends records, in order, in one transaction (one fsync in a
// bbolt file), and returns each one's error (nil for those recorded;
// Add's otherwise; a failing one is left out of the others' transaction).
// For records a caller gathers on purpose: the verdicts of attestations
// judged within a few milliseconds of each other.
func (h *History) AddAll(ctx context.Context, rs []*Record) []error {
	fns := make([]func(kv.Tx) error, len(rs))
	for i, r := range rs {
		fns[i] = func(tx kv.Tx) error { return h.add(tx, r) }
	}
	return kv.WriteAll(ctx, h.db, fns)
}

// add is Add's transaction. It may run more than once for r (group
// commit, a retried PostgreSQL transaction): it reads everything it
// changes from tx.
func (h *History) add(tx kv.Tx, r *Record) error {
	if r.DeviceID == "" || r.DeviceID[0] == 0 {
		return fmt.Errorf("attest: history: invalid device ID %q", r.DeviceID)
	}
	b, err := tx.CreateBucketIfNotExists([]byte(r.DeviceID))
	if err != nil {
		return err
	}
	sums, err := tx.CreateBucketIfNotExists(bucketSummaries)
	if err != nil {
		return err
	}
	sum, err := h.loadSummary(sums, b, r.DeviceID)
	if err != nil {
		return err
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	r.Seq = seq
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := b.Put(key(seq), v); err != nil {
		return err
	}
	// Keep the newest max: sequence numbers are consecutive (each
	// taken with its record), so the older ones are those before
	// seq-max+1.
	if seq > uint64(h.max) {
		keep := key(seq - uint64(h.max) + 1)
		c := b.Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, keep) < 0; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
	}
	sum.add(r, h.keep(), count(b))
	return sums.Put([]byte(r.DeviceID), sum.encode())
}

// count is how many records bucket b holds: sequence numbers are
// consecutive and only the oldest records leave, so the oldest and newest
// keys tell. A read that failed (in PostgreSQL: the transaction then
// fails at its end, kv's contract) finds no key: 0.
func count(b kv.Bucket) int {
	c := b.Cursor()
	first, _ := c.First()
	last, _ := c.Last()
	if len(first) != 8 || len(last) != 8 {
		return 0
	}
	return int(binary.BigEndian.Uint64(last) - binary.BigEndian.Uint64(first) + 1)
}

// keep is how many outcomes a summary keeps.
func (h *History) keep() int { return min(SummaryOutcomes, h.max) }

func key(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

// List returns up to limit records of a device, newest first.
func (h *History) List(ctx context.Context, deviceID string, limit int) ([]Record, error) {
	return h.ListBefore(ctx, deviceID, 0, limit)
}

// ListBefore returns up to limit records of a device older than sequence
// number before (0: from the newest), newest first: a page of its
// history, continued with the last record's Seq.
func (h *History) ListBefore(ctx context.Context, deviceID string, before uint64, limit int) ([]Record, error) {
	var out []Record
	err := h.db.View(ctx, func(tx kv.Tx) error {
		out = nil // a transaction may run again
		return each(tx.Bucket([]byte(deviceID)), before, limit, func(v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// each calls fn with up to limit records of bucket b (nil: none) older
// than sequence number before (0: from the newest), newest first.
func each(b kv.Bucket, before uint64, limit int, fn func(v []byte) error) error {
	if b == nil {
		return nil
	}
	c := b.Cursor()
	k, v := c.Last()
	if before > 0 {
		if k, _ = c.Seek(key(before)); k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
	}
	for n := 0; k != nil && n < limit; k, v = c.Prev() {
		if err := fn(v); err != nil {
			return err
		}
		n++
	}
	return nil
}

// Last returns the newest record of a device, or nil.
func (h *History) Last(ctx context.Context, deviceID string) (*Record, error) {
	rs, err := h.List(ctx, deviceID, 1)
	if err != nil || len(rs) == 0 {
		return nil, err
	}
	return &rs[0], nil
}

// Outcome is what a summary of a device's verdicts needs of one record.
type Outcome struct {
	Seq         uint64    `json:"seq"`
	Time        time.Time `json:"time"`
	Result      string    `json:"result"`
	Reason      string    `json:"reason"`
	DeviceError bool      `json:"device_error,omitempty"`
}

// Outcomes returns the outcomes of up to limit of a device's newest
// records, newest first, as List would return them. Up to SummaryOutcomes
// of them come from the device's summary without decoding a record.
func (h *History) Outcomes(ctx context.Context, deviceID string, limit int) ([]Outcome, error) {
	var out []Outcome
	err := h.db.View(ctx, func(tx kv.Tx) error {
		out = nil // a transaction may run again
		b := tx.Bucket([]byte(deviceID))
		if b == nil || limit <= 0 {
			return nil
		}
		if sum, ok := readSummary(tx, deviceID); ok && (limit <= len(sum.outcomes) || sum.complete) {
			out = sum.outcomes[:min(limit, len(sum.outcomes))]
			return nil
		}
		var err error
		out, err = decodeOutcomes(b, limit)
		return err
	})
	return out, err
}

// counters are a record's TPM counters.
type counters struct {
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
	Clock        uint64 `json:"clock"`
}

// lastCounters returns the TPM counters of a device's newest record, and
// whether it has one.
func (h *History) lastCounters(ctx context.Context, deviceID string) (counters, bool, error) {
	var c counters
	found := false
	err := h.db.View(ctx, func(tx kv.Tx) error {
		c, found = counters{}, false // a transaction may run again
		b := tx.Bucket([]byte(deviceID))
		if b == nil {
			return nil
		}
		if sum, ok := readSummary(tx, deviceID); ok {
			c, found = sum.last, len(sum.outcomes) > 0
			return nil
		}
		return each(b, 0, 1, func(v []byte) error {
			found = true
			return json.Unmarshal(v, &c)
		})
	})
	return c, found, err
}

// summary is what a device's newest records tell the checks on every
// verdict and the risk score: the newest one's TPM counters and the
// outcomes of the newest SummaryOutcomes, newest first. complete: it
// holds the outcome of every record the device has.
type summary struct {
	last     counters
	outcomes []Outcome
	complete bool
}

const summaryVersion = 1

// readSummary returns a device's summary, if it has one that decodes.
func readSummary(tx kv.Tx, deviceID string) (*summary, bool) {
	b := tx.Bucket(bucketSummaries)
	if b == nil {
		return nil, false
	}
	v := b.Get([]byte(deviceID))
	if v == nil {
		return nil, false
	}
	s, err := decodeSummary(v)
	return s, err == nil
}

// loadSummary returns the summary (in sums) of the device whose records
// are in b, rebuilt from its newest records when it has none (a history
// written before summaries existed) or one that does not decode.
func (h *History) loadSummary(sums, b kv.Bucket, deviceID string) (*summary, error) {
	if v := sums.Get([]byte(deviceID)); v != nil {
		if s, err := decodeSummary(v); err == nil {
			return s, nil
		}
	}
	s := &summary{}
	var err error
	if s.outcomes, err = decodeOutcomes(b, h.keep()); err != nil {
		return nil, err
	}
	if err := each(b, 0, 1, func(v []byte) error { return json.Unmarshal(v, &s.last) }); err != nil {
		return nil, err
	}
	s.complete = len(s.outcomes) == count(b)
	return s, nil
}

// decodeOutcomes decodes the outcomes of up to limit of the newest records
// in b, newest first.
func decodeOutcomes(b kv.Bucket, limit int) ([]Outcome, error) {
	var out []Outcome
	err := each(b, 0, limit, func(v []byte) error {
		var o Outcome
		if err := json.Unmarshal(v, &o); err != nil {
			return err
		}
		out = append(out, o)
		return nil
	})
	return out, err
}

// add takes r, the device's new newest record, into the summary, which
// keeps the outcomes of the newest keep records; the device now has n.
func (s *summary) add(r *Record, keep, n int) {
	s.last = counters{ResetCount: r.ResetCount, RestartCount: r.RestartCount, Clock: r.Clock}
	o := Outcome{Seq: r.Seq, Time: r.Time, Result: r.Result, Reason: r.Reason, DeviceError: r.DeviceError}
	s.outcomes = append([]Outcome{o}, s.outcomes[:min(len(s.outcomes), keep-1)]...)
	s.complete = len(s.outcomes) == n
}

// encode writes the summary: a version byte, a flags byte (1: complete),
// the counters and the outcomes as varints and length-prefixed strings.
func (s *summary) encode() []byte {
	b := []byte{summaryVersion, 0}
	if s.complete {
		b[1] = 1
	}
	b = binary.AppendUvarint(b, uint64(s.last.ResetCount))
	b = binary.AppendUvarint(b, uint64(s.last.RestartCount))
	b = binary.AppendUvarint(b, s.last.Clock)
	b = binary.AppendUvarint(b, uint64(len(s.outcomes)))
	for _, o := range s.outcomes {
		b = binary.AppendUvarint(b, o.Seq)
		b = binary.AppendVarint(b, o.Time.Unix())
		b = binary.AppendUvarint(b, uint64(o.Time.Nanosecond()))
		flags := byte(0)
		if o.DeviceError {
			flags = 1
		}
		b = append(b, flags)
		b = appendString(b, o.Result)
		b = appendString(b, o.Reason)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// errSummary is a summary that does not decode.
var errSummary = errors.New("attest: malformed history summary")

// decodeSummary reads what encode wrote.
func decodeSummary(b []byte) (*summary, error) {
	if len(b) < 2 || b[0] != summaryVersion || b[1] > 1 {
		return nil, errSummary
	}
	s := &summary{complete: b[1] == 1}
	r := summaryReader{b: b[2:]}
	s.last.ResetCount = uint32(r.uvarint(math.MaxUint32))
	s.last.RestartCount = uint32(r.uvarint(math.MaxUint32))
	s.last.Clock = r.uvarint(math.MaxUint64)
	n := r.uvarint(SummaryOutcomes)
	for range n {
		var o Outcome
		o.Seq = r.uvarint(math.MaxUint64)
		sec := r.varint()
		nsec := r.uvarint(999_999_999)
		o.Time = time.Unix(sec, int64(nsec)).UTC()
		switch f := r.byte(); f {
		case 0, 1:
			o.DeviceError = f == 1
		default:
			r.err = errSummary
		}
		o.Result, o.Reason = r.string(), r.string()
		if r.err != nil {
			break
		}
		s.outcomes = append(s.outcomes, o)
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errSummary
	}
	return s, nil
}

// summaryReader reads a summary's fields, remembering the first error.
type summaryReader struct {
	b   []byte
	err error
}

func (r *summaryReader) uvarint(max uint64) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.err, r.b = errSummary, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *summaryReader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err, r.b = errSummary, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *summaryReader) byte() byte {
	if len(r.b) == 0 {
		r.err = errSummary
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *summaryReader) string() string {
	n := r.uvarint(math.MaxUint64)
	if n > uint64(len(r.b)) {
		r.err, r.b = errSummary, nil
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
