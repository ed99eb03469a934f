// Package enroll is the fleet's side of enrollment: it receives bootstrap
// messages from the broker, checks the EK trust path and the TPM evidence,
// challenges the device to activate a credential, and issues its certificate.
//
// A request is checked in this order, and refused with the first failing
// reason code: envelope (version, replay), body fields, EK (certificate
// chain, key match), AK attributes, transport key attributes, inventory
// (decommissioned, clone), trust path (token, manufacturer CA, allow-list,
// re-enrollment of a known EK, operator approval). Only then is a credential
// made. The proof is checked in this order: session (known, unused, same
// client, not expired), credential activation, TPM2_Certify of the transport
// key, the CSR against the certified key, quote. Every refusal leaves the inventory unchanged,
// except that a clone attempt flags the enrolled device.
package enroll

import (
	"context"
	"crypto/rand"
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

// Config configures the service.
type Config struct {
	CA        *ca.CA
	Inventory *inventory.Store
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
	// the device's model and firmware.
	Policies Policies
	// Workers is the number of concurrent handlers; default GOMAXPROCS.
	Workers int
	// Queue bounds waiting messages; beyond it requests are answered with
	// ReasonRateLimited. Default 1024.
	Queue  int
	Now    func() time.Time // nil means time.Now
	Rand   io.Reader        // nil means crypto/rand
	Logger *slog.Logger

	// FirmwareTrust returns the release trust set enrolled devices get
	// (firmware/verify.TrustSet.Marshal); nil, or a nil result, gives
	// them none (the fleet has no firmware releases configured).
	FirmwareTrust func() []byte

	// Identities, when set, is the fleet's identity governance: requests
	// from blocked client IDs or EKs are refused, EKs an operator chose to
	// enroll from the triage list are trusted (trust path PathTriage),
	// and unknown EKs and clone suspicions are reported to it.
	Identities Identities
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

// Policies finds the reference policy for a device (fleet/policy.Store).
type Policies interface {
	Select(model, firmware, group string) (*policy.Policy, error)
}

// Service handles enrollment messages.
type Service struct {
	cfg Config
	log *slog.Logger
	q   chan job
	// limit rate-limits the lines any client can cause (malformed
	// messages, refusals): bootstrap clients are anonymous.
	limit *loglimit.Limiter

	mu       sync.Mutex
	sessions map[string]*session  // by session hex
	byEK     map[string]string    // EK fingerprint -> its open session
	used     map[string]time.Time // consumed sessions, for replay answers
	seen     map[string]time.Time // message IDs seen
	clients  map[string]string    // device ID -> bootstrap client ID of pending devices

	stats Stats
}

// Stats counts outcomes. Malformed counts messages that did not decode
// (also counted in Refused).
type Stats struct {
	Requests, Challenges, Enrolled, Pending, Refused, Malformed atomic.Int64
}

type job struct {
	clientID string
	payload  []byte
}

type session struct {
	clientID string
	id       []byte
	nonce    []byte
	secret   []byte
	expires  time.Time
	req      *wire.EnrollRequest
	ek       *verifier.EK
	ak       *verifier.AK
	tk       *verifier.TransportKey
	path     string            // "" = pending
	existing *inventory.Device // the record when the request arrived; decisions re-read it
	clone    string            // why this looks like a clone, decided after activation
}

// New checks cfg and returns a service; call Run to start its workers.
func New(cfg Config) (*Service, error) {
	if cfg.CA == nil || cfg.Inventory == nil || cfg.Trust == nil || cfg.Send == nil {
		return nil, errors.New("enroll: CA, Inventory, Trust and Send are required")
	}
	if len(cfg.Selection.PCRs) == 0 {
		cfg.Selection = wire.PCRSelection{Hash: 0x000B, PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}}
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{
		cfg: cfg, log: cfg.Logger, q: make(chan job, cfg.Queue), limit: loglimit.New(cfg.Logger, loglimit.Config{Now: cfg.Now}),
		sessions: map[string]*session{}, byEK: map[string]string{}, used: map[string]time.Time{}, seen: map[string]time.Time{}, clients: map[string]string{},
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
	case s.q <- job{clientID, payload}:
	default:
		if env, err := wire.Decode(payload); err == nil {
			s.refuse(clientID, env.ID, wire.Refuse(wire.ReasonRateLimited, "enrollment queue full", nil))
		}
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
			s.refuse(clientID, nil, wire.Refuse(wire.ReasonUnsupportedVersion, fmt.Sprintf("fleet speaks protocol version %d", wire.Version), err))
		}
		return
	}
	if !s.firstSighting(env.IDString()) {
		s.refuse(clientID, env.ID, wire.Refuse(wire.ReasonReplay, "message already received", nil))
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
		s.refuse(clientID, env.ID, err)
	}
}

// Bounds on what unauthenticated clients can make the service remember.
const (
	maxSessions = 10000
	maxSeen     = 200000
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

// expire drops old sessions and replay records.
func (s *Service) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.cfg.Now().Add(-time.Hour))
}

