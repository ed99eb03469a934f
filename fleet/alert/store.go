package alert

import (
	"bytes"
	"context"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/internal/record"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// The store's layout (the bbolt file's buckets; in PostgreSQL the same
// buckets in table Table). Records are JSON wrapped with a version number.
var (
	bucketMeta   = []byte("meta")
	bucketRules  = []byte("rules")  // rule ID -> Rule
	bucketAlerts = []byte("alerts") // be64(alert ID) -> Alert
	bucketOpen   = []byte("open")   // fingerprint -> be64(alert ID), open alerts only
	bucketByDev  = []byte("bydev")  // device ID 0x00 be64(alert ID) -> empty
	bucketDead   = []byte("dead")   // be64(dead letter ID) -> DeadLetter
	bucketState  = []byte("state")  // stateKey(device ID, rule ID) -> learned state
)

const (
	schemaVersion = 1
	recordVersion = 1
)

// File is the alert store's file in the fleet's data directory.
const File = "alerts.db"

// Buckets are the store's buckets, in the bbolt file and in PostgreSQL:
// what sigil migrate copies.
var Buckets = [][]byte{bucketRules, bucketAlerts, bucketOpen, bucketByDev, bucketDead, bucketState}

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "alert_kv"

// migrations are the store's tables in PostgreSQL (component "alert" in
// schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

type store struct {
	db kv.DB
}

func openStore(path string, timeout time.Duration, noSync bool) (*store, error) {
	db, err := boltdb.Open(path, boltdb.Schema{
		Buckets: append([][]byte{bucketMeta}, Buckets...),
		Version: schemaVersion,
	}, boltdb.Options{Name: "alert", Timeout: timeout, NoSync: noSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	return &store{db: kv.Bolt(db)}, nil
}

// openPostgresStore opens the buckets in db, bringing its tables up to
// date first. Transactions are serializable and retried: an alert fired
// at once on two replicas is created once (the second absorbs it).
func openPostgresStore(ctx context.Context, db *postgres.DB) (*store, error) {
	if err := db.Migrate(ctx, "alert", migrations); err != nil {
		return nil, fmt.Errorf("alert: %w", err)
	}
	k, err := kv.Postgres(db, Table)
	if err != nil {
		return nil, fmt.Errorf("alert: %w", err)
	}
	return &store{db: k}, nil
}

func (s *store) close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("alert: close: %w", err)
	}
	return nil
}

func encode[T any](v *T) ([]byte, error) {
	b, err := record.Encode(recordVersion, v)
	if err != nil {
		return nil, fmt.Errorf("alert: encode: %w", err)
	}
	return b, nil
}

func decode[T any](b []byte) (*T, error) {
	v, err := record.Decode[T](recordVersion, b)
	if err != nil {
		return nil, fmt.Errorf("alert: decode: %w", err)
	}
	return v, nil
}

func be64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func devKey(deviceID string, id uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(deviceID), 0), id)
}

// Rules.

func (s *store) putRule(ctx context.Context, r *Rule) error {
	v, err := encode(r)
	if err != nil {
		return err
	}
	return s.db.Update(ctx, func(tx kv.Tx) error { return tx.Bucket(bucketRules).Put([]byte(r.ID), v) })
}

func (s *store) deleteRule(ctx context.Context, id string) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketRules)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("%w: rule %q", ErrNotFound, id)
		}
		return b.Delete([]byte(id))
	})
}

func (s *store) rules(ctx context.Context) ([]Rule, error) {
	var out []Rule
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil
		return tx.Bucket(bucketRules).ForEach(func(k, v []byte) error {
			r, err := decode[Rule](v)
			if err != nil {
				return fmt.Errorf("rule %q: %w", k, err)
			}
			out = append(out, *r)
			return nil
		})
	})
	return out, err
}

// Alerts.

func getAlert(tx kv.Tx, id uint64) (*Alert, error) {
	v := tx.Bucket(bucketAlerts).Get(be64(id))
	if v == nil {
		return nil, fmt.Errorf("%w: alert %d", ErrNotFound, id)
	}
	return decode[Alert](v)
}

func putAlert(tx kv.Tx, a *Alert) error {
	v, err := encode(a)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketAlerts).Put(be64(a.ID), v)
}

