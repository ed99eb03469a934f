// Package bridge keeps the fleet's OT bridges: the credentials of plant
// MQTT brokers that bridge a site's devices to the fleet's broker.
//
// A bridge is named by its site (wire.ValidID). Create issues it a
// certificate from the fleet CA (ca.CA.IssueBridge: common name
// bridge-<site>, URI SAN spiffe://<trust domain>/bridge/<site>, client
// authentication only) for a public key the operator generated; the
// private key never reaches the fleet. A site holds at most one current
// credential: Create refuses a site whose credential is current
// (ErrExists), Revoke ends it (the serial goes into the fleet's CRL,
// Revocations, and the OnRevoke hook cuts the bridge's connections at
// once), and a revoked site may be given a new one.
//
// Admit is the broker's gate for bridges: it admits a certificate only
// while it is the site's current, unrevoked, unexpired credential. What
// an admitted bridge may do on the topic tree is the broker's rule (its
// site's prefix only, fleet/broker).
//
// Every change is recorded in the audit log (bridge.create,
// bridge.revoke). The records live in a kv store: a bbolt file (Open) or
// PostgreSQL (OpenPostgres).
package bridge

import (
	"context"
	"crypto"
	"crypto/x509"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// File is the bridges' bbolt file in the fleet's data directory.
const File = "bridges.db"

// Table is the PostgreSQL table holding the bucket (kv.Postgres).
const Table = "bridge_kv"

// Defaults and bounds of a credential's lifetime.
const (
	DefaultLifetime = 90 * 24 * time.Hour
	MaxLifetime     = 397 * 24 * time.Hour
)

// Errors. Compare with errors.Is.
var (
	ErrNotFound = errors.New("bridge: no such bridge")
	ErrExists   = errors.New("bridge: the site already has a current bridge credential; revoke it first")
	ErrInvalid  = errors.New("bridge: invalid request")
	ErrRevoked  = errors.New("bridge: credential revoked")
	ErrNotHeld  = errors.New("bridge: certificate is not the site's current credential")
	ErrExpired  = errors.New("bridge: credential expired")
	ErrRetired  = errors.New("bridge: credential from a retired CA generation; create a new one")
)

var bucketBridges = []byte("bridges")

// Buckets are the store's buckets: what sigil migrate copies.
var Buckets = [][]byte{bucketBridges, bucketSites, bucketCounters}

const (
	schemaVersion = 1
	recordVersion = 1
)

//go:embed migrations/*.sql
var migrations embed.FS

// Issuer issues bridge certificates (*ca.CA).
type Issuer interface {
	IssueBridge(site string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error)
}

// generations tells the CA generation that issued a certificate, an
// error for a retired one (*ca.CA); Admit asks it when the Issuer has it.
type generations interface {
	Issuer(cert *x509.Certificate) (ca.Generation, error)
}

// Config configures a Service.
type Config struct {
	// Path is the bbolt file (Open); unused by OpenPostgres.
	Path string
	// CA issues the certificates. Required.
	CA Issuer
	// Audit records every change; nil records nothing (tests).
	Audit audit.Recorder
	// OnRevoke, if set, is called after a revocation is stored, with the
	// site: the fleet refreshes its CRL and disconnects the bridge there.
	OnRevoke func(site string)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger
	// NoSync skips fsync on commit (tests).
	NoSync bool
	// Topics is the fleet's topic tree, for Prefix.
	Topics wire.Topics
}

// Cert is one credential a site was issued.
type Cert struct {
	Serial    string    `json:"serial"` // hex, as inventory.Revocation
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	IssuedBy  string    `json:"issued_by,omitempty"`
	Revoked   time.Time `json:"revoked,omitzero"`
	Reason    int       `json:"reason,omitempty"` // RFC 5280 CRLReason, when revoked
}

// Bridge is a site's record: every credential it was issued, newest last.
type Bridge struct {
	Site    string    `json:"site"`
	Created time.Time `json:"created"`
	Certs   []Cert    `json:"certs"`
}

// Current returns the site's current credential at now: the newest one,
// if neither revoked nor expired.
func (b *Bridge) Current(now time.Time) (Cert, bool) {
	if len(b.Certs) == 0 {
		return Cert{}, false
	}
	c := b.Certs[len(b.Certs)-1]
	if !c.Revoked.IsZero() || !now.Before(c.NotAfter) {
		return Cert{}, false
	}
	return c, true
}

type record struct {
	V int `json:"v"`
	*Bridge
}

// Service keeps the bridges. Its methods are safe for concurrent use.
type Service struct {
	cfg Config
	db  kv.DB
	log *slog.Logger
	// consumer is set by Consume.
	consumer atomic.Pointer[consumer]
}

// Open opens (creating) the bbolt file cfg.Path.
func Open(cfg Config) (*Service, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: Path is required", ErrInvalid)
	}
	return open(cfg, func() (kv.DB, error) {
		db, err := boltdb.Open(cfg.Path, boltdb.Schema{Buckets: Buckets, Version: schemaVersion},
			boltdb.Options{Name: "bridge", NoSync: cfg.NoSync})
		if err != nil {
			return nil, err
		}
		return kv.Bolt(db), nil
	})
}

