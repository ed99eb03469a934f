package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// File is the log's file name in the fleet data directory.
const File = "audit.db"

// PubFile is the audit public key's file name in the fleet data directory:
// what `sigil audit verify --key` takes.
const PubFile = "audit.pub"

// Errors of the log. Verification errors are in verify.go.
var (
	ErrClosed   = errors.New("audit: log closed")
	ErrLocked   = errors.New("audit: log file locked by another process")
	ErrNotFound = errors.New("audit: no such entry")
	ErrEmpty    = errors.New("audit: log is empty")              // nothing to checkpoint
	ErrNoSigner = errors.New("audit: no signer for checkpoints") // Config.Signer is nil
)

// Leases runs work under named leases (fleet/storage/lease: Holder):
// fn's context ends when the lease is lost.
type Leases interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
}

// LeaseCheckpoint is the lease under which Run signs the periodic
// checkpoints.
const LeaseCheckpoint = "audit_checkpoint"

// Config configures Open.
type Config struct {
	// Path of the bbolt file (File in the fleet data directory). Required;
	// it is created with mode 0600 if missing.
	Path string
	// Signer signs checkpoints: an ECDSA P-256 key (the fleet CA's key or a
	// dedicated audit key). Nil means no checkpoints: Checkpoint returns
	// ErrNoSigner and Run returns it at once; appending, export and query
	// work.
	Signer crypto.Signer
	// CheckpointInterval is how often Run signs a checkpoint when entries
	// were appended since the last one. Zero means 5 minutes.
	CheckpointInterval time.Duration
	// Leases runs the periodic checkpoints under the lease
	// LeaseCheckpoint, so that replicas sharing the database sign one
	// checkpoint per interval between them (fleet/storage/lease: Holder).
	// Nil: Run signs them itself, as one process does.
	Leases Leases
	// Now stamps entries and checkpoints. Nil means time.Now.
	Now func() time.Time
	// Rand is passed to Signer.Sign. Nil means crypto/rand.
	Rand io.Reader
	// Logger receives checkpoint events and failures (never entry
	// contents). Nil discards them.
	Logger *slog.Logger
	// NoSync skips fsync on commit: faster, and a power loss may lose
	// entries that were acknowledged. For tests only.
	NoSync bool
}

// Log is the append-only, hash-chained audit log in a bbolt file (Open)
// or in PostgreSQL (OpenPostgres; the same records, so the chain and its
// checkpoints verify alike). Its
// methods are safe for concurrent use.
//
// Appends are group-committed: concurrent Append and Record calls queue
// their entries; one of the callers (the leader) writes every queued entry
// in one bbolt transaction, so they share one fsync, and wakes the others
// when it is durable. While it writes, new entries queue for the next
// transaction. No background goroutine is involved: a Log appends without
// Run; Run only signs checkpoints.
//
// Layout: bucket "entries" maps the 8-byte big-endian sequence number to
// the entry as JSON (the object Export writes); bucket "checkpoints" maps
// the sequence number a checkpoint covers to the checkpoint as JSON;
// buckets "by_actor" (kind NUL id NUL seq) and "by_target" (target NUL seq)
// index entries for List; bucket "meta" holds the schema version.
type Log struct {
	db       kv.DB
	signer   crypto.Signer
	pub      *ecdsa.PublicKey // signer's, nil without a signer
	keyID    string
	interval time.Duration
	leases   Leases // Config.Leases
	now      func() time.Time
	rand     io.Reader
	log      *slog.Logger

	mu         sync.Mutex
	idle       *sync.Cond // signalled when committing becomes false
	queue      []*pending
	committing bool     // a leader is designated or writing
	leader     *pending // designated but not yet writing
	closed     bool
	seq        uint64    // last committed entry
	head       Hash      // its hash
	last       time.Time // its time
	commits    int       // transactions written (for tests and benchmarks)

	cpMu   sync.Mutex // serializes Checkpoint
	lastCP Checkpoint // guarded by mu; zero when none
}