// expireLocked drops expired sessions and replay records older than cutoff.
func (s *Service) expireLocked(cutoff time.Time) {
	now := s.cfg.Now()
	for k, v := range s.sessions {
		if now.After(v.expires) {
			delete(s.sessions, k)
			if s.byEK[v.ek.Fingerprint] == k {
				delete(s.byEK, v.ek.Fingerprint)
			}
		}
	}
	for k, t := range s.used {
		if t.Before(cutoff) {
			delete(s.used, k)
		}
	}
	for k, t := range s.seen {
		if t.Before(cutoff) {
			delete(s.seen, k)
		}
	}
}

func (s *Service) refuse(clientID string, corr []byte, err error) {
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
	s.reply(clientID, corr, res)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (s *Service) reply(clientID string, corr []byte, res *wire.EnrollResult) {
	b, err := wire.Encode(wire.TypeEnrollResult, corr, s.cfg.Now(), res)
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
	existing, err := s.cfg.Inventory.DeviceByEK(ek.Fingerprint)
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		return err
	}
	if existing != nil {
		if existing.State == inventory.StateDecommissioned {
			return wire.Refuse(wire.ReasonDecommissioned, "device decommissioned", nil)
		}
	}
	path, err := s.trustPath(&req, ek, existing)
	if err != nil {
		var we *wire.Error
		if s.cfg.Identities != nil && errors.As(err, &we) && (we.Reason == wire.ReasonUnknownEK || we.Reason == wire.ReasonUntrustedEK) {
			s.cfg.Identities.UnknownEK(clientID, ek.Fingerprint, we.Message)
		}
		return err
	}
	clone := ""
	if existing != nil && existing.Serial != "" && req.Serial != existing.Serial {
		// Judged after the device proves it holds this EK: anyone can send
		// a public EK, and that must not flag the enrolled device.
		clone = fmt.Sprintf("EK presented with serial %q, enrolled as %q", req.Serial, existing.Serial)
	}
	sess := &session{
		clientID: clientID, id: make([]byte, 16), nonce: make([]byte, 32), secret: make([]byte, 32),
		expires: s.cfg.Now().Add(s.cfg.ChallengeTTL), req: &req, ek: ek, ak: ak, tk: tk, path: path, existing: existing, clone: clone,
	}
	for _, b := range [][]byte{sess.id, sess.nonce, sess.secret} {
		if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
			return err
		}
	}
	blob, encSecret, err := verifier.MakeCredential(s.cfg.Rand, ek, ak, sess.secret)
	if err != nil {
		return err
	}
	s.mu.Lock()
	// One open session per EK, and a bound on all of them: a flood of
	// requests cannot grow the fleet's memory.
	if old, ok := s.byEK[ek.Fingerprint]; ok {
		delete(s.sessions, old)
	}
	if len(s.sessions) >= maxSessions {
		s.mu.Unlock()
		return wire.Refuse(wire.ReasonRateLimited, "too many enrollments in progress", nil)
	}
	key := hex.EncodeToString(sess.id)
	s.sessions[key] = sess
	s.byEK[ek.Fingerprint] = key
	s.mu.Unlock()
	ch := &wire.EnrollChallenge{
		Session: sess.id, CredentialBlob: blob, EncryptedSecret: encSecret, Nonce: sess.nonce,
		Selection: s.cfg.Selection, Expires: sess.expires.UnixMilli(),
	}
	b, err := wire.Encode(wire.TypeEnrollChallenge, env.ID, s.cfg.Now(), ch)
	if err != nil {
		return err
	}
	s.stats.Challenges.Add(1)
	return s.cfg.Send(clientID, "challenge", b)
}

