// Package migrate copies a data directory's bbolt stores into PostgreSQL
// and verifies the copy (`sigil migrate`): the same records (counts and a
// digest of the contents) and an audit chain that still verifies.
package migrate

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/fleet/workload"
)

// Errors of Run. Compare with errors.Is.
var (
	// ErrNotEmpty: a store already holds records in the database.
	ErrNotEmpty = errors.New("migrate: the database already holds records of this store (--force replaces them)")
	// ErrMismatch: what the database holds after the copy differs from
	// the file.
	ErrMismatch = errors.New("migrate: the copy differs from the file")
)

// Options configures Run.
type Options struct {
	// Force replaces what the database holds: each store's records there
	// are deleted before the copy. Without it a store that holds any is
	// refused (ErrNotEmpty) before anything is copied.
	Force bool
	// Logger receives each store's progress (nil: discard).
	Logger *slog.Logger
}

// Store says what Run did with one store.
type Store struct {
	Name    string         // "inventory", "audit", "operators", "approvals", "campaigns", …
	File    string         // in the data directory
	Absent  bool           // no such file: nothing to copy
	Records map[string]int // copied, by bucket (the inventory: by kind)
}

// kvStore is a store kept in kv buckets: its file, what its bbolt Open
// writes, and its PostgreSQL backend.
type kvStore struct {
	name, file string
	buckets    [][]byte // nil: every bucket of the file
	// create makes a new file at path with the store's own Open (the
	// schema version this build writes, compared with the file's).
	create func(path string) error
	// open opens the store in the database (migrating its tables) and
	// returns its buckets there.
	open func(ctx context.Context, db *postgres.DB) (kv.DB, error)
	// records names what was copied, from the keys copied per bucket
	// (nil: the buckets' names).
	records func(keys map[string]int) map[string]int
}

// created returns a kvStore.create that opens the store's file at path
// with openFile (which creates it) and closes it.
func created[S interface{ Close() error }](openFile func(path string) (S, error)) func(path string) error {
	return func(path string) error {
		st, err := openFile(path)
		if err == nil {
			err = st.Close()
		}
		return err
	}
}

// opened returns a kvStore.open that opens the store with openStore
// (which migrates its tables), closes it, and returns its buckets in
// table.
func opened[S interface{ Close() error }](openStore func(context.Context, *postgres.DB) (S, error), table string, o ...kv.Options) func(context.Context, *postgres.DB) (kv.DB, error) {
	return func(ctx context.Context, db *postgres.DB) (kv.DB, error) {
		st, err := openStore(ctx, db)
		if err != nil {
			return nil, err
		}
		st.Close()
		return kv.Postgres(db, table, o...)
	}
}

