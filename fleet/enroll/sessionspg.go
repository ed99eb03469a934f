package enroll

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

//go:embed migrations/*.sql
var migrations embed.FS

// SessionsPostgres is the Sessions of replicas sharing a PostgreSQL
// database: tables enroll_session, enroll_used and enroll_waiting. A
// session is taken once across the replicas (DELETE ... RETURNING);
// expiry is on the database's clock. What the proof completes (the
// request with its token, the fleet's decisions) is sealed with
// AES-256-GCM under a key derived from the fleet's key and the activation
// proof that answers the session, of which the row keeps only a digest:
// someone who reads the database can neither answer a session nor use its
// token, and someone who writes it cannot make a session the fleet would
// complete (without the fleet's key, a row it did not seal does not open).
type SessionsPostgres struct {
	db  *postgres.DB
	key []byte // the fleet's, shared by its replicas
}

var _ Sessions = (*SessionsPostgres)(nil)

// OpenSessionsPostgres creates or migrates the tables in db. key (32
// bytes, the same on every replica and never stored in the database)
// seals the sessions with each one's activation proof.
func OpenSessionsPostgres(ctx context.Context, db *postgres.DB, key []byte) (*SessionsPostgres, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("enroll: sessions: the sealing key has %d bytes, want 32", len(key))
	}
	if err := db.Migrate(ctx, "enroll", migrations); err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	return &SessionsPostgres{db: db, key: bytes.Clone(key)}, nil
}

// sealedSession is what a row seals of a Session.
type sealedSession struct {
	Nonce         []byte            `json:"nonce"`
	Request       []byte            `json:"request"` // wire.Marshal of the EnrollRequest
	EKFingerprint string            `json:"ek_fingerprint"`
	EKDeviceID    string            `json:"ek_device_id"`
	Path          string            `json:"path"`
	Existing      *inventory.Device `json:"existing,omitempty"`
	Clone         string            `json:"clone,omitempty"`
	Model         string            `json:"model,omitempty"`
	Group         string            `json:"group,omitempty"`
}

// sealKey is the AES-256 key of a session's sealed fields: an HMAC under
// the fleet's key of the activation proof that answers it (the row keeps
// activationDigest).
func (p *SessionsPostgres) sealKey(proof []byte) []byte {
	h := hmac.New(sha256.New, p.key)
	h.Write([]byte("sigil enroll session seal\x00"))
	h.Write(proof)
	return h.Sum(nil)
}

