package attest

import (
	"bytes"
	"context"
	"embed"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

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
// a bbolt file (OpenHistory) or in PostgreSQL (OpenHistoryPostgres).
type History struct {
	db  kv.DB
	max int
}

// OpenHistory opens (or creates) the history file.
func OpenHistory(path string, maxPerDevice int) (*History, error) {
	if maxPerDevice <= 0 {
		maxPerDevice = 1000
	}
	db, err := boltdb.Open(path, boltdb.Schema{}, boltdb.Options{Name: "attest: history"})
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
// every bucket of the bbolt file is a device's (sigil migrate copies them
// all).
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
	return h.db.Write(ctx, func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(r.DeviceID))
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
		return nil
	})
}

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
		b := tx.Bucket([]byte(deviceID))
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
		for ; k != nil && len(out) < limit; k, v = c.Prev() {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Last returns the newest record of a device, or nil.
func (h *History) Last(ctx context.Context, deviceID string) (*Record, error) {
	rs, err := h.List(ctx, deviceID, 1)
	if err != nil || len(rs) == 0 {
		return nil, err
	}
	return &rs[0], nil
}