// OpenPostgres is Open with the records in the PostgreSQL database db,
// whose tables it brings up to date first. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Service, error) {
	return open(cfg, func() (kv.DB, error) {
		if err := db.Migrate(ctx, "bridge", migrations); err != nil {
			return nil, fmt.Errorf("bridge: %w", err)
		}
		k, err := kv.Postgres(db, Table, kv.Options{})
		if err != nil {
			return nil, fmt.Errorf("bridge: %w", err)
		}
		return k, nil
	})
}

// Open is Open(c), for a composition root that picks the backend.
func (c Config) Open() (*Service, error) { return Open(c) }

// OpenPostgres is OpenPostgres(ctx, db, c).
func (c Config) OpenPostgres(ctx context.Context, db *postgres.DB) (*Service, error) {
	return OpenPostgres(ctx, db, c)
}

func open(cfg Config, openDB func() (kv.DB, error)) (*Service, error) {
	if cfg.CA == nil {
		return nil, fmt.Errorf("%w: CA is required", ErrInvalid)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := openDB()
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, db: db, log: log}, nil
}

// Prefix is the site's part of the fleet's topic tree (broker.SitePrefix).
func (s *Service) Prefix(site string) string { return broker.SitePrefix(s.cfg.Topics, site) }

// Close closes the store.
func (s *Service) Close() error { return s.db.Close() }

// Create issues site a credential for pub, valid for lifetime (0 means
// DefaultLifetime; at most MaxLifetime), and records it, by the actor.
// It refuses an invalid site name (ErrInvalid) and a site whose
// credential is current (ErrExists).
func (s *Service) Create(ctx context.Context, by audit.Actor, site string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if !wire.ValidID(site) {
		return nil, fmt.Errorf("%w: site %q: lowercase letters, digits, '.', '_' and '-', at most 64", ErrInvalid, site)
	}
	if lifetime == 0 {
		lifetime = DefaultLifetime
	}
	if lifetime < 0 || lifetime > MaxLifetime {
		return nil, fmt.Errorf("%w: lifetime %v not in (0, %v]", ErrInvalid, lifetime, MaxLifetime)
	}
	if pub == nil {
		return nil, fmt.Errorf("%w: no public key", ErrInvalid)
	}
	var cert *x509.Certificate
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		b, err := get(tx, site)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		now := s.cfg.Now()
		if b == nil {
			b = &Bridge{Site: site, Created: now.UTC()}
		} else if _, ok := b.Current(now); ok {
			return ErrExists
		}
		if cert == nil { // the function may run again: issue once
			if cert, err = s.cfg.CA.IssueBridge(site, pub, lifetime); err != nil {
				return err
			}
		}
		b.Certs = append(b.Certs, Cert{Serial: serialHex(cert), NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(), IssuedBy: by.String()})
		return put(tx, b)
	})
	entry := audit.New(by, "bridge.create", site)
	if err != nil {
		s.record(ctx, entry.Fail(err))
		return nil, fmt.Errorf("bridge: create %s: %w", site, err)
	}
	s.record(ctx, entry.With("serial", serialHex(cert)))
	s.log.Info("bridge: credential issued", "site", site, "serial", serialHex(cert), "not_after", cert.NotAfter)
	return cert, nil
}

// Revoke revokes the site's current credential with an RFC 5280 reason
// code, by the actor: from now on Admit refuses it and Revocations lists
// it; OnRevoke is called. A site without a current credential is
// ErrNotFound.
func (s *Service) Revoke(ctx context.Context, by audit.Actor, site string, reason int, because string) error {
	var serial string
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		b, err := get(tx, site)
		if err != nil {
			return err
		}
		now := s.cfg.Now()
		if _, ok := b.Current(now); !ok {
			return ErrNotFound
		}
		c := &b.Certs[len(b.Certs)-1]
		c.Revoked, c.Reason = now.UTC(), reason
		serial = c.Serial
		return put(tx, b)
	})
	entry := audit.New(by, "bridge.revoke", site).Because(because)
	if err != nil {
		s.record(ctx, entry.Fail(err))
		return fmt.Errorf("bridge: revoke %s: %w", site, err)
	}
	s.record(ctx, entry)
	s.log.Info("bridge: credential revoked", "site", site, "serial", serial, "reason", inventory.ReasonName(reason))
	if s.cfg.OnRevoke != nil {
		s.cfg.OnRevoke(site)
	}
	return nil
}