func (p *SessionsPostgres) sessionAEAD(proof []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(p.sealKey(proof))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Open seals sess under proof and stores it, with the client's bounds,
// in one transaction.
func (p *SessionsPostgres) Open(ctx context.Context, sess *Session, proof []byte, ttl time.Duration) error {
	if len(proof) == 0 {
		return errors.New("enroll: sessions: no activation proof to seal the session under")
	}
	req, err := wire.Marshal(sess.req)
	if err != nil {
		return fmt.Errorf("enroll: sessions: %w", err)
	}
	plain, err := json.Marshal(sealedSession{Nonce: sess.nonce, Request: req, EKFingerprint: sess.ek.Fingerprint, EKDeviceID: sess.ek.DeviceID,
		Path: sess.path, Existing: sess.existing, Clone: sess.clone, Model: sess.model, Group: sess.group})
	if err != nil {
		return fmt.Errorf("enroll: sessions: %w", err)
	}
	aead, err := p.sessionAEAD(proof)
	if err != nil {
		return fmt.Errorf("enroll: sessions: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("enroll: sessions: %w", err)
	}
	sealed := aead.Seal(nonce, nonce, plain, sess.id)
	existing := ""
	if sess.existing != nil {
		existing = sess.existing.ID
	}
	return pgx.BeginTxFunc(ctx, p.db.Pool(), pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		// The client's earlier session for this EK ends (it asked again);
		// a colliding ID, only with a broken or replayed Rand, too.
		if _, err := tx.Exec(ctx, `DELETE FROM enroll_session WHERE (client_id = $1 AND ek = $2) OR id = $3`,
			sess.clientID, sess.ek.Fingerprint, sess.id); err != nil {
			return fmt.Errorf("enroll: sessions: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM enroll_session WHERE id IN (
			SELECT id FROM enroll_session WHERE client_id = $1 ORDER BY created DESC, id OFFSET $2)`,
			sess.clientID, maxClientSessions-1); err != nil {
			return fmt.Errorf("enroll: sessions: %w", err)
		}
		var open int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM enroll_session WHERE expires >= now()`).Scan(&open); err != nil {
			return fmt.Errorf("enroll: sessions: %w", err)
		}
		if open >= maxSessions {
			return errTooMany
		}
		_, err := tx.Exec(ctx, `INSERT INTO enroll_session (id, client_id, ek, existing_id, created, expires, digest, sealed)
			VALUES ($1, $2, $3, $4, clock_timestamp(), now() + $5 * interval '1 microsecond', $6, $7)`,
			sess.id, sess.clientID, sess.ek.Fingerprint, existing, ttl.Microseconds(), sess.digest, sealed)
		if err != nil {
			return fmt.Errorf("enroll: sessions: %w", err)
		}
		return nil
	})
}

// Take deletes the session's row (the first replica to do so has it),
// records it used, and unseals it with proof; a wrong proof gets the
// session's client, digest and device ID only.
func (p *SessionsPostgres) Take(ctx context.Context, id []byte, clientID string, proof []byte) (*Session, error) {
	var existing string
	var expired bool
	var digest, sealed []byte
	err := p.db.Pool().QueryRow(ctx, `
		WITH s AS (
			DELETE FROM enroll_session WHERE id = $1 AND client_id = $2
			RETURNING id, existing_id, expires, digest, sealed
		), u AS (
			INSERT INTO enroll_used (id, used_at) SELECT id, now() FROM s
			ON CONFLICT (id) DO UPDATE SET used_at = EXCLUDED.used_at
		)
		SELECT existing_id, expires < now(), digest, sealed FROM s`, id, clientID).Scan(&existing, &expired, &digest, &sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		var used bool
		if err := p.db.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM enroll_used WHERE id = $1)`, id).Scan(&used); err != nil {
			return nil, fmt.Errorf("enroll: sessions: %w", err)
		}
		if used {
			return nil, errSessionUsed
		}
		return nil, errSessionUnknown
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	if expired {
		return nil, errSessionExpired
	}
	sess := &Session{clientID: clientID, id: id, digest: digest}
	if existing != "" {
		sess.existing = &inventory.Device{ID: existing}
	}
	if subtle.ConstantTimeCompare(activationDigest(proof), digest) != 1 {
		return sess, nil // the service refuses the proof
	}
	aead, err := p.sessionAEAD(proof)
	if err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("enroll: sessions: sealed session too short")
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], id)
	if err != nil {
		return nil, fmt.Errorf("enroll: sessions: unseal: %w", err)
	}
	var ss sealedSession
	if err := json.Unmarshal(plain, &ss); err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	var req wire.EnrollRequest
	if err := wire.Unmarshal(ss.Request, &req); err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	// The keys were verified when the request came; decoding them again
	// is cheap (the EK's chain is not verified again: its outcome is the
	// trust path, sealed).
	ak, err := verifier.VerifyAK(req.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	tk, err := verifier.VerifyTransportKeyPublic(req.TKPublic)
	if err != nil {
		return nil, fmt.Errorf("enroll: sessions: %w", err)
	}
	sess.nonce, sess.req, sess.ak, sess.tk = ss.Nonce, &req, ak, tk
	sess.ek = &verifier.EK{Fingerprint: ss.EKFingerprint, DeviceID: ss.EKDeviceID}
	sess.path, sess.existing, sess.clone, sess.model, sess.group = ss.Path, ss.Existing, ss.Clone, ss.Model, ss.Group
	return sess, nil
}

// Waiting records the client a pending device waits on.
func (p *SessionsPostgres) Waiting(ctx context.Context, deviceID, clientID string) error {
	_, err := p.db.Pool().Exec(ctx, `INSERT INTO enroll_waiting (device_id, client_id) VALUES ($1, $2)
		ON CONFLICT (device_id) DO UPDATE SET client_id = EXCLUDED.client_id`, deviceID, clientID)
	if err != nil {
		return fmt.Errorf("enroll: sessions: %w", err)
	}
	return nil
}

// Client returns the client a pending device waits on.
func (p *SessionsPostgres) Client(ctx context.Context, deviceID string) (string, error) {
	var c string
	err := p.db.Pool().QueryRow(ctx, `SELECT client_id FROM enroll_waiting WHERE device_id = $1`, deviceID).Scan(&c)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("enroll: sessions: %w", err)
	}
	return c, nil
}

// Enrolled forgets the client an enrolled device waited on.
func (p *SessionsPostgres) Enrolled(ctx context.Context, deviceID string) error {
	if _, err := p.db.Pool().Exec(ctx, `DELETE FROM enroll_waiting WHERE device_id = $1`, deviceID); err != nil {
		return fmt.Errorf("enroll: sessions: %w", err)
	}
	return nil
}

// Expire deletes expired sessions and old used ones (every replica may:
// the deletions are the same).
func (p *SessionsPostgres) Expire(ctx context.Context, keepUsed time.Duration) error {
	_, err := p.db.Pool().Exec(ctx, `
		WITH s AS (DELETE FROM enroll_session WHERE expires < now())
		DELETE FROM enroll_used WHERE used_at < now() - $1 * interval '1 microsecond'`, keepUsed.Microseconds())
	if err != nil {
		return fmt.Errorf("enroll: sessions: expire: %w", err)
	}
	return nil
}
