// Package enroll is the fleet's side of enrollment: it receives bootstrap
// messages from the broker, checks the EK trust path and the TPM evidence,
// challenges the device to activate a credential, and issues its certificate.
//
// A request is checked in this order, and refused with the first failing
// reason code: envelope (version, replay), body fields, EK (certificate
// chain, key match), AK attributes, transport key attributes, inventory
// (decommissioned, clone of an enrolled device), trust path (token,
// manufacturer CA, allow-list, re-enrollment of a known EK — one that
// enrolled, never a pending record —, operator approval). Only then is a credential
// made. The proof is checked in this order: session (known, unused, same
// client, not expired), credential activation, TPM2_Certify of the transport
// key, the CSR against the certified key, quote, and the quote (with the
// event log when the policy has event rules) against the reference policy.
// Every refusal leaves the inventory unchanged, except that a clone attempt
// flags the enrolled device and a failed activation of a known EK is
// recorded as an anonymous event.
//
// A session belongs to the bootstrap client that opened it (the client ID
// the broker authenticated): only that client's proof answers it, and
// another client's request with the same EK opens a session of its own
// instead of ending it. Each client holds at most a few sessions.
//
// The model and group a device is judged and targeted by are the fleet's,
// never the device's claim: the inventory's for a known device, the
// enrollment token's grant for a new one, none otherwise (an operator
// allowed to change what secrets target assigns them). The model a
// request names is recorded as the device's claimed model.
package enroll

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/internal/loglimit"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Trust paths recorded in the inventory.
const (
	PathEKCA      = "ek-ca"
	PathAllowList = "allowlist"
	PathToken     = "token"
	PathApproval  = "approval"
	PathKnown     = "re-enrollment"
	// PathTriage: an operator chose to enroll the EK from governance's
	// triage list of unknown identities (Config.Identities).
	PathTriage = "triage"
)

// FlagApproved marks a pending device an operator approved.
const FlagApproved = "approved"

// FlagCloneSuspect marks a device whose EK was presented under another
// identity or by a TPM that could not activate its credential.
const FlagCloneSuspect = "clone-suspect"

// Inventory is what enrollment reads and writes of the device inventory:
// identities by EK, token consumption and the device records it creates.
// *inventory.Store implements it (bbolt or PostgreSQL).
type Inventory interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	DeviceByEK(ctx context.Context, fingerprint string) (*inventory.Device, error)
	Counts(ctx context.Context) (map[inventory.State]int, error)
	Update(ctx context.Context, id string, fn func(*inventory.Device) error) error
	Upsert(ctx context.Context, id string, fn func(d *inventory.Device, exists bool) error) error
	CheckToken(ctx context.Context, secret, model string, now time.Time) (*inventory.Token, error)
	ConsumeToken(ctx context.Context, secret, deviceID, model string, now time.Time) (*inventory.Token, error)
	AddEvent(ctx context.Context, e inventory.Event) error
}

var _ Inventory = (*inventory.Store)(nil)

// Config configures the service.
type Config struct {
	CA        *ca.CA
	Inventory Inventory
	Trust     *verifier.EKTrust
	// Send publishes a message to a bootstrap client's down topic of kind.
	Send func(clientID, kind string, payload []byte) error
	// ManualApproval keeps EKs trusted by no other path pending until an
	// operator approves them. Default false: such EKs are refused.
	ManualApproval bool
	// Selection is the PCR selection of the first quote. Default sha256
	// 0-9 and 14, as attestation.
	Selection wire.PCRSelection
	// ChallengeTTL bounds the time between challenge and proof. Default 60s.
	ChallengeTTL time.Duration
	// DeviceLifetime is the certificate lifetime; 0 uses the CA's default.
	DeviceLifetime time.Duration
	// Policies, when set, holds the first quote to the reference policy of
	// the device's model and group (the fleet's) and the firmware it
	// reports, failing closed as policy.Choose says.
	Policies Policies
	// Workers is the number of concurrent handlers; default GOMAXPROCS.
	Workers int
	// Queue bounds waiting messages; beyond it requests are answered with
	// ReasonRateLimited. Default 1024.
	Queue int
	// MaxWait bounds how long a message waits in the queue: one that
	// waited longer is answered ReasonRateLimited, unhandled, as if the
	// queue had been full. Its device has stopped waiting for the answer
	// (device/enroll waits DefaultAnswerTimeout, 30 s, for each) and
	// asked again, so handling it would spend a signature, a credential
	// and a stored session on nobody. Default 20s.
	MaxWait time.Duration
	Now     func() time.Time // nil means time.Now
	Rand    io.Reader        // nil means crypto/rand
	Logger  *slog.Logger

	// FirmwareTrust returns the release trust set enrolled devices get
	// (firmware/verify.TrustSet.Marshal) and the signed rotations that
	// lead to it (a device that holds an earlier set follows them, and
	// never takes the set as it is); nil, or a nil set, gives them none
	// (the fleet has no firmware releases configured).
	FirmwareTrust func() (trust []byte, rotations []wire.TrustRotation)

	// Identities, when set, is the fleet's identity governance: requests
	// from blocked client IDs or EKs are refused, EKs an operator chose to
	// enroll from the triage list are trusted (trust path PathTriage),
	// and unknown EKs and clone suspicions are reported to it.
	Identities Identities

	// Sessions holds what spans a device's messages — open and used
	// sessions, the clients pending devices wait on — where every replica
	// sharing it sees it (OpenSessionsPostgres). Nil: in this process's
	// memory.
	Sessions Sessions
}

