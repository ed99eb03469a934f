package workload

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Defaults of Config.
const (
	DefaultX509TTL     = time.Hour
	DefaultJWTTTL      = 5 * time.Minute
	DefaultKeyRotation = 24 * time.Hour
	DefaultAuditEvery  = time.Hour
	// MaxJWTTTL bounds Config.JWTTTL: a retired key stays published for
	// JWTTTL (plus skew), so it bounds how long a rotation takes to finish.
	MaxJWTTTL  = time.Hour
	maxX509TTL = 24 * time.Hour
	keySkew    = 5 * time.Minute
)

// Devices is what the service needs of the inventory.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
}

// Verdicts says whether a device's attestation is current enough for
// credentials to go out (attest.Service.Current): nil when it is.
type Verdicts interface {
	Current(deviceID string) error
}

// X509Signer issues a workload's X.509-SVID (ca.CA.IssueWorkload) and
// names the roots that verify it.
type X509Signer interface {
	IssueWorkload(id *url.URL, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error)
	TrustBundle() [][]byte
}

// Leases runs work under named leases (fleet/storage/lease.Holder).
type Leases interface {
	Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error
}

// LeaseKeys is the lease under which the signing keys are kept.
const LeaseKeys = "workload_keys"

// keysEvery is how often the signing keys are looked after.
const keysEvery = time.Minute

// Config configures a Service.
type Config struct {
	Store    *Store
	CA       X509Signer
	Devices  Devices
	Verdicts Verdicts
	// TrustDomain names the SPIFFE trust domain. Required.
	TrustDomain string
	// Issuer is the JWT-SVIDs' "iss" and the OpenID Connect issuer: the
	// fleet's public HTTPS origin (e.g. https://fleet.example.com), whose
	// /.well-known/openid-configuration clouds fetch. Empty leaves "iss"
	// out and the discovery document unserved.
	Issuer string
	// Risk returns a device's risk score (governance.Service.Score);
	// with MaxRisk > 0 no SVID goes to a device scoring above it. Nil
	// with MaxRisk > 0 refuses every SVID.
	Risk    func(deviceID string) (int, error)
	MaxRisk int
	// X509TTL and JWTTTL are the SVIDs' lifetimes (0: DefaultX509TTL,
	// DefaultJWTTTL).
	X509TTL, JWTTTL time.Duration
	// KeyRotation is how often Run rotates the JWT signing key (0:
	// DefaultKeyRotation; negative: only on request).
	KeyRotation time.Duration
	// AuditEvery is how often Run writes the issuance counts to Audit
	// (0: DefaultAuditEvery).
	AuditEvery time.Duration
	Audit      audit.Recorder
	// Leases, when set, runs the signing keys' upkeep (rotation, pruning)
	// under the lease LeaseKeys, on one replica at a time
	// (fleet/storage/lease); nil runs it here.
	Leases Leases
	// Send publishes to a device's down topic of a kind. Required for
	// Run.
	Send   func(deviceID, kind string, payload []byte) error
	Now    func() time.Time
	Logger *slog.Logger
}

// Service answers devices' workload requests and serves registrations,
// the JWT signing keys and the OpenID Connect documents.
type Service struct {
	cfg  Config
	log  *slog.Logger
	keys *keys
	q    chan request

	mu     sync.Mutex
	counts map[string]int // by outcome ("x509", "jwt", "entries", "refused.<reason>")
	devs   map[string]bool
}

type request struct {
	deviceID string
	env      *wire.Envelope
}

