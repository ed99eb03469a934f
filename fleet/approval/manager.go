package approval

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/internal/record"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// File is the approvals' bbolt file in the fleet's data directory.
const File = "approvals.db"

// Manager keeps requests in a bbolt file or in PostgreSQL, takes decisions on them and runs
// the executors. Its methods are safe for concurrent use.
type Manager struct {
	cfg Config
	db  kv.DB
	log *slog.Logger

	mu    sync.RWMutex
	execs map[Kind]Executor
}

const (
	schemaVersion = 1
	recordVersion = 1
)

var (
	bucketMeta     = []byte("meta")
	bucketRequests = []byte("requests") // ID -> Request (IDs sort by creation)
	bucketPending  = []byte("pending")  // ID -> nothing, for every pending request
)

// Open opens or creates the request file. Requests found executing (the
// server stopped during an execution) become interrupted.
func Open(cfg Config) (*Manager, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: Config.Path is required", ErrInvalid)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Schema{
		Buckets: append([][]byte{bucketMeta}, Buckets...),
		Version: schemaVersion,
	}, boltdb.Options{Name: "approval", Timeout: cfg.LockTimeout, NoSync: cfg.NoSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	return start(cfg, kv.Bolt(db), cfg.Path)
}

// migrations are the requests' tables in PostgreSQL (component
// "approval" in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "approval_kv"

// Buckets are the buckets of the requests, in the bbolt file and in
// PostgreSQL: what sigil migrate copies.
var Buckets = [][]byte{bucketRequests, bucketPending}

// OpenPostgres opens the requests in the PostgreSQL database db, bringing
// its tables up to date first (cfg.Path, LockTimeout and NoSync are
// unused). Its writes run one at a time across the replicas sharing db,
// each once (kv.Options.Serialized): a decision records its audit entry
// in its transaction. Requests found executing become interrupted: start
// it once per database (not on every replica), or a replica starting
// while another executes marks that execution interrupted. Close leaves
// db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	k, err := kv.PostgresMigrated(ctx, db, "approval", migrations, Table, kv.Options{Serialized: true})
	if err != nil {
		return nil, err
	}
	return start(cfg, k, "database")
}

// start marks interrupted executions and returns the manager.
func start(cfg Config, db kv.DB, where string) (*Manager, error) {
	m := &Manager{cfg: cfg, db: db, log: cfg.Logger, execs: make(map[Kind]Executor)}
	if err := m.interrupt(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("approval: initialize %s: %w", where, err)
	}
	return m, nil
}

// Close closes the file.
func (m *Manager) Close() error {
	if err := m.db.Close(); err != nil {
		return fmt.Errorf("approval: close: %w", err)
	}
	return nil
}

// Register sets the executor for a kind, which must have a rule. A kind's
// executor is set once (ErrExists after).
func (m *Manager) Register(kind Kind, exec Executor) error {
	if _, ok := m.cfg.Rules[kind]; !ok {
		return fmt.Errorf("%w: %q has no rule", ErrUnknownKind, kind)
	}
	if exec == nil {
		return fmt.Errorf("%w: nil executor for %q", ErrInvalid, kind)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.execs[kind]; ok {
		return fmt.Errorf("%w: %q", ErrExists, kind)
	}
	m.execs[kind] = exec
	return nil
}

// Rules returns a copy of the rules in force, defaults applied.
func (m *Manager) Rules() map[Kind]Rule {
	out := make(map[Kind]Rule, len(m.cfg.Rules))
	for k, r := range m.cfg.Rules {
		out[k] = r
	}
	return out
}

func (m *Manager) executor(kind Kind) Executor {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.execs[kind]
}

func encode(r *Request) ([]byte, error) {
	b, err := record.Encode(recordVersion, r)
	if err != nil {
		return nil, fmt.Errorf("approval: encode: %w", err)
	}
	return b, nil
}

func decode(b []byte) (*Request, error) {
	r, err := record.Decode[Request](recordVersion, b)
	if err != nil {
		return nil, fmt.Errorf("approval: decode: %w", err)
	}
	return r, nil
}

func getRequest(tx kv.Tx, id string) (*Request, error) {
	v := tx.Bucket(bucketRequests).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return decode(v)
}

// putRequest stores r and keeps the pending index.
func putRequest(tx kv.Tx, r *Request) error {
	b, err := encode(r)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketRequests).Put([]byte(r.ID), b); err != nil {
		return err
	}
	if r.State == StatePending {
		return tx.Bucket(bucketPending).Put([]byte(r.ID), nil)
	}
	return tx.Bucket(bucketPending).Delete([]byte(r.ID))
}