// Identities is what enrollment asks of and tells identity governance
// (fleet/governance through the server). Its methods are called on the
// enrollment workers and must not block for long.
type Identities interface {
	// Blocked reports whether a bootstrap client ID or an EK fingerprint
	// is on the block list.
	Blocked(clientID, ekFingerprint string) bool
	// Admitted reports whether an operator decided to enroll this EK.
	Admitted(ekFingerprint string) bool
	// UnknownEK records a request refused because no trust path accepts
	// its EK (reason says why). The EK is well-formed, but the requester
	// has not proven it holds it.
	UnknownEK(clientID, ekFingerprint, reason string)
	// CloneSuspect is told that deviceID was flagged FlagCloneSuspect: a
	// client proved it holds the device's EK while claiming another
	// identity (detail says how).
	CloneSuspect(deviceID, detail string)
}

// Policies decides how a device is judged (fleet/policy.Store).
type Policies interface {
	Choose(ctx context.Context, model, firmware, group string) (policy.Choice, error)
}

// Service handles enrollment messages.
type Service struct {
	cfg Config
	log *slog.Logger
	q   chan job
	// limit rate-limits the lines any client can cause (malformed
	// messages, refusals): bootstrap clients are anonymous.
	limit *loglimit.Limiter

	// sessions holds what spans messages (Config.Sessions).
	sessions Sessions

	mu     sync.Mutex
	seen   map[string]time.Time   // message IDs seen
	failed map[string]*failedNote // device ID -> anonymous activation failures being counted

	stats Stats
}

// Stats counts outcomes. Malformed counts messages that did not decode
// (also counted in Refused).
type Stats struct {
	Requests, Challenges, Enrolled, Pending, Refused, Malformed atomic.Int64
	// RequestsBusy counts the enrollment requests answered rate_limited,
	// unhandled, because the queue was full or they waited in it longer
	// than Config.MaxWait.
	RequestsBusy atomic.Int64
}

type job struct {
	clientID string
	payload  []byte
	queued   time.Time
}

// failedNote counts the failed activations of a known EK since the last
// one recorded, so that a client repeating them cannot flood the
// device's history or the audit log.
type failedNote struct {
	recorded   time.Time
	suppressed int
}

// New checks cfg and returns a service; call Run to start its workers.
func New(cfg Config) (*Service, error) {
	if cfg.CA == nil || cfg.Inventory == nil || cfg.Trust == nil || cfg.Send == nil {
		return nil, errors.New("enroll: CA, Inventory, Trust and Send are required")
	}
	if len(cfg.Selection.PCRs) == 0 {
		cfg.Selection = wire.DefaultSelection()
	}
	if cfg.ChallengeTTL == 0 {
		cfg.ChallengeTTL = time.Minute
	}
	if cfg.Workers == 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Queue == 0 {
		cfg.Queue = 1024
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 20 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Sessions == nil {
		cfg.Sessions = newMemSessions(cfg.Now)
	}
	return &Service{
		cfg: cfg, log: cfg.Logger, q: make(chan job, cfg.Queue), limit: loglimit.New(cfg.Logger, loglimit.Config{Now: cfg.Now}),
		sessions: cfg.Sessions, seen: map[string]time.Time{}, failed: map[string]*failedNote{},
	}, nil
}

// Stats returns the outcome counters.
func (s *Service) Stats() *Stats { return &s.stats }

// LogSuppressed is the number of log lines about refused or malformed
// messages that were counted instead of written (a few per reason and
// interval are written, then one summary).
func (s *Service) LogSuppressed() uint64 { return s.limit.Suppressed() }

// Run handles queued messages until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.limit.Run(ctx) })
	for range s.cfg.Workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-s.q:
					if s.cfg.Now().Sub(j.queued) > s.cfg.MaxWait {
						s.busy(j.clientID, j.payload, "enrollment queue too slow")
						continue
					}
					s.Handle(j.clientID, j.payload)
				}
			}
		})
	}
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-tick.C:
			s.expire()
		}
	}
}

