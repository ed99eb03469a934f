// Package approval enforces the two-person rule for dangerous fleet
// actions: a firmware release, a mass revocation or rotation, a CA
// rotation, a policy change, a secret change, and what steers a secret to
// a device (moving it into a model or group, an enrollment token that
// grants one).
//
// Someone submits a Request (what: a kind, a target and parameters as JSON;
// why: a justification) that expires unless approved in time. Other people
// holding the kind's approve permission approve it; the requester never
// can (not with another of their credentials either: people are their user
// names), nor can an account created or changed (Actor.Since) after the
// request was filed, so that one person cannot make or take over a second
// account to approve their own request. When the rule's count of distinct
// approvers is reached, the Executor registered for the kind runs, once,
// as the requester established again from the credential they filed with
// (Config.Requester), and only if they still hold the rule's request
// permission; its outcome is recorded. A request can be rejected (or
// withdrawn by its requester, with a credential that could file it) while
// pending.
//
// Exactly once: the approval that completes the count moves the request
// from pending to executing in the same bbolt transaction, so of any number
// of concurrent approvals one, and only one, runs the executor. A crash
// while executing leaves the request "interrupted" at the next Open, never
// run again: whether the action took effect is for a person to check.
//
// Every decision (requested, approved, rejected, expired, executed, failed,
// interrupted) goes to the Auditor, if one is configured. Decisions are
// recorded inside the transaction that makes them, so a decision the
// Auditor could not record does not happen; an execution's outcome is
// recorded after the fact, and a failure to record it is logged.
package approval

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
)

// Kind names a kind of dangerous action.
type Kind string

// The dangerous actions Sigil knows.
const (
	KindFirmwareRelease Kind = "firmware.release"    // release firmware to a campaign
	KindMassRevocation  Kind = "devices.mass-revoke" // revoke the credentials of many devices
	KindMassRotation    Kind = "rotation.mass"       // force-rotate the credentials of many devices
	KindCARotation      Kind = "ca.rotate"           // rotate the fleet CA
	KindPolicyChange    Kind = "policy.change"       // change an attestation reference policy
	KindSecretChange    Kind = "secret.change"       // create, change or delete a secret
	KindUserChange      Kind = "users.change"        // enable a new account, change a user's role, enable a user again
	KindApproverToken   Kind = "tokens.approver"     // let an API token that may approve authenticate
	KindDeviceAssign    Kind = "devices.assign"      // move a device into a model or group (what secrets and policies target)
	KindGrantingToken   Kind = "tokens.enrollment"   // let an enrollment token that grants a model or group be used
	KindAccessGrant     Kind = "access.grant"        // give an operator SSH access to a device or group (fleet/access)
)

// Rule says who may request a kind of action and who must approve it.
type Rule struct {
	// Request is the permission needed to submit a request.
	Request auth.Permission
	// Approve is the permission needed to approve or reject one.
	Approve auth.Permission
	// Approvals is how many distinct people, other than the requester, must
	// approve. Zero means 1.
	Approvals int
	// TTL is how long a request waits for approval when its Draft names no
	// TTL. Zero means 72 hours.
	TTL time.Duration
}