func kvStores() []kvStore {
	return []kvStore{
		{name: "audit", file: audit.File, buckets: audit.Buckets,
			create: created(func(path string) (*audit.Log, error) { return audit.Open(audit.Config{Path: path}) }),
			open: opened(func(ctx context.Context, db *postgres.DB) (*audit.Log, error) {
				return audit.OpenPostgres(ctx, db, audit.Config{})
			}, audit.Table)},
		{name: "operators", file: auth.File, buckets: auth.Buckets,
			create: created(func(path string) (*auth.Service, error) { return auth.Open(auth.Config{Path: path}) }),
			open: opened(func(ctx context.Context, db *postgres.DB) (*auth.Service, error) {
				return auth.OpenPostgres(ctx, db, auth.Config{})
			}, auth.Table)},
		{name: "attestations", file: attest.HistoryFile, buckets: nil, // a bucket per device, and the summaries: every one
			create: created(func(path string) (*attest.History, error) { return attest.OpenHistory(path, 0) }),
			open: opened(func(ctx context.Context, db *postgres.DB) (*attest.History, error) {
				return attest.OpenHistoryPostgres(ctx, db, 0)
			}, attest.HistoryTable),
			records: func(keys map[string]int) map[string]int { // a bucket per device, and the devices' summaries
				out := map[string]int{"devices": 0}
				for name, n := range keys {
					if name == attest.SummariesBucket {
						out["summaries"] = n
						continue
					}
					out["devices"]++
					out["records"] += n
				}
				return out
			}},
		{name: "approvals", file: approval.File, buckets: approval.Buckets,
			create: created(func(path string) (*approval.Manager, error) { return approval.Open(approval.Config{Path: path}) }),
			open: opened(func(ctx context.Context, db *postgres.DB) (*approval.Manager, error) {
				return approval.OpenPostgres(ctx, db, approval.Config{})
			}, approval.Table, kv.Options{Serialized: true})},
		{name: "access", file: access.File, buckets: access.Buckets,
			create: access.CreateFile,
			open:   access.OpenPostgres},
		{name: "campaigns", file: campaign.File, buckets: campaign.Buckets, // a bucket per campaign in "campaigns"
			create: created(campaign.Open),
			open:   opened(campaign.OpenPostgres, campaign.Table, kv.Options{Serialized: true})},
		{name: "telemetry", file: telemetry.File, buckets: telemetry.Buckets,
			create: created(telemetry.OpenCursors),
			open:   opened(telemetry.OpenCursorsPostgres, telemetry.Table)},
		{name: "alerts", file: alert.File, buckets: alert.Buckets,
			create: func(path string) error {
				e, err := alert.Open(alert.Config{Path: path})
				if err == nil {
					err = e.Close()
				}
				return err
			},
			open: func(ctx context.Context, db *postgres.DB) (kv.DB, error) {
				e, err := alert.OpenPostgres(ctx, db, alert.Config{})
				if err != nil {
					return nil, err
				}
				e.Close()
				return kv.Postgres(db, alert.Table)
			}},
		{name: "governance", file: governance.File, buckets: governance.Buckets,
			create: created(func(path string) (*governance.Service, error) {
				return governance.Open(governance.Config{Path: path, Devices: noDevices{}})
			}),
			open: opened(func(ctx context.Context, db *postgres.DB) (*governance.Service, error) {
				return governance.OpenPostgres(ctx, db, governance.Config{Devices: noDevices{}})
			}, governance.Table, kv.Options{Serialized: true})},
		{name: "rotations", file: rotation.JobsFile, buckets: rotation.JobsBuckets, // a job's devices and queue nested
			create: created(rotation.OpenJobs),
			open:   opened(rotation.OpenJobsPostgres, rotation.JobsTable, kv.Options{Serialized: true}),
			records: func(keys map[string]int) map[string]int {
				return map[string]int{"jobs": keys["jobs"], "devices": keys["devices"]}
			}},
		{name: "secrets", file: secrets.DBFile, buckets: secrets.Buckets, // a bucket per name, nested
			create: created(func(path string) (*secrets.Store, error) {
				return secrets.Open(secrets.Config{Dir: filepath.Dir(path)})
			}),
			open: secrets.PostgresBuckets,
			records: func(keys map[string]int) map[string]int {
				return map[string]int{"names": keys["versions"], "versions": keys["secrets"], "schedules": keys["rotation"]}
			}},
		{name: "deliveries", file: secrets.DeliveriesFile, buckets: nil, // a bucket per secret: every one
			create: created(secrets.OpenDeliveries),
			open:   opened(secrets.OpenDeliveriesPostgres, secrets.DeliveriesTable),
			records: func(keys map[string]int) map[string]int {
				out := map[string]int{"secrets": len(keys), "deliveries": 0}
				for _, n := range keys {
					out["deliveries"] += n
				}
				return out
			}},
		{name: "firmware", file: filepath.Join(firmware.DataDir, firmware.DBFile), buckets: firmware.Buckets,
			create: func(path string) error {
				// The records' file needs no trust set; Open wants one.
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					return err
				}
				trust, err := verify.NewTrustSet(1, 1, &k.PublicKey)
				if err != nil {
					return err
				}
				s, err := firmware.Open(firmware.Config{Dir: filepath.Dir(path), Trust: trust})
				if err == nil {
					err = s.Close()
				}
				return err
			},
			open: firmware.PostgresBuckets,
			records: func(keys map[string]int) map[string]int {
				return map[string]int{"releases": keys["releases"]}
			}},
		{name: "exposure", file: filepath.Join(firmware.DataDir, exposure.File), buckets: exposure.Buckets(), // beside the release records
			create: func(path string) error {
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					return err
				}
				db, err := boltdb.Open(path, boltdb.Schema{Buckets: exposure.Buckets()}, boltdb.Options{Name: "exposure"})
				if err == nil {
					err = db.Close()
				}
				return err
			},
			open: firmware.PostgresBuckets,
			records: func(keys map[string]int) map[string]int {
				return map[string]int{"sboms": keys["exposure_components"], "advisories": keys["exposure_advisories"], "devices": keys["exposure_devices"]}
			}},
		{name: "bridges", file: bridge.File, buckets: bridge.Buckets,
			create: func(path string) error {
				s, err := bridge.Open(bridge.Config{Path: path, CA: noIssuer{}})
				if err == nil {
					err = s.Close()
				}
				return err
			},
			open: func(ctx context.Context, db *postgres.DB) (kv.DB, error) {
				if _, err := bridge.OpenPostgres(ctx, db, bridge.Config{CA: noIssuer{}}); err != nil {
					return nil, err
				}
				return kv.Postgres(db, bridge.Table)
			}},
		{name: "workloads", file: workload.File, buckets: workload.Buckets, // signing keys stay sealed under secrets.key
			create: created(func(path string) (*workload.Store, error) { return workload.Open(path, make([]byte, 32)) }), // the key seals nothing here
			open: opened(func(ctx context.Context, db *postgres.DB) (*workload.Store, error) {
				return workload.OpenPostgres(ctx, db, make([]byte, 32))
			}, workload.Table),
			records: func(keys map[string]int) map[string]int {
				return map[string]int{"registrations": keys["registrations"], "signing keys": keys["jwt_keys"]}
			}},
	}
}