// Submit queues a message from a bootstrap client without blocking the
// broker; when the queue is full the device is told to retry later.
func (s *Service) Submit(clientID string, payload []byte) {
	select {
	case s.q <- job{clientID, payload, s.cfg.Now()}:
	default:
		s.busy(clientID, payload, "enrollment queue full")
	}
}

// busy answers a message ReasonRateLimited without handling it, and
// counts an enrollment request so answered (Stats.RequestsBusy).
func (s *Service) busy(clientID string, payload []byte, why string) {
	if env, err := wire.Decode(payload); err == nil {
		if env.Type == wire.TypeEnrollRequest {
			s.stats.RequestsBusy.Add(1)
		}
		s.refuse(clientID, env.ID, env.V, wire.Refuse(wire.ReasonRateLimited, why, nil))
	}
}

// Handle processes one message synchronously.
func (s *Service) Handle(clientID string, payload []byte) {
	env, err := wire.Decode(payload)
	if err != nil {
		s.stats.Refused.Add(1)
		s.stats.Malformed.Add(1)
		s.limit.Log(context.Background(), slog.LevelWarn, "malformed", "enrollment message refused", "client_id", clientID, "err", err)
		if errors.Is(err, wire.ErrVersion) {
			s.refuse(clientID, nil, wire.Version, unsupportedVersion(err))
		}
		return
	}
	if _, err := wire.Negotiate(env.V); err != nil {
		s.refuse(clientID, env.ID, env.V, unsupportedVersion(err))
		return
	}
	if !s.firstSighting(env.IDString()) {
		s.refuse(clientID, env.ID, env.V, wire.Refuse(wire.ReasonReplay, "message already received", nil))
		return
	}
	switch env.Type {
	case wire.TypeEnrollRequest:
		s.stats.Requests.Add(1)
		err = s.request(clientID, env)
	case wire.TypeEnrollProof:
		err = s.proof(clientID, env)
	default:
		err = wire.Refuse(wire.ReasonBadRequest, "unexpected message type", nil)
	}
	if err != nil {
		s.refuse(clientID, env.ID, env.V, err)
	}
}

// unsupportedVersion refuses a device whose protocol version the fleet
// does not speak (wire.Negotiate).
func unsupportedVersion(err error) error {
	return wire.Refuse(wire.ReasonUnsupportedVersion, fmt.Sprintf("fleet speaks protocol versions %d to %d", wire.OldestVersion, wire.Version), err)
}

// Bounds on what unauthenticated clients can make the service remember.
// A client holds at most maxClientSessions sessions (its oldest makes room
// for a new one), so the broker's cap on bootstrap clients (1,000 by
// default) keeps them all far below maxSessions: strangers cannot fill the
// table that real devices need.
const (
	maxSessions       = 10000
	maxClientSessions = 4
	maxSeen           = 200000
	// failedEvery is how often a known EK's failed activations are
	// recorded as an event; the ones between are counted into the next.
	failedEvery = time.Minute
)

func (s *Service) firstSighting(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[id]; ok {
		return false
	}
	if len(s.seen) >= maxSeen {
		s.expireLocked(s.cfg.Now().Add(-time.Minute)) // keep only the last minute
	}
	s.seen[id] = s.cfg.Now()
	return true
}

// expire drops old sessions and replay records, and records the failed
// activations still counted.
func (s *Service) expire() {
	now := s.cfg.Now()
	pending := map[string]int{}
	s.mu.Lock()
	for id, n := range s.failed {
		if n.suppressed > 0 && now.Sub(n.recorded) >= failedEvery {
			pending[id] = n.suppressed
			n.recorded, n.suppressed = now, 0
		}
	}
	s.expireLocked(now.Add(-time.Hour))
	s.mu.Unlock()
	if err := s.sessions.Expire(context.TODO(), time.Hour); err != nil {
		s.log.Warn("expiring enrollment sessions failed", "err", err)
	}
	for id, n := range pending {
		s.recordFailed(id, fmt.Sprintf("%d more enrollments with this device's EK failed credential activation", n), now)
	}
}

// expireLocked drops the failure counts and message IDs older than
// cutoff (sessions: Sessions.Expire).
func (s *Service) expireLocked(cutoff time.Time) {
	for id, n := range s.failed {
		if n.suppressed == 0 && n.recorded.Before(cutoff) { // counts wait for expire to record them
			delete(s.failed, id)
		}
	}
	for k, t := range s.seen {
		if t.Before(cutoff) {
			delete(s.seen, k)
		}
	}
}

