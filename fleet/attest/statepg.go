package attest

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

//go:embed migrations/state/*.sql
var stateMigrations embed.FS

// StatePostgres is the State of replicas sharing a PostgreSQL database:
// tables attest_nonce and attest_device. A nonce is taken once across
// the replicas (DELETE ... RETURNING); every time it keeps — a nonce's
// issue and expiry, a session's start, a pass's, the last evidence — is
// the database's clock, so replicas' clocks never compare with each
// other.
type StatePostgres struct {
	db *postgres.DB
	// started is when this replica opened the state (the database's
	// clock): a device never heard of is silent since then.
	started time.Time
}

var _ State = (*StatePostgres)(nil)

// OpenStatePostgres creates or migrates the state's tables in db.
func OpenStatePostgres(ctx context.Context, db *postgres.DB) (*StatePostgres, error) {
	if err := db.Migrate(ctx, "attest_state", stateMigrations); err != nil {
		return nil, fmt.Errorf("attest: state: %w", err)
	}
	s := &StatePostgres{db: db}
	if err := db.Pool().QueryRow(ctx, "SELECT now()").Scan(&s.started); err != nil {
		return nil, fmt.Errorf("attest: state: %w", err)
	}
	return s, nil
}

// Issue records n (its Issued is ignored: the nonce is issued at the
// database's now), drops the device's expired nonces and its oldest
// beyond maxOpenNonces, and counts an unanswered challenge, in one
// statement.
func (s *StatePostgres) Issue(ctx context.Context, n *Nonce, ttl time.Duration) error {
	sels, err := json.Marshal(n.Selections)
	if err != nil {
		return fmt.Errorf("attest: state: %w", err)
	}
	_, err = s.db.Pool().Exec(ctx, `
		WITH gone AS (
			DELETE FROM attest_nonce WHERE device_id = $2 AND (expires < now() OR nonce IN (
				SELECT nonce FROM attest_nonce WHERE device_id = $2 AND expires >= now()
				ORDER BY issued DESC, nonce OFFSET $6))
		), issued AS (
			INSERT INTO attest_nonce (nonce, device_id, purpose, selections, issued, expires)
			VALUES ($1, $2, $3, $4, now(), now() + $5 * interval '1 microsecond')
		)
		INSERT INTO attest_device (device_id, unanswered) VALUES ($2, 1)
		ON CONFLICT (device_id) DO UPDATE SET unanswered = attest_device.unanswered + 1`,
		n.Value, n.DeviceID, n.Purpose, sels, ttl.Microseconds(), maxOpenNonces-1)
	if err != nil {
		return fmt.Errorf("attest: state: issue: %w", err)
	}
	return nil
}

// Take consumes the nonce: the first replica to delete its row has it.
func (s *StatePostgres) Take(ctx context.Context, deviceID string, value []byte) (Nonce, error) {
	n := Nonce{Value: value, DeviceID: deviceID}
	var sels []byte
	var expired bool
	err := s.db.Pool().QueryRow(ctx, `
		DELETE FROM attest_nonce WHERE nonce = $1 AND device_id = $2
		RETURNING purpose, selections, issued, expires < now()`, value, deviceID).Scan(&n.Purpose, &sels, &n.Issued, &expired)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Nonce{}, errNonceUnknown
	case err != nil:
		return Nonce{}, fmt.Errorf("attest: state: take nonce: %w", err)
	case expired:
		return Nonce{}, errNonceExpired
	}
	if err := json.Unmarshal(sels, &n.Selections); err != nil {
		return Nonce{}, fmt.Errorf("attest: state: nonce selections: %w", err)
	}
	return n, nil
}