// trustPath decides why this EK may enroll; "" means it waits for approval.
func (s *Service) trustPath(req *wire.EnrollRequest, ek *verifier.EK, existing *inventory.Device) (string, error) {
	now := s.cfg.Now()
	switch {
	case existing != nil && (existing.State == inventory.StateActive || existing.State == inventory.StateQuarantined):
		// A known device proving its EK again (lost state, expired or
		// revoked certificate): no token is spent, even if it sends one.
		return PathKnown, nil
	case req.Token != "":
		if _, err := s.cfg.Inventory.CheckToken(req.Token, req.Model, now); err != nil {
			return "", tokenRefusal(err)
		}
		return PathToken, nil
	case ek.ChainVerified:
		return PathEKCA, nil
	case ek.AllowListed:
		return PathAllowList, nil
	case existing != nil && existing.State == inventory.StatePending && existing.HasFlag(FlagApproved):
		return PathApproval, nil
	case s.cfg.Identities != nil && s.cfg.Identities.Admitted(ek.Fingerprint):
		return PathTriage, nil
	case s.cfg.ManualApproval:
		return "", nil
	case ek.Cert != nil && s.cfg.Trust.Roots != nil:
		return "", wire.Refuse(wire.ReasonUntrustedEK, "EK certificate not issued by a trusted manufacturer CA", ek.ChainErr)
	default:
		return "", wire.Refuse(wire.ReasonUnknownEK, "unknown EK: enroll with a token or ask an operator", nil)
	}
}

func tokenRefusal(err error) error {
	switch {
	case errors.Is(err, inventory.ErrTokenExpired):
		return wire.Refuse(wire.ReasonTokenExpired, "enrollment token expired", err)
	case errors.Is(err, inventory.ErrTokenUsed):
		return wire.Refuse(wire.ReasonTokenUsed, "enrollment token already used", err)
	case errors.Is(err, inventory.ErrTokenBinding):
		return wire.Refuse(wire.ReasonTokenBinding, "enrollment token bound to another model", err)
	case errors.Is(err, inventory.ErrTokenInvalid):
		return wire.Refuse(wire.ReasonTokenInvalid, "invalid enrollment token", err)
	}
	return err
}