// audit sends an event to the Auditor, if any.
func (m *Manager) audit(ctx context.Context, action string, r *Request, actor, detail string, at time.Time) error {
	if m.cfg.Auditor == nil {
		return nil
	}
	err := m.cfg.Auditor.Record(ctx, Event{Time: at, Action: action, RequestID: r.ID, Kind: r.Kind, Target: r.Target, Actor: actor, Detail: detail})
	if err != nil {
		return fmt.Errorf("approval: audit %s of %s: %w", action, r.ID, err)
	}
	return nil
}

// oneLine reports whether s is 1 to max bytes of printable UTF-8 on one
// line.
func oneLine(s string, max int) bool {
	if s == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// text reports whether s is 1 to max bytes of printable UTF-8 (line breaks
// and tabs allowed), not all blank.
func text(s string, max int) bool {
	if strings.TrimSpace(s) == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != '\n' && r != '\r' && r != '\t' {
			return false
		}
	}
	return true
}

// Submit records a request by actor, who must hold the kind's request
// permission, and returns it pending.
func (m *Manager) Submit(ctx context.Context, actor Actor, d Draft) (Request, error) {
	rule, ok := m.cfg.Rules[d.Kind]
	if !ok || m.executor(d.Kind) == nil {
		return Request{}, fmt.Errorf("%w: %q", ErrUnknownKind, d.Kind)
	}
	if !actor.Can(rule.Request) {
		return Request{}, fmt.Errorf("%w: requesting %s needs %s", ErrForbidden, d.Kind, rule.Request)
	}
	var errs []error
	if !oneLine(d.Target, maxTarget) {
		errs = append(errs, fmt.Errorf("target must be 1 to %d printable characters on one line", maxTarget))
	}
	if !text(d.Justification, maxJustification) {
		errs = append(errs, fmt.Errorf("justification is required: 1 to %d printable characters", maxJustification))
	}
	params := d.Params
	if len(bytes.TrimSpace(params)) == 0 {
		params = json.RawMessage("{}")
	}
	var compact bytes.Buffer
	if len(params) > maxParams {
		errs = append(errs, fmt.Errorf("params exceed %d bytes", maxParams))
	} else if err := json.Compact(&compact, params); err != nil {
		errs = append(errs, errors.New("params are not valid JSON"))
	}
	ttl := d.TTL
	if ttl == 0 {
		ttl = rule.TTL
	}
	if ttl < 0 || ttl > m.cfg.MaxTTL {
		errs = append(errs, fmt.Errorf("ttl must be positive and at most %s", m.cfg.MaxTTL))
	}
	if actor.Subject() == "" {
		errs = append(errs, errors.New("the requester has no name"))
	}
	if d.Approvals < 0 || d.Approvals > MaxApprovals {
		errs = append(errs, fmt.Errorf("approvals must be 0 (the rule's) to %d", MaxApprovals))
	}
	if len(errs) > 0 {
		return Request{}, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	now := m.cfg.Now()
	r := &Request{
		Kind: d.Kind, Target: d.Target, Params: json.RawMessage(compact.Bytes()),
		Requester: actor.Subject(), Justification: d.Justification,
		Permission: rule.Request, Credential: actor.Credential(),
		Created: now, Expires: now.Add(ttl), Approve: rule.Approve, Required: max(rule.Approvals, d.Approvals),
		State: StatePending,
	}
	err := m.db.Update(ctx, func(tx kv.Tx) error {
		seq, err := tx.Bucket(bucketRequests).NextSequence()
		if err != nil {
			return err
		}
		if r.ID, err = newID(seq, m.cfg.Rand); err != nil {
			return err
		}
		if tx.Bucket(bucketRequests).Get([]byte(r.ID)) != nil {
			return errors.New("approval: request ID collision")
		}
		if err := m.audit(ctx, "requested", r, r.Requester, r.Justification, now); err != nil {
			return err
		}
		return putRequest(tx, r)
	})
	if err != nil {
		return Request{}, err
	}
	m.log.Info("approval requested", "request_id", r.ID, "kind", r.Kind, "target", r.Target, "by", r.Requester, "expires", r.Expires)
	return *r, nil
}

// Approve records actor's approval of a pending request. The requester
// cannot approve (ErrSelfApproval), nor can an account created or changed
// after the request was filed (ErrAccountChanged), nor anyone without the
// request's approve permission (ErrForbidden), nor anyone twice
// (ErrAlreadyApproved).
// A request past its expiry becomes expired (ErrExpired); one that is not
// pending fails with ErrNotPending.
//
// The approval that completes the count runs the kind's executor before
// Approve returns; the returned request then says executed or failed (the
// executor's error is in Request.Error, not returned).
func (m *Manager) Approve(ctx context.Context, actor Actor, id, comment string) (Request, error) {
	if comment != "" && !text(comment, maxJustification) {
		return Request{}, fmt.Errorf("%w: comment must be at most %d printable characters", ErrInvalid, maxJustification)
	}
	who := actor.Subject()
	now := m.cfg.Now()
	var (
		r       *Request
		expired bool
	)
	// A decision taken goes through when its client leaves.
	err := m.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error {
		var err error
		if r, err = getRequest(tx, id); err != nil {
			return err
		}
		if err := m.checkDecidable(ctx, tx, r, now, &expired); err != nil || expired {
			return err
		}
		switch {
		case who == "":
			return fmt.Errorf("%w: the approver has no name", ErrForbidden)
		case who == r.Requester:
			return ErrSelfApproval
		case !actor.Since().Before(r.Created):
			return fmt.Errorf("%w: %s's account changed %s, the request was filed %s", ErrAccountChanged, who,
				actor.Since().UTC().Format(time.RFC3339), r.Created.UTC().Format(time.RFC3339))
		case !actor.Can(r.Approve):
			return fmt.Errorf("%w: approving %s needs %s", ErrForbidden, r.Kind, r.Approve)
		case r.ApprovedBy(who):
			return ErrAlreadyApproved
		}
		if m.executor(r.Kind) == nil {
			return fmt.Errorf("%w: %q has no executor", ErrUnknownKind, r.Kind)
		}
		r.Approvals = append(r.Approvals, Decision{By: who, At: now, Comment: comment})
		if len(r.Approvals) >= r.Required {
			r.State = StateExecuting
		}
		detail := fmt.Sprintf("%d of %d", len(r.Approvals), r.Required)
		if comment != "" {
			detail += ": " + comment
		}
		if err := m.audit(ctx, "approved", r, who, detail, now); err != nil {
			return err
		}
		return putRequest(tx, r)
	})
	if err != nil {
		return Request{}, err
	}
	if expired {
		return *r, fmt.Errorf("%w: %s expired %s", ErrExpired, id, r.Expires.UTC().Format(time.RFC3339))
	}
	m.log.Info("approval granted", "request_id", r.ID, "kind", r.Kind, "by", who, "approvals", len(r.Approvals), "required", r.Required)
	if r.State != StateExecuting {
		return *r, nil
	}
	return m.execute(ctx, r)
}