// refuse answers a refusal, in the protocol version peer the device spoke.
func (s *Service) refuse(clientID string, corr []byte, peer int, err error) {
	var we *wire.Error
	if !errors.As(err, &we) {
		s.log.Error("enrollment failed", "client_id", clientID, "err", err)
		we = wire.Refuse(wire.ReasonInternal, "internal error", err)
	}
	s.stats.Refused.Add(1)
	s.limit.Log(context.Background(), slog.LevelInfo, "refused/"+we.Reason.String(), "enrollment refused", "client_id", clientID, "reason", we.Reason.String(), "code", uint16(we.Reason), "cause", errString(we.Err))
	res := &wire.EnrollResult{Status: wire.StatusRefused, Reason: we.Reason, Message: we.Message}
	if we.Reason.Temporary() {
		res.RetryAfter = 10
	}
	s.reply(clientID, corr, peer, res)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// reply answers an enrollment result in the protocol version peer the
// device spoke (wire.EncodeFor); a device older than the fleet speaks to
// is answered in the fleet's version.
func (s *Service) reply(clientID string, corr []byte, peer int, res *wire.EnrollResult) {
	b, err := wire.EncodeFor(peer, wire.TypeEnrollResult, corr, s.cfg.Now(), res)
	if errors.Is(err, wire.ErrVersion) {
		b, err = wire.Encode(wire.TypeEnrollResult, corr, s.cfg.Now(), res)
	}
	if err == nil {
		err = s.cfg.Send(clientID, "result", b)
	}
	if err != nil {
		s.log.Error("sending enrollment result failed", "client_id", clientID, "err", err)
	}
}

func bad(err error) error { return wire.Refuse(wire.ReasonBadRequest, "malformed request", err) }

func (s *Service) request(clientID string, env *wire.Envelope) error {
	var req wire.EnrollRequest
	if err := wire.DecodeBody(env, wire.TypeEnrollRequest, &req); err != nil {
		return bad(err)
	}
	ek, err := s.cfg.Trust.VerifyEK(req.EKPublic, req.EKCert, req.EKChain)
	if err != nil {
		return err
	}
	if s.cfg.Identities != nil && s.cfg.Identities.Blocked(clientID, ek.Fingerprint) {
		return wire.Refuse(wire.ReasonUnknownEK, "this EK or client is blocked by the fleet", nil)
	}
	ak, err := verifier.VerifyAK(req.AKPublic)
	if err != nil {
		return err
	}
	tk, err := verifier.VerifyTransportKeyPublic(req.TKPublic)
	if err != nil {
		return err
	}
	existing, err := s.cfg.Inventory.DeviceByEK(context.TODO(), ek.Fingerprint)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		return err
	}
	if existing != nil {
		if existing.State == inventory.StateDecommissioned {
			return wire.Refuse(wire.ReasonDecommissioned, "device decommissioned", nil)
		}
	}
	path, tok, err := s.trustPath(&req, ek, existing)
	if err != nil {
		var we *wire.Error
		if s.cfg.Identities != nil && errors.As(err, &we) && (we.Reason == wire.ReasonUnknownEK || we.Reason == wire.ReasonUntrustedEK) {
			s.cfg.Identities.UnknownEK(clientID, ek.Fingerprint, we.Message)
		}
		return err
	}
	clone := ""
	if enrolled(existing) && existing.Serial != "" && req.Serial != existing.Serial {
		// Judged after the device proves it holds this EK: anyone can send
		// a public EK, and that must not flag the enrolled device. A
		// pending record is no enrolled identity to clone: it stays
		// pending, with the serial it first claimed, until approved.
		clone = fmt.Sprintf("EK presented with serial %q, enrolled as %q", req.Serial, existing.Serial)
	}
	sess := &Session{
		clientID: clientID, id: make([]byte, 16), nonce: make([]byte, 32),
		expires: s.cfg.Now().Add(s.cfg.ChallengeTTL), req: &req, ek: ek, ak: ak, tk: tk, path: path, existing: existing, clone: clone,
	}
	secret := make([]byte, 32)
	sess.model, sess.group = assignment(existing, tok)
	for _, b := range [][]byte{sess.id, sess.nonce, secret} {
		if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
			return err
		}
	}
	blob, encSecret, err := verifier.MakeCredential(s.cfg.Rand, ek, ak, secret)
	if err != nil {
		return err
	}
	proof := verifier.ActivationProof(secret, sess.id, sess.nonce)
	sess.digest = activationDigest(proof)
	eventLog, err := s.wantsEventLog(sess)
	if err != nil {
		return err
	}
	ch := &wire.EnrollChallenge{
		Session: sess.id, CredentialBlob: blob, EncryptedSecret: encSecret, Nonce: sess.nonce,
		Selection: s.cfg.Selection, Expires: sess.expires.UnixMilli(), EventLog: eventLog,
	}
	b, err := wire.EncodeFor(env.V, wire.TypeEnrollChallenge, env.ID, s.cfg.Now(), ch)
	if errors.Is(err, wire.ErrNeedsVersion) {
		// The policy that judges the first quote has event rules and the
		// device's version cannot send the event log: refused, as the
		// policy would fail it, never judged without the log.
		return wire.Refuse(wire.ReasonUnsupportedVersion, fmt.Sprintf(
			"this device's reference policy needs the measured-boot event log at enrollment, which protocol version %d cannot send: update sigild", env.V), err)
	}
	if err != nil {
		return err
	}
	if err := s.sessions.Open(context.TODO(), sess, proof, s.cfg.ChallengeTTL); err != nil {
		return err
	}
	s.stats.Challenges.Add(1)
	return s.cfg.Send(clientID, "challenge", b)
}