var (
	bucketEntries     = []byte("entries")
	bucketCheckpoints = []byte("checkpoints")
	bucketByActor     = []byte("by_actor")
	bucketByTarget    = []byte("by_target")
	bucketMeta        = []byte("meta")
)

const (
	schemaVersion   = 1
	maxBatch        = 1024 // entries per transaction
	defaultInterval = 5 * time.Minute
)

// pending is a queued entry. Its channel receives at most one message at a
// time: either a request to lead the next transaction (while it is queued)
// or its outcome (once a leader has taken it).
type pending struct {
	e     Entry
	res   chan result
	taken bool // guarded by Log.mu: in a transaction being written
}

type result struct {
	e    Entry
	err  error
	lead bool
}

// Open opens or creates the log at cfg.Path and continues its chain.
func Open(cfg Config) (*Log, error) {
	if cfg.Path == "" {
		return nil, errors.New("audit: open: no path")
	}
	l, err := newLog(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Schema{
		Buckets:     append([][]byte{bucketMeta}, Buckets...),
		Version:     schemaVersion,
		ByteVersion: true,
	}, boltdb.Options{Name: "audit", NoSync: cfg.NoSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	return l.start(kv.Bolt(db))
}

// migrations are the log's tables in PostgreSQL (component "audit" in
// schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// Table is the PostgreSQL table holding the log's buckets (kv.Postgres).
const Table = "audit_kv"

// Buckets are the buckets of the log, in its bbolt file and in
// PostgreSQL: what sigil migrate copies (the bbolt file's "meta" holds
// its format version).
var Buckets = [][]byte{bucketEntries, bucketCheckpoints, bucketByActor, bucketByTarget}

// OpenPostgres opens the log in the PostgreSQL database db, bringing its
// tables up to date first (cfg.Path and NoSync are unused). Logs of
// several replicas on one database append to one chain: appends are
// serialized by the log's lock and continue from the head they read in
// their transaction. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Log, error) {
	l, err := newLog(cfg)
	if err != nil {
		return nil, err
	}
	k, err := kv.PostgresMigrated(ctx, db, "audit", migrations, Table, kv.Options{Serialized: true})
	if err != nil {
		return nil, err
	}
	return l.start(k)
}

// newLog checks cfg and applies its defaults.
func newLog(cfg Config) (*Log, error) {
	l := &Log{signer: cfg.Signer, interval: cfg.CheckpointInterval, leases: cfg.Leases, now: cfg.Now, rand: cfg.Rand, log: cfg.Logger}
	if l.interval <= 0 {
		l.interval = defaultInterval
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.rand == nil {
		l.rand = cryptorand.Reader
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.idle = sync.NewCond(&l.mu)
	if l.signer != nil {
		pub, ok := l.signer.Public().(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			return nil, fmt.Errorf("audit: open: signer key is %T, want ECDSA P-256", l.signer.Public())
		}
		id, err := KeyID(pub)
		if err != nil {
			return nil, fmt.Errorf("audit: open: %w", err)
		}
		l.pub, l.keyID = pub, id
	}
	return l, nil
}

// start reads the head of the chain from db and keeps db.
func (l *Log) start(db kv.DB) (*Log, error) {
	if err := db.View(context.Background(), l.load); err != nil {
		db.Close()
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	l.db = db
	if l.lastCP.Seq > l.seq {
		// Someone removed signed entries from the end of the file. Keep
		// going so that the fleet can still record and the evidence can be
		// exported; VerifyStore and Verify report it.
		l.log.Error("audit log ends before its last checkpoint: entries were removed", "last_entry", l.seq, "checkpoint", l.lastCP.Seq)
	}
	return l, nil
}

// load reads the head of the chain and the last checkpoint.
func (l *Log) load(tx kv.Tx) error {
	if k, v := tx.Bucket(bucketEntries).Cursor().Last(); k != nil {
		e, err := decodeStored(k, v)
		if err != nil {
			return err
		}
		l.seq, l.head, l.last = e.Seq, e.Hash, e.Time
	}
	if k, v := tx.Bucket(bucketCheckpoints).Cursor().Last(); k != nil {
		var cp Checkpoint
		if err := json.Unmarshal(v, &cp); err != nil {
			return fmt.Errorf("checkpoint %d: %w", binary.BigEndian.Uint64(k), err)
		}
		l.lastCP = cp
	}
	return nil
}

// Close waits for appends in progress, then closes the file. Appends after
// Close fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	l.closed = true
	for l.committing {
		l.idle.Wait()
	}
	l.mu.Unlock()
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("audit: close: %w", err)
	}
	return nil
}

// Record appends e (Recorder).
func (l *Log) Record(ctx context.Context, e Entry) error {
	_, err := l.Append(ctx, e)
	return err
}

// Append validates e, appends it to the chain and returns it as stored,
// with Seq, Time, Prev and Hash set. It returns once the entry is durable
// (fsynced, unless Config.NoSync). If ctx ends while the entry is still
// queued, it is not recorded and Append returns ctx's error; once the
// entry's transaction has started, Append waits for its outcome.
func (l *Log) Append(ctx context.Context, e Entry) (Entry, error) {
	if err := e.validate(); err != nil {
		return Entry{}, fmt.Errorf("audit: record %s: %w", clip(e.Action, MaxAction), err)
	}
	if err := ctx.Err(); err != nil {
		return Entry{}, fmt.Errorf("audit: record %s: %w", e.Action, err)
	}
	e.Seq, e.Time, e.Prev, e.Hash = 0, time.Time{}, Hash{}, Hash{}
	if len(e.Details) > 0 {
		e.Details = maps.Clone(e.Details)
	} else {
		e.Details = nil
	}
	p := &pending{e: e, res: make(chan result, 1)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Entry{}, ErrClosed
	}
	l.queue = append(l.queue, p)
	if !l.committing {
		l.committing, l.leader = true, p
		p.res <- result{lead: true}
	}
	l.mu.Unlock()

	for {
		var r result
		select {
		case r = <-p.res:
		case <-ctx.Done():
			l.mu.Lock()
			if !p.taken && l.leader != p {
				l.queue = slices.DeleteFunc(l.queue, func(q *pending) bool { return q == p })
				l.mu.Unlock()
				return Entry{}, fmt.Errorf("audit: record %s: %w", e.Action, ctx.Err())
			}
			l.mu.Unlock()
			r = <-p.res
		}
		if !r.lead {
			return r.e, r.err
		}
		l.lead() // p is in this transaction; its outcome is in p.res next
	}
}

// lead writes one transaction of queued entries, delivers the outcomes and
// passes the lead to the first entry still queued.
func (l *Log) lead() {
	l.mu.Lock()
	n := min(len(l.queue), maxBatch)
	batch := slices.Clone(l.queue[:n])
	l.queue = slices.Delete(l.queue, 0, n)
	for _, p := range batch {
		p.taken = true
	}
	l.leader = nil
	seq, head, last := l.seq, l.head, l.last
	l.mu.Unlock()

	stored, err := l.commit(batch, seq, head, last)
	if err != nil {
		err = fmt.Errorf("audit: record: %w", err)
	}

	l.mu.Lock()
	if err == nil {
		end := stored[len(stored)-1]
		l.seq, l.head, l.last = end.Seq, end.Hash, end.Time
	}
	l.commits++
	for i, p := range batch {
		if err != nil {
			p.res <- result{err: err}
		} else {
			p.res <- result{e: stored[i]}
		}
	}
	if len(l.queue) > 0 {
		l.leader = l.queue[0]
		l.leader.res <- result{lead: true}
	} else {
		l.committing = false
		l.idle.Broadcast()
	}
	l.mu.Unlock()
}

// commit writes batch after the entry (seq, head, last) in one
// transaction and returns the stored entries.
func (l *Log) commit(batch []*pending, seq uint64, head Hash, last time.Time) ([]Entry, error) {
	out := make([]Entry, len(batch))
	// The transaction finishes once started, whatever the callers' contexts.
	err := l.db.Update(context.Background(), func(tx kv.Tx) error {
		// Appends are serialized across the processes sharing a database
		// (bbolt: one writer already).
		if err := tx.Lock("chain"); err != nil {
			return err
		}
		seq, head, last := seq, head, last
		entries, byActor, byTarget := tx.Bucket(bucketEntries), tx.Bucket(bucketByActor), tx.Bucket(bucketByTarget)
		// Another replica sharing the database may have appended since
		// this one last did: continue from the head stored.
		if k, v := entries.Cursor().Last(); k != nil && binary.BigEndian.Uint64(k) != seq {
			e, err := decodeStored(k, v)
			if err != nil {
				return err
			}
			seq, head, last = e.Seq, e.Hash, e.Time
		}
		now := l.now().Round(0).UTC()
		if now.Before(last) {
			now = last // a clock stepping back does not reorder the log
		}
		if !validTime(now) {
			return fmt.Errorf("clock reads %v, outside 1970-2261", now)
		}
		for i, p := range batch {
			e := p.e
			seq++
			e.Seq, e.Time, e.Prev = seq, now, head
			e.Hash = e.ComputeHash()
			head = e.Hash
			data, err := json.Marshal(&e)
			if err != nil {
				return err
			}
			if err := entries.Put(seqKey(seq), data); err != nil {
				return err
			}
			if err := byActor.Put(actorKey(e.Actor, seq), nil); err != nil {
				return err
			}
			if e.Target != "" {
				if err := byTarget.Put(targetKey(e.Target, seq), nil); err != nil {
					return err
				}
			}
			out[i] = e
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// actorKey is kind NUL id NUL seq: IDs hold no control characters, so a
// prefix names one actor exactly.
func actorKey(a Actor, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(actorPrefix(a.Kind, a.ID), seq)
}

func actorPrefix(kind ActorKind, id string) []byte {
	b := make([]byte, 0, len(kind)+len(id)+2+8)
	b = append(b, kind...)
	b = append(b, 0)
	b = append(b, id...)
	return append(b, 0)
}

func targetKey(target string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(targetPrefix(target), seq)
}

func targetPrefix(target string) []byte {
	b := make([]byte, 0, len(target)+1+8)
	b = append(b, target...)
	return append(b, 0)
}

// decodeStored decodes the entry stored under key k.
func decodeStored(k, v []byte) (Entry, error) {
	var e Entry
	if len(k) != 8 {
		return e, fmt.Errorf("entry key %x is not a sequence number", k)
	}
	if err := json.Unmarshal(v, &e); err != nil {
		return e, fmt.Errorf("entry %d: %w", binary.BigEndian.Uint64(k), err)
	}
	return e, nil
}

// Head returns the sequence number and hash of the last entry (0 and the
// zero hash when the log is empty).
func (l *Log) Head() (uint64, Hash) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.head
}

// storedHead returns the sequence number of the last entry stored: past
// Head when replicas sharing the database appended since this one did.
func (l *Log) storedHead(ctx context.Context) (uint64, error) {
	seq, _ := l.Head()
	err := l.db.View(ctx, func(tx kv.Tx) error {
		if k, _ := tx.Bucket(bucketEntries).Cursor().Last(); len(k) == 8 {
			seq = max(seq, binary.BigEndian.Uint64(k))
		}
		return nil
	})
	return seq, err
}

// Get returns entry seq.
func (l *Log) Get(ctx context.Context, seq uint64) (Entry, error) {
	var e Entry
	err := l.db.View(ctx, func(tx kv.Tx) error {
		v := tx.Bucket(bucketEntries).Get(seqKey(seq))
		if v == nil {
			return fmt.Errorf("%w: %d", ErrNotFound, seq)
		}
		var err error
		e, err = decodeStored(seqKey(seq), v)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("audit: get: %w", err)
	}
	return e, err
}

// KeyID returns the ID of a checkpoint key: SHA-256 of its PKIX
// (SubjectPublicKeyInfo) DER encoding, in lowercase hex, as
//
//	openssl pkey -pubin -in key.pem -outform DER | sha256sum
//
// prints it.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("audit: key ID: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}