// DefaultRules returns the rules used when Config.Rules is nil: one
// approval by a release approver for firmware releases, and one by a
// security admin (or an admin) for everything else, user and approver
// token changes, device moves and granting enrollment tokens included.
func DefaultRules() map[Kind]Rule {
	return map[Kind]Rule{
		KindUserChange:      {Request: auth.PermUsersAdmin, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindApproverToken:   {Request: auth.PermApprovalsRead, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindFirmwareRelease: {Request: auth.PermFirmwareWrite, Approve: auth.PermFirmwareApprove, Approvals: 1},
		KindMassRevocation:  {Request: auth.PermRotationWrite, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindMassRotation:    {Request: auth.PermRotationWrite, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindCARotation:      {Request: auth.PermCAAdmin, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindPolicyChange:    {Request: auth.PermPoliciesWrite, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindSecretChange:    {Request: auth.PermSecretsWrite, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindDeviceAssign:    {Request: auth.PermSecretsWrite, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindGrantingToken:   {Request: auth.PermSecretsWrite, Approve: auth.PermSecurityApprove, Approvals: 1},
		KindAccessGrant:     {Request: auth.PermAccessRequest, Approve: auth.PermAccessApprove, Approvals: 1, TTL: 24 * time.Hour},
	}
}

// State is where a request is in its life.
type State string

// States. Pending is the only one that changes by approval or rejection;
// executing becomes executed or failed (or interrupted after a crash); the
// others are final.
const (
	StatePending     State = "pending"     // waiting for approvals
	StateExecuting   State = "executing"   // approved; the executor is running
	StateExecuted    State = "executed"    // approved and carried out
	StateFailed      State = "failed"      // approved; the executor returned an error
	StateInterrupted State = "interrupted" // the server stopped while executing; outcome unknown
	StateRejected    State = "rejected"    // rejected by an approver or withdrawn by the requester
	StateExpired     State = "expired"     // not approved in time
)

// Decision is one person's approval or rejection.
type Decision struct {
	By      string    `json:"by"`
	At      time.Time `json:"at"`
	Comment string    `json:"comment,omitempty"`
}

// Request is a dangerous action waiting for, or past, its approvals.
type Request struct {
	ID            string          `json:"id"`
	Kind          Kind            `json:"kind"`
	Target        string          `json:"target"`        // what it acts on, e.g. a campaign ID or "group=kiosks"
	Params        json.RawMessage `json:"params"`        // compact JSON, for the executor
	Requester     string          `json:"requester"`     // user name
	Justification string          `json:"justification"` // why
	Created       time.Time       `json:"created"`
	Expires       time.Time       `json:"expires"`
	Approve       auth.Permission `json:"approve"`  // permission an approver needs (from the rule at submission)
	Required      int             `json:"required"` // approvals needed (from the rule at submission)
	Approvals     []Decision      `json:"approvals,omitempty"`
	State         State           `json:"state"`
	Rejection     *Decision       `json:"rejection,omitempty"`
	Executed      time.Time       `json:"executed,omitzero"` // when the executor finished
	Error         string          `json:"error,omitempty"`   // the executor's error (failed), for operators
	// Permission is what the requester needed to file it (the rule's
	// request permission at submission), and must still hold when it runs.
	Permission auth.Permission `json:"permission,omitempty"`
	// Credential is what the requester filed it with (a token's ID and
	// scope, or a session's role), without secrets: it runs as the
	// principal this credential names then. Empty in requests filed before
	// it existed: those run as the requester with their current role.
	Credential auth.Credential `json:"credential,omitzero"`
}

// StateAt returns r's state at now: a pending request past its expiry is
// expired even before Expire records it.
func (r Request) StateAt(now time.Time) State {
	if r.State == StatePending && !now.Before(r.Expires) {
		return StateExpired
	}
	return r.State
}

// ApprovedBy reports whether name approved r.
func (r Request) ApprovedBy(name string) bool {
	for _, d := range r.Approvals {
		if d.By == name {
			return true
		}
	}
	return false
}

// Draft is what a requester submits.
type Draft struct {
	Kind          Kind
	Target        string          // 1 to 256 characters on one line
	Params        json.RawMessage // any JSON value up to 64 KiB; empty means {}
	Justification string          // 1 to 2000 characters; required
	TTL           time.Duration   // zero means the rule's TTL; at most Config.MaxTTL
	// Approvals is how many distinct people other than the requester must
	// approve: at least the rule's (a draft cannot lower it), at most
	// MaxApprovals. Zero means the rule's.
	Approvals int
}

// MaxApprovals bounds Draft.Approvals.
const MaxApprovals = 10

// Actor is an authenticated person; auth.Principal is one.
type Actor interface {
	// Subject is the person's user name (an API token acts for its owner).
	Subject() string
	// Can reports whether the person holds a permission (with an API
	// token: within its scope).
	Can(auth.Permission) bool
	// Since is when the person's account was created or last changed
	// (auth.User.Since); zero when unknown.
	Since() time.Time
	// Credential names what the person authenticated with, without
	// secrets, for Config.Requester.
	Credential() auth.Credential
}

// Executor carries out an approved request as its requester (as, which
// Config.Requester established again and which holds the request's
// permission). It runs once per request, with a context that is not
// cancelled when the approving client goes away but ends after
// Config.ExecTimeout.
type Executor func(ctx context.Context, r Request, as Actor) error

// PrincipalSource establishes principals again from their credentials;
// *auth.Service is one.
type PrincipalSource interface {
	Principal(context.Context, auth.Credential) (auth.Principal, error)
}

// RequesterFrom returns a Config.Requester that establishes requesters
// with src.
func RequesterFrom(src PrincipalSource) func(context.Context, auth.Credential) (Actor, error) {
	return func(ctx context.Context, c auth.Credential) (Actor, error) {
		p, err := src.Principal(ctx, c)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

// Event is a decision or outcome for the audit log.
type Event struct {
	Time      time.Time
	Action    string // requested, approved, rejected, expired, executed, failed, interrupted
	RequestID string
	Kind      Kind
	Target    string
	Actor     string // who decided; "" for the system (expired, interrupted, outcomes)
	Detail    string // justification, comment, reason or error
}

// Auditor records events. Record runs inside the transaction of the
// decision it records: an error aborts the decision. It must not call back
// into the Manager.
type Auditor interface {
	Record(ctx context.Context, e Event) error
}

// Errors. Compare with errors.Is.
var (
	ErrNotFound        = errors.New("approval: no such request")
	ErrUnknownKind     = errors.New("approval: no rule or executor for this kind")
	ErrForbidden       = errors.New("approval: permission denied")
	ErrSelfApproval    = errors.New("approval: the requester cannot approve their own request")
	ErrAlreadyApproved = errors.New("approval: already approved by this person")
	ErrNotPending      = errors.New("approval: request is not pending")
	ErrExpired         = errors.New("approval: request expired")
	ErrInvalid         = errors.New("approval: invalid request")
	ErrExists          = errors.New("approval: executor already registered")
	ErrLocked          = errors.New("approval: database locked by another process")
	// ErrAccountChanged: the approver's account was created or changed
	// after the request was filed.
	ErrAccountChanged = errors.New("approval: an account created or changed after the request was filed cannot approve it")
	// ErrRequesterLacks: when the approved request was to run, its
	// requester's credential no longer authenticated or no longer held the
	// request's permission; it did not run.
	ErrRequesterLacks = errors.New("approval: the requester no longer holds what the request needs")
)

// Config configures Open.
type Config struct {
	// Path is the bbolt file for requests (created with mode 0600). Required
	// by Open; OpenPostgres does not use it.
	Path string
	// Rules maps each kind to its rule. Nil means DefaultRules().
	Rules map[Kind]Rule
	// Auditor receives every decision and outcome. Nil means none.
	Auditor Auditor
	// Requester establishes a request's requester again from the
	// credential they filed it with, as their user and credential are when
	// it is about to run (auth.Service.Principal). An approved request runs
	// only if this succeeds and the result holds Request.Permission. Nil
	// refuses to run any.
	Requester func(ctx context.Context, c auth.Credential) (Actor, error)
	// ExecTimeout bounds one execution. Zero means 10 minutes.
	ExecTimeout time.Duration
	// MaxTTL is the longest a request may wait for approval. Zero means 30
	// days.
	MaxTTL time.Duration
	// SweepInterval is how often Run records expired requests. Zero means 1
	// minute.
	SweepInterval time.Duration
	// Now is the clock for creation, expiry and decisions. Nil means
	// time.Now.
	Now func() time.Time
	// Rand supplies request IDs. Nil means crypto/rand.
	Rand io.Reader
	// Logger receives decisions and outcomes. Nil discards them.
	Logger *slog.Logger
	// LockTimeout bounds the wait for the file lock; a file held by another
	// process then fails with ErrLocked. Zero means 1 second.
	LockTimeout time.Duration
	// NoSync skips fsync on commit: faster, and a power loss may lose recent
	// commits. For tests.
	NoSync bool
}

const (
	maxTarget        = 256
	maxJustification = 2000
	maxParams        = 64 << 10
)

func (c *Config) setDefaults() error {
	if c.Rules == nil {
		c.Rules = DefaultRules()
	}
	rules := make(map[Kind]Rule, len(c.Rules))
	for k, r := range c.Rules {
		if k == "" || r.Request == "" || r.Approve == "" || r.Approvals < 0 || r.TTL < 0 {
			return fmt.Errorf("%w: rule for %q needs a kind, request and approve permissions, and no negative numbers", ErrInvalid, k)
		}
		if r.Approvals == 0 {
			r.Approvals = 1
		}
		if r.TTL == 0 {
			r.TTL = 72 * time.Hour
		}
		rules[k] = r
	}
	c.Rules = rules
	if c.ExecTimeout <= 0 {
		c.ExecTimeout = 10 * time.Minute
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = 30 * 24 * time.Hour
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.LockTimeout <= 0 {
		c.LockTimeout = time.Second
	}
	return nil
}

// newID returns "apr_" + 16 hex digits: an increasing sequence number (so
// that IDs sort by creation) and random bits.
func newID(seq uint64, rnd io.Reader) (string, error) {
	var r [4]byte
	if _, err := io.ReadFull(rnd, r[:]); err != nil {
		return "", fmt.Errorf("approval: ID entropy: %w", err)
	}
	return fmt.Sprintf("apr_%08x%08x", uint32(seq), binary.BigEndian.Uint32(r[:])), nil
}