// enrolled reports whether d is a device that enrolled (active or
// quarantined after an enrollment), as opposed to none, a pending record
// or a decommissioned one. Only an enrolled device is a known EK, and
// only its identity can be cloned.
func enrolled(d *inventory.Device) bool {
	return d != nil && (d.State == inventory.StateActive || d.State == inventory.StateQuarantined) && !d.EnrolledAt.IsZero()
}

// trustPath decides why this EK may enroll; "" means it waits for approval.
// On the token path it returns the token, whose grant the device gets.
func (s *Service) trustPath(req *wire.EnrollRequest, ek *verifier.EK, existing *inventory.Device) (string, *inventory.Token, error) {
	now := s.cfg.Now()
	switch {
	case enrolled(existing):
		// A known device proving its EK again (lost state, expired or
		// revoked certificate): no token is spent, even if it sends one.
		return PathKnown, nil, nil
	case req.Token != "":
		tok, err := s.cfg.Inventory.CheckToken(context.TODO(), req.Token, req.Model, now)
		if err != nil {
			return "", nil, tokenRefusal(err)
		}
		return PathToken, tok, nil
	case ek.ChainVerified:
		return PathEKCA, nil, nil
	case ek.AllowListed:
		return PathAllowList, nil, nil
	case existing != nil && existing.State == inventory.StatePending && existing.HasFlag(FlagApproved):
		return PathApproval, nil, nil
	case s.cfg.Identities != nil && s.cfg.Identities.Admitted(ek.Fingerprint):
		return PathTriage, nil, nil
	case s.cfg.ManualApproval:
		return "", nil, nil
	case ek.Cert != nil && s.cfg.Trust.Roots != nil:
		return "", nil, wire.Refuse(wire.ReasonUntrustedEK, "EK certificate not issued by a trusted manufacturer CA", ek.ChainErr)
	default:
		return "", nil, wire.Refuse(wire.ReasonUnknownEK, "unknown EK: enroll with a token or ask an operator", nil)
	}
}

// assignment is the model and group the fleet gives a device: the
// inventory's, overridden by what a token grants. What the device claims
// plays no part.
func assignment(existing *inventory.Device, tok *inventory.Token) (model, group string) {
	if existing != nil {
		model, group = existing.Model, existing.Group
	}
	if tok != nil {
		if tok.Model != "" {
			model = tok.Model
		}
		if tok.Group != "" {
			group = tok.Group
		}
	}
	return model, group
}

func tokenRefusal(err error) error {
	switch {
	case errors.Is(err, inventory.ErrTokenExpired):
		return wire.Refuse(wire.ReasonTokenExpired, "enrollment token expired", err)
	case errors.Is(err, inventory.ErrTokenUsed):
		return wire.Refuse(wire.ReasonTokenUsed, "enrollment token already used", err)
	case errors.Is(err, inventory.ErrTokenBinding):
		return wire.Refuse(wire.ReasonTokenBinding, "enrollment token bound to another model", err)
	case errors.Is(err, inventory.ErrTokenPending):
		// Not usable yet: the device asks again, with backoff, until a
		// second person approved the token (two-person rule).
		return wire.Refuse(wire.ReasonTokenInvalid, "enrollment token awaits a second person's approval", err)
	case errors.Is(err, inventory.ErrTokenInvalid):
		return wire.Refuse(wire.ReasonTokenInvalid, "invalid enrollment token", err)
	}
	return err
}

