package sshca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/crypto/ssh"
)

// Devices is what the issuer needs from the inventory.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	AddEvent(ctx context.Context, e inventory.Event) error
}

// Verdicts says whether a device's attestation is current enough for
// credentials to go out (the fleet's attest.Service.Current): nil when it
// is.
type Verdicts interface {
	Current(deviceID string) error
}

// VerdictsFunc adapts a function to Verdicts.
type VerdictsFunc func(deviceID string) error

// Current calls f.
func (f VerdictsFunc) Current(deviceID string) error { return f(deviceID) }

// DefaultValidity is the certificate lifetime when IssuerConfig.Validity is
// zero (the fleet passes its device certificate lifetime).
const DefaultValidity = 24 * time.Hour

// DefaultMinInterval is how often one device may be issued certificates.
const DefaultMinInterval = 5 * time.Second

// IssuerConfig configures an Issuer.
type IssuerConfig struct {
	// CA signs the certificates; nil means Open(CAConfig) (whose nil
	// Logger means Logger).
	CA       *CA
	CAConfig Config
	Devices  Devices
	// Verdicts is asked before every issuance: certificates go out only
	// on a passing attestation that is current (made in the device's
	// present session, recent enough). Required.
	Verdicts Verdicts
	// Send publishes to a device's down topic of kind ("ssh"). Required
	// for Submit and Run.
	Send func(deviceID, kind string, payload []byte) error
	// Validity of issued certificates; 0 means DefaultValidity.
	Validity time.Duration
	// MinInterval between two issuances for one device; 0 means
	// DefaultMinInterval, negative disables the limit.
	MinInterval time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
}

// Issuer answers devices' requests for SSH host certificates.
type Issuer struct {
	cfg IssuerConfig
	log *slog.Logger
	q   chan request

	mu   sync.Mutex
	last map[string]time.Time // device ID -> last issuance
}

type request struct {
	deviceID string
	env      *wire.Envelope
}

// NewIssuer returns an issuer; Run starts answering submitted requests.
func NewIssuer(cfg IssuerConfig) (*Issuer, error) {
	if cfg.CA == nil && cfg.CAConfig.KeyFile != "" {
		if cfg.CAConfig.Logger == nil {
			cfg.CAConfig.Logger = cfg.Logger
		}
		var err error
		if cfg.CA, err = Open(cfg.CAConfig); err != nil {
			return nil, err
		}
	}
	if cfg.CA == nil || cfg.Devices == nil || cfg.Verdicts == nil {
		return nil, errors.New("sshca: CA, Devices and Verdicts are required")
	}
	if cfg.Validity < 0 || cfg.Validity > MaxValidity {
		return nil, fmt.Errorf("sshca: validity %s out of range", cfg.Validity)
	}
	if cfg.Validity == 0 {
		cfg.Validity = DefaultValidity
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Issuer{cfg: cfg, log: cfg.Logger, q: make(chan request, 256), last: map[string]time.Time{}}, nil
}

// CA returns the issuer's CA.
func (s *Issuer) CA() *CA { return s.cfg.CA }

// Submit queues a request from an authenticated device; when the queue is
// full the device is told to ask again later.
func (s *Issuer) Submit(deviceID string, env *wire.Envelope) {
	select {
	case s.q <- request{deviceID, env}:
	default:
		s.reply(deviceID, env.ID, &wire.SSHCerts{Status: wire.StatusRefused, Reason: wire.ReasonRateLimited, Message: "SSH certificate queue full"})
	}
}

// Run answers submitted requests until ctx ends.
func (s *Issuer) Run(ctx context.Context) error {
	if s.cfg.Send == nil {
		return errors.New("sshca: Send is required to run")
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-s.q:
			s.Handle(r.deviceID, r.env)
		}
	}
}

// Handle answers one request synchronously.
func (s *Issuer) Handle(deviceID string, env *wire.Envelope) {
	var req wire.SSHRequest
	var res *wire.SSHCerts
	err := wire.DecodeBody(env, wire.TypeSSHRequest, &req)
	if err != nil {
		err = wire.Refuse(wire.ReasonBadRequest, "malformed SSH certificate request", err)
	} else {
		res, err = s.Issue(deviceID, req.HostKeys)
	}
	if err != nil {
		var we *wire.Error
		if !errors.As(err, &we) {
			s.log.Error("SSH host certificates failed", "device_id", deviceID, "err", err)
			we = wire.Refuse(wire.ReasonInternal, "internal error", err)
		}
		s.log.Info("SSH host certificates refused", "device_id", deviceID, "reason", we.Reason.String(), "cause", we.Err)
		res = &wire.SSHCerts{Status: wire.StatusRefused, Reason: we.Reason, Message: we.Message}
	}
	s.reply(deviceID, env.ID, res)
}