// noIssuer issues nothing: the bridge store is opened only to create or
// migrate it.
type noIssuer struct{}

func (noIssuer) IssueBridge(string, crypto.PublicKey, time.Duration) (*x509.Certificate, error) {
	return nil, errors.New("migrate: no CA")
}

// noDevices is an empty inventory, for opening the governance store
// (governance.Config.Devices) only to create or migrate it.
type noDevices struct{}

func (noDevices) Device(context.Context, string) (*inventory.Device, error) {
	return nil, inventory.ErrNotFound
}

func (noDevices) ListDevices(context.Context, inventory.Filter) ([]inventory.Device, string, error) {
	return nil, "", nil
}

func (noDevices) Update(context.Context, string, func(*inventory.Device) error) error {
	return inventory.ErrNotFound
}

// Run copies the stores of the data directory dataDir that have a
// PostgreSQL backend (the inventory, the audit log, operators, the
// attestation history, policies, approvals, campaigns, telemetry
// cursors, alerts, governance, rotation jobs, secrets and their
// deliveries, firmware release records) into the database at url, as
// `sigil migrate` does (firmware images stay files: copy the data
// directory's firmware/images where the replicas share them). The fleet
// must be stopped: a file a running fleet holds fails with its store's
// ErrLocked. Each store's tables are created or migrated first; a store
// whose tables already hold records is refused unless o.Force. Each copy
// is verified: the same records in the database as in the file (counts
// and a digest of the contents); then the audit chain is verified in the
// database, with its signed checkpoints against dataDir's audit.pub.
// The files are left as they were.
func Run(ctx context.Context, dataDir, url string, o Options) ([]Store, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := postgres.Open(ctx, url, postgres.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer db.Close()

	// Open every source and target first, and check the targets, so that
	// a refusal copies nothing.
	type plan struct {
		st       kvStore
		src, dst kv.DB
	}
	var plans []plan
	defer func() {
		for _, p := range plans {
			p.src.Close()
		}
	}()
	var out []Store
	for _, st := range kvStores() {
		path := filepath.Join(dataDir, st.file)
		src, err := openSource(path, st)
		if errors.Is(err, fs.ErrNotExist) {
			out = append(out, Store{Name: st.name, File: st.file, Absent: true})
			continue
		}
		if err != nil {
			return nil, err
		}
		plans = append(plans, plan{st: st, src: src})
		p := &plans[len(plans)-1]
		if p.dst, err = st.open(ctx, db); err != nil {
			return nil, fmt.Errorf("migrate: %s: %w", st.name, err)
		}
		empty, err := kv.Empty(ctx, p.dst, st.buckets)
		if err != nil {
			return nil, fmt.Errorf("migrate: %s: %w", st.name, err)
		}
		if !empty && !o.Force {
			return nil, fmt.Errorf("%w: %s", ErrNotEmpty, st.name)
		}
	}
	var inv, invDst *inventory.Store
	invPath := filepath.Join(dataDir, inventory.File)
	if _, err := os.Stat(invPath); err == nil {
		if inv, err = inventory.Open(invPath); err != nil {
			return nil, fmt.Errorf("migrate: inventory: %w", err)
		}
		defer inv.Close()
		if invDst, err = inventory.OpenPostgres(ctx, db); err != nil {
			return nil, fmt.Errorf("migrate: inventory: %w", err)
		}
		c, err := invDst.Digest(ctx)
		if err != nil {
			return nil, fmt.Errorf("migrate: inventory: %w", err)
		}
		if c.Devices+c.Revocations+c.Tokens+c.Events > 0 && !o.Force {
			return nil, fmt.Errorf("%w: inventory", ErrNotEmpty)
		}
	} else {
		out = append(out, Store{Name: "inventory", File: inventory.File, Absent: true})
	}

	if _, err := os.Stat(filepath.Join(dataDir, policy.File)); err == nil && !o.Force {
		dst, err := policy.OpenPostgres(ctx, db)
		if err != nil {
			return nil, fmt.Errorf("migrate: policies: %w", err)
		}
		if n, _, err := dst.Digest(ctx); err != nil {
			return nil, fmt.Errorf("migrate: policies: %w", err)
		} else if n > 0 {
			return nil, fmt.Errorf("%w: policies", ErrNotEmpty)
		}
	}

	for _, p := range plans {
		if o.Force {
			if err := kv.Clear(ctx, p.dst, p.st.buckets); err != nil {
				return nil, fmt.Errorf("migrate: %s: %w", p.st.name, err)
			}
		}
		buckets := p.st.buckets
		if buckets == nil {
			if buckets, err = kv.Buckets(ctx, p.src); err != nil {
				return nil, fmt.Errorf("migrate: %s: %w", p.st.name, err)
			}
		}
		want, err := kv.Copy(ctx, p.dst, p.src, buckets)
		if err != nil {
			return nil, fmt.Errorf("migrate: %s: %w", p.st.name, err)
		}
		got, err := kv.Digest(ctx, p.dst, buckets)
		if err != nil {
			return nil, fmt.Errorf("migrate: %s: %w", p.st.name, err)
		}
		if got.Digest != want.Digest {
			return nil, fmt.Errorf("%w: %s: %v in the file, %v in the database", ErrMismatch, p.st.name, want.Keys, got.Keys)
		}
		records := want.Keys
		if p.st.records != nil {
			records = p.st.records(want.Keys)
		}
		log.Info("store migrated", "store", p.st.name, "records", records)
		out = append(out, Store{Name: p.st.name, File: p.st.file, Records: records})
	}
	if inv != nil {
		if o.Force {
			if err := inventory.ClearPostgres(ctx, db); err != nil {
				return nil, fmt.Errorf("migrate: inventory: %w", err)
			}
		}
		if err := inventory.Copy(ctx, invDst, inv); err != nil {
			return nil, fmt.Errorf("migrate: inventory: %w", err)
		}
		want, err := inv.Digest(ctx)
		if err != nil {
			return nil, fmt.Errorf("migrate: inventory: %w", err)
		}
		got, err := invDst.Digest(ctx)
		if err != nil {
			return nil, fmt.Errorf("migrate: inventory: %w", err)
		}
		if got != want {
			return nil, fmt.Errorf("%w: inventory: %+v in the file, %+v in the database", ErrMismatch, want, got)
		}
		log.Info("store migrated", "store", "inventory", "devices", want.Devices)
		out = append(out, Store{Name: "inventory", File: inventory.File, Records: map[string]int{
			"devices": want.Devices, "revocations": want.Revocations, "tokens": want.Tokens, "events": want.Events}})
	}
	pst, err := migratePolicies(ctx, db, dataDir, o.Force)
	if err != nil {
		return nil, err
	}
	out = append(out, pst)
	if err := verifyMigratedAudit(ctx, db, dataDir); err != nil {
		return nil, err
	}
	return out, nil
}

// openSource opens a store's file for reading, after checking that it
// holds the schema version this build writes (the store's own Open
// upgrades an older file: start the fleet on it once first).
func openSource(path string, st kvStore) (kv.DB, error) {
	name := func(err error) error { return fmt.Errorf("migrate: %s: %w", st.name, err) }
	src, err := boltdb.OpenReadOnly(path, boltdb.Options{Name: st.name})
	if err != nil {
		return nil, name(err)
	}
	srcKV := kv.Bolt(src)
	tmp, err := os.MkdirTemp("", "sigil-migrate-")
	if err != nil {
		srcKV.Close()
		return nil, name(err)
	}
	defer os.RemoveAll(tmp)
	fresh := filepath.Join(tmp, st.file)
	if err := st.create(fresh); err != nil {
		srcKV.Close()
		return nil, name(err)
	}
	ref, err := boltdb.OpenReadOnly(fresh, boltdb.Options{Name: st.name})
	if err != nil {
		srcKV.Close()
		return nil, name(err)
	}
	refKV := kv.Bolt(ref)
	defer refKV.Close()
	schema := func(db kv.DB) (v []byte) {
		db.View(context.Background(), func(tx kv.Tx) error {
			if b := tx.Bucket([]byte("meta")); b != nil {
				v = bytes.Clone(b.Get([]byte("schema")))
			}
			return nil
		})
		return v
	}
	if have, want := schema(srcKV), schema(refKV); !bytes.Equal(have, want) {
		srcKV.Close()
		return nil, name(fmt.Errorf("%s has schema version %x, this build writes %x: start the fleet on it once with this build first", path, have, want))
	}
	return srcKV, nil
}

// verifyMigratedAudit verifies the audit chain in the database with the
// data directory's audit public key.
func verifyMigratedAudit(ctx context.Context, db *postgres.DB, dataDir string) error {
	l, err := audit.OpenPostgres(ctx, db, audit.Config{})
	if err != nil {
		return fmt.Errorf("migrate: audit: %w", err)
	}
	defer l.Close()
	if seq, _ := l.Head(); seq == 0 {
		return nil
	}
	pem, err := os.ReadFile(filepath.Join(dataDir, audit.PubFile))
	if err != nil {
		return fmt.Errorf("migrate: verifying the audit log needs its public key: %w", err)
	}
	pub, err := audit.ParsePublicKey(pem)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := l.VerifyStore(ctx, pub); err != nil {
		return fmt.Errorf("migrate: the audit log does not verify in the database: %w", err)
	}
	return nil
}

// migratePolicies copies the reference policies (every version) into the
// database and verifies the copy.
func migratePolicies(ctx context.Context, db *postgres.DB, dataDir string, force bool) (Store, error) {
	path := filepath.Join(dataDir, policy.File)
	st := Store{Name: "policies", File: policy.File}
	if _, err := os.Stat(path); err != nil {
		st.Absent = true
		return st, nil
	}
	fail := func(err error) (Store, error) {
		return Store{}, fmt.Errorf("migrate: policies: %w", err)
	}
	src, err := policy.Open(path)
	if err != nil {
		return fail(err)
	}
	defer src.Close()
	dst, err := policy.OpenPostgres(ctx, db)
	if err != nil {
		return fail(err)
	}
	if n, _, err := dst.Digest(ctx); err != nil {
		return fail(err)
	} else if n > 0 && !force {
		return Store{}, fmt.Errorf("%w: policies", ErrNotEmpty)
	} else if n > 0 {
		if err := policy.ClearPostgres(ctx, dst); err != nil {
			return fail(err)
		}
	}
	if err := policy.Copy(ctx, dst, src); err != nil {
		return fail(err)
	}
	n, want, err := src.Digest(ctx)
	if err != nil {
		return fail(err)
	}
	m, got, err := dst.Digest(ctx)
	if err != nil {
		return fail(err)
	}
	if got != want {
		return Store{}, fmt.Errorf("%w: policies: %d versions in the file, %d in the database", ErrMismatch, n, m)
	}
	st.Records = map[string]int{"versions": n}
	return st, nil
}