// Answered records the evidence at the database's now; judged is too.
// issued is the nonce's issue time as Take returned it (the database's).
// A pass on a nonce older than the recorded pass's leaves it (State).
func (s *StatePostgres) Answered(ctx context.Context, deviceID string, _ time.Time, pass bool, issued, _ time.Time) error {
	_, err := s.db.Pool().Exec(ctx, `
		INSERT INTO attest_device (device_id, last_seen) VALUES ($1, now())
		ON CONFLICT (device_id) DO UPDATE SET unanswered = 0, last_seen = now(),
			pass_issued = CASE WHEN attest_device.session_start IS NULL OR NOT $2 THEN NULL
				WHEN attest_device.pass_at IS NOT NULL AND $3::timestamptz < attest_device.pass_issued THEN attest_device.pass_issued
				ELSE $3::timestamptz END,
			pass_at = CASE WHEN attest_device.session_start IS NULL OR NOT $2 THEN NULL
				WHEN attest_device.pass_at IS NOT NULL AND $3::timestamptz < attest_device.pass_issued THEN attest_device.pass_at
				ELSE now() END`,
		deviceID, pass, issued)
	if err != nil {
		return fmt.Errorf("attest: state: answered: %w", err)
	}
	return nil
}

// SessionStarted starts the session at the database's now (at, the
// replica's clock, is not compared with the database's).
func (s *StatePostgres) SessionStarted(ctx context.Context, deviceID string, _ time.Time) error {
	_, err := s.db.Pool().Exec(ctx, `
		INSERT INTO attest_device (device_id, session_start) VALUES ($1, now())
		ON CONFLICT (device_id) DO UPDATE SET session_start = now(), pass_issued = NULL, pass_at = NULL`, deviceID)
	if err != nil {
		return fmt.Errorf("attest: state: session: %w", err)
	}
	return nil
}

// SessionEnded ends the device's session.
func (s *StatePostgres) SessionEnded(ctx context.Context, deviceID string) error {
	_, err := s.db.Pool().Exec(ctx, `
		UPDATE attest_device SET session_start = NULL, pass_issued = NULL, pass_at = NULL WHERE device_id = $1`, deviceID)
	if err != nil {
		return fmt.Errorf("attest: state: session: %w", err)
	}
	return nil
}

// Current decides on the database's now.
func (s *StatePostgres) Current(ctx context.Context, deviceID string, maxAge time.Duration) error {
	var start, issued, at *time.Time
	var now time.Time
	err := s.db.Pool().QueryRow(ctx, `
		SELECT d.session_start, d.pass_issued, d.pass_at, now()
		FROM (SELECT 1) AS one LEFT JOIN attest_device d ON d.device_id = $1`, deviceID).Scan(&start, &issued, &at, &now)
	if err != nil {
		return fmt.Errorf("%w: attest: state: %w", ErrNoCurrentVerdict, err)
	}
	return current(start != nil, deref(start), deref(issued), deref(at), now, maxAge)
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// Liveness reads every device of ids in one query.
func (s *StatePostgres) Liveness(ctx context.Context, ids []string) ([]Liveness, error) {
	out := make([]Liveness, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.db.Pool().Query(ctx, `
		SELECT i.n, coalesce(d.unanswered, 0), (extract(epoch FROM now() - coalesce(d.last_seen, $2)) * 1000000)::bigint
		FROM unnest($1::text[]) WITH ORDINALITY AS i(id, n) LEFT JOIN attest_device d ON d.device_id = i.id`, ids, s.started)
	if err != nil {
		return nil, fmt.Errorf("attest: state: liveness: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var n int64
		var unanswered int
		var silent int64
		if err := rows.Scan(&n, &unanswered, &silent); err != nil {
			return nil, fmt.Errorf("attest: state: liveness: %w", err)
		}
		if n < 1 || int(n) > len(out) {
			return nil, fmt.Errorf("attest: state: liveness: row %d of %d", n, len(out))
		}
		out[n-1] = Liveness{Silent: time.Duration(silent) * time.Microsecond, Unanswered: unanswered}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("attest: state: liveness: %w", err)
	}
	return out, nil
}

// Expire deletes the expired nonces (every replica's sweep may: the
// deletions are the same).
func (s *StatePostgres) Expire(ctx context.Context) error {
	if _, err := s.db.Pool().Exec(ctx, "DELETE FROM attest_nonce WHERE expires < now()"); err != nil {
		return fmt.Errorf("attest: state: expire: %w", err)
	}
	return nil
}
