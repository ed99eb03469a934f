package access

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/sshca"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/crypto/ssh"
)

// File is the grants' bbolt file in the fleet's data directory; CAKeyFile
// the SSH user CA key (0600, created at first start).
const (
	File      = "access.db"
	CAKeyFile = "ssh_user_ca.key"
)

// Approvals is what the service needs of the approvals that hold grant
// requests (*approval.Manager).
type Approvals interface {
	Register(approval.Kind, approval.Executor) error
	Submit(ctx context.Context, actor approval.Actor, d approval.Draft) (approval.Request, error)
	Approve(ctx context.Context, actor approval.Actor, id, comment string) (approval.Request, error)
	Reject(ctx context.Context, actor approval.Actor, id, reason string) (approval.Request, error)
	Get(ctx context.Context, id string) (approval.Request, error)
}

// Devices is what the service needs of the inventory.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	Query(ctx context.Context, q inventory.Query) (inventory.Page, error)
}

// Config configures a Service.
type Config struct {
	// Dir is the fleet's data directory, where File and CAKeyFile are.
	// Required.
	Dir string
	// Database, when set, keeps the grants in PostgreSQL (table
	// access_kv, brought up to date at Open; writes serialized across
	// the replicas sharing it) instead of Dir/File. Close leaves it open.
	Database *postgres.DB
	// CA is the SSH user CA; nil means the key in Dir/CAKeyFile (created
	// at first start, 0600) for TrustDomain.
	CA          *sshca.CA
	TrustDomain string
	// Approvals is the fleet's two-person rule (two_person_rule), which
	// then holds grant requests with the fleet's other dangerous changes.
	// Nil, or a nil *approval.Manager, means the service keeps its own:
	// the fleet's approvals store (Dir/approval.File, or Database) opened
	// for access grants only, so that grants are approved by someone
	// other than the requester with or without the fleet-wide rule.
	Approvals Approvals
	// Principals establishes a requester again when their approved grant
	// is about to be signed (*auth.Service); the service's own approvals
	// need it. With neither Approvals nor Principals every request is
	// refused with ErrNoApprovals.
	Principals approval.PrincipalSource
	Devices    Devices // required
	Audit      audit.Recorder
	// Send publishes to a device's down topic of a kind ("access"). Nil
	// sends nothing.
	Send   func(deviceID, kind string, payload []byte) error
	Policy Policy
	// SweepInterval is how often Run records expired grants; 0 means a
	// minute.
	SweepInterval time.Duration
	Rand          io.Reader        // nil means crypto/rand
	Now           func() time.Time // nil means time.Now
	Logger        *slog.Logger     // nil discards
	NoSync        bool             // tests only
}

// Errors. Compare with errors.Is.
var (
	ErrNotFound    = errors.New("access: no such grant")
	ErrForbidden   = errors.New("access: permission denied")
	ErrNoApprovals = errors.New("access: grants cannot be approved (no approvals configured)")
)

// Service keeps grants, signs their certificates and tells devices whom
// to trust. Its methods are safe for concurrent use.
type Service struct {
	cfg Config
	db  kv.DB
	log *slog.Logger
	q   chan func(context.Context)
	// own is the approvals the service opened itself (Config.Approvals
	// nil); Run and Close run and close it.
	own *approval.Manager

	mu     sync.Mutex
	events map[string]*window // device ID -> session events recorded this minute
}

// window counts one device's session events in the current minute.
type window struct {
	start time.Time
	n     int
}

// MaxSessionEvents bounds the session events one device may have
// recorded per minute; more are dropped (and logged once per minute), so
// that a device cannot grow the audit log at will.
const MaxSessionEvents = 120

var (
	bucketMeta    = []byte("meta")    // the bbolt file's schema version
	bucketGrants  = []byte("grants")  // ID -> Grant (JSON)
	bucketSerials = []byte("serials") // serial (8 bytes) -> ID
	bucketState   = []byte("state")   // "generation" -> uint64, the KRL version
)