// Get returns a site's record (ErrNotFound when it has none).
func (s *Service) Get(ctx context.Context, site string) (*Bridge, error) {
	var b *Bridge
	err := s.db.View(ctx, func(tx kv.Tx) (err error) {
		b, err = get(tx, site)
		return err
	})
	return b, err
}

// List returns every site's record, by site.
func (s *Service) List(ctx context.Context) ([]*Bridge, error) {
	var out []*Bridge
	err := s.db.View(ctx, func(tx kv.Tx) error {
		bk := tx.Bucket(bucketBridges)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(_, v []byte) error {
			b, err := decode(v)
			if err != nil {
				return err
			}
			out = append(out, b)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bridge: list: %w", err)
	}
	return out, nil
}

// Admit is the broker's gate for bridges: it returns nil only if cert
// (whose chain and expiry TLS verified, and whose site the broker read
// with identity.BridgeFromCertificate) is the site's current credential:
// the serial the fleet issued last to that site, not revoked, not
// expired, and issued by a CA generation still trusted (the broker's TLS
// pool holds retired roots too).
func (s *Service) Admit(ctx context.Context, site string, cert *x509.Certificate) error {
	b, err := s.Get(ctx, site)
	if err != nil {
		return err
	}
	serial := serialHex(cert)
	i := slices.IndexFunc(b.Certs, func(c Cert) bool { return c.Serial == serial })
	switch {
	case i < 0:
		return ErrNotHeld
	case !b.Certs[i].Revoked.IsZero():
		return ErrRevoked
	case i != len(b.Certs)-1:
		return ErrNotHeld
	case !s.cfg.Now().Before(b.Certs[i].NotAfter):
		return ErrExpired
	}
	if g, ok := s.cfg.CA.(generations); ok {
		if _, err := g.Issuer(cert); err != nil {
			return fmt.Errorf("%w: %v", ErrRetired, err)
		}
	}
	return nil
}

// Revocations lists the revoked bridge credentials in the shape of the
// inventory's (DeviceID is "bridge-<site>"), for the CRL: those that
// expire after now (zero now: all).
func (s *Service) Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error) {
	all, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []inventory.Revocation
	for _, b := range all {
		for _, c := range b.Certs {
			if c.Revoked.IsZero() || (!now.IsZero() && !c.NotAfter.After(now)) {
				continue
			}
			out = append(out, inventory.Revocation{Serial: c.Serial, DeviceID: "bridge-" + b.Site, Reason: c.Reason, Time: c.Revoked, Expires: c.NotAfter})
		}
	}
	return out, nil
}

func (s *Service) record(ctx context.Context, e audit.Entry) {
	if s.cfg.Audit == nil {
		return
	}
	if err := s.cfg.Audit.Record(ctx, e); err != nil {
		s.log.Error("bridge: audit record failed", "err", err)
	}
}

func get(tx kv.Tx, site string) (*Bridge, error) {
	bk := tx.Bucket(bucketBridges)
	if bk == nil {
		return nil, ErrNotFound
	}
	v := bk.Get([]byte(site))
	if v == nil {
		return nil, ErrNotFound
	}
	return decode(v)
}

func decode(v []byte) (*Bridge, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("bridge: record: %w", err)
	}
	if r.V != recordVersion || r.Bridge == nil {
		return nil, fmt.Errorf("bridge: record version %d", r.V)
	}
	return r.Bridge, nil
}

func put(tx kv.Tx, b *Bridge) error {
	v, err := json.Marshal(record{V: recordVersion, Bridge: b})
	if err != nil {
		return err
	}
	bk, err := tx.CreateBucketIfNotExists(bucketBridges)
	if err != nil {
		return err
	}
	return bk.Put([]byte(b.Site), v)
}

func serialHex(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// Revocations lists revoked certificates for the CRL (*inventory.Store,
// crl.Revocations).
type Revocations interface {
	Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error)
}

// AndDevices returns the revocations of devs followed by the bridges':
// the fleet's CRL lists both.
func (s *Service) AndDevices(devs Revocations) Revocations {
	return both{devs, s}
}

type both [2]Revocations

func (b both) Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error) {
	var out []inventory.Revocation
	for _, r := range b {
		l, err := r.Revocations(ctx, now)
		if err != nil {
			return nil, err
		}
		out = append(out, l...)
	}
	return out, nil
}