// New returns a service; Run starts answering submitted requests.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.CA == nil || cfg.Devices == nil || cfg.Verdicts == nil || cfg.TrustDomain == "" {
		return nil, errors.New("workload: Store, CA, Devices, Verdicts and TrustDomain are required")
	}
	if cfg.Issuer != "" {
		u, err := url.Parse(cfg.Issuer)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("workload: issuer %q must be an https origin (https://host[:port])", cfg.Issuer)
		}
		cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	}
	switch {
	case cfg.X509TTL == 0:
		cfg.X509TTL = DefaultX509TTL
	case cfg.X509TTL < time.Minute || cfg.X509TTL > maxX509TTL:
		return nil, fmt.Errorf("workload: X.509-SVID lifetime %s out of range (1m to 24h)", cfg.X509TTL)
	}
	switch {
	case cfg.JWTTTL == 0:
		cfg.JWTTTL = DefaultJWTTTL
	case cfg.JWTTTL < time.Minute || cfg.JWTTTL > MaxJWTTTL:
		return nil, fmt.Errorf("workload: JWT-SVID lifetime %s out of range (1m to 1h)", cfg.JWTTTL)
	}
	if cfg.KeyRotation == 0 {
		cfg.KeyRotation = DefaultKeyRotation
	}
	if cfg.AuditEvery <= 0 {
		cfg.AuditEvery = DefaultAuditEvery
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.Discard{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, log: cfg.Logger, q: make(chan request, 256), counts: map[string]int{}, devs: map[string]bool{}}
	s.keys = &keys{st: cfg.Store, now: cfg.Now, keep: cfg.JWTTTL + keySkew, opened: map[string]*rsa.PrivateKey{}}
	return s, nil
}

// Submit queues a request from an authenticated device; when the queue is
// full the device is told to ask again later.
func (s *Service) Submit(deviceID string, env *wire.Envelope) {
	select {
	case s.q <- request{deviceID, env}:
	default:
		s.reply(deviceID, env.ID, refusal(wire.Refuse(wire.ReasonRateLimited, "workload queue full", nil)))
	}
}

// Run answers submitted requests, looks after the signing keys every
// minute (keys: rotated once the active one is KeyRotation old, retired
// ones deleted once their tokens have expired; under Config.Leases on one
// replica at a time) and writes the issuance counts to the audit log,
// until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if s.cfg.Send == nil {
		return errors.New("workload: Send is required to run")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	var keysC <-chan time.Time
	if s.cfg.Leases != nil {
		wg.Go(func() {
			if err := s.cfg.Leases.Hold(ctx, LeaseKeys, s.keyLoop); err != nil {
				s.log.Error("workload: signing key upkeep stopped", "err", err)
			}
		})
	} else {
		t := time.NewTicker(keysEvery)
		defer t.Stop()
		keysC = t.C
	}
	auditT := time.NewTicker(s.cfg.AuditEvery)
	defer auditT.Stop()
	for {
		select {
		case <-ctx.Done():
			s.flushAudit(context.WithoutCancel(ctx))
			return nil
		case r := <-s.q:
			s.Handle(ctx, r.deviceID, r.env)
		case <-auditT.C:
			s.flushAudit(ctx)
		case <-keysC:
			s.maintainKeys(ctx)
		}
	}
}

// keyLoop looks after the keys every minute while the lease is held.
func (s *Service) keyLoop(ctx context.Context) error {
	t := time.NewTicker(keysEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.maintainKeys(ctx)
		}
	}
}

// maintainKeys deletes the retired keys whose tokens have expired and
// rotates the active key once it is KeyRotation old (by its creation
// time in the store, so that restarts do not put rotation off).
func (s *Service) maintainKeys(ctx context.Context) {
	if err := s.keys.prune(ctx); err != nil {
		s.log.Warn("workload: pruning retired JWT-SVID signing keys failed", "err", err)
	}
	if s.cfg.KeyRotation <= 0 {
		return
	}
	all, err := s.cfg.Store.keys(ctx)
	if err != nil {
		s.log.Warn("workload: reading the JWT-SVID signing keys failed", "err", err)
		return
	}
	for _, k := range all {
		if k.Retired.IsZero() && s.cfg.Now().Sub(k.Created) >= s.cfg.KeyRotation {
			if _, err := s.RotateKeys(ctx); err != nil {
				s.log.Error("workload: rotating the JWT-SVID signing key failed", "err", err)
			}
			return
		}
	}
}