func (s *Service) flagClone(deviceID, detail string) {
	err := s.cfg.Inventory.Update(context.TODO(), deviceID, func(d *inventory.Device) error {
		if !d.HasFlag(FlagCloneSuspect) {
			d.Flags = append(d.Flags, FlagCloneSuspect)
		}
		return nil
	})
	if err == nil {
		err = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: s.cfg.Now(), DeviceID: deviceID, Kind: "clone-suspect", Detail: detail})
	}
	if err != nil {
		s.log.Error("flagging clone failed", "device_id", deviceID, "err", err)
	}
	s.log.Warn("possible clone", "device_id", deviceID, "detail", detail)
	if s.cfg.Identities != nil {
		s.cfg.Identities.CloneSuspect(deviceID, detail)
	}
}

func (s *Service) proof(clientID string, env *wire.Envelope) error {
	var p wire.EnrollProof
	if err := wire.DecodeBody(env, wire.TypeEnrollProof, &p); err != nil {
		return bad(err)
	}
	now := s.cfg.Now()
	sess, err := s.sessions.Take(context.TODO(), p.Session, clientID, p.Activation)
	if err != nil {
		return err
	}
	sess.protocol = env.V // the version the device spoke last
	if subtle.ConstantTimeCompare(activationDigest(p.Activation), sess.digest) != 1 {
		err := wire.Refuse(wire.ReasonActivationFailed, "credential activation proof is wrong", nil)
		if sess.existing != nil {
			// Recorded, not flagged: a wrong answer proves nothing about the
			// enrolled device, and anyone can send its public EK.
			s.failedActivation(sess.existing.ID, sess.clientID, now)
		}
		return err
	}
	if sess.clone != "" {
		s.flagClone(sess.existing.ID, sess.clone)
		return wire.Refuse(wire.ReasonClone, "this EK is enrolled under another identity", nil)
	}
	ck, err := verifier.VerifyCertify(sess.ak, sess.tk, sess.nonce, p.CertifyInfo, p.CertifySig)
	if err != nil {
		return err
	}
	if _, err := verifier.VerifyCSR(sess.req.CSR, ck); err != nil {
		return err
	}
	vq, err := verifier.VerifyQuote(sess.ak, sess.nonce, s.cfg.Selection, &p.Quote)
	if err != nil {
		return err
	}
	if err := s.judgeFirstQuote(sess, vq, p.EventLog); err != nil {
		return err
	}
	if sess.path == "" {
		return s.hold(env, sess)
	}
	return s.issue(env, sess)
}

// failedActivation records that a client failed to activate a known EK's
// credential: as an anonymous event (the client proved nothing, so it
// cannot push the device's history out), at most once per failedEvery per
// device, the failures in between counted into the next record.
func (s *Service) failedActivation(deviceID, clientID string, now time.Time) {
	s.mu.Lock()
	n := s.failed[deviceID]
	if n != nil && now.Sub(n.recorded) < failedEvery {
		n.suppressed++
		s.mu.Unlock()
		return
	}
	more := 0
	if n != nil {
		more = n.suppressed
	}
	s.failed[deviceID] = &failedNote{recorded: now}
	s.mu.Unlock()
	detail := "an enrollment with this device's EK failed credential activation (bootstrap client " + clientID + ")"
	if more > 0 {
		detail += fmt.Sprintf("; %d more failed since the last record", more)
	}
	s.recordFailed(deviceID, detail, now)
}

func (s *Service) recordFailed(deviceID, detail string, now time.Time) {
	err := s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: now, DeviceID: deviceID, Kind: "activation-failed", Detail: detail, Anonymous: true})
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.log.Error("recording a failed activation failed", "device_id", deviceID, "err", err)
	}
}

// choose is how the device of sess is judged: by the fleet's model and
// group for it and the firmware it reports. Without Policies it is judged
// by nothing.
func (s *Service) choose(sess *Session) (policy.Choice, error) {
	if s.cfg.Policies == nil || (sess.existing != nil && sess.existing.State == inventory.StateQuarantined) {
		return policy.Choice{}, nil // a quarantined device re-enrolls only into a session to prove itself
	}
	return s.cfg.Policies.Choose(context.Background(), sess.model, sess.req.Firmware, sess.group)
}

// wantsEventLog reports whether the challenge asks for the event log: the
// policy that will judge the first quote has event rules.
func (s *Service) wantsEventLog(sess *Session) (bool, error) {
	c, err := s.choose(sess)
	return c.Policy != nil && c.Policy.Events != nil, err
}