// Buckets are the grants' buckets, in the bbolt file and in PostgreSQL:
// what sigil migrate copies.
var Buckets = [][]byte{bucketGrants, bucketSerials, bucketState}

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "access_kv"

// Open opens or creates the grants' file and the user CA, opens the
// service's own approvals when Config.Approvals is nil (and Principals
// is set), and registers the grant executor with the approvals.
func Open(cfg Config) (*Service, error) {
	if cfg.Dir == "" || cfg.Devices == nil {
		return nil, errors.New("access: Dir and Devices are required")
	}
	if m, ok := cfg.Approvals.(*approval.Manager); ok && m == nil {
		cfg.Approvals = nil
	}
	var err error
	if cfg.Policy, err = cfg.Policy.withDefaults(); err != nil {
		return nil, err
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.Discard{}
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = time.Minute
	}
	if cfg.CA == nil {
		if cfg.CA, err = sshca.Open(sshca.Config{KeyFile: filepath.Join(cfg.Dir, CAKeyFile), TrustDomain: cfg.TrustDomain, Rand: cfg.Rand, Now: cfg.Now, Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("access: user CA: %w", err)
		}
	}
	db, err := openDB(cfg)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, db: db, log: cfg.Logger, q: make(chan func(context.Context), 1024), events: map[string]*window{}}
	if s.cfg.Approvals == nil && cfg.Principals != nil {
		if s.own, err = openApprovals(cfg); err != nil {
			db.Close()
			return nil, err
		}
		s.cfg.Approvals = s.own
	}
	if s.cfg.Approvals != nil {
		if err := s.cfg.Approvals.Register(approval.KindAccessGrant, s.execute); err != nil {
			s.Close()
			return nil, fmt.Errorf("access: %w", err)
		}
	}
	return s, nil
}

// openApprovals opens the fleet's approvals store with the rule for
// access grants only (approval.DefaultRules: access.approve approves):
// the service's own approvals when the fleet has no two-person rule.
// Requests of other kinds left there by a fleet that had the rule are
// not run by it.
func openApprovals(cfg Config) (*approval.Manager, error) {
	ac := approval.Config{
		Path:      filepath.Join(cfg.Dir, approval.File),
		Rules:     map[approval.Kind]approval.Rule{approval.KindAccessGrant: approval.DefaultRules()[approval.KindAccessGrant]},
		Auditor:   approval.AuditLog{Log: cfg.Audit},
		Requester: approval.RequesterFrom(cfg.Principals),
		Now:       cfg.Now, Rand: cfg.Rand, Logger: cfg.Logger, NoSync: cfg.NoSync,
	}
	var m *approval.Manager
	var err error
	if cfg.Database != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m, err = approval.OpenPostgres(ctx, cfg.Database, ac)
	} else {
		m, err = approval.Open(ac)
	}
	if err != nil {
		return nil, fmt.Errorf("access: approvals: %w", err)
	}
	return m, nil
}

// migrations are the grants' tables in PostgreSQL (component "access"
// in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// openDB opens the grants in PostgreSQL (Config.Database) or in their
// bbolt file.
func openDB(cfg Config) (kv.DB, error) {
	if cfg.Database != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return OpenPostgres(ctx, cfg.Database)
	}
	return openBolt(filepath.Join(cfg.Dir, File), cfg.NoSync)
}

func openBolt(path string, noSync bool) (kv.DB, error) {
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: append([][]byte{bucketMeta}, Buckets...), Version: 1},
		boltdb.Options{Name: "access", NoSync: noSync})
	if err != nil {
		return nil, err
	}
	return kv.Bolt(db), nil
}

// CreateFile creates an empty grants file at path (sigil migrate).
func CreateFile(path string) error {
	db, err := openBolt(path, false)
	if err == nil {
		err = db.Close()
	}
	return err
}