// Handle answers one request synchronously.
func (s *Service) Handle(ctx context.Context, deviceID string, env *wire.Envelope) {
	var req wire.WorkloadRequest
	var res *wire.WorkloadAnswer
	err := wire.DecodeBody(env, wire.TypeWorkloadRequest, &req)
	if err != nil {
		err = wire.Refuse(wire.ReasonBadRequest, "malformed workload request", err)
	} else {
		res, err = s.Answer(ctx, deviceID, &req)
	}
	if err != nil {
		var we *wire.Error
		if !errors.As(err, &we) {
			s.log.Error("workload request failed", "device_id", deviceID, "err", err)
			we = wire.Refuse(wire.ReasonInternal, "internal error", err)
		}
		s.log.Info("workload request refused", "device_id", deviceID, "reason", we.Reason.String(), "cause", we.Err)
		s.count(deviceID, "refused."+we.Reason.String())
		res = refusal(we)
	}
	s.reply(deviceID, env.ID, res)
}

func refusal(we *wire.Error) *wire.WorkloadAnswer {
	return &wire.WorkloadAnswer{Status: wire.StatusRefused, Reason: we.Reason, Message: we.Message}
}

func (s *Service) reply(deviceID string, corr []byte, res *wire.WorkloadAnswer) {
	b, err := wire.Encode(wire.TypeWorkloadAnswer, corr, s.cfg.Now(), res)
	if err == nil && s.cfg.Send != nil {
		err = s.cfg.Send(deviceID, wire.KindWorkload, b)
	}
	if err != nil {
		s.log.Warn("sending a workload answer failed", "device_id", deviceID, "err", err)
	}
}

// Answer answers a device's validated request: its registrations, or an
// SVID for one of them. Nothing goes out unless the device is active, its
// last attestation passed and is current (Config.Verdicts), and, with
// Config.MaxRisk, its risk score is at most MaxRisk; a refusal is a
// *wire.Error (ReasonQuarantined, ReasonAttestationFailed). An SVID is
// issued only for a registration that applies to the device
// (ReasonBadRequest otherwise), under the device's own SPIFFE ID.
func (s *Service) Answer(ctx context.Context, deviceID string, req *wire.WorkloadRequest) (*wire.WorkloadAnswer, error) {
	if err := req.Validate(); err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "invalid workload request", err)
	}
	d, err := s.eligible(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	if req.Op == wire.WorkloadEntries {
		return s.entries(ctx, d)
	}
	r, err := s.cfg.Store.Get(ctx, req.Name)
	if errors.Is(err, ErrNotFound) || (err == nil && !r.Applies(d)) {
		return nil, wire.Refuse(wire.ReasonBadRequest, "no workload "+req.Name+" is registered for this device", err)
	}
	if err != nil {
		return nil, err
	}
	id := SPIFFEID(s.cfg.TrustDomain, d.ID, r.Name)
	if req.Op == wire.WorkloadX509 {
		return s.x509(d.ID, id, req.CSR)
	}
	return s.jwt(ctx, d.ID, id, req.Audience)
}

