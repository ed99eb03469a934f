package campaign

import (
	"bytes"
	"context"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Store keeps campaigns in a bbolt file (Open) or in PostgreSQL
// (OpenPostgres) so that a restarted fleet resumes them where they were.
//
// Layout: bucket "campaigns" holds one bucket per campaign ID with the keys
// "def" (the Definition as created, never changed), "meta" (creation and
// the wave plan, never changed) and "head" (state, cursor and counts), and
// the buckets "devices" (device ID → record), "order" (4-byte big-endian
// position → device ID, the order the devices are announced in), "waves"
// (4-byte wave index → counts), "deadlines" (8-byte big-endian Unix
// nanoseconds + device ID, for the devices announced and not finished) and
// "retry" (the same keys, for devices waiting to be announced again).
// Bucket "active" holds the IDs of the campaigns the engine must visit.
// An engine step and a batch of reports each read and write only the
// records they touch, in one transaction. In PostgreSQL the buckets are
// kept in table Table (fleet/storage/kv: a nested bucket's rows under its
// path).
type Store struct {
	db kv.DB
	// shared: replicas share the store (PostgreSQL), so its transactions
	// decide on the database's clock (kv.Now), not each replica's.
	shared bool
}

// File is the store's file in the fleet's data directory.
const File = "campaigns.db"

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "campaign_kv"

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("campaign: store is in use by another process")

var (
	bucketCampaigns = []byte("campaigns")
	bucketActive    = []byte("active")
	bucketDevices   = []byte("devices")
	bucketOrder     = []byte("order")
	bucketWaves     = []byte("waves")
	bucketDeadlines = []byte("deadlines")
	bucketRetry     = []byte("retry")
	keyDef          = []byte("def")
	keyMeta         = []byte("meta")
	keyHead         = []byte("head")
)

// Buckets are the store's buckets (with those nested in them), in the
// bbolt file and in PostgreSQL: what sigil migrate copies.
var Buckets = [][]byte{bucketCampaigns, bucketActive}

// migrations are the store's tables in PostgreSQL (component "campaign"
// in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// Open opens or creates the store file at path.
func Open(path string) (*Store, error) {
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: Buckets},
		boltdb.Options{Name: "campaign", Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	return &Store{db: kv.Bolt(db)}, nil
}

// OpenPostgres opens the store in the PostgreSQL database db, bringing
// its tables up to date first. Its writes run one at a time across the
// replicas sharing db, each once (kv.Options.Serialized), as they do in
// the bbolt file: an engine step on two replicas at once announces each
// device once, and a report is counted once. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB) (*Store, error) {
	k, err := kv.PostgresMigrated(ctx, db, "campaign", migrations, Table, kv.Options{Serialized: true})
	if err != nil {
		return nil, err
	}
	return &Store{db: k, shared: true}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// meta is what a campaign records at creation besides its definition.
type meta struct {
	Created       time.Time `json:"created"`
	CreatedBy     string    `json:"created_by"`
	Justification string    `json:"justification,omitempty"`
	Sizes         []int     `json:"sizes"` // the waves' sizes
}

// header is a campaign's changing state.
type header struct {
	State   State     `json:"state"`
	Total   int       `json:"total"`
	Wave    int       `json:"wave"`    // index of the newest open wave
	Settled int       `json:"settled"` // every wave before it has finished
	Next    int       `json:"next"`    // position of the next device never announced
	Counts  Counts    `json:"counts"`
	StartAt time.Time `json:"start_at,omitzero"`
	Started time.Time `json:"started,omitzero"`
	// Finished is when the campaign completed or was aborted.
	Finished  time.Time `json:"finished,omitzero"`
	Changed   time.Time `json:"changed,omitzero"`
	ChangedBy string    `json:"changed_by,omitempty"`
	Why       string    `json:"why,omitempty"`
	// Fetched sums the devices' claimed bytes fetched.
	Fetched int64 `json:"fb,omitempty"`
}

// active reports whether the engine must visit the campaign: to start
// it, announce, or time out devices still in flight.
func (h *header) active() bool {
	switch h.State {
	case StateScheduled, StateRunning, StatePaused:
		return true
	case StateAborted:
		return h.Counts.InFlight() > 0
	}
	return false
}

// waveRec is a wave's stored progress.
type waveRec struct {
	Counts  Counts    `json:"counts"`
	Opened  time.Time `json:"opened,omitzero"`
	Tripped bool      `json:"tripped,omitempty"`
}

// devRec is a device's stored progress in a campaign.
type devRec struct {
	Pos         int         `json:"p"`
	Wave        int         `json:"w"`
	Step        Step        `json:"s"`
	Reason      wire.Reason `json:"r,omitempty"`
	Attempts    int         `json:"a,omitempty"`
	Announced   time.Time   `json:"an,omitzero"`
	Deadline    int64       `json:"dl,omitempty"` // deadlines key while in flight
	Retry       int64       `json:"rt,omitempty"` // retry key while InRetry
	InRetry     bool        `json:"ir,omitempty"`
	Unreachable time.Time   `json:"un,omitzero"` // first failed announcement in a row
	Updated     time.Time   `json:"up,omitzero"`
	Reported    time.Time   `json:"rp,omitzero"`
	Version     string      `json:"v,omitempty"`
	Late        bool        `json:"late,omitempty"`
	Fetched     int64       `json:"fb,omitempty"` // the device's claim
}

func posKey(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }

func timeKey(t int64, id string) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(id)), uint64(t))
	return append(k, id...)
}