// create stores a new firing alert and indexes it, unless an alert with
// its fingerprint is already open: then that one absorbs the firing (Count,
// LastFiredAt, Evidence) and created is false.
func (s *store) create(ctx context.Context, a *Alert) (stored *Alert, created bool, err error) {
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		created = false
		if v := tx.Bucket(bucketOpen).Get([]byte(a.Fingerprint)); len(v) == 8 {
			old, err := getAlert(tx, binary.BigEndian.Uint64(v))
			if err != nil {
				return err
			}
			absorb(old, a.LastFiredAt, a.Evidence)
			stored = old
			return putAlert(tx, old)
		}
		b := tx.Bucket(bucketAlerts)
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		a.ID = id
		if err := putAlert(tx, a); err != nil {
			return err
		}
		if err := tx.Bucket(bucketOpen).Put([]byte(a.Fingerprint), be64(id)); err != nil {
			return err
		}
		created, stored = true, a
		return tx.Bucket(bucketByDev).Put(devKey(a.DeviceID, id), nil)
	})
	if err != nil {
		return nil, false, fmt.Errorf("alert: store alert: %w", err)
	}
	return stored, created, nil
}

func absorb(a *Alert, at time.Time, evidence map[string]string) {
	a.Count++
	if at.After(a.LastFiredAt) {
		a.LastFiredAt = at
	}
	if evidence != nil {
		a.Evidence = evidence
	}
}

// update applies f to alert id and stores it; when the alert is no longer
// open afterwards it leaves the open index.
func (s *store) update(ctx context.Context, id uint64, f func(a *Alert) error) (*Alert, error) {
	var out *Alert
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		a, err := getAlert(tx, id)
		if err != nil {
			return err
		}
		if err := f(a); err != nil {
			return err
		}
		if !a.State.Open() {
			open := tx.Bucket(bucketOpen)
			if v := open.Get([]byte(a.Fingerprint)); len(v) == 8 && binary.BigEndian.Uint64(v) == id {
				if err := open.Delete([]byte(a.Fingerprint)); err != nil {
					return err
				}
			}
		}
		out = a
		return putAlert(tx, a)
	})
	return out, err
}

func (s *store) alert(ctx context.Context, id uint64) (*Alert, error) {
	var a *Alert
	err := s.db.View(ctx, func(tx kv.Tx) error {
		var err error
		a, err = getAlert(tx, id)
		return err
	})
	return a, err
}

// openAlerts returns every open alert.
func (s *store) openAlerts(ctx context.Context) ([]Alert, error) {
	var out []Alert
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil
		return tx.Bucket(bucketOpen).ForEach(func(_, v []byte) error {
			if len(v) != 8 {
				return errors.New("alert: corrupt open index")
			}
			a, err := getAlert(tx, binary.BigEndian.Uint64(v))
			if err != nil {
				return err
			}
			out = append(out, *a)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Alert) int { return cmpDesc(a.ID, b.ID) })
	return out, err
}

