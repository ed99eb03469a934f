// Package server is `sigil serve`: it composes the fleet's parts — CA,
// inventory, embedded broker, enrollment service and HTTPS API — and runs
// them until its context ends, stopping all of them when one fails.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/sshca"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/sync/errgroup"
)

// Config is sigil serve's configuration; JSON keys are the file's keys
// (docs/CONFIG.md).
type Config struct {
	// DataDir holds the CA, the inventory and the admin token. Default
	// /var/lib/sigil.
	DataDir string `json:"data_dir"`
	// MQTTAddr is the broker's TLS listener. Default ":8883".
	MQTTAddr string `json:"mqtt_addr"`
	// APIAddr is the HTTPS API listener. Default ":8443".
	APIAddr string `json:"api_addr"`
	// Hostnames are the DNS names and IP addresses on the server
	// certificate. Default: localhost, 127.0.0.1, ::1 and the host name.
	Hostnames []string `json:"hostnames"`
	// TrustDomain is the SPIFFE trust domain of device IDs. Default
	// "sigil.local".
	TrustDomain string `json:"trust_domain"`
	// EKCADir is a directory of trusted TPM manufacturer CA certificates
	// (PEM or DER, roots and intermediates). Optional.
	EKCADir string `json:"ek_ca_dir"`
	// EKAllowList is a file of EK fingerprints (SHA-256 of the PKIX public
	// key, hex), one per line, '#' comments. Optional.
	EKAllowList string `json:"ek_allowlist"`
	// ManualApproval holds EKs no other path trusts as pending until an
	// operator approves them. Default false (they are refused).
	ManualApproval bool `json:"manual_approval"`
	// ReleaseTrust is the release trust set file (`sigil firmware trust`
	// writes it): the keys, and how many of them must sign, that firmware
	// releases need. Enrolled devices get it. Unset, firmware releases and
	// campaigns are off and their routes answer 501.
	ReleaseTrust string `json:"release_trust"`
	// ReleaseTrustRotations are the signed rotations from ReleaseTrust to
	// the current set, in order; devices get them after each hello.
	ReleaseTrustRotations []ReleaseRotation `json:"release_trust_rotations"`
	// FirmwareApprovals is how many people other than the uploader must
	// approve a release. Default 1.
	FirmwareApprovals int `json:"firmware_approvals"`
	// TwoPersonRule holds dangerous changes (CA rotation, policy and secret
	// changes, fleet-wide rotation jobs; user creation, role changes and
	// API tokens that may approve) for a second person's approval
	// (GET /api/v1/approvals). Default false; turn it on once a second
	// operator with security.approve exists.
	TwoPersonRule bool `json:"two_person_rule"`
	// APIRateLimit is the API requests per second each client address may
	// make, in bursts of APIRateBurst; 0 means 50 (bursts of 200), negative
	// means no limit.
	APIRateLimit float64 `json:"api_rate_limit"`
	APIRateBurst int     `json:"api_rate_burst"`
	// DeviceLifetime is the device certificate lifetime. Default 24h.
	DeviceLifetime config.Duration `json:"device_lifetime"`
	// TopicPrefix is the first MQTT topic level. Default "sigil".
	TopicPrefix string `json:"topic_prefix"`
	// AllowBootstrap lets clients without a device certificate connect to
	// their own enrollment topics. Default true; set false once every
	// device is enrolled.
	AllowBootstrap *bool `json:"allow_bootstrap"`
	// BootstrapCredential requires a credential at CONNECT from bootstrap
	// clients: a claim certificate (ClaimCADir) or an enrollment token as
	// the MQTT password (valid, or already used by this device, which is
	// how a known device re-enrolls). Default false: bootstrap clients are
	// anonymous but limited to their own enrollment topics.
	BootstrapCredential bool `json:"bootstrap_credential"`
	// ClaimCADir is a directory of claim CA certificates (PEM): batch
	// credentials a device maker installs for the bootstrap connection.
	ClaimCADir string `json:"claim_ca_dir"`
	// BootstrapLimits bound the broker's connections without a device
	// certificate (fleet/broker bootstrap.go); zero values take the
	// broker's defaults.
	BootstrapLimits
	// AttestInterval is the devices' expected attestation interval (their
	// attest_interval); StaleAfter missed intervals or unanswered challenges
	// flag a device stale. Defaults 10m and 3.
	AttestInterval config.Duration `json:"attest_interval"`
	StaleAfter     int             `json:"stale_after"`
	// VerdictMaxAge bounds the age of the passing attestation on which
	// SSH host certificates and secrets go out; the pass must also be on
	// a nonce of the device's current session. Default StaleAfter ×
	// AttestInterval (30m).
	VerdictMaxAge config.Duration `json:"verdict_max_age"`
	// AttestPCRs are the PCRs quoted in each bank. Default 0-9 and 14.
	AttestPCRs []int `json:"attest_pcrs"`
	// AttestBanks are the PCR banks quoted, one quote each: "sha256"
	// (default), "sha1", "sha384". Every device must have them.
	AttestBanks []string `json:"attest_banks"`
	// SSHPrincipals are the names on devices' SSH host certificates,
	// templates with "{id}" (device ID) and "{domain}" (trust domain).
	// Default ["{id}", "{id}.{domain}"].
	SSHPrincipals []string `json:"ssh_principals"`
	// AlertSinks are where alert notifications go (fleet/server
	// AlertSink). Default none: alerts are kept and served by the API only.
	AlertSinks []AlertSink `json:"alert_sinks"`
	// AlertFlood limits how many new alerts open per window (fleet/server
	// AlertFlood); the rest are held back and summarized. Default 20 per
	// rule and 100 fleet-wide per 10 minutes.
	AlertFlood AlertFlood `json:"alert_flood"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
	// DebugAddr, if set, is a loopback address serving Go's profiles
	// (net/http/pprof, /debug/pprof/) without authentication. Default
	// off; any other address is refused (debug.go).
	DebugAddr string `json:"debug_addr"`
	// GovernanceConfig: dormant_after, dormant_revoke, silent_after,
	// governance_interval (fleet/server/governance.go).
	GovernanceConfig
}

func (c *Config) setDefaults() {
	if c.DataDir == "" {
		c.DataDir = "/var/lib/sigil"
	}
	if c.MQTTAddr == "" {
		c.MQTTAddr = ":8883"
	}
	if c.APIAddr == "" {
		c.APIAddr = ":8443"
	}
	if len(c.Hostnames) == 0 {
		c.Hostnames = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "" {
			c.Hostnames = append(c.Hostnames, h)
		}
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "sigil.local"
	}
	if c.DeviceLifetime == 0 {
		c.DeviceLifetime = config.Duration(24 * time.Hour)
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = wire.DefaultPrefix
	}
	if c.AllowBootstrap == nil {
		t := true
		c.AllowBootstrap = &t
	}
}

// BootstrapLimits are the bootstrap connection bounds of Config.
type BootstrapLimits struct {
	// BootstrapClients caps the pool of bootstrap connections (default
	// 1000) and BootstrapPerSource one source's share (default 256); at a
	// cap a newcomer displaces the least active connection if it has been
	// inactive for 10s.
	BootstrapClients   int `json:"bootstrap_clients"`
	BootstrapPerSource int `json:"bootstrap_per_source"`
	// BootstrapReserve is the sessions kept beyond the pool for known
	// devices that re-enroll, one per device (default 64).
	BootstrapReserve int `json:"bootstrap_reserve"`
	// BootstrapKeepaliveMax is the longest keepalive a bootstrap client
	// may ask for; none (0) is refused. Default 2m.
	BootstrapKeepaliveMax config.Duration `json:"bootstrap_keepalive_max"`
	// BootstrapFirstMessage is how long a bootstrap client may wait after
	// its CONNECT before its first enrollment message (default 30s), and
	// BootstrapLifetime how long a bootstrap connection lasts at most
	// (default 5m).
	BootstrapFirstMessage config.Duration `json:"bootstrap_first_message"`
	BootstrapLifetime     config.Duration `json:"bootstrap_lifetime"`
}

// Server is a running fleet manager.
type Server struct {
	cfg      Config
	log      *slog.Logger
	CA       *ca.CA
	Inv      *inventory.Store
	Broker   *broker.Broker
	Enroll   *enroll.Service
	Attest   *attest.Service
	Policy   *policy.Store
	Rotation *rotation.Service
	// SSH issues devices' SSH host certificates (fleet/sshca).
	SSH *sshca.Issuer
	// Secrets keeps the sealed secrets (encrypted at rest).
	Secrets *secrets.Store
	// Auth keeps operators, sessions and API tokens.
	Auth *auth.Service
	// Audit is the hash-chained audit log of operator and lifecycle actions.
	Audit *audit.Log
	// anonAudit samples the audit entries of API requests without a
	// credential, so that anyone's requests cannot grow the log at will.
	anonAudit *audit.Sampler
	// Approvals holds dangerous changes for a second person (nil unless
	// Config.TwoPersonRule).
	Approvals *approval.Manager
	// Telemetry ingests device telemetry; Alerts judges it and the fleet's
	// security events; Metrics is the registry /metrics serves.
	Telemetry *telemetry.Ingester
	Alerts    *alert.Engine
	Metrics   *metrics.Registry
	tel       *telemetryParts
	// Governance keeps owners, the triage and block lists, dormant and
	// cloned identities and risk scores (fleet/governance).
	Governance *governance.Service

	jobs       *rotation.Jobs
	secretSvc  *secretService
	deliveries *deliveries
	fw         *firmwareService // nil when firmware is off

	history *attest.History

	apiLn      net.Listener
	debugLn    net.Listener // nil unless Config.DebugAddr
	apiTLS     *tls.Config
	apiHandler http.Handler
	// consoleVerdict feeds the console's verdict chart (set when the
	// console is built, read on attestation workers).
	consoleVerdict atomic.Pointer[func(string, *attest.Record, time.Duration)]
	serverCert     atomic.Pointer[tls.Certificate] // of the active CA generation
	adminToken     string
	ready          chan struct{}
	topics         wire.Topics
	events         []chan broker.Event // connection events to record, by device (events.go)
}

// Files written at first start, relative to DataDir.
const (
	AdminTokenFile = "admin.token"
	CACertFile     = "ca/ca.crt"
	InventoryFile  = "inventory.db"
	PolicyFile     = "policies.db"
	HistoryFile    = "attestations.db"
	JobsFile       = "rotations.db"
)

// New opens the data directory (creating the CA and admin token at first
// start) and binds the listeners; Run serves.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{cfg: cfg, log: logger, ready: make(chan struct{}), topics: wire.Topics{Prefix: cfg.TopicPrefix}, events: eventQueues()}
	var err error
	s.CA, err = ca.Open(ca.Config{Dir: filepath.Join(cfg.DataDir, "ca"), TrustDomain: cfg.TrustDomain, DeviceLifetime: time.Duration(cfg.DeviceLifetime)})
	if err != nil {
		return nil, err
	}
	if err = s.openAuth(); err != nil {
		s.closeStores()
		return nil, err
	}
	trust := &verifier.EKTrust{}
	if cfg.EKCADir != "" {
		if trust.Roots, trust.Intermediates, err = verifier.LoadCADir(cfg.EKCADir); err != nil {
			s.closeStores()
			return nil, err
		}
	}
	if cfg.EKAllowList != "" {
		if trust.AllowList, err = loadAllowList(cfg.EKAllowList); err != nil {
			s.closeStores()
			return nil, err
		}
	}
	if err = s.openAudit(); err != nil {
		s.closeStores()
		return nil, err
	}
	s.Inv, err = inventory.Open(filepath.Join(cfg.DataDir, InventoryFile), inventory.WithEventHook(s.inventoryEvent))
	if err != nil {
		s.closeStores()
		return nil, err
	}
	if err := s.refreshServerCert(); err != nil {
		s.closeStores()
		s.closeStores()
		return nil, err
	}
	tlsCfg := &tls.Config{GetCertificate: s.getCertificate, MinVersion: tls.VersionTLS12}
	var claimCAs []*x509.Certificate
	if cfg.ClaimCADir != "" {
		roots, inter, err := verifier.LoadCADir(cfg.ClaimCADir)
		if err != nil {
			s.closeStores()
			return nil, err
		}
		_ = inter
		claimCAs = poolCerts(cfg.ClaimCADir)
		if roots == nil || len(claimCAs) == 0 {
			s.closeStores()
			return nil, fmt.Errorf("server: claim_ca_dir %s holds no CA certificate", cfg.ClaimCADir)
		}
	}
	var bootstrapAuth func(string, string, []byte, *x509.Certificate) error
	if cfg.BootstrapCredential {
		bootstrapAuth = s.bootstrapCredential
	}
	s.Broker, err = broker.New(broker.Config{
		ClaimCAs: claimCAs, BootstrapAuth: bootstrapAuth,
		Addr: cfg.MQTTAddr, TLS: tlsCfg.Clone(), ClientCAsFunc: s.CA.Pool, TrustDomain: cfg.TrustDomain,
		Topics: s.topics, Gate: gate{s.Inv, s.CA}, AllowBootstrap: *cfg.AllowBootstrap, Logger: logger.With("component", "broker"),
		Events: s.brokerEvent, Screen: s.screen,
		MaxBootstrapClients: cfg.BootstrapClients, MaxBootstrapPerSource: cfg.BootstrapPerSource,
		BootstrapReserve: cfg.BootstrapReserve, KnownDevice: s.knownBootstrap,
		MaxBootstrapKeepalive: time.Duration(cfg.BootstrapKeepaliveMax),
		BootstrapFirstMessage: time.Duration(cfg.BootstrapFirstMessage), BootstrapLifetime: time.Duration(cfg.BootstrapLifetime),
	})
	if err != nil {
		s.closeStores()
		return nil, err
	}
	if s.Policy, err = policy.Open(filepath.Join(cfg.DataDir, PolicyFile)); err != nil {
		s.closeStores()
		return nil, err
	}
	sels, err := selections(cfg.AttestBanks, cfg.AttestPCRs)
	if err != nil {
		s.closeStores()
		return nil, err
	}
	var first wire.PCRSelection
	if len(sels) > 0 {
		first = sels[0]
	}
	s.Enroll, err = enroll.New(enroll.Config{
		Policies: s.Policy, Selection: first,
		CA: s.CA, Inventory: s.Inv, Trust: trust, ManualApproval: cfg.ManualApproval,
		DeviceLifetime: time.Duration(cfg.DeviceLifetime), Logger: logger.With("component", "enroll"),
		Identities:    enrollIdentities{s},
		FirmwareTrust: s.firmwareTrust,
		Send: func(clientID, kind string, payload []byte) error {
			return s.Broker.Publish(s.topics.EnrollDown(clientID, kind), payload, 1)
		},
	})
	if err != nil {
		s.closeStores()
		return nil, err
	}
	if s.history, err = attest.OpenHistory(filepath.Join(cfg.DataDir, HistoryFile), 0); err != nil {
		s.closeStores()
		return nil, err
	}
	s.Attest, err = attest.New(attest.Config{
		Inventory: s.Inv, History: s.history, Policies: s.Policy, Selections: sels,
		Interval: time.Duration(cfg.AttestInterval), StaleAfter: cfg.StaleAfter, VerdictMaxAge: time.Duration(cfg.VerdictMaxAge),
		Logger: logger.With("component", "attest"),
		Send: func(deviceID, kind string, payload []byte) error {
			return s.Broker.Publish(s.topics.DeviceDown(deviceID, kind), payload, 1)
		},
		Disconnect: s.Broker.Disconnect, Alert: s.attestAlert, Verdict: s.attestVerdict,
	})
	if err != nil {
		s.closeStores()
		return nil, err
	}
	if s.jobs, err = rotation.OpenJobs(filepath.Join(cfg.DataDir, JobsFile)); err != nil {
		s.closeStores()
		return nil, err
	}
	s.Rotation, err = rotation.New(rotation.Config{
		CA: s.CA, Inventory: s.Inv, Attest: s.Attest, Jobs: s.jobs, Lifetime: time.Duration(cfg.DeviceLifetime),
		Connected: s.Broker.Connected, Logger: logger.With("component", "rotation"),
		Send: func(deviceID, kind string, payload []byte) error {
			return s.Broker.Publish(s.topics.DeviceDown(deviceID, kind), payload, 1)
		},
	})
	if err != nil {
		s.closeStores()
		return nil, err
	}
	if err = s.openSSH(); err != nil {
		s.closeStores()
		return nil, err
	}
	if s.Secrets, err = secrets.Open(secrets.Config{Dir: cfg.DataDir, Logger: logger.With("component", "secrets")}); err != nil {
		s.closeStores()
		return nil, err
	}
	if s.deliveries, err = openDeliveries(filepath.Join(cfg.DataDir, DeliveriesFile)); err != nil {
		s.closeStores()
		return nil, err
	}
	s.secretSvc = newSecretService(&secretService{
		store: s.Secrets, deliveries: s.deliveries, inv: s.Inv, history: s.history, pcrs: boundPCRs(sels),
		connected: s.Broker.Connected, current: s.Attest.Current, log: logger.With("component", "secrets"),
		send: func(deviceID, kind string, payload []byte) error {
			return s.Broker.Publish(s.topics.DeviceDown(deviceID, kind), payload, 1)
		},
	})
	if err = s.openTelemetry(); err != nil {
		s.closeStores()
		return nil, err
	}
	if err = s.openFirmware(); err != nil {
		s.closeStores()
		return nil, err
	}
	if err = s.openGovernance(); err != nil {
		s.closeStores()
		return nil, err
	}
	s.apiTLS = s.firmwareTLS(&tls.Config{GetCertificate: s.getCertificate, MinVersion: tls.VersionTLS12})
	if cfg.TwoPersonRule {
		if s.Approvals, err = approval.Open(approval.Config{Path: filepath.Join(cfg.DataDir, ApprovalsFile), Auditor: approvalAuditor{s.Audit}, Requester: approval.RequesterFrom(s.Auth), Logger: logger.With("component", "approvals")}); err != nil {
			s.closeStores()
			return nil, err
		}
	}
	s.anonAudit = audit.NewSampler(s.Audit, audit.SamplerConfig{})
	s.apiHandler = api.New(api.Config{Approvals: s.Approvals, RateLimit: cfg.APIRateLimit, RateBurst: cfg.APIRateBurst,
		Inventory: s.Inv, Approver: s.Enroll, Attestation: s.Attest, Policies: s.Policy, Auth: s.Auth, Audit: s.Audit, AnonymousAudit: s.anonAudit,
		Rotation: s.Rotation, CA: s.CA, CARotation: s, Disconnect: s.Broker.Disconnect, Secrets: s.secretSvc, SSHCA: s.SSH.CA(),
		Connected: s.Broker.Connected, Logger: logger.With("component", "api"), Firmware: s.firmwareAPI(), Quarantiner: s.quarantiner(),
		Telemetry: s.Telemetry, Alerts: s.Alerts, AlertSinks: s.tel.sinks, Metrics: s.Metrics,
		Governance: s.Governance,
	})
	if s.apiLn, err = net.Listen("tcp", cfg.APIAddr); err != nil {
		s.closeStores()
		return nil, fmt.Errorf("server: api listener: %w", err)
	}
	if cfg.DebugAddr != "" {
		if s.debugLn, err = listenDebug(cfg.DebugAddr); err != nil {
			s.apiLn.Close()
			s.closeStores()
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) closeStores() {
	if s.Governance != nil {
		s.Governance.Close()
	}
	s.closeTelemetry()
	s.closeFirmware()
	if s.Inv != nil {
		s.Inv.Close()
	}
	if s.Auth != nil {
		s.Auth.Close()
	}
	if s.Approvals != nil {
		s.Approvals.Close()
	}
	if s.Audit != nil {
		s.Audit.Close() // after Run's shutdown checkpoint: closeStores runs when Run returns
	}
	if s.Policy != nil {
		s.Policy.Close()
	}
	if s.history != nil {
		s.history.Close()
	}
	if s.jobs != nil {
		s.jobs.Close()
	}
	if s.Secrets != nil {
		s.Secrets.Close()
	}
	if s.deliveries != nil {
		s.deliveries.Close()
	}
}

// gate admits a holder of a fleet certificate (the TLS layer verified the
// chain and expiry) only if the fleet issued that serial to the device and
// it is still current (inventory.Device.Admits: not revoked — quarantine,
// decommissioning, re-enrollment and renewal revoke — nor expired; a
// certificate of the fleet CA never issued to the device is refused), and
// only while the device is active (fully) or quarantined (only to prove
// itself: inventory.QuarantinedKinds).
type gate struct {
	inv *inventory.Store
	ca  *ca.CA
}

func (g gate) AdmitDevice(deviceID string, cert *x509.Certificate) (broker.Access, error) {
	d, err := g.inv.Device(deviceID)
	if err != nil {
		return broker.Access{}, fmt.Errorf("unknown device: %w", err)
	}
	if _, err := g.ca.Issuer(cert); err != nil {
		return broker.Access{}, err // a retired CA generation: enroll again
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	if !d.Admits(serial, time.Now()) {
		return broker.Access{}, fmt.Errorf("certificate %s not issued to this device, revoked or expired", serial)
	}
	switch d.State {
	case inventory.StateActive:
		return broker.Access{}, nil
	case inventory.StateQuarantined:
		return broker.Access{UpKinds: inventory.QuarantinedKinds()}, nil
	}
	return broker.Access{}, fmt.Errorf("device %s", d.State)
}

// brokerEvent queues a connection event: the broker calls it on its
// connection goroutines, which must not wait for the inventory's disk.
func (s *Server) brokerEvent(ev broker.Event) {
	s.governanceEvent(ev)
	// Synchronously: the session is known before its first message.
	if id := ev.Identity.DeviceID; id != "" && ev.Identity.Cert != nil && s.Attest != nil {
		switch ev.Kind {
		case broker.Connected:
			s.Attest.SessionStarted(id, ev.Time)
		case broker.Disconnected:
			s.Attest.SessionEnded(id)
		}
	}
	if ev.Identity.DeviceID == "" || ev.Kind == broker.Refused || ev.Kind == broker.Closed {
		return
	}
	select {
	case s.eventQueue(ev.Identity.DeviceID) <- ev:
	default:
		s.log.Warn("connection events arrive faster than the inventory records them; one dropped", "device_id", ev.Identity.DeviceID)
	}
}

func (s *Server) connectionEvent(ev broker.Event) {
	if ev.Kind == broker.Connected && ev.Identity.Cert != nil {
		s.Rotation.Connected(ev.Identity.DeviceID, hex.EncodeToString(ev.Identity.Cert.SerialNumber.Bytes()))
	}
	now := time.Now().UTC()
	err := s.Inv.Update(ev.Identity.DeviceID, func(d *inventory.Device) error {
		d.LastSeen = now
		d.Connected = ev.Kind == broker.Connected
		return nil
	})
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("inventory update on connection event failed", "err", err)
	}
	s.rescore(ev.Identity.DeviceID) // silence counts in the risk score
}

// AdminToken returns the admin API bearer token.
func (s *Server) AdminToken() string { return s.adminToken }

// APIURL returns the API's base URL.
func (s *Server) APIURL() string {
	_, port, _ := net.SplitHostPort(s.apiLn.Addr().String())
	return "https://localhost:" + port
}

// MQTTAddr returns the broker's bound address (after Ready).
func (s *Server) MQTTAddr() string { return s.Broker.Addr().String() }

// CACertPath is the fleet CA certificate devices trust at bootstrap.
func (s *Server) CACertPath() string { return filepath.Join(s.cfg.DataDir, CACertFile) }

// AdminTokenPath is where the admin token is stored.
func (s *Server) AdminTokenPath() string { return filepath.Join(s.cfg.DataDir, AdminTokenFile) }

// API returns the HTTPS API's handler (for its route table in tests).
func (s *Server) API() http.Handler { return s.apiHandler }

// Ready is closed once every listener serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx ends or a part fails.
func (s *Server) Run(ctx context.Context) error {
	defer s.closeStores()
	if err := s.Broker.Start(); err != nil {
		return err
	}
	err := s.Broker.Subscribe(s.topics.Filter(wire.SegEnroll, "+", wire.Up), func(id broker.Identity, topic string, payload []byte) {
		tp, err := s.topics.Parse(topic)
		if err != nil || tp.ID != id.ClientID {
			return // the broker's ACL already forbids this; never trust the topic over the session
		}
		s.Enroll.Submit(id.ClientID, payload)
	})
	if err == nil {
		err = s.Broker.Subscribe(s.topics.Filter(wire.SegDevice, "+", wire.Up), s.deviceMessage)
	}
	if err != nil {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_ = s.Broker.Run(cctx) // closes the started broker
		s.apiLn.Close()
		if s.debugLn != nil {
			s.debugLn.Close()
		}
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Broker.Run(ctx) })
	g.Go(func() error { return s.recordEvents(ctx) })
	g.Go(func() error { return s.Enroll.Run(ctx) })
	g.Go(func() error { return s.Attest.Run(ctx) })
	g.Go(func() error { return s.Rotation.Run(ctx) })
	g.Go(func() error { return s.SSH.Run(ctx) })
	g.Go(func() error { return s.secretSvc.Run(ctx) })
	g.Go(func() error { return s.runFirmware(ctx) })
	g.Go(func() error { return s.Auth.Run(ctx) })
	g.Go(func() error { return s.Governance.Run(ctx) })
	g.Go(func() error { return s.Audit.Run(ctx) })
	g.Go(func() error { return s.anonAudit.Run(ctx) })
	s.goTelemetry(ctx, g)
	s.goDebug(ctx, g)
	if s.Approvals != nil {
		g.Go(func() error { return s.Approvals.Run(ctx) })
	}
	close(s.ready)
	s.log.Info("fleet ready", "mqtt", s.MQTTAddr(), "api", s.APIURL(), "ca", s.CACertPath(), "admin_token_file", s.AdminTokenPath())
	srv := &http.Server{
		Handler:   s.withDownloads(s.withConsole(s.apiHandler)),
		TLSConfig: s.apiTLS, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	g.Go(func() error {
		err := srv.ServeTLS(s.apiLn, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return g.Wait()
}

// deviceMessage handles messages from enrolled devices. The device ID is
// the one the broker authenticated, never one from the payload. A message
// is handled only if its type belongs to the topic kind it came on and
// the device's state, as the inventory holds it now, accepts that kind
// (inventory.State.Accepts): whatever the broker admitted earlier, a
// device quarantined or decommissioned since is not served.
func (s *Server) deviceMessage(id broker.Identity, topic string, payload []byte) {
	tp, err := s.topics.Parse(topic)
	if err != nil || id.DeviceID == "" || tp.ID != id.DeviceID {
		return
	}
	env, err := wire.Decode(payload)
	if err != nil {
		s.log.Warn("malformed device message", "device_id", id.DeviceID, "err", err)
		return
	}
	if d, err := s.Inv.Device(id.DeviceID); err != nil || upKind(env.Type) != tp.Kind || !d.State.Accepts(tp.Kind) {
		state := inventory.State("unknown")
		if err == nil {
			state = d.State
		}
		s.log.Info("device message dropped: its state or topic does not allow it", "device_id", id.DeviceID, "type", env.Type, "kind", tp.Kind, "state", state)
		return
	}
	switch env.Type {
	case wire.TypeAttestRequest, wire.TypeAttestEvidence:
		s.Attest.Submit(id.DeviceID, env, payload)
	case wire.TypeRenewRequest:
		s.Rotation.Submit(id.DeviceID, env)
	case wire.TypeSSHRequest:
		s.SSH.Submit(id.DeviceID, env)
	case wire.TypeSecretAck:
		s.secretSvc.ack(id.DeviceID, env)
	case wire.TypeTelemetryBatch:
		s.Telemetry.Submit(id.DeviceID, env)
	case wire.TypeFirmwareReport:
		s.firmwareReport(id.DeviceID, env)
	case wire.TypeHello:
		var h wire.Hello
		if err := wire.DecodeBody(env, wire.TypeHello, &h); err != nil {
			s.log.Warn("malformed hello", "device_id", id.DeviceID, "err", err)
			return
		}
		err := s.Inv.Update(id.DeviceID, func(d *inventory.Device) error {
			if h.Firmware != "" && d.Firmware != h.Firmware && d.State == inventory.StateActive {
				// Reported, not proved: policies judge the measurements.
				s.log.Info("device reports a new firmware version", "device_id", d.ID, "from", d.Firmware, "to", h.Firmware)
				d.Firmware = h.Firmware
			}
			d.LastSeen = time.Now().UTC()
			return nil
		})
		if err != nil {
			s.log.Warn("hello: inventory update failed", "device_id", id.DeviceID, "err", err)
		}
		s.rescore(id.DeviceID) // its reported firmware counts in the risk score
		s.alertSeen(id.DeviceID)
		// A device says hello once subscribed after each connect: deliver
		// the secrets it has not acknowledged, and during a CA rotation the
		// trust bundle it may have missed.
		s.secretSvc.queue(id.DeviceID)
		s.firmwareHello(id.DeviceID)
		if s.CA.Rotating() {
			s.sendTrustBundle(id.DeviceID)
		}
	}
}

// upKind is the up-topic kind a device message of type typ travels on
// ("" for a type devices do not send), as the protocol's registry says.
func upKind(typ string) string {
	if m, ok := wire.Lookup(typ); ok && m.Segment == wire.SegDevice && m.Dir == wire.Up {
		return m.Kind
	}
	return ""
}

func loadAllowList(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("server: allow-list: %w", err)
	}
	out := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = strings.TrimSpace(line[:j])
		}
		if line == "" {
			continue
		}
		line = strings.ToLower(line)
		if len(line) != 64 || strings.Trim(line, "0123456789abcdef") != "" {
			return nil, fmt.Errorf("server: allow-list %s line %d: not a SHA-256 hex fingerprint", path, i+1)
		}
		out[line] = true
	}
	return out, nil
}

// selections builds the attestation PCR selections from the configuration;
// nil means the attestation service's default.
func selections(banks []string, pcrs []int) ([]wire.PCRSelection, error) {
	if len(banks) == 0 && len(pcrs) == 0 {
		return nil, nil
	}
	if len(banks) == 0 {
		banks = []string{"sha256"}
	}
	if len(pcrs) == 0 {
		pcrs = wire.DefaultPCRs()
	}
	var out []wire.PCRSelection
	for _, b := range banks {
		id := verifier.BankID(b)
		if id == 0 || slices.ContainsFunc(out, func(s wire.PCRSelection) bool { return s.Hash == id }) {
			return nil, fmt.Errorf("server: attest_banks: %q is not a supported bank or is repeated", b)
		}
		sel := wire.PCRSelection{Hash: id, PCRs: pcrs}
		if err := sel.Validate(); err != nil {
			return nil, fmt.Errorf("server: attest_pcrs: %w", err)
		}
		out = append(out, sel)
	}
	return out, nil
}

// poolCerts reads the PEM certificates of a directory (LoadCADir already
// checked them).
func poolCerts(dir string) []*x509.Certificate {
	var out []*x509.Certificate
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				break
			}
			if c, err := x509.ParseCertificate(blk.Bytes); err == nil && c.IsCA {
				out = append(out, c)
			}
		}
	}
	return out
}

// bootstrapCredential admits a bootstrap CONNECT with a claim certificate,
// or with an enrollment token as the password that is valid, or was used by
// the device this client ID names ("e-<first 16 hex of the device ID>-…"),
// so a known device can re-enroll.
func (s *Server) bootstrapCredential(clientID, _ string, password []byte, claim *x509.Certificate) error {
	if claim != nil || s.triageEnrolled(triageKey(governance.AttemptUnknownClient, "client", clientID)) {
		return nil
	}
	if len(password) == 0 {
		return errors.New("no claim certificate and no enrollment token")
	}
	secret := string(password)
	if _, err := s.Inv.CheckToken(secret, "", time.Now()); err == nil || errors.Is(err, inventory.ErrTokenBinding) {
		return nil // valid; its model binding is checked at enrollment
	}
	usedBy, err := s.Inv.TokenUsedBy(secret)
	if err == nil && len(usedBy) >= 16 && strings.HasPrefix(clientID, "e-"+usedBy[:16]+"-") {
		return nil
	}
	return errors.New("enrollment token not valid")
}

// knownBootstrap is the broker's KnownDevice: a bootstrap client ID of the
// form sigild uses, "e-<first 16 hex of the device ID>-<suffix>", that
// names a device of the inventory which may recover by enrolling again
// (active or quarantined: a revoked or expired certificate). It is a claim
// the client makes; it only buys a reserved bootstrap slot.
func (s *Server) knownBootstrap(clientID string) (string, bool) {
	rest, ok := strings.CutPrefix(clientID, "e-")
	if !ok || len(rest) < 17 || rest[16] != '-' {
		return "", false
	}
	prefix := rest[:16]
	if strings.Trim(prefix, "0123456789abcdef") != "" {
		return "", false
	}
	devs, _, err := s.Inv.ListDevices(inventory.Filter{After: prefix, Limit: 1})
	if err != nil || len(devs) == 0 || !strings.HasPrefix(devs[0].ID, prefix) {
		return "", false
	}
	switch d := devs[0]; d.State {
	case inventory.StateActive, inventory.StateQuarantined:
		return d.ID, true
	}
	return "", false
}