// OpenPostgres brings the grants' tables in db up to date and returns
// them; closing the result leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB) (kv.DB, error) {
	return kv.PostgresMigrated(ctx, db, "access", migrations, Table, kv.Options{Serialized: true})
}

// Close closes the grants' file and the service's own approvals; a nil
// Service has nothing to close.
func (s *Service) Close() error {
	if s == nil {
		return nil
	}
	var err error
	if s.own != nil {
		err = s.own.Close()
	}
	return errors.Join(s.db.Close(), err)
}

// CA returns the SSH user CA.
func (s *Service) CA() *sshca.CA { return s.cfg.CA }

// Policy returns the policy in force, defaults applied.
func (s *Service) Policy() Policy { return s.cfg.Policy }

func (s *Service) get(tx kv.Tx, id string) (*Grant, error) {
	v := tx.Bucket(bucketGrants).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	var g Grant
	if err := json.Unmarshal(v, &g); err != nil {
		return nil, fmt.Errorf("access: decode %s: %w", id, err)
	}
	return &g, nil
}

func (s *Service) put(tx kv.Tx, g *Grant) error {
	b, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketGrants).Put([]byte(g.ID), b)
}

func (s *Service) record(ctx context.Context, e audit.Entry) error {
	if err := s.cfg.Audit.Record(ctx, e); err != nil {
		return fmt.Errorf("access: audit %s: %w", e.Action, err)
	}
	return nil
}

// Request files a grant request by actor (who needs access.request) and
// submits it to the two-person rule. The policy decides what may be asked
// (Policy.Check); a device target must exist.
func (s *Service) Request(ctx context.Context, actor approval.Actor, d Draft) (Grant, error) {
	if !actor.Can(auth.PermAccessRequest) {
		return Grant{}, fmt.Errorf("%w: requesting access needs %s", ErrForbidden, auth.PermAccessRequest)
	}
	if s.cfg.Approvals == nil {
		return Grant{}, ErrNoApprovals
	}
	d, key, err := s.cfg.Policy.Check(d)
	if err != nil {
		return Grant{}, err
	}
	if d.Device != "" {
		if _, err := s.cfg.Devices.Device(ctx, d.Device); errors.Is(err, inventory.ErrNotFound) {
			return Grant{}, fmt.Errorf("%w: no such device", ErrPolicy)
		} else if err != nil {
			return Grant{}, fmt.Errorf("access: %w", err)
		}
	}
	var idb [8]byte
	if _, err := io.ReadFull(s.cfg.Rand, idb[:]); err != nil {
		return Grant{}, fmt.Errorf("access: id: %w", err)
	}
	g := &Grant{
		ID: hex.EncodeToString(idb[:]), Requester: actor.Subject(), Device: d.Device, Group: d.Group, Login: d.Login,
		PublicKey: d.PublicKey, Fingerprint: ssh.FingerprintSHA256(key), SourceAddress: d.SourceAddress,
		PortForwarding: d.PortForwarding, AgentForwarding: d.AgentForwarding, Justification: d.Justification,
		Duration: d.Duration, State: StateRequested, Created: s.cfg.Now().UTC(),
	}
	// The grant exists before its approval request, so that an approval
	// that comes at once finds it.
	if err := s.db.Update(ctx, func(tx kv.Tx) error {
		for {
			var sb [8]byte
			if _, err := io.ReadFull(s.cfg.Rand, sb[:]); err != nil {
				return err
			}
			g.Serial = binary.BigEndian.Uint64(sb[:]) >> 1 // positive as an int64 too
			if g.Serial != 0 && tx.Bucket(bucketSerials).Get(sb8(g.Serial)) == nil {
				break
			}
		}
		if err := tx.Bucket(bucketSerials).Put(sb8(g.Serial), []byte(g.ID)); err != nil {
			return err
		}
		return s.put(tx, g)
	}); err != nil {
		return Grant{}, fmt.Errorf("access: %w", err)
	}
	params, _ := json.Marshal(map[string]string{"grant": g.ID})
	req, err := s.cfg.Approvals.Submit(ctx, actor, approval.Draft{
		Kind: approval.KindAccessGrant, Target: g.Target(), Params: params, Approvals: s.cfg.Policy.Approvals,
		Justification: fmt.Sprintf("SSH as %s on %s for %s: %s", g.Login, g.Target(), time.Duration(g.Duration), g.Justification),
	})
	if err != nil {
		_ = s.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error {
			_ = tx.Bucket(bucketSerials).Delete(sb8(g.Serial))
			return tx.Bucket(bucketGrants).Delete([]byte(g.ID))
		})
		return Grant{}, fmt.Errorf("access: %w", err)
	}
	err = s.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error {
		cur, err := s.get(tx, g.ID)
		if err != nil {
			return err
		}
		cur.ApprovalID, cur.ApprovalExpires = req.ID, req.Expires
		if err := s.record(ctx, audit.New(audit.User(g.Requester), "access.requested", g.ID).Because(g.Justification).Request(req.ID).
			With("target", g.Target()).With("login", g.Login).With("duration", time.Duration(g.Duration).String()).With("key", g.Fingerprint)); err != nil {
			return err
		}
		*g = *cur
		return s.put(tx, cur)
	})
	if err != nil {
		return Grant{}, err
	}
	s.log.Info("access requested", "grant", g.ID, "by", g.Requester, "target", g.Target(), "login", g.Login, "duration", time.Duration(g.Duration))
	return *g, nil
}