// judgeFirstQuote holds the first quote, and the event log when the device
// sent one, to the reference policy that policy.Choose gives for the
// fleet's model and group of the device and the firmware it reports. With
// no policy for that firmware where the model has some, it fails closed. A
// policy with event rules fails a device that sent no log (Evaluate says
// so); a log that does not replay to the quote is refused.
func (s *Service) judgeFirstQuote(sess *Session, vq *verifier.VerifiedQuote, eventLog []byte) error {
	c, err := s.choose(sess)
	if err != nil {
		return err
	}
	if c.FailClosed() {
		return wire.Refuse(wire.ReasonPolicyViolation, truncate(fmt.Sprintf(
			"no reference policy applies to firmware %q of this device's model and group: the device reports an unexpected firmware", sess.req.Firmware), 400), nil)
	}
	if c.Policy == nil {
		return nil
	}
	var log *verifier.EventLog
	if len(eventLog) > 0 {
		if log, err = verifier.VerifyEventLog(eventLog, vq); err != nil {
			return err
		}
	}
	v := c.Policy.Evaluate(policy.NewEvidence(sess.model, sess.req.Firmware, log, vq))
	if v.Pass {
		return nil
	}
	return wire.Refuse(wire.ReasonPolicyViolation, truncate(v.Summary(), 400), nil)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// errStateChanged refuses a session whose device changed state meanwhile.
var errStateChanged = wire.Refuse(wire.ReasonChallengeExpired, "the device's state changed during enrollment; ask again", nil)

// apply writes what the session proved onto the current record. The serial
// is set at first enrollment only; the model the device names is kept as
// its claim. The model and group are the fleet's: what a token grants
// (grant, nil on other paths), else what the record holds.
func (s *Service) apply(d *inventory.Device, exists bool, sess *Session, grant *inventory.Token, now time.Time) error {
	if exists && d.EKFingerprint != sess.ek.Fingerprint {
		return errStateChanged
	}
	if !exists {
		d.FirstSeen = now
		d.Serial = sess.req.Serial
	}
	d.ClaimedModel = sess.req.Model
	d.Model, d.Group = assignment(d, grant)
	d.EKFingerprint = sess.ek.Fingerprint
	d.Firmware = sess.req.Firmware
	d.LastSeen = now
	d.AKName = sess.ak.Name
	d.EKPublic = sess.req.EKPublic
	d.AKPublic = sess.req.AKPublic
	d.Protocol = sess.protocol
	return nil
}

// maxPending bounds devices waiting for approval: with manual approval any
// TPM can ask, so the queue of strangers must not grow without bound.
const maxPending = 10000

// hold records a verified device that waits for approval.
func (s *Service) hold(env *wire.Envelope, sess *Session) error {
	now := s.cfg.Now().UTC()
	if sess.existing == nil {
		counts, err := s.cfg.Inventory.Counts(context.TODO())
		if err != nil {
			return err
		}
		if counts[inventory.StatePending] >= maxPending {
			return wire.Refuse(wire.ReasonRateLimited, "too many devices wait for approval", nil)
		}
	}
	created := false
	err := s.cfg.Inventory.Upsert(context.TODO(), sess.ek.DeviceID, func(d *inventory.Device, exists bool) error {
		if exists && d.State != inventory.StatePending {
			return errStateChanged
		}
		created = !exists
		if err := s.apply(d, exists, sess, nil, now); err != nil {
			return err
		}
		d.State, d.TrustPath = inventory.StatePending, PathApproval
		return nil
	})
	if err != nil {
		return err
	}
	if created {
		_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: now, DeviceID: sess.ek.DeviceID, Kind: "pending", Detail: "verified; waiting for operator approval"})
	}
	if err := s.sessions.Waiting(context.TODO(), sess.ek.DeviceID, sess.clientID); err != nil {
		s.log.Warn("recording the client a pending device waits on failed", "device_id", sess.ek.DeviceID, "err", err)
	}
	s.stats.Pending.Add(1)
	s.reply(sess.clientID, env.ID, sess.protocol, &wire.EnrollResult{Status: wire.StatusPending, Reason: wire.ReasonPending,
		Message: "verified; waiting for operator approval", DeviceID: sess.ek.DeviceID, RetryAfter: 30, Session: sess.id})
	return nil
}