// checkDecidable fails unless r is pending; a pending request past its
// expiry is marked expired in tx and *expired set (the caller commits).
func (m *Manager) checkDecidable(ctx context.Context, tx kv.Tx, r *Request, now time.Time, expired *bool) error {
	if r.State != StatePending {
		return fmt.Errorf("%w: %s is %s", ErrNotPending, r.ID, r.State)
	}
	if now.Before(r.Expires) {
		return nil
	}
	*expired = true
	return m.expire(ctx, tx, r, now)
}

func (m *Manager) expire(ctx context.Context, tx kv.Tx, r *Request, now time.Time) error {
	r.State = StateExpired
	if err := m.audit(ctx, "expired", r, "", fmt.Sprintf("%d of %d approvals", len(r.Approvals), r.Required), now); err != nil {
		return err
	}
	m.log.Info("approval request expired", "request_id", r.ID, "kind", r.Kind)
	return putRequest(tx, r)
}

// permission returns what r's requester needs to file it, and to have it
// run: as recorded, or (requests filed before it was) the rule's.
func (m *Manager) permission(r *Request) (auth.Permission, bool) {
	if r.Permission != "" {
		return r.Permission, true
	}
	rule, ok := m.cfg.Rules[r.Kind]
	return rule.Request, ok
}