// generation is the KRL version: how many revocations were recorded.
func generation(tx kv.Tx) uint64 {
	if v := tx.Bucket(bucketState).Get([]byte("generation")); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func sb8(serial uint64) []byte { return binary.BigEndian.AppendUint64(nil, serial) }

// Approve records actor's approval of a requested grant through the
// two-person rule (the requester never can: approval.ErrSelfApproval);
// the approval that completes the count signs the certificate.
func (s *Service) Approve(ctx context.Context, actor approval.Actor, id, comment string) (Grant, error) {
	g, err := s.Get(ctx, id)
	if err != nil {
		return Grant{}, err
	}
	if _, err := Transition(g.State, StateApproved); err != nil {
		return Grant{}, err
	}
	if s.cfg.Approvals == nil {
		return Grant{}, ErrNoApprovals
	}
	if _, err := s.cfg.Approvals.Approve(ctx, actor, g.ApprovalID, comment); err != nil {
		return Grant{}, fmt.Errorf("access: %w", err)
	}
	return s.Get(ctx, id)
}

// Deny rejects a requested grant (an approver) or withdraws it (its
// requester), through the two-person rule.
func (s *Service) Deny(ctx context.Context, actor approval.Actor, id, reason string) (Grant, error) {
	g, err := s.Get(ctx, id)
	if err != nil {
		return Grant{}, err
	}
	if _, err := Transition(g.State, StateDenied); err != nil {
		return Grant{}, err
	}
	if s.cfg.Approvals == nil {
		return Grant{}, ErrNoApprovals
	}
	if _, err := s.cfg.Approvals.Reject(ctx, actor, g.ApprovalID, reason); err != nil {
		return Grant{}, fmt.Errorf("access: %w", err)
	}
	return s.Get(ctx, id)
}

// execute is the approval.Executor of KindAccessGrant: it signs the
// grant's certificate, valid from now (a minute back for clock skew) to
// now + its duration.
func (s *Service) execute(ctx context.Context, r approval.Request, _ approval.Actor) error {
	var p struct{ Grant string }
	if err := json.Unmarshal(r.Params, &p); err != nil || p.Grant == "" {
		return errors.New("access: approval names no grant")
	}
	var approvers []string
	for _, d := range r.Approvals {
		approvers = append(approvers, d.By)
	}
	now := s.cfg.Now().UTC()
	var out Grant
	err := s.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error {
		g, err := s.get(tx, p.Grant)
		if err != nil {
			return err
		}
		if g.ApprovalID != "" && g.ApprovalID != r.ID {
			return fmt.Errorf("access: grant %s belongs to approval %s", g.ID, g.ApprovalID)
		}
		if err := g.move(StateApproved); err != nil {
			return err
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(g.PublicKey))
		if err != nil {
			return fmt.Errorf("access: stored key: %w", err)
		}
		g.Start, g.End, g.Approvers, g.ApprovalID = now, now.Add(time.Duration(g.Duration)), approvers, r.ID
		cert, err := s.cfg.CA.SignUser(key, sshca.UserCert{
			KeyID: g.KeyID(), Serial: g.Serial, Principals: []string{g.Principal()},
			ValidAfter: now.Add(-time.Minute), ValidBefore: g.End, SourceAddress: g.SourceAddress,
			PortForwarding: g.PortForwarding, AgentForwarding: g.AgentForwarding,
		})
		if err != nil {
			return err
		}
		g.Certificate = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))) + " " + g.KeyID()
		if err := s.record(ctx, audit.New(audit.User(approvers[len(approvers)-1]), "access.approved", g.ID).Request(r.ID).
			With("requester", g.Requester).With("approvers", strings.Join(approvers, ",")).With("target", g.Target()).
			With("login", g.Login).With("serial", fmt.Sprint(g.Serial)).With("end", g.End.Format(time.RFC3339))); err != nil {
			return err
		}
		out = *g
		return s.put(tx, g)
	})
	if err != nil {
		return err
	}
	s.log.Info("access granted", "grant", out.ID, "requester", out.Requester, "approvers", approvers, "target", out.Target(), "end", out.End)
	return nil
}