// eligible returns the device when it may get workload credentials now.
func (s *Service) eligible(ctx context.Context, deviceID string) (*inventory.Device, error) {
	d, err := s.cfg.Devices.Device(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	switch {
	case d.State != inventory.StateActive:
		return nil, wire.Refuse(wire.ReasonQuarantined, "only active devices get workload SVIDs (device is "+string(d.State)+")", nil)
	case d.Attestation != wire.VerdictPass:
		return nil, wire.Refuse(wire.ReasonAttestationFailed, "workload SVIDs need a passing attestation; ask again after one", nil)
	}
	if err := s.cfg.Verdicts.Current(deviceID); err != nil {
		return nil, wire.Refuse(wire.ReasonAttestationFailed, "workload SVIDs need a passing attestation in this session; ask again after one", err)
	}
	if s.cfg.MaxRisk > 0 {
		if s.cfg.Risk == nil {
			return nil, wire.Refuse(wire.ReasonAttestationFailed, "the device's risk score is unknown", nil)
		}
		score, err := s.cfg.Risk(deviceID)
		if err != nil {
			return nil, wire.Refuse(wire.ReasonAttestationFailed, "the device's risk score is unknown", err)
		}
		if score > s.cfg.MaxRisk {
			return nil, wire.Refuse(wire.ReasonAttestationFailed, fmt.Sprintf("the device's risk score %d is above %d", score, s.cfg.MaxRisk), nil)
		}
	}
	return d, nil
}

func (s *Service) entries(ctx context.Context, d *inventory.Device) (*wire.WorkloadAnswer, error) {
	all, err := s.cfg.Store.List(ctx)
	if err != nil {
		return nil, err
	}
	res := &wire.WorkloadAnswer{Status: wire.StatusActive, Bundle: s.cfg.CA.TrustBundle()}
	for _, r := range all {
		if r.Applies(d) && len(res.Entries) < wire.MaxWorkloadEntries {
			res.Entries = append(res.Entries, r.Entry(s.cfg.TrustDomain, d.ID))
		}
	}
	if res.JWKS, err = s.JWKS(ctx); err != nil {
		return nil, err
	}
	s.count(d.ID, "entries")
	return res, nil
}

func (s *Service) x509(deviceID string, id *url.URL, der []byte) (*wire.WorkloadAnswer, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, wire.Refuse(wire.ReasonCSRInvalid, "the CSR does not parse or its signature is bad", err)
	}
	if !acceptableKey(csr.PublicKey) {
		return nil, wire.Refuse(wire.ReasonCSRInvalid, "the CSR's key must be ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192 bits", nil)
	}
	cert, err := s.cfg.CA.IssueWorkload(id, csr.PublicKey, s.cfg.X509TTL)
	if err != nil {
		return nil, wire.Refuse(wire.ReasonCSRInvalid, "no X.509-SVID for this key", err)
	}
	s.count(deviceID, "x509")
	return &wire.WorkloadAnswer{Status: wire.StatusActive, Chain: [][]byte{cert.Raw}, Bundle: s.cfg.CA.TrustBundle(),
		Validity: int64(s.cfg.X509TTL / time.Second)}, nil
}

func (s *Service) jwt(ctx context.Context, deviceID string, id *url.URL, aud []string) (*wire.WorkloadAnswer, error) {
	now := s.cfg.Now()
	tok, err := s.keys.sign(ctx, Claims{Issuer: s.cfg.Issuer, Subject: id.String(), Audience: aud,
		IssuedAt: now.Unix(), Expiry: now.Add(s.cfg.JWTTTL).Unix()})
	if err != nil {
		return nil, err
	}
	jwks, err := s.JWKS(ctx)
	if err != nil {
		return nil, err
	}
	s.count(deviceID, "jwt")
	return &wire.WorkloadAnswer{Status: wire.StatusActive, JWT: tok, JWKS: jwks, Validity: int64(s.cfg.JWTTTL / time.Second)}, nil
}

// count adds one outcome to the counts the next audit entry carries.
func (s *Service) count(deviceID, outcome string) {
	s.mu.Lock()
	s.counts[outcome]++
	s.devs[deviceID] = true
	s.mu.Unlock()
}

// Counts returns the outcomes counted since the last audit entry.
func (s *Service) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// flushAudit writes one audit entry with the counts since the last one
// (none when nothing was asked) and starts counting again.
func (s *Service) flushAudit(ctx context.Context) {
	s.mu.Lock()
	counts, devs := s.counts, len(s.devs)
	s.counts, s.devs = map[string]int{}, map[string]bool{}
	s.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	e := audit.New(audit.System("workload"), "workload.svids", "")
	e.Details = map[string]string{"devices": strconv.Itoa(devs)}
	names := make([]string, 0, len(counts))
	for k := range counts {
		names = append(names, k)
	}
	sort.Strings(names)
	for i, k := range names {
		if i >= audit.MaxDetails-1 {
			break
		}
		e.Details[k] = strconv.Itoa(counts[k])
	}
	if err := s.cfg.Audit.Record(ctx, e); err != nil {
		s.log.Warn("recording the workload issuance counts failed", "err", err)
	}
}

// Registrations lists the registrations.
func (s *Service) Registrations(ctx context.Context) ([]Registration, error) {
	return s.cfg.Store.List(ctx)
}