func (s *Issuer) reply(deviceID string, corr []byte, res *wire.SSHCerts) {
	b, err := wire.Encode(wire.TypeSSHCerts, corr, s.cfg.Now(), res)
	if err == nil && s.cfg.Send != nil {
		err = s.cfg.Send(deviceID, "ssh", b)
	}
	if err != nil {
		s.log.Warn("sending SSH host certificates failed", "device_id", deviceID, "err", err)
	}
}

// Issue certifies a device's host keys (authorized_keys lines). The device
// must be active (not quarantined, pending or decommissioned) and its last
// attestation must have passed and be current (Config.Verdicts: made in
// the device's present session, not an old pass); otherwise the refusal
// is a *wire.Error (ReasonQuarantined, ReasonAttestationFailed). Keys that do not parse or
// that CheckHostKey refuses are left out and named in the answer's
// message; if none is left the request is refused (ReasonBadRequest).
func (s *Issuer) Issue(deviceID string, hostKeys []string) (*wire.SSHCerts, error) {
	if len(hostKeys) == 0 || len(hostKeys) > wire.MaxSSHHostKeys {
		return nil, wire.Refuse(wire.ReasonBadRequest, "1 to 8 host keys", nil)
	}
	d, err := s.cfg.Devices.Device(context.TODO(), deviceID)
	if err != nil {
		return nil, fmt.Errorf("sshca: %w", err)
	}
	switch {
	case d.State != inventory.StateActive:
		return nil, wire.Refuse(wire.ReasonQuarantined, "only active devices get SSH host certificates (device is "+string(d.State)+")", nil)
	case d.Attestation != wire.VerdictPass:
		return nil, wire.Refuse(wire.ReasonAttestationFailed, "SSH host certificates need a passing attestation; ask again after one", nil)
	}
	if err := s.cfg.Verdicts.Current(deviceID); err != nil {
		return nil, wire.Refuse(wire.ReasonAttestationFailed, "SSH host certificates need a passing attestation in this session; ask again after one", err)
	}
	now := s.cfg.Now()
	if s.cfg.MinInterval > 0 {
		s.mu.Lock()
		last, ok := s.last[deviceID]
		if ok && !now.Before(last) && now.Sub(last) < s.cfg.MinInterval {
			s.mu.Unlock()
			return nil, wire.Refuse(wire.ReasonRateLimited, "SSH host certificates were issued moments ago", nil)
		}
		s.last[deviceID] = now
		s.mu.Unlock()
	}
	res := &wire.SSHCerts{Status: wire.StatusActive, Validity: int64(s.cfg.Validity / time.Second)}
	var skipped, types []string
	var serials []string
	for i, line := range hostKeys {
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d does not parse", i))
			continue
		}
		if err := CheckHostKey(key); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %s", i, strings.TrimPrefix(err.Error(), "sshca: ")))
			continue
		}
		cert, err := s.cfg.CA.Sign(deviceID, key, nil, s.cfg.Validity)
		if err != nil {
			return nil, err
		}
		text := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))) + " " + deviceID
		res.Certs = append(res.Certs, wire.SSHCert{Index: i, Cert: text})
		types = append(types, key.Type())
		serials = append(serials, fmt.Sprintf("%d", cert.Serial))
	}
	if len(res.Certs) == 0 {
		return nil, wire.Refuse(wire.ReasonBadRequest, "no acceptable host key: "+strings.Join(skipped, "; "), nil)
	}
	if len(skipped) > 0 {
		res.Message = truncate("not certified: "+strings.Join(skipped, "; "), 512)
	}
	_ = s.cfg.Devices.AddEvent(context.TODO(), inventory.Event{Time: now, DeviceID: deviceID, Kind: "ssh-certificates",
		Detail: fmt.Sprintf("SSH host certificates for %s (serials %s), valid %s", strings.Join(types, ", "), strings.Join(serials, ", "), s.cfg.Validity)})
	s.log.Info("SSH host certificates issued", "device_id", deviceID, "keys", len(res.Certs), "skipped", len(skipped))
	return res, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