// Get returns a grant, its state brought up to date with its approval
// request (rejected: denied; lapsed: expired) and the clock.
func (s *Service) Get(ctx context.Context, id string) (Grant, error) {
	var g *Grant
	err := s.db.View(ctx, func(tx kv.Tx) error {
		var err error
		g, err = s.get(tx, id)
		return err
	})
	if err != nil {
		return Grant{}, err
	}
	return s.reconcile(ctx, g), nil
}

// reconcile records what changed outside the service: a rejected or
// lapsed approval request, a passed end.
func (s *Service) reconcile(ctx context.Context, g *Grant) Grant {
	now := s.cfg.Now()
	to := g.StateAt(now)
	reason := ""
	if g.State == StateRequested && s.cfg.Approvals != nil && g.ApprovalID != "" {
		if r, err := s.cfg.Approvals.Get(ctx, g.ApprovalID); err == nil {
			switch r.StateAt(now) {
			case approval.StateRejected:
				to = StateDenied
				if r.Rejection != nil {
					reason = r.Rejection.By + ": " + r.Rejection.Comment
				}
			case approval.StateExpired:
				to = StateExpired
			case approval.StateFailed, approval.StateInterrupted:
				to, reason = StateDenied, "approval failed: "+r.Error
			}
		}
	}
	if to == g.State {
		return *g
	}
	var out Grant
	err := s.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error {
		cur, err := s.get(tx, g.ID)
		if err != nil {
			return err
		}
		if cur.State != g.State {
			out = *cur
			return nil // someone else moved it
		}
		if err := cur.move(to); err != nil {
			return err
		}
		if reason != "" {
			cur.Reason = reason
		}
		if err := s.record(ctx, audit.New(audit.System("access"), "access."+string(to), cur.ID).Because(reason).With("requester", cur.Requester)); err != nil {
			return err
		}
		out = *cur
		return s.put(tx, cur)
	})
	if err != nil {
		s.log.Warn("access: recording a grant's new state failed", "grant", g.ID, "err", err)
		g.State = to
		return *g
	}
	return out
}

// Filter selects grants for List.
type Filter struct {
	State  State  // "" for any
	Device string // grants naming this device ("" for any)
}