func cmpDesc(a, b uint64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// query pages alerts newest first.
func (s *store) query(ctx context.Context, q Query) ([]Alert, uint64, error) {
	before := q.Before
	if before == 0 {
		before = math.MaxUint64
	}
	match := q.matches
	var out []Alert
	if q.Open && q.DeviceID == "" {
		all, err := s.openAlerts(ctx)
		if err != nil {
			return nil, 0, err
		}
		for i := range all {
			if all[i].ID < before && match(&all[i]) {
				out = append(out, all[i])
				if len(out) == q.Limit {
					break
				}
			}
		}
	} else {
		err := s.db.View(ctx, func(tx kv.Tx) error {
			out = nil
			var prefix []byte
			c := tx.Bucket(bucketAlerts).Cursor()
			if q.DeviceID != "" {
				prefix = append([]byte(q.DeviceID), 0)
				c = tx.Bucket(bucketByDev).Cursor()
			}
			start := binary.BigEndian.AppendUint64(bytes.Clone(prefix), before)
			k, _ := c.Seek(start)
			if k == nil {
				k, _ = c.Last()
			} else {
				k, _ = c.Prev()
			}
			for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Prev() {
				a, err := getAlert(tx, binary.BigEndian.Uint64(k[len(prefix):]))
				if err != nil {
					return err
				}
				if match(a) {
					out = append(out, *a)
					if len(out) == q.Limit {
						break
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("alert: query: %w", err)
		}
	}
	var next uint64
	if len(out) == q.Limit && q.Limit > 0 {
		next = out[len(out)-1].ID
	}
	return out, next, nil
}

// matches reports whether a is selected by q's filters (not its page).
func (q *Query) matches(a *Alert) bool {
	return (!q.Open || a.State.Open()) && (q.State == "" || a.State == q.State) &&
		(q.DeviceID == "" || a.DeviceID == q.DeviceID) && (q.RuleID == "" || a.RuleID == q.RuleID) &&
		(len(q.Severities) == 0 || slices.Contains(q.Severities, a.Severity)) && (q.Kind == "" || a.Kind == q.Kind)
}

// each calls fn with every alert q's filters select (its page ignored),
// newest first, until fn returns false: from the open index for open
// alerts, else from the device's index or the whole history.
func (s *store) each(ctx context.Context, q Query, fn func(*Alert) bool) error {
	if q.Open && q.DeviceID == "" {
		all, err := s.openAlerts(ctx)
		if err != nil {
			return err
		}
		for i := range all {
			if q.matches(&all[i]) && !fn(&all[i]) {
				return nil
			}
		}
		return nil
	}
	return s.db.View(ctx, func(tx kv.Tx) error {
		var prefix []byte
		c := tx.Bucket(bucketAlerts).Cursor()
		if q.DeviceID != "" {
			prefix = append([]byte(q.DeviceID), 0)
			c = tx.Bucket(bucketByDev).Cursor()
		}
		k, _ := c.Seek(binary.BigEndian.AppendUint64(bytes.Clone(prefix), math.MaxUint64))
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Prev() {
			a, err := getAlert(tx, binary.BigEndian.Uint64(k[len(prefix):]))
			if err != nil {
				return err
			}
			if q.matches(a) && !fn(a) {
				return nil
			}
		}
		return nil
	})
}

// ackMany acknowledges the firing alerts among ids in one transaction and
// returns them as stored; others are skipped (acknowledged, resolved) or
// not found.
func (s *store) ackMany(ctx context.Context, ids []uint64, by, note string, now time.Time) (acked []Alert, skipped, missing int, err error) {
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		acked, skipped, missing = nil, 0, 0
		for _, id := range ids {
			a, err := getAlert(tx, id)
			if errors.Is(err, ErrNotFound) {
				missing++
				continue
			}
			if err != nil {
				return err
			}
			if a.State != StateFiring {
				skipped++
				continue
			}
			a.State, a.AckedBy, a.AckNote, a.AckedAt = StateAcknowledged, by, note, now
			if err := putAlert(tx, a); err != nil {
				return err
			}
			acked = append(acked, *a)
		}
		return nil
	})
	return acked, skipped, missing, err
}

// countAlerts returns how many alerts the file holds.
func (s *store) countAlerts(ctx context.Context) (int, error) {
	n := 0
	err := s.db.View(ctx, func(tx kv.Tx) error {
		n = tx.Bucket(bucketAlerts).Len()
		return nil
	})
	return n, err
}

// alertSeq returns the highest alert ID given so far: IDs are never
// given twice, so the alerts created after a count are at most the IDs
// given since.
func (s *store) alertSeq(ctx context.Context) (uint64, error) {
	var n uint64
	err := s.db.View(ctx, func(tx kv.Tx) error {
		n = tx.Bucket(bucketAlerts).Sequence()
		return nil
	})
	return n, err
}

// prune deletes the oldest resolved alerts until at most keep remain (open
// alerts are never deleted) and returns how many it deleted.
func (s *store) prune(ctx context.Context, excess int) (int, error) {
	deleted := 0
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		deleted = 0
		c := tx.Bucket(bucketAlerts).Cursor()
		bydev := tx.Bucket(bucketByDev)
		for k, v := c.First(); k != nil && deleted < excess; k, v = c.Next() {
			a, err := decode[Alert](v)
			if err != nil {
				return err
			}
			if a.State.Open() {
				continue
			}
			if err := c.Delete(); err != nil {
				return err
			}
			if err := bydev.Delete(devKey(a.DeviceID, a.ID)); err != nil {
				return err
			}
			deleted++
		}
		return nil
	})
	return deleted, err
}

// Dead letters.

// DeadLetter is a notification a route could not deliver: after its
// attempts ran out, at once for a permanent failure or a full queue, or
// when the engine stopped before delivering it (Interrupted; those are
// re-driven automatically at the next Run). Redrive sends one again.
type DeadLetter struct {
	ID           uint64       `json:"id"`
	Route        string       `json:"route"`
	Notification Notification `json:"notification"`
	Attempts     int          `json:"attempts"`
	Error        string       `json:"error"`
	Interrupted  bool         `json:"interrupted,omitempty"`
	At           time.Time    `json:"at"`
}

func (s *store) addDead(ctx context.Context, d *DeadLetter, max int) (dropped int, err error) {
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		dropped = 0
		b := tx.Bucket(bucketDead)
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		d.ID = id
		v, err := encode(d)
		if err != nil {
			return err
		}
		if err := b.Put(be64(id), v); err != nil {
			return err
		}
		over := b.Len() - max
		c := b.Cursor()
		for k, _ := c.First(); k != nil && over > 0; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
			over--
			dropped++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("alert: store dead letter: %w", err)
	}
	return dropped, nil
}