func (s *Service) flagClone(deviceID, detail string) {
	err := s.cfg.Inventory.Update(deviceID, func(d *inventory.Device) error {
		if !d.HasFlag(FlagCloneSuspect) {
			d.Flags = append(d.Flags, FlagCloneSuspect)
		}
		return nil
	})
	if err == nil {
		err = s.cfg.Inventory.AddEvent(inventory.Event{Time: s.cfg.Now(), DeviceID: deviceID, Kind: "clone-suspect", Detail: detail})
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
	key := hex.EncodeToString(p.Session)
	now := s.cfg.Now()
	s.mu.Lock()
	sess := s.sessions[key]
	if sess != nil && sess.clientID == clientID {
		delete(s.sessions, key)
		if s.byEK[sess.ek.Fingerprint] == key {
			delete(s.byEK, sess.ek.Fingerprint)
		}
		s.used[key] = now
	} else {
		sess = nil
	}
	_, used := s.used[key]
	s.mu.Unlock()
	if sess == nil {
		if used {
			return wire.Refuse(wire.ReasonReplay, "enrollment session already used", nil)
		}
		return wire.Refuse(wire.ReasonChallengeExpired, "unknown enrollment session", nil)
	}
	if now.After(sess.expires) {
		return wire.Refuse(wire.ReasonChallengeExpired, "enrollment session expired", nil)
	}
	if err := verifier.CheckActivation(sess.secret, sess.id, sess.nonce, p.Activation); err != nil {
		if sess.existing != nil {
			// Recorded, not flagged: a wrong answer proves nothing about the
			// enrolled device, and anyone can send its public EK.
			_ = s.cfg.Inventory.AddEvent(inventory.Event{Time: now, DeviceID: sess.existing.ID, Kind: "activation-failed",
				Detail: "an enrollment with this device's EK failed credential activation (bootstrap client " + sess.clientID + ")"})
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
	if err := s.judgeFirstQuote(sess, vq); err != nil {
		return err
	}
	if sess.path == "" {
		return s.hold(env, sess)
	}
	return s.issue(env, sess)
}

// judgeFirstQuote holds the first quote to the reference policy of the
// device's model and firmware, when one applies and asks only for PCR
// values (event-log rules are judged by the first attestation).
func (s *Service) judgeFirstQuote(sess *session, vq *verifier.VerifiedQuote) error {
	if s.cfg.Policies == nil || (sess.existing != nil && sess.existing.State == inventory.StateQuarantined) {
		return nil // a quarantined device re-enrolls only into a session to prove itself
	}
	group := ""
	if sess.existing != nil {
		group = sess.existing.Group
	}
	pol, err := s.cfg.Policies.Select(sess.req.Model, sess.req.Firmware, group)
	if err != nil || pol == nil || pol.Events != nil {
		return err
	}
	v := pol.Evaluate(policy.NewEvidence(sess.req.Model, sess.req.Firmware, nil, vq))
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

// apply writes what the session proved onto the current record. Model and
// serial are set at first enrollment only (the operator owns them after).
func (s *Service) apply(d *inventory.Device, exists bool, sess *session, now time.Time) error {
	if exists && d.EKFingerprint != sess.ek.Fingerprint {
		return errStateChanged
	}
	if !exists {
		d.FirstSeen = now
		d.Model = sess.req.Model
		d.Serial = sess.req.Serial
	}
	d.EKFingerprint = sess.ek.Fingerprint
	d.Firmware = sess.req.Firmware
	d.LastSeen = now
	d.AKName = sess.ak.Name
	d.EKPublic = sess.req.EKPublic
	d.AKPublic = sess.req.AKPublic
	return nil
}

// maxPending bounds devices waiting for approval: with manual approval any
// TPM can ask, so the queue of strangers must not grow without bound.
const maxPending = 10000

// hold records a verified device that waits for approval.
func (s *Service) hold(env *wire.Envelope, sess *session) error {
	now := s.cfg.Now().UTC()
	if sess.existing == nil {
		counts, err := s.cfg.Inventory.Counts()
		if err != nil {
			return err
		}
		if counts[inventory.StatePending] >= maxPending {
			return wire.Refuse(wire.ReasonRateLimited, "too many devices wait for approval", nil)
		}
	}
	created := false
	err := s.cfg.Inventory.Upsert(sess.ek.DeviceID, func(d *inventory.Device, exists bool) error {
		if exists && d.State != inventory.StatePending {
			return errStateChanged
		}
		created = !exists
		if err := s.apply(d, exists, sess, now); err != nil {
			return err
		}
		d.State, d.TrustPath = inventory.StatePending, PathApproval
		return nil
	})
	if err != nil {
		return err
	}
	if created {
		_ = s.cfg.Inventory.AddEvent(inventory.Event{Time: now, DeviceID: sess.ek.DeviceID, Kind: "pending", Detail: "verified; waiting for operator approval"})
	}
	s.mu.Lock()
	s.clients[sess.ek.DeviceID] = sess.clientID
	s.mu.Unlock()
	s.stats.Pending.Add(1)
	s.reply(sess.clientID, env.ID, &wire.EnrollResult{Status: wire.StatusPending, Reason: wire.ReasonPending,
		Message: "verified; waiting for operator approval", DeviceID: sess.ek.DeviceID, RetryAfter: 30, Session: sess.id})
	return nil
}

// issue signs the certificate and records the device, deciding on the
// record as it is now: a device quarantined or decommissioned since the
// request keeps that state.
func (s *Service) issue(env *wire.Envelope, sess *session) error {
	now := s.cfg.Now().UTC()
	id := sess.ek.DeviceID
	cert, err := s.cfg.CA.IssueDevice(id, sess.tk.Key, s.cfg.DeviceLifetime)
	if err != nil {
		return err
	}
	var owner string
	if sess.path == PathToken {
		tok, err := s.cfg.Inventory.ConsumeToken(sess.req.Token, id, sess.req.Model, now)
		if err != nil {
			return tokenRefusal(err)
		}
		owner = tok.Owner
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	var stale []string
	var oldExpiry time.Time
	kind := "enrolled"
	var d inventory.Device
	err = s.cfg.Inventory.Upsert(id, func(cur *inventory.Device, exists bool) error {
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
		if err := s.apply(cur, exists, sess, now); err != nil {
			return err
		}
		if cur.State != inventory.StateQuarantined {
			cur.State = inventory.StateActive
		}
		if sess.path != PathKnown {
			cur.TrustPath = sess.path
		}
		if owner != "" {
			cur.Owner = owner
		}
		stale, oldExpiry = append([]string{cur.CertSerial}, cur.Superseded...), cur.CertExpiry
		cur.Superseded = nil
		cur.CertSerial, cur.CertExpiry, cur.CertIssued, cur.EnrolledAt = serial, cert.NotAfter, cert.NotBefore, now
		d = *cur
		return nil
	})
	if err != nil {
		return err
	}
	// A re-enrolled device lost or abandoned its old key: one certificate.
	for _, old := range stale {
		if old != "" && !d.IsRevoked(old) {
			if err := s.cfg.Inventory.Revoke(inventory.Revocation{Serial: old, DeviceID: id, Reason: inventory.ReasonSuperseded, Time: now, Expires: oldExpiry}); err != nil {
				return err
			}
		}
	}
	_ = s.cfg.Inventory.AddEvent(inventory.Event{Time: now, DeviceID: id, Kind: kind, Detail: "trust path " + d.TrustPath + ", certificate " + serial})
	s.mu.Lock()
	delete(s.clients, id)
	s.mu.Unlock()
	s.stats.Enrolled.Add(1)
	s.log.Info("device enrolled", "device_id", id, "model", d.Model, "state", d.State, "trust_path", d.TrustPath, "cert_serial", serial)
	s.reply(sess.clientID, env.ID, &wire.EnrollResult{
		Status: wire.StatusActive, Reason: wire.ReasonOK, DeviceID: id, Certificate: cert.Raw,
		TrustBundle: s.cfg.CA.TrustBundle(), Session: sess.id, FirmwareTrust: s.firmwareTrust(),
	})
	return nil
}

// firmwareTrust is Config.FirmwareTrust's set, or nil.
func (s *Service) firmwareTrust() []byte {
	if s.cfg.FirmwareTrust == nil {
		return nil
	}
	return s.cfg.FirmwareTrust()
}

// ErrNotPending is returned by Approve for a device that is not pending.
var ErrNotPending = errors.New("enroll: device is not pending")

// Approve lets a pending device enroll; the device is told to ask again now
// if it is connected, and otherwise enrolls at its next request.
func (s *Service) Approve(deviceID, by string) error {
	err := s.cfg.Inventory.Update(deviceID, func(d *inventory.Device) error {
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
	_ = s.cfg.Inventory.AddEvent(inventory.Event{Time: s.cfg.Now(), DeviceID: deviceID, Kind: "approved", Detail: "approved by " + by})
	s.mu.Lock()
	clientID := s.clients[deviceID]
	s.mu.Unlock()
	if clientID != "" {
		if b, err := wire.Encode(wire.TypeEnrollRetry, nil, s.cfg.Now(), &wire.Retry{}); err == nil {
			_ = s.cfg.Send(clientID, "retry", b)
		}
	}
	return nil
}