// requester establishes r's requester again (Config.Requester) and checks
// they still hold the request's permission.
func (m *Manager) requester(ctx context.Context, r *Request) (Actor, error) {
	perm, ok := m.permission(r)
	if !ok {
		return nil, fmt.Errorf("%w: no rule for %q", ErrRequesterLacks, r.Kind)
	}
	if m.cfg.Requester == nil {
		return nil, fmt.Errorf("%w: the requester cannot be checked (no Config.Requester)", ErrRequesterLacks)
	}
	c := r.Credential
	if c.User == "" {
		// Filed before requests kept a credential: the requester as their
		// current role allows.
		c = auth.Credential{User: r.Requester, Method: auth.MethodSession, Scope: auth.RoleAdmin}
	}
	if c.User != r.Requester {
		return nil, fmt.Errorf("%w: the credential is %s's, the request %s's", ErrRequesterLacks, c.User, r.Requester)
	}
	as, err := m.cfg.Requester(ctx, c)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrRequesterLacks, err)
	case as == nil || as.Subject() != r.Requester:
		return nil, fmt.Errorf("%w: the credential names someone else", ErrRequesterLacks)
	case !as.Can(perm):
		return nil, fmt.Errorf("%w: %s no longer holds %s", ErrRequesterLacks, r.Requester, perm)
	}
	return as, nil
}

// execute runs the executor of a request this caller moved to executing,
// as its requester if they still may, and records the outcome.
func (m *Manager) execute(ctx context.Context, r *Request) (Request, error) {
	exec := m.executor(r.Kind)
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.ExecTimeout)
	as, err := m.requester(ectx, r)
	if err == nil {
		err = safeRun(ectx, exec, *r, as)
	}
	cancel()
	now := m.cfg.Now()
	action := "executed"
	r.State, r.Executed = StateExecuted, now
	if err != nil {
		action = "failed"
		r.State, r.Error = StateFailed, err.Error()
	}
	if aerr := m.audit(ctx, action, r, "", r.Error, now); aerr != nil {
		m.log.Error("approval outcome not audited", "request_id", r.ID, "err", aerr)
	}
	if derr := m.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error { return putRequest(tx, r) }); derr != nil {
		return *r, fmt.Errorf("approval: recording the outcome of %s (%s): %w", r.ID, action, derr)
	}
	if err != nil {
		m.log.Error("approved action failed", "request_id", r.ID, "kind", r.Kind, "err", err)
	} else {
		m.log.Info("approved action executed", "request_id", r.ID, "kind", r.Kind)
	}
	return *r, nil
}

// safeRun runs exec, turning a panic into an error.
func safeRun(ctx context.Context, exec Executor, r Request, as Actor) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("executor panicked: %v", p)
		}
	}()
	return exec(ctx, r, as)
}

// Reject ends a pending request: by someone holding its approve
// permission, or by its requester (a withdrawal) with a credential that
// holds the request's permission (a viewer-scoped token of the requester
// cannot withdraw what it could not have filed). A reason is required.
func (m *Manager) Reject(ctx context.Context, actor Actor, id, reason string) (Request, error) {
	if !text(reason, maxJustification) {
		return Request{}, fmt.Errorf("%w: a reason of 1 to %d printable characters is required", ErrInvalid, maxJustification)
	}
	who := actor.Subject()
	now := m.cfg.Now()
	var (
		r       *Request
		expired bool
	)
	err := m.db.Update(ctx, func(tx kv.Tx) error {
		var err error
		if r, err = getRequest(tx, id); err != nil {
			return err
		}
		if err := m.checkDecidable(ctx, tx, r, now, &expired); err != nil || expired {
			return err
		}
		perm, _ := m.permission(r)
		switch {
		case who == "":
			return fmt.Errorf("%w: the person has no name", ErrForbidden)
		case who == r.Requester && !actor.Can(perm) && !actor.Can(r.Approve):
			return fmt.Errorf("%w: withdrawing %s needs %s", ErrForbidden, r.Kind, perm)
		case who != r.Requester && !actor.Can(r.Approve):
			return fmt.Errorf("%w: rejecting %s needs %s", ErrForbidden, r.Kind, r.Approve)
		}
		r.State = StateRejected
		r.Rejection = &Decision{By: who, At: now, Comment: reason}
		if err := m.audit(ctx, "rejected", r, who, reason, now); err != nil {
			return err
		}
		return putRequest(tx, r)
	})
	if err != nil {
		return Request{}, err
	}
	if expired {
		return *r, fmt.Errorf("%w: %s expired %s", ErrExpired, id, r.Expires.UTC().Format(time.RFC3339))
	}
	m.log.Info("approval rejected", "request_id", r.ID, "kind", r.Kind, "by", who)
	return *r, nil
}