// issue signs the certificate and records the device, deciding on the
// record as it is now: a device quarantined or decommissioned since the
// request keeps that state.
func (s *Service) issue(env *wire.Envelope, sess *Session) error {
	now := s.cfg.Now().UTC()
	id := sess.ek.DeviceID
	cert, err := s.cfg.CA.IssueDevice(id, sess.tk.Key, s.cfg.DeviceLifetime)
	if err != nil {
		return err
	}
	var tok *inventory.Token
	if sess.path == PathToken {
		if tok, err = s.cfg.Inventory.ConsumeToken(context.TODO(), sess.req.Token, id, sess.req.Model, now); err != nil {
			return tokenRefusal(err)
		}
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	kind := "enrolled"
	var d inventory.Device
	err = s.cfg.Inventory.Upsert(context.TODO(), id, func(cur *inventory.Device, exists bool) error {
		switch {
		case !exists && (sess.path == PathKnown || sess.path == PathApproval):
			return errStateChanged
		case exists && cur.State == inventory.StateDecommissioned:
			return wire.Refuse(wire.ReasonDecommissioned, "device decommissioned", nil)
		case exists && cur.State == inventory.StatePending && sess.path == PathKnown:
			return errStateChanged
		case exists && cur.State != inventory.StatePending:
			kind = "re-enrolled"
		}
		if err := s.apply(cur, exists, sess, tok, now); err != nil {
			return err
		}
		if cur.State != inventory.StateQuarantined {
			cur.State = inventory.StateActive
		}
		if sess.path != PathKnown {
			cur.TrustPath = sess.path
		}
		if tok != nil && tok.Owner != "" {
			cur.Owner = tok.Owner
		}
		// A re-enrolled device lost or abandoned its old keys: the new
		// certificate is its only one (the others revoked and listed in
		// the CRL in this same transaction).
		if err := cur.CanIssue(now); err != nil {
			return wire.Refuse(wire.ReasonRateLimited, "too many certificates outstanding for this device; try again once older ones expired", err)
		}
		cur.IssuedCertificate(cert)
		cur.RevokeOthers(serial, inventory.ReasonSuperseded, now)
		cur.EnrolledAt = now
		d = *cur
		return nil
	})
	if err != nil {
		return err
	}
	_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: now, DeviceID: id, Kind: kind, Detail: "trust path " + d.TrustPath + ", certificate " + serial})
	if err := s.sessions.Enrolled(context.TODO(), id); err != nil {
		s.log.Warn("forgetting the client an enrolled device waited on failed", "device_id", id, "err", err)
	}
	s.stats.Enrolled.Add(1)
	s.log.Info("device enrolled", "device_id", id, "model", d.Model, "state", d.State, "trust_path", d.TrustPath, "cert_serial", serial)
	fwTrust, fwRotations := s.firmwareTrust(sess.protocol)
	s.reply(sess.clientID, env.ID, sess.protocol, &wire.EnrollResult{
		Status: wire.StatusActive, Reason: wire.ReasonOK, DeviceID: id, Certificate: cert.Raw,
		TrustBundle: s.cfg.CA.TrustBundle(), Session: sess.id, FirmwareTrust: fwTrust, FirmwareRotations: fwRotations,
	})
	return nil
}

// firmwareTrust is Config.FirmwareTrust's set and rotations, or nil, for
// an enrollment result in protocol version peer. A result of version 4
// cannot carry rotations, and a version 4 device takes a set in the result
// as it is when its sequence is higher than its own: once the set was
// rotated, such a device gets neither here, and the set with its
// rotations in the firmware.trust message after its hello, where it
// verifies each rotation.
func (s *Service) firmwareTrust(peer int) ([]byte, []wire.TrustRotation) {
	if s.cfg.FirmwareTrust == nil {
		return nil, nil
	}
	trust, rots := s.cfg.FirmwareTrust()
	if len(rots) > 0 && wire.Needs(wire.TypeEnrollResult, &wire.EnrollResult{FirmwareRotations: rots}) > peer {
		return nil, nil
	}
	return trust, rots
}

// ErrNotPending is returned by Approve for a device that is not pending.
var ErrNotPending = errors.New("enroll: device is not pending")

// Approve lets a pending device enroll; the device is told to ask again now
// if it is connected, and otherwise enrolls at its next request.
func (s *Service) Approve(deviceID, by string) error {
	err := s.cfg.Inventory.Update(context.TODO(), deviceID, func(d *inventory.Device) error {
		if d.State != inventory.StatePending {
			return ErrNotPending
		}
		if !d.HasFlag(FlagApproved) {
			d.Flags = append(d.Flags, FlagApproved)
		}
		return nil
	})
	if err != nil {
		return err
	}
	_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: s.cfg.Now(), DeviceID: deviceID, Kind: "approved", Detail: "approved by " + by})
	clientID, err := s.sessions.Client(context.TODO(), deviceID)
	if err != nil {
		s.log.Warn("looking up the client a pending device waits on failed", "device_id", deviceID, "err", err)
	}
	if clientID != "" {
		// The oldest version the fleet speaks: every device it enrolls reads it.
		if b, err := wire.EncodeFor(wire.OldestVersion, wire.TypeEnrollRetry, nil, s.cfg.Now(), &wire.Retry{}); err == nil {
			_ = s.cfg.Send(clientID, "retry", b)
		}
	}
	return nil
}