// Register creates or replaces a registration by who (ErrInvalid).
func (s *Service) Register(ctx context.Context, r Registration, who string) (Registration, error) {
	r.CreatedAt, r.CreatedBy = s.cfg.Now().UTC(), who
	return r, s.cfg.Store.Put(ctx, r)
}

// Unregister deletes a registration (ErrNotFound): devices get no new
// SVID for it.
func (s *Service) Unregister(ctx context.Context, name string) error {
	return s.cfg.Store.Delete(ctx, name)
}

// RotateKeys makes a new JWT signing key active; the retired one stays in
// the JWKS until the tokens it signed have expired.
func (s *Service) RotateKeys(ctx context.Context) (string, error) {
	kid, err := s.keys.rotate(ctx, false)
	if err == nil {
		s.log.Info("JWT-SVID signing key rotated", "kid", kid)
	}
	return kid, err
}

// PruneKeys deletes the retired signing keys whose tokens have expired
// (Run does so every minute).
func (s *Service) PruneKeys(ctx context.Context) error { return s.keys.prune(ctx) }

// JWKS returns the JWT bundle: the signing keys whose tokens may be
// valid, as an RFC 7517 JSON key set. It creates the first key.
func (s *Service) JWKS(ctx context.Context) ([]byte, error) {
	if _, _, err := s.keys.active(ctx); err != nil {
		return nil, err
	}
	set, err := s.keys.jwks(ctx)
	if err != nil {
		return nil, err
	}
	return json.Marshal(set)
}

// KeyInfo is a JWT-SVID signing key as operators see it: its ID and
// dates, no key material.
type KeyInfo struct {
	ID      string
	Created time.Time
	// Retired is when it stopped signing; zero for the active key.
	Retired time.Time
}

// Keys lists the signing keys the JWKS publishes, newest first, without
// creating one (JWKS does).
func (s *Service) Keys(ctx context.Context) ([]KeyInfo, error) {
	set, err := s.cfg.Store.keys(ctx)
	if err != nil {
		return nil, err
	}
	cut := s.cfg.Now().Add(-s.keys.keep)
	var out []KeyInfo
	for i := len(set) - 1; i >= 0; i-- {
		if k := set[i]; k.Retired.IsZero() || !k.Retired.Before(cut) {
			out = append(out, KeyInfo{ID: k.ID, Created: k.Created, Retired: k.Retired})
		}
	}
	return out, nil
}

// Issuer returns the OpenID Connect issuer (Config.Issuer; "" when none).
func (s *Service) Issuer() string { return s.cfg.Issuer }

// TrustDomain returns the SPIFFE trust domain of the workloads' IDs.
func (s *Service) TrustDomain() string { return s.cfg.TrustDomain }

// JWKSPath is where the fleet serves JWKS, under Config.Issuer.
const JWKSPath = "/.well-known/jwks.json"

// ErrNoIssuer is returned by Discovery when Config.Issuer is empty.
var ErrNoIssuer = errors.New("workload: no OIDC issuer is configured (workload_issuer)")

// Discovery returns the OpenID Connect discovery document (OpenID Connect
// Discovery 1.0 §3) of Config.Issuer: what a cloud's workload identity
// federation fetches to find the JWKS.
func (s *Service) Discovery() ([]byte, error) {
	if s.cfg.Issuer == "" {
		return nil, ErrNoIssuer
	}
	return json.Marshal(map[string]any{
		"issuer":                                s.cfg.Issuer,
		"jwks_uri":                              s.cfg.Issuer + JWKSPath,
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{jwtAlg},
		"claims_supported":                      []string{"sub", "aud", "exp", "iat", "iss"},
	})
}

// acceptableKey reports whether a workload key is one the fleet certifies.
func acceptableKey(pub any) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return k.Curve == elliptic.P256() || k.Curve == elliptic.P384()
	case ed25519.PublicKey:
		return true
	case *rsa.PublicKey:
		return k.N.BitLen() >= 2048 && k.N.BitLen() <= 8192
	}
	return false
}