func (s *store) deadLetters(ctx context.Context, before uint64, limit int) ([]DeadLetter, uint64, error) {
	if before == 0 {
		before = math.MaxUint64
	}
	var out []DeadLetter
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil
		c := tx.Bucket(bucketDead).Cursor()
		k, _ := c.Seek(be64(before))
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && len(out) < limit; k, _ = c.Prev() {
			d, err := decode[DeadLetter](tx.Bucket(bucketDead).Get(k))
			if err != nil {
				return err
			}
			out = append(out, *d)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("alert: dead letters: %w", err)
	}
	var next uint64
	if len(out) == limit {
		next = out[len(out)-1].ID
	}
	return out, next, nil
}

func (s *store) deadLetter(ctx context.Context, id uint64) (*DeadLetter, error) {
	var d *DeadLetter
	err := s.db.View(ctx, func(tx kv.Tx) error {
		v := tx.Bucket(bucketDead).Get(be64(id))
		if v == nil {
			return fmt.Errorf("%w: dead letter %d", ErrNotFound, id)
		}
		var err error
		d, err = decode[DeadLetter](v)
		return err
	})
	return d, err
}

func (s *store) deleteDead(ctx context.Context, id uint64) error {
	return s.db.Update(ctx, func(tx kv.Tx) error { return tx.Bucket(bucketDead).Delete(be64(id)) })
}

// Learned per-device state: stateKey(device, "") -> seenRecord,
// stateKey(device, rule) -> ruleState.

func (s *store) loadStates(ctx context.Context, seen func(deviceID string, r *seenRecord), rule func(deviceID, ruleID string, rs *ruleState)) error {
	return s.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketState).ForEach(func(k, v []byte) error {
			dev, ruleID, ok := bytes.Cut(k, []byte{0})
			if !ok {
				return fmt.Errorf("state key %q", k)
			}
			if len(ruleID) == 0 {
				r, err := decode[seenRecord](v)
				if err != nil {
					return fmt.Errorf("device %q: %w", dev, err)
				}
				seen(string(dev), r)
				return nil
			}
			rs, err := decode[ruleState](v)
			if err != nil {
				return fmt.Errorf("device %q rule %q: %w", dev, ruleID, err)
			}
			rule(string(dev), string(ruleID), rs)
			return nil
		})
	})
}

// saveStates writes the given encoded states (nil deletes) in one
// transaction.
func (s *store) saveStates(ctx context.Context, states map[string][]byte) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketState)
		for k, v := range states {
			var err error
			if v == nil {
				err = b.Delete([]byte(k))
			} else {
				err = b.Put([]byte(k), v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteStates deletes everything learned about a device.
func (s *store) deleteStates(ctx context.Context, deviceID string) error {
	prefix := append([]byte(deviceID), 0)
	return s.db.Update(ctx, func(tx kv.Tx) error {
		c := tx.Bucket(bucketState).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}