func putJSON(b kv.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func getJSON(b kv.Bucket, k []byte, v any) (bool, error) {
	data := b.Get(k)
	if data == nil {
		return false, nil
	}
	return true, json.Unmarshal(data, v)
}

// txc is one campaign inside one write transaction: it caches the header
// and the waves it touched and writes them back in flush.
type txc struct {
	id                                      string
	c                                       *plan
	h                                       *header
	b, devs, order, waves, deadlines, retry kv.Bucket
	wv                                      map[int]*waveRec
	events                                  []event
	orig                                    header    // as read
	now                                     time.Time // the time change's fn decides with (Store.clock)
}

// errUnchanged rolls back a transaction that changed nothing, so that an
// idle engine step does not write.
var errUnchanged = errors.New("campaign: nothing changed")

// changed reports whether the header changed since it was read. Every
// change to a device or a wave changes the header's counts, cursor or
// state.
func (t *txc) changed() bool {
	a, b := *t.h, t.orig
	return a.State != b.State || a.Wave != b.Wave || a.Settled != b.Settled || a.Next != b.Next ||
		a.Counts != b.Counts || !a.Changed.Equal(b.Changed) || !a.Finished.Equal(b.Finished)
}

// campaignBucket returns campaign id's bucket in tx, nil when there is
// no such campaign (in PostgreSQL a nested bucket always exists: a
// campaign's has its head).
func campaignBucket(tx kv.Tx, id string) kv.Bucket {
	b := tx.Bucket(bucketCampaigns).Bucket([]byte(id))
	if b == nil || b.Get(keyHead) == nil {
		return nil
	}
	return b
}

// openTx loads a campaign in tx (writable or not).
func (m *Manager) openTx(tx kv.Tx, id string) (*txc, error) {
	b := campaignBucket(tx, id)
	if b == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, clip(id))
	}
	p, err := m.plan(id, b)
	if err != nil {
		return nil, err
	}
	h := &header{}
	if _, err := getJSON(b, keyHead, h); err != nil {
		return nil, fmt.Errorf("campaign: %s: reading state: %w", id, err)
	}
	if h.Wave < 0 || h.Wave >= len(p.sizes) || h.Settled < 0 || h.Settled > len(p.sizes) || h.Next < 0 || h.Next > h.Total {
		return nil, fmt.Errorf("campaign: %s: stored state does not fit its %d waves", id, len(p.sizes))
	}
	t := &txc{id: id, c: p, h: h, b: b, wv: map[int]*waveRec{}, orig: *h}
	t.devs, t.order, t.waves = b.Bucket(bucketDevices), b.Bucket(bucketOrder), b.Bucket(bucketWaves)
	t.deadlines, t.retry = b.Bucket(bucketDeadlines), b.Bucket(bucketRetry)
	if t.devs == nil || t.order == nil || t.waves == nil || t.deadlines == nil || t.retry == nil {
		return nil, fmt.Errorf("campaign: %s: store is missing a bucket", id)
	}
	return t, nil
}

func (t *txc) wave(i int) (*waveRec, error) {
	if w, ok := t.wv[i]; ok {
		return w, nil
	}
	w := &waveRec{}
	if _, err := getJSON(t.waves, posKey(i), w); err != nil {
		return nil, fmt.Errorf("campaign: %s: reading wave %d: %w", t.id, i+1, err)
	}
	t.wv[i] = w
	return w, nil
}

func (t *txc) dev(id string) (*devRec, error) {
	d := &devRec{}
	ok, err := getJSON(t.devs, []byte(id), d)
	if err != nil {
		return nil, fmt.Errorf("campaign: %s: reading device %s: %w", t.id, id, err)
	}
	if !ok {
		return nil, nil
	}
	return d, nil
}

func (t *txc) putDev(id string, d *devRec) error { return putJSON(t.devs, []byte(id), d) }

// move changes a device's step and keeps the campaign's and its wave's
// counts.
func (t *txc) move(d *devRec, to Step) error {
	w, err := t.wave(d.Wave)
	if err != nil {
		return err
	}
	t.h.Counts.add(d.Step, -1)
	w.Counts.add(d.Step, -1)
	t.h.Counts.add(to, 1)
	w.Counts.add(to, 1)
	d.Step = to
	return nil
}

// finished reports whether every device of wave i has finished.
func (t *txc) finished(i int) (bool, error) {
	w, err := t.wave(i)
	if err != nil {
		return false, err
	}
	return w.Counts.Finished() == t.c.sizes[i], nil
}

// flush writes the header and the touched waves, and keeps the active set.
func (t *txc) flush(tx kv.Tx) error {
	for i, w := range t.wv {
		if err := putJSON(t.waves, posKey(i), w); err != nil {
			return err
		}
	}
	if err := putJSON(t.b, keyHead, t.h); err != nil {
		return err
	}
	active := tx.Bucket(bucketActive)
	if t.h.active() {
		return active.Put([]byte(t.id), nil)
	}
	return active.Delete([]byte(t.id))
}

// due returns up to limit keys of b whose time is at or before now, in
// order, copied.
func due(b kv.Bucket, now time.Time, limit int) [][]byte {
	var out [][]byte
	end := timeKey(now.UnixNano(), "\xff")
	c := b.Cursor()
	for k, _ := c.First(); k != nil && len(out) < limit && bytes.Compare(k, end) <= 0; k, _ = c.Next() {
		out = append(out, bytes.Clone(k))
	}
	return out
}
