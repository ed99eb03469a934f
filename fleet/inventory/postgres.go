package inventory

import (
	"bytes"
	"context"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// migrations are the inventory's tables in PostgreSQL, applied in order
// at OpenPostgres (component "inventory" in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// OpenPostgres opens the inventory in the PostgreSQL database db, bringing
// its tables up to date first. The store does not own db: Close leaves it
// open for the other stores that share it.
func OpenPostgres(ctx context.Context, db *postgres.DB, opts ...Option) (*Store, error) {
	if err := db.Migrate(ctx, "inventory", migrations); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	o := newStore(opts)
	s := &Store{e: &pgEngine{db: db, onRevoke: o.onRevoke}, opts: o}
	if o.bus != nil {
		s.protos = newProtocols()
		s.e.(*pgEngine).protos = s.protos
		if err := s.protos.listen(o.bus); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// pgEngine keeps the inventory in PostgreSQL. Its write transactions are
// serializable (and retried when they fail to serialize), and lock the
// device and token rows they read, so that a read-modify-write is as
// atomic as in bbolt's single writer.
type pgEngine struct {
	db       *postgres.DB
	onRevoke func()     // WithRevocationHook
	protos   *protocols // Store.protos (WithBus), nil without
}

var _ engine = (*pgEngine)(nil)

func (p *pgEngine) close() error { return nil }

func (p *pgEngine) view(ctx context.Context, fn func(tx) error) error {
	return p.db.ReadTx(ctx, func(t pgx.Tx) error { return fn(&pgTx{ctx: ctx, tx: t}) })
}

func (p *pgEngine) update(ctx context.Context, fn func(tx) error) error {
	revoked := false
	var changed []string
	err := p.db.Tx(ctx, func(t pgx.Tx) error {
		pt := &pgTx{ctx: ctx, tx: t, write: true}
		err := fn(pt)
		revoked, changed = pt.revokedAny, pt.protocols // of the run that commits
		return err
	})
	if err == nil && revoked && p.onRevoke != nil {
		p.onRevoke()
	}
	if err == nil && p.protos != nil {
		// At once here; the other replicas when TopicProtocols arrives.
		for _, id := range changed {
			p.protos.forget(id)
		}
	}
	return err
}

func (p *pgEngine) write(ctx context.Context, fn func(tx) error) error { return p.update(ctx, fn) }

func (p *pgEngine) writeAll(ctx context.Context, fns []func(tx) error) []error {
	errs := make([]error, len(fns))
	for i, fn := range fns {
		errs[i] = p.write(ctx, fn)
	}
	return errs
}

// column is the indexed column of f.
func column(f Field) string {
	if f == FieldID {
		return "id"
	}
	return "ix_" + string(f)
}

// conditions turns encoded filters into SQL conditions whose arguments
// follow args.
func conditions(where map[Field][]byte, args []any) ([]string, []any) {
	var conds []string
	for _, f := range sortedFields(where) {
		args = append(args, where[f])
		n := "$" + strconv.Itoa(len(args))
		if f == FieldTag {
			conds = append(conds, "EXISTS (SELECT 1 FROM inventory_device_tags t WHERE t.device_id = d.id AND t.tag = "+n+")")
		} else {
			conds = append(conds, column(f)+" = "+n)
		}
	}
	return conds, args
}

func whereClause(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

func (p *pgEngine) query(ctx context.Context, q *Query, where map[Field][]byte, after []byte, limit, budget int) (Page, error) {
	col := column(q.Order)
	dir, op := "ASC", ">"
	if q.Desc {
		dir, op = "DESC", "<"
	}
	// The cursor key of a row: its ID, or value 0x00 ID (the bbolt
	// index's key, so that a cursor reads the same in both backends).
	key := func(v []byte, id string) []byte {
		if q.Order == FieldID {
			return []byte(id)
		}
		return indexKey(v, id)
	}
	cursor := func(k []byte) string {
		if k == nil {
			return ""
		}
		if q.Order == FieldID {
			return string(k)
		}
		return base64.RawURLEncoding.EncodeToString(k)
	}
	var out Page
	err := p.db.ReadTx(ctx, func(t pgx.Tx) error {
		out = Page{}
		pos := after // the last key walked
		var last []byte
		chunk := limit + 1
		for {
			conds, args := conditions(where, nil)
			if pos != nil {
				if q.Order == FieldID {
					args = append(args, string(pos))
					conds = append(conds, "id "+op+" $"+strconv.Itoa(len(args)))
				} else {
					i := bytes.LastIndexByte(pos, 0)
					args = append(args, pos[:i], string(pos[i+1:]))
					conds = append(conds, fmt.Sprintf("(%s, id) %s ($%d, $%d)", col, op, len(args)-1, len(args)))
				}
			}
			args = append(args, chunk)
			sql := fmt.Sprintf("SELECT id, %s, record FROM inventory_devices d%s ORDER BY %s %s, id %s LIMIT $%d",
				col, whereClause(conds), col, dir, dir, len(args))
			if q.Order == FieldID {
				sql = fmt.Sprintf("SELECT id, ''::bytea, record FROM inventory_devices d%s ORDER BY id %s LIMIT $%d",
					whereClause(conds), dir, len(args))
			}
			type row struct {
				id       string
				val, rec []byte
			}
			rows, err := t.Query(ctx, sql, args...)
			if err != nil {
				return err
			}
			got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
				var x row
				err := r.Scan(&x.id, &x.val, &x.rec)
				return x, err
			})
			if err != nil {
				return err
			}
			for _, r := range got {
				if len(out.Devices) == limit {
					out.Next = cursor(last)
					return nil
				}
				if out.Examined >= budget {
					out.Next, out.Partial = cursor(last), true
					return nil
				}
				last = key(r.val, r.id)
				d, err := decode[Device](r.rec)
				if err != nil {
					return fmt.Errorf("%w (device %q)", err, r.id)
				}
				out.Examined++
				if q.Matches(d) {
					out.Devices = append(out.Devices, *d)
				}
			}
			if len(got) < chunk {
				return nil
			}
			pos = last
			chunk = min(chunk*2, 1000)
		}
	})
	if err != nil {
		return Page{}, fmt.Errorf("inventory: query: %w", err)
	}
	return out, nil
}

func (p *pgEngine) count(ctx context.Context, where map[Field][]byte) (int, error) {
	conds, args := conditions(where, nil)
	var n int
	if err := p.db.Pool().QueryRow(ctx, "SELECT count(*) FROM inventory_devices d"+whereClause(conds), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("inventory: count: %w", err)
	}
	return n, nil
}

func (p *pgEngine) counts(ctx context.Context) (map[State]int, error) {
	rows, err := p.db.Pool().Query(ctx, "SELECT state, count(*) FROM inventory_devices GROUP BY state")
	if err != nil {
		return nil, fmt.Errorf("inventory: counts: %w", err)
	}
	out := make(map[State]int)
	var st string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error {
		out[State(st)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inventory: counts: %w", err)
	}
	return out, nil
}

func (p *pgEngine) events(ctx context.Context, deviceID string, limit int) ([]Event, error) {
	var lim *int
	if limit > 0 {
		lim = &limit
	}
	rows, err := p.db.Pool().Query(ctx, "SELECT record FROM inventory_events WHERE device_id = $1 ORDER BY seq DESC LIMIT $2", deviceID, lim)
	if err != nil {
		return nil, fmt.Errorf("inventory: events: %w", err)
	}
	recs, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, fmt.Errorf("inventory: events: %w", err)
	}
	out := make([]Event, 0, len(recs))
	for _, v := range recs {
		e, err := decode[Event](v)
		if err != nil {
			return nil, err
		}
		out = append(out, *e)
	}
	return out, nil
}

// pgTx is a transaction of the PostgreSQL engine.
type pgTx struct {
	ctx   context.Context
	tx    pgx.Tx
	write bool // lock the rows read (SELECT … FOR UPDATE)
	// revokedAny: putRevocation added a revocation.
	revokedAny bool
	// protocols: the devices whose protocol version changed
	// (protocolChanged).
	protocols []string
}

var _ tx = (*pgTx)(nil)

func (t *pgTx) lock() string {
	if t.write {
		return " FOR UPDATE"
	}
	return ""
}

// one reads the record a query returns; nil when there is none.
func (t *pgTx) one(sql string, args ...any) ([]byte, error) {
	var v []byte
	err := t.tx.QueryRow(t.ctx, sql, args...).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return v, err
}

func (t *pgTx) device(id string) (*Device, error) {
	v, err := t.one("SELECT record FROM inventory_devices WHERE id = $1"+t.lock(), id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: device %q", ErrNotFound, id)
	}
	return decode[Device](v)
}

func (t *pgTx) state(id string) (stateOnly, error) {
	v, err := t.one("SELECT record FROM inventory_devices WHERE id = $1"+t.lock(), id)
	if err != nil {
		return stateOnly{}, err
	}
	if v == nil {
		return stateOnly{}, fmt.Errorf("%w: device %q", ErrNotFound, id)
	}
	d, err := decode[stateOnly](v)
	if err != nil {
		return stateOnly{}, err
	}
	return *d, nil
}

func (t *pgTx) ekHolder(fingerprint string) (string, error) {
	var id string
	err := t.tx.QueryRow(t.ctx, "SELECT id FROM inventory_devices WHERE ek = $1", fingerprint).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return id, err
}

func (t *pgTx) putDevice(old, d *Device) error {
	v, err := encode(d)
	if err != nil {
		return err
	}
	var ek *string
	if d.EKFingerprint != "" {
		ek = &d.EKFingerprint
	}
	one := func(f Field) []byte { return fieldValues(d, f)[0] }
	_, err = t.tx.Exec(t.ctx, `INSERT INTO inventory_devices
		(id, ek, state, ix_state, ix_model, ix_firmware, ix_owner, ix_group, ix_serial, ix_last_seen, ix_cert_expiry, record)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		ON CONFLICT (id) DO UPDATE SET ek = excluded.ek, state = excluded.state, ix_state = excluded.ix_state,
			ix_model = excluded.ix_model, ix_firmware = excluded.ix_firmware, ix_owner = excluded.ix_owner,
			ix_group = excluded.ix_group, ix_serial = excluded.ix_serial, ix_last_seen = excluded.ix_last_seen,
			ix_cert_expiry = excluded.ix_cert_expiry, record = excluded.record`,
		d.ID, ek, string(d.State), one(FieldState), one(FieldModel), one(FieldFirmware), one(FieldOwner), one(FieldGroup),
		one(FieldSerial), one(FieldLastSeen), one(FieldCertExpiry), v)
	if postgres.UniqueViolation(err, "inventory_devices_ek_key") {
		return fmt.Errorf("%w: EK of device %q already belongs to another device", ErrEKConflict, d.ID)
	}
	if err != nil {
		return err
	}
	var was [][]byte
	if old != nil {
		was = fieldValues(old, FieldTag)
	}
	is := fieldValues(d, FieldTag)
	if old != nil && slices.EqualFunc(was, is, bytes.Equal) {
		return nil
	}
	if old != nil {
		if _, err := t.tx.Exec(t.ctx, "DELETE FROM inventory_device_tags WHERE device_id = $1", d.ID); err != nil {
			return err
		}
	}
	for _, tag := range is {
		if _, err := t.tx.Exec(t.ctx, "INSERT INTO inventory_device_tags (tag, device_id) VALUES ($1, $2)", tag, d.ID); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) revoked(serial string) (bool, error) {
	var ok bool
	err := t.tx.QueryRow(t.ctx, "SELECT EXISTS (SELECT 1 FROM inventory_revocations WHERE serial = $1)", serial).Scan(&ok)
	return ok, err
}

func (t *pgTx) protocolChanged(id string) error {
	t.protocols = append(t.protocols, id)
	// Every replica listening forgets it when this transaction commits.
	return notify.NotifyTx(t.ctx, t.tx, TopicProtocols, id)
}

func (t *pgTx) putRevocation(r *Revocation) error {
	v, err := encode(r)
	if err != nil {
		return err
	}
	tag, err := t.tx.Exec(t.ctx, "INSERT INTO inventory_revocations (serial, device_id, record) VALUES ($1, $2, $3) ON CONFLICT (serial) DO NOTHING",
		r.Serial, r.DeviceID, v)
	if err != nil || tag.RowsAffected() == 0 {
		return err
	}
	t.revokedAny = true
	// Every replica listening learns of it when (and only if) this
	// transaction commits.
	return notify.NotifyTx(t.ctx, t.tx, TopicRevocations, "")
}

// records returns the records a query lists.
func (t *pgTx) records(sql string, args ...any) ([][]byte, error) {
	rows, err := t.tx.Query(t.ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[[]byte])
}

func (t *pgTx) eachRevocation(fn func(*Revocation) error) error {
	recs, err := t.records("SELECT record FROM inventory_revocations ORDER BY serial")
	if err != nil {
		return err
	}
	for _, v := range recs {
		r, err := decode[Revocation](v)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) token(id string) (*Token, error) {
	v, err := t.one("SELECT record FROM inventory_tokens WHERE id = $1"+t.lock(), id)
	if err != nil || v == nil {
		return nil, err
	}
	return decode[Token](v)
}

func (t *pgTx) tokenByHash(hash []byte) (*Token, error) {
	v, err := t.one("SELECT record FROM inventory_tokens WHERE hash = $1"+t.lock(), hash)
	if err != nil || v == nil {
		return nil, err
	}
	return decode[Token](v)
}

func (t *pgTx) putToken(tok *Token) error {
	v, err := encode(tok)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO inventory_tokens (id, hash, record) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET record = excluded.record`, tok.ID, tok.Hash, v)
	return err
}

func (t *pgTx) deleteToken(tok *Token) error {
	_, err := t.tx.Exec(t.ctx, "DELETE FROM inventory_tokens WHERE id = $1", tok.ID)
	return err
}

func (t *pgTx) eachToken(fn func(*Token) error) error {
	recs, err := t.records("SELECT record FROM inventory_tokens ORDER BY id")
	if err != nil {
		return err
	}
	for _, v := range recs {
		tok, err := decode[Token](v)
		if err != nil {
			return err
		}
		if err := fn(tok); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) addEvent(e *Event, limit int) error {
	v, err := encode(e)
	if err != nil {
		return err
	}
	if _, err := t.tx.Exec(t.ctx, "INSERT INTO inventory_events (device_id, anonymous, record) VALUES ($1, $2, $3)",
		e.DeviceID, e.Anonymous, v); err != nil {
		return err
	}
	// Keep the newest limit of the device's events of this kind.
	_, err = t.tx.Exec(t.ctx, `DELETE FROM inventory_events WHERE device_id = $1 AND anonymous = $2 AND seq <=
		(SELECT seq FROM inventory_events WHERE device_id = $1 AND anonymous = $2 ORDER BY seq DESC OFFSET $3 LIMIT 1)`,
		e.DeviceID, e.Anonymous, limit)
	return err
}

func (t *pgTx) eachDevice(fn func(*Device) error) error {
	recs, err := t.records("SELECT record FROM inventory_devices ORDER BY id")
	if err != nil {
		return err
	}
	for _, v := range recs {
		d, err := decode[Device](v)
		if err != nil {
			return err
		}
		if err := fn(d); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) eachEvent(fn func(*Event) error) error {
	recs, err := t.records("SELECT record FROM inventory_events ORDER BY seq")
	if err != nil {
		return err
	}
	for _, v := range recs {
		e, err := decode[Event](v)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// ClearPostgres deletes every record of the inventory in db (sigil
// migrate --force), in one transaction.
func ClearPostgres(ctx context.Context, db *postgres.DB) error {
	err := db.Tx(ctx, func(t pgx.Tx) error {
		_, err := t.Exec(ctx, "TRUNCATE inventory_device_tags, inventory_devices, inventory_revocations, inventory_tokens, inventory_events")
		return err
	})
	if err != nil {
		return fmt.Errorf("inventory: clear: %w", err)
	}
	return nil
}
