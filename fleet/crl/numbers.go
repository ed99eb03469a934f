package crl

import (
	"context"
	"embed"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Numbers hands out CRL numbers: each greater than every one handed out
// before, and at least atLeast (the signing replica's clock, in
// nanoseconds since 1970, as a single process numbers its CRLs).
type Numbers interface {
	Next(ctx context.Context, atLeast int64) (int64, error)
}

// PostgresNumbers hands out the numbers of the CRLs of replicas sharing a
// PostgreSQL database: a replica whose clock is behind another's still
// signs a CRL the brokers take as newer.
type PostgresNumbers struct{ db *postgres.DB }

var _ Numbers = (*PostgresNumbers)(nil)

//go:embed migrations/*.sql
var migrations embed.FS

// OpenNumbers creates or migrates the number's table in db.
func OpenNumbers(ctx context.Context, db *postgres.DB) (*PostgresNumbers, error) {
	if err := db.Migrate(ctx, "crl", migrations); err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	return &PostgresNumbers{db: db}, nil
}

// Next returns the next number, at least atLeast.
func (n *PostgresNumbers) Next(ctx context.Context, atLeast int64) (int64, error) {
	var v int64
	if err := n.db.Pool().QueryRow(ctx, `UPDATE crl_number SET n = GREATEST(n + 1, $1) RETURNING n`, atLeast).Scan(&v); err != nil {
		return 0, fmt.Errorf("crl: number: %w", err)
	}
	return v, nil
}

// NewFor returns the Publisher of a fleet whose database is db, told of
// the revocations made on other replicas by bus (Listen; nil for one
// process): with a database (replicas), its CRLs are numbered from the
// database's sequence (OpenNumbers); without, by the clock. Its
// MinInterval is settings', unless cfg sets one.
func NewFor(ctx context.Context, cfg Config, settings Settings, db *postgres.DB, bus Bus) (*Publisher, error) {
	if cfg.MinInterval == 0 {
		cfg.MinInterval = time.Duration(settings.MinInterval)
	}
	if db != nil {
		nums, err := OpenNumbers(ctx, db)
		if err != nil {
			return nil, err
		}
		cfg.Numbers = nums
	}
	p := New(cfg)
	return p, p.Listen(bus)
}

// Settings are the CRL's keys in sigil serve's configuration
// (docs/CONFIG.md).
type Settings struct {
	// MinInterval is Config.MinInterval (crl_min_interval): the CRL is
	// signed at most once per MinInterval, and a revocation is in it
	// within MinInterval. 0 means DefaultMinInterval (1s).
	MinInterval config.Duration `json:"crl_min_interval"`
}