// Get returns a request by ID.
func (m *Manager) Get(ctx context.Context, id string) (Request, error) {
	var out Request
	err := m.db.View(ctx, func(tx kv.Tx) error {
		r, err := getRequest(tx, id)
		if err != nil {
			return err
		}
		out = *r
		return nil
	})
	return out, err
}

// Pending returns the pending, unexpired requests, oldest first: what is
// waiting and why.
func (m *Manager) Pending(ctx context.Context) ([]Request, error) {
	now := m.cfg.Now()
	var out []Request
	err := m.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketPending).ForEach(func(k, _ []byte) error {
			r, err := getRequest(tx, string(k))
			if err != nil {
				return err
			}
			if r.StateAt(now) == StatePending {
				out = append(out, *r)
			}
			return nil
		})
	})
	return out, err
}

// Inbox returns the pending, unexpired requests actor may approve now: not
// their own, not yet approved by them, filed after their account last
// changed, and needing a permission they hold.
func (m *Manager) Inbox(ctx context.Context, actor Actor) ([]Request, error) {
	all, err := m.Pending(ctx)
	if err != nil {
		return nil, err
	}
	who := actor.Subject()
	var out []Request
	for _, r := range all {
		if r.Requester != who && !r.ApprovedBy(who) && actor.Since().Before(r.Created) && actor.Can(r.Approve) {
			out = append(out, r)
		}
	}
	return out, nil
}

// Filter selects requests for List.
type Filter struct {
	State  State  // "" for any (as stored: see Request.StateAt)
	Kind   Kind   // "" for any
	Before string // cursor: list IDs before this one ("" from the newest)
	Limit  int    // page size; default 50, at most 500
}

// List returns requests newest first that match f, and the cursor for the
// next page ("" when there is none).
func (m *Manager) List(ctx context.Context, f Filter) ([]Request, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 500)
	var out []Request
	next := ""
	err := m.db.View(ctx, func(tx kv.Tx) error {
		c := tx.Bucket(bucketRequests).Cursor()
		var k, v []byte
		if f.Before == "" {
			k, v = c.Last()
		} else {
			k, _ = c.Seek([]byte(f.Before))
			if k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for ; k != nil; k, v = c.Prev() {
			if len(out) == limit {
				next = out[len(out)-1].ID
				return nil
			}
			r, err := decode(v)
			if err != nil {
				return fmt.Errorf("%w (request %q)", err, k)
			}
			if (f.State == "" || r.State == f.State) && (f.Kind == "" || r.Kind == f.Kind) {
				out = append(out, *r)
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// Expire records every pending request past its expiry as expired and
// returns how many.
func (m *Manager) Expire(ctx context.Context) (int, error) {
	now := m.cfg.Now()
	n := 0
	err := m.db.Update(ctx, func(tx kv.Tx) error {
		n = 0
		var ids []string
		if err := tx.Bucket(bucketPending).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		}); err != nil {
			return err
		}
		for _, id := range ids {
			r, err := getRequest(tx, id)
			if err != nil {
				return err
			}
			if r.State == StatePending && !now.Before(r.Expires) {
				if err := m.expire(ctx, tx, r, now); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}

// interrupt marks requests left executing by a previous run as interrupted.
func (m *Manager) interrupt(ctx context.Context) error {
	now := m.cfg.Now()
	return m.db.Update(ctx, func(tx kv.Tx) error {
		var stuck []*Request
		err := tx.Bucket(bucketRequests).ForEach(func(k, v []byte) error {
			r, err := decode(v)
			if err != nil {
				return fmt.Errorf("%w (request %q)", err, k)
			}
			if r.State == StateExecuting {
				stuck = append(stuck, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range stuck {
			r.State = StateInterrupted
			r.Executed = now
			r.Error = "the server stopped while the action ran; check whether it took effect"
			if err := m.audit(context.Background(), "interrupted", r, "", r.Error, now); err != nil {
				return err
			}
			m.log.Warn("approved action interrupted by a restart", "request_id", r.ID, "kind", r.Kind)
			if err := putRequest(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// Run records expired requests every Config.SweepInterval until ctx ends;
// it returns nil then.
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := m.Expire(ctx); err != nil {
				m.log.Error("expiring approval requests", "err", err)
			}
		}
	}
}