// List returns the grants newest first: every grant for someone holding
// access.approve, one's own otherwise.
func (s *Service) List(ctx context.Context, actor approval.Actor, f Filter) ([]Grant, error) {
	all := actor.Can(auth.PermAccessApprove)
	if !all && !actor.Can(auth.PermAccessRequest) {
		return nil, fmt.Errorf("%w: listing grants needs %s or %s", ErrForbidden, auth.PermAccessRequest, auth.PermAccessApprove)
	}
	var gs []*Grant
	err := s.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketGrants).ForEach(func(_, v []byte) error {
			var g Grant
			if err := json.Unmarshal(v, &g); err != nil {
				return err
			}
			if (all || g.Requester == actor.Subject()) && (f.Device == "" || g.Device == f.Device) {
				gs = append(gs, &g)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	out := make([]Grant, 0, len(gs))
	for _, g := range gs {
		if r := s.reconcile(ctx, g); f.State == "" || r.State == f.State {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Grant) int { return b.Created.Compare(a.Created) })
	return out, nil
}

// Revoke ends an approved or active grant at once: its serial goes on the
// KRL, which is pushed to the devices it targets. Its requester or anyone
// holding access.approve may revoke it.
func (s *Service) Revoke(ctx context.Context, actor approval.Actor, id, reason string) (Grant, error) {
	g, err := s.Get(ctx, id)
	if err != nil {
		return Grant{}, err
	}
	if !actor.Can(auth.PermAccessApprove) && !(actor.Can(auth.PermAccessRequest) && g.Requester == actor.Subject()) {
		return Grant{}, fmt.Errorf("%w: revoking another's grant needs %s", ErrForbidden, auth.PermAccessApprove)
	}
	reason = strings.TrimSpace(reason)
	if len(reason) > 2000 {
		return Grant{}, fmt.Errorf("%w: reason is longer than 2000 characters", ErrPolicy)
	}
	now := s.cfg.Now().UTC()
	var out Grant
	err = s.db.Update(context.WithoutCancel(ctx), func(tx kv.Tx) error {
		cur, err := s.get(tx, id)
		if err != nil {
			return err
		}
		if st := cur.StateAt(now); st != cur.State {
			_, err := Transition(st, StateRevoked)
			return err
		}
		if err := cur.move(StateRevoked); err != nil {
			return err
		}
		cur.Revoked, cur.RevokedBy, cur.Reason = now, actor.Subject(), reason
		if err := tx.Bucket(bucketState).Put([]byte("generation"), sb8(generation(tx)+1)); err != nil {
			return err
		}
		if err := s.record(ctx, audit.New(audit.User(actor.Subject()), "access.revoked", cur.ID).Because(reason).
			With("requester", cur.Requester).With("target", cur.Target()).With("serial", fmt.Sprint(cur.Serial))); err != nil {
			return err
		}
		out = *cur
		return s.put(tx, cur)
	})
	if err != nil {
		return Grant{}, fmt.Errorf("access: %w", err)
	}
	s.log.Info("access revoked", "grant", out.ID, "by", actor.Subject(), "target", out.Target())
	s.pushTarget(ctx, &out)
	return out, nil
}

// pushTarget sends the trust to every device the grant targets.
func (s *Service) pushTarget(ctx context.Context, g *Grant) {
	if g.Device != "" {
		s.Push(ctx, g.Device)
		return
	}
	q := inventory.Query{Where: map[inventory.Field]string{inventory.FieldGroup: g.Group}, Limit: 1000}
	for {
		page, err := s.cfg.Devices.Query(ctx, q)
		if err != nil {
			s.log.Warn("access: listing the group's devices failed", "group", g.Group, "err", err)
			return
		}
		for _, d := range page.Devices {
			if d.Group == g.Group {
				s.Push(ctx, d.ID)
			}
		}
		if page.Next == "" {
			return
		}
		q.After = page.Next
	}
}

// Trust returns what device deviceID's sshd must trust now: the user CA,
// the policy's logins with the device's principals, and the KRL of every
// revoked grant that has not ended yet.
func (s *Service) Trust(ctx context.Context, deviceID string) (*wire.AccessTrust, error) {
	d, err := s.cfg.Devices.Device(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	now := s.cfg.Now()
	var serials []uint64
	var ids []string
	var gen uint64
	err = s.db.View(ctx, func(tx kv.Tx) error {
		gen = generation(tx)
		return tx.Bucket(bucketGrants).ForEach(func(_, v []byte) error {
			var g Grant
			if err := json.Unmarshal(v, &g); err != nil {
				return err
			}
			if g.State == StateRevoked && now.Before(g.End) {
				serials = append(serials, g.Serial)
				ids = append(ids, g.KeyID())
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	t := &wire.AccessTrust{UserCAKeys: []string{s.cfg.CA.AuthorizedKey()}, Generation: gen,
		RevokedKeys: sshca.KRL(s.cfg.CA.PublicKey(), serials, ids, gen, now)}
	for _, l := range s.cfg.Policy.Logins {
		t.Logins = append(t.Logins, wire.AccessLogin{Login: l, Principals: Principals(l, d.ID, d.Group)})
	}
	return t, nil
}

// Push sends the device its trust now.
func (s *Service) Push(ctx context.Context, deviceID string) {
	if s.cfg.Send == nil {
		return
	}
	t, err := s.Trust(ctx, deviceID)
	if err == nil {
		var b []byte
		if b, err = wire.Encode(wire.TypeAccessTrust, nil, s.cfg.Now(), t); err == nil {
			err = s.cfg.Send(deviceID, wire.KindAccess, b)
		}
	}
	if err != nil {
		s.log.Warn("access: sending the trust failed", "device_id", deviceID, "err", err)
	}
}

// Submit queues an access.sessions message from an authenticated device:
// without events it asks for the device's trust (Push). It never blocks:
// when the queue is full the message is dropped (the device asks again at
// its next session).
func (s *Service) Submit(deviceID string, env *wire.Envelope) {
	s.enqueue(func(ctx context.Context) {
		var rep wire.AccessSessions
		if err := wire.DecodeBody(env, wire.TypeAccessSessions, &rep); err != nil {
			s.log.Info("access: malformed session report", "device_id", deviceID, "err", err)
			return
		}
		if len(rep.Events) == 0 {
			s.Push(ctx, deviceID)
			return
		}
		s.Sessions(ctx, deviceID, &rep)
	})
}

func (s *Service) enqueue(fn func(context.Context)) {
	select {
	case s.q <- fn:
	default:
		s.log.Warn("access: queue full; dropping a device message")
	}
}

// Run handles queued device messages and records expired grants (and,
// with its own approvals, expired approval requests) until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if s.own != nil {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.own.Run(ctx) }()
		defer func() { cancel(); <-done }()
	}
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case fn := <-s.q:
			fn(ctx)
		case <-t.C:
			s.Sweep(ctx)
		}
	}
}

// Sweep records every grant whose state changed with the clock or its
// approval request (expired, denied).
func (s *Service) Sweep(ctx context.Context) {
	var gs []*Grant
	_ = s.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketGrants).ForEach(func(_, v []byte) error {
			var g Grant
			if json.Unmarshal(v, &g) == nil && !g.State.Final() {
				gs = append(gs, &g)
			}
			return nil
		})
	})
	for _, g := range gs {
		s.reconcile(ctx, g)
	}
}

// maxSessions bounds the sessions kept on one grant.
const maxSessions = 256

// Sessions records session events a device reported (device claims): each
// is tied to the grant whose serial and key ID it names, if that grant
// covers the device and its certificate came from the user CA; the audit
// entry says who asked for it, why and who approved. A start moves an
// approved grant to active. Claims that match no grant, or a grant that
// does not cover the device, are recorded as failures (a device claiming
// a session it could not have had).
func (s *Service) Sessions(ctx context.Context, deviceID string, rep *wire.AccessSessions) {
	dev, err := s.cfg.Devices.Device(ctx, deviceID)
	if err != nil {
		s.log.Warn("access: session report from an unknown device", "device_id", deviceID, "err", err)
		return
	}
	for _, e := range rep.Events {
		if !s.allow(deviceID) {
			return
		}
		if err := s.session(ctx, dev, e); err != nil {
			s.log.Warn("access: recording a session failed", "device_id", deviceID, "err", err)
		}
	}
}

// allow counts one session event of a device against MaxSessionEvents.
func (s *Service) allow(deviceID string) bool {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.events[deviceID]
	if w == nil || now.Sub(w.start) >= time.Minute || now.Before(w.start) {
		if len(s.events) >= 100_000 {
			clear(s.events)
		}
		w = &window{start: now}
		s.events[deviceID] = w
	}
	w.n++
	if w.n == MaxSessionEvents+1 {
		s.log.Warn("access: a device reports more sessions than the limit; dropping the rest of this minute", "device_id", deviceID, "limit", MaxSessionEvents)
	}
	return w.n <= MaxSessionEvents
}

func (s *Service) session(ctx context.Context, dev *inventory.Device, e wire.AccessSession) error {
	action := "access.session." + e.Event
	entry := audit.New(audit.Device(dev.ID), action, "").With("claim", "device").With("user", e.User).
		With("from", e.From).With("port", fmt.Sprint(e.Port)).With("key_id", e.KeyID).With("serial", fmt.Sprint(e.Serial))
	if e.Serial == 0 || !strings.HasPrefix(e.KeyID, KeyIDPrefix) {
		if e.Event == wire.AccessSessionEnd {
			return nil // the end of a session sigild did not see start, or not a grant's
		}
		return s.record(ctx, entry.Fail(errors.New("the certificate names no grant")))
	}
	now := s.cfg.Now().UTC()
	return s.db.Update(ctx, func(tx kv.Tx) error {
		id := tx.Bucket(bucketSerials).Get(sb8(e.Serial))
		var g *Grant
		var why error
		if id == nil {
			why = errors.New("no grant has this serial")
		} else if g, why = s.get(tx, string(id)); why == nil {
			switch {
			case g.KeyID() != e.KeyID:
				why = errors.New("the key ID is not the grant's")
			case e.CA != "" && e.CA != s.cfg.CA.Fingerprint():
				why = errors.New("the certificate is not from the user CA")
			case g.Device != "" && g.Device != dev.ID, g.Group != "" && g.Group != dev.Group:
				why = errors.New("the grant does not cover this device")
			case g.Login != e.User:
				why = errors.New("the grant is for another login")
			}
		}
		if why != nil {
			return s.record(ctx, entry.Fail(why))
		}
		entry.Target = g.ID
		entry = entry.Because(g.Justification).Request(g.ApprovalID).With("requester", g.Requester).
			With("approvers", strings.Join(g.Approvers, ",")).With("grant_state", string(g.StateAt(now)))
		switch e.Event {
		case wire.AccessSessionStart:
			if len(g.Sessions) < maxSessions {
				g.Sessions = append(g.Sessions, Session{Device: dev.ID, User: e.User, From: e.From, Port: e.Port, Start: now})
			}
			if g.State == StateApproved && g.StateAt(now) == StateApproved {
				if err := g.move(StateActive); err != nil {
					return err
				}
			}
		case wire.AccessSessionEnd:
			for i := len(g.Sessions) - 1; i >= 0; i-- {
				ss := &g.Sessions[i]
				if ss.End.IsZero() && ss.Device == dev.ID && ss.User == e.User && ss.From == e.From && ss.Port == e.Port {
					ss.End = now
					break
				}
			}
		}
		if err := s.record(ctx, entry); err != nil {
			return err
		}
		return s.put(tx, g)
	})
}
