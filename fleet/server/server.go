// Package server is `sigil serve`, the fleet's composition root: New
// builds the fleet's parts — CA, audit log, operators, inventory, embedded
// broker, policies, telemetry and alerting, firmware rollout, governance,
// enrollment, attestation, rotation, SSH CA, sealed secrets, approvals and
// the HTTPS API — from the packages that own them and wires them
// together; Run runs them until its context ends, stopping all of them
// when one fails. Services live beside their domains; this package holds
// only the wiring, the dispatch of device messages to them, and the
// configuration.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/admission"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/feed"
	"github.com/sigil-iot/sigil/fleet/alert/sink"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/backup"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/crl"
	"github.com/sigil-iot/sigil/fleet/downlink"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/internal/shard"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/profile"
	"github.com/sigil-iot/sigil/fleet/rollout"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/sshca"
	"github.com/sigil-iot/sigil/fleet/sso"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/fleet/workload"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Server is a running fleet manager.
type Server struct {
	cfg      Config
	log      *slog.Logger
	CA       *ca.CA
	Inv      *inventory.Store
	Broker   *broker.Broker // the embedded broker; nil with a broker pool (Config.BrokerPool)
	Enroll   *enroll.Service
	Attest   *attest.Service
	Policy   *policy.Store
	Rotation *rotation.Service
	// SSH issues devices' SSH host certificates (fleet/sshca); Access
	// gives operators just-in-time SSH access (fleet/access).
	SSH    *sshca.Issuer
	Access *access.Service
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
	Metrics   *prometheus.Registry
	feed      *feed.Feed                    // telemetry and security events to Alerts
	sinks     []sink.Info                   // the configured alert sinks, described
	verdicts  map[string]prometheus.Counter // by result
	// Governance keeps owners, the triage and block lists, dormant and
	// cloned identities and risk scores (fleet/governance).
	Governance *governance.Service
	Workload   *workload.Service // workload identities and OIDC federation (fleet/workload)

	history    *attest.History
	jobs       *rotation.Jobs
	secretSvc  *secrets.Service
	deliveries *secrets.DeliveryStore
	fw         *rollout.Service // nil when firmware is off

	apiLn      net.Listener
	debugLn    net.Listener // nil unless Config.DebugAddr
	apiTLS     *tls.Config
	apiHandler http.Handler
	// consoleVerdict feeds the console's verdict chart (set when the
	// console is built, read on attestation workers).
	consoleVerdict atomic.Pointer[func(string, *attest.Record, time.Duration)]
	serverCert     *ca.ServerCert       // of the active CA generation
	caRotation     *rotation.CARotation // the operators' CA rotation
	adminToken     string
	ready          chan struct{}
	topics         wire.Topics
	events         *shard.Queues[broker.Event] // connection events to record, by device (events.go)
	transport      Transport                   // the MQTT layer every part uses: Broker, or the pool

	// db is the PostgreSQL database of the stores that support one
	// (Config.DatabaseURL); nil keeps every store in DataDir.
	db *postgres.DB
	// leases run what must happen once across replicas (Postgres with
	// db, else Local); bus tells them of changes to alert rules and the
	// block list (nil without db).
	leases  lease.Holder
	bus     notify.Bus
	crls    *crl.Publisher  // the CRL of GET /crl, which brokers' syncs wait on
	bridges *bridge.Service // the OT bridges' credentials (fleet/bridge)

	// closers is the cleanup stack: what New opened, closed in reverse
	// order by close (when New fails, or when Run returns).
	closers   []func() error
	closeOnce sync.Once
}

// Files written at first start, relative to DataDir.
const (
	AdminTokenFile = "admin.token"
	CACertFile     = "ca/ca.crt"
	InventoryFile  = inventory.File
	PolicyFile     = policy.File
	HistoryFile    = attest.HistoryFile
	JobsFile       = rotation.JobsFile
)

// New opens the data directory (creating the CA and admin token at first
// start), builds every part and wires them together, and binds the
// listeners; Run serves. Each part is opened by one step, in an order in
// which every part finds what it uses; what a step opens goes on the
// cleanup stack, which a failed New unwinds.
func New(cfg Config, logger *slog.Logger) (_ *Server, err error) {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{cfg: cfg, log: logger, ready: make(chan struct{}), topics: wire.Topics{Prefix: cfg.TopicPrefix}, events: eventQueues()}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	for _, open := range []func() error{
		s.openCA, s.openDatabase, s.openAudit, s.openAuth, s.openInventory, s.openBroker, s.openPolicy, s.openHistory,
		s.openTelemetry, s.openFirmware, s.openGovernance, s.openEnroll, s.openAttest, s.openRotation,
		s.openApprovals, s.openSSH, s.openWorkload, s.openSecrets, s.controlPlaneMetrics, s.openAPI, s.listen,
	} {
		if err := open(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// onClose pushes f on the cleanup stack.
func (s *Server) onClose(f func() error) { s.closers = append(s.closers, f) }

// close unwinds the cleanup stack, last opened first, once; a failure is
// logged and the rest still close.
func (s *Server) close() {
	s.closeOnce.Do(func() {
		for _, f := range slices.Backward(s.closers) {
			if err := f(); err != nil {
				s.log.Error("closing a part of the fleet failed", "err", err)
			}
		}
	})
}

// openCA opens the fleet CA (creating it at first start) and issues the
// server certificate of its active generation.
func (s *Server) openCA() (err error) {
	s.CA, err = ca.Open(ca.Config{Dir: filepath.Join(s.cfg.DataDir, "ca"), TrustDomain: s.cfg.TrustDomain, DeviceLifetime: time.Duration(s.cfg.DeviceLifetime)})
	if err != nil {
		return err
	}
	s.serverCert, err = ca.NewServerCert(s.CA, s.cfg.Hostnames)
	return err
}

// openDatabase connects to the PostgreSQL database when DatabaseURL is
// set: the stores that support it open in it (openAudit, openAuth,
// openInventory, openPolicy, openHistory, openApprovals).
// startup bounds the opening of a store in the database.
func startup() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

// openStore opens a store in the fleet's database when it has one
// (inDB), else in the data directory (inFile), and puts its Close on the
// cleanup stack.
func openStore[T interface{ Close() error }](s *Server, inDB func(context.Context, *postgres.DB) (T, error), inFile func() (T, error)) (T, error) {
	var st T
	var err error
	if s.db != nil {
		ctx, cancel := startup()
		defer cancel()
		st, err = inDB(ctx, s.db)
	} else {
		st, err = inFile()
	}
	if err == nil {
		s.onClose(st.Close)
	}
	return st, err
}

func (s *Server) openDatabase() (err error) {
	s.leases = lease.Local{}
	if s.cfg.DatabaseURL == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.db, err = postgres.Open(ctx, s.cfg.DatabaseURL, postgres.Options{Logger: s.log.With("component", "database")}); err != nil {
		return fmt.Errorf("server: database: %w", err)
	}
	s.onClose(func() error { s.db.Close(); return nil })
	ls, err := lease.Open(ctx, s.db, lease.Config{Logger: s.log.With("component", "lease")})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.leases, s.bus = ls, notify.NewPostgres(s.db, s.log.With("component", "notify"))
	return s.CA.Share(ctx, s.db, s.bus, s.serverCert.Refresh) // a rotation on any replica reaches this one
}

// openInventory opens the inventory, in PostgreSQL when the fleet has a
// database (openDatabase), else in the data directory's bbolt file. Its
// lifecycle events go to the audit log, the alert feed and the risk
// scores (inventoryEvent).
func (s *Server) openInventory() (err error) {
	hook := inventory.WithEventHook(s.inventoryEvent)
	// A revocation wakes the syncs waiting on GET /crl (crl.Publisher).
	revoked := inventory.WithRevocationHook(func() { s.crls.Changed() })
	s.Inv, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*inventory.Store, error) {
		return inventory.OpenPostgres(ctx, db, hook, revoked, inventory.WithBus(s.bus))
	},
		func() (*inventory.Store, error) {
			return inventory.Open(filepath.Join(s.cfg.DataDir, InventoryFile), hook, revoked)
		})
	if err != nil {
		return err
	}
	ctx, cancel := startup()
	defer cancel()
	bc := bridge.Config{Path: filepath.Join(s.cfg.DataDir, bridge.File), CA: s.CA, Audit: s.Audit, Topics: s.topics, OnRevoke: func(site string) { s.Broker.DisconnectBridge(site) }}
	if s.bridges, err = openStore(s, bc.OpenPostgres, bc.Open); err == nil { // OT bridges (fleet/bridge): revoked ones in the CRL too
		s.crls, err = crl.NewFor(ctx, crl.Config{Revocations: s.bridges.AndDevices(s.Inv), Signer: s.CA}, s.cfg.Settings, s.db, s.bus)
	}
	return err
}

// openBroker builds the embedded broker: the TLS listener's certificate,
// the gate, the bootstrap limits and credentials, the block list's screen
// and the connection events.
func (s *Server) openBroker() error {
	cfg := s.cfg
	if cfg.BrokerPool != nil {
		return s.openPool()
	}
	var claimCAs []*x509.Certificate
	if cfg.ClaimCADir != "" {
		var err error
		if claimCAs, err = verifier.LoadClaimCAs(cfg.ClaimCADir); err != nil {
			return err
		}
	}
	var bootstrapAuth func(string, string, []byte, *x509.Certificate) error
	if cfg.BootstrapCredential {
		bootstrapAuth = s.bootstrap().Credential
	}
	bc := broker.Config{
		ClaimCAs: claimCAs, BootstrapAuth: bootstrapAuth,
		Addr: cfg.MQTTAddr, TLS: &tls.Config{GetCertificate: s.serverCert.GetCertificate, MinVersion: tls.VersionTLS12}, ClientCAsFunc: s.CA.Pool, TrustDomain: cfg.TrustDomain,
		Topics: s.topics, Gate: admission.Gate{Devices: s.Inv, CA: s.CA}, Bridges: s.bridges.Gate(), AllowBootstrap: *cfg.AllowBootstrap, Logger: s.log.With("component", "broker"),
		Events: s.brokerEvent, Screen: s.screen, KnownDevice: s.bootstrap().Known,
	}
	cfg.BootstrapLimits.Apply(&bc)
	var err error
	if s.Broker, err = broker.New(bc); err != nil {
		return err
	}
	s.transport = s.Broker
	return nil
}

// openPolicy opens the reference policies.
func (s *Server) openPolicy() (err error) {
	s.Policy, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*policy.Store, error) { return policy.OpenPostgres(ctx, db) },
		func() (*policy.Store, error) { return policy.Open(filepath.Join(s.cfg.DataDir, PolicyFile)) })
	return err
}

// openEnroll builds the enrollment service with the EK trust of ek_ca_dir
// and ek_allowlist.
func (s *Server) openEnroll() error {
	cfg := s.cfg
	trust, err := verifier.LoadEKTrust(cfg.EKCADir, cfg.EKAllowList)
	if err != nil {
		return err
	}
	sels, err := attest.Selections(cfg.AttestBanks, cfg.AttestPCRs)
	if err != nil {
		return err
	}
	var first wire.PCRSelection
	if len(sels) > 0 {
		first = sels[0]
	}
	var sessions enroll.Sessions // nil: in memory, one process
	if s.db != nil {             // replicas: a request and its proof may reach different ones
		ctx, cancel := startup()
		defer cancel()
		key, err := secrets.DerivedKey(s.cfg.DataDir, "enroll sessions")
		if err != nil {
			return err
		}
		pg, err := enroll.OpenSessionsPostgres(ctx, s.db, key)
		if err != nil {
			return err
		}
		sessions = pg
	}
	s.Enroll, err = enroll.New(enroll.Config{
		Sessions: sessions,
		Policies: s.Policy, Selection: first,
		CA: s.CA, Inventory: s.Inv, Trust: trust, ManualApproval: cfg.ManualApproval,
		DeviceLifetime: time.Duration(cfg.DeviceLifetime), Logger: s.log.With("component", "enroll"),
		Identities:    governance.Enrollment{S: s.Governance},
		FirmwareTrust: s.fw.Trust,
		Send: func(clientID, kind string, payload []byte) error {
			return s.transport.Publish(s.topics.EnrollDown(clientID, kind), payload, 1)
		},
	})
	return err
}

// openHistory opens the attestation verdicts' history.
func (s *Server) openHistory() (err error) {
	s.history, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*attest.History, error) {
		return attest.OpenHistoryPostgres(ctx, db, 0)
	},
		func() (*attest.History, error) {
			return attest.OpenHistory(filepath.Join(s.cfg.DataDir, HistoryFile), 0)
		})
	return err
}

// openAttest builds continuous attestation.
func (s *Server) openAttest() error {
	cfg := s.cfg
	sels, err := attest.Selections(cfg.AttestBanks, cfg.AttestPCRs)
	if err != nil {
		return err
	}
	var state attest.State // nil: in memory, one process
	if s.db != nil {       // replicas: a challenge and its evidence may reach different ones
		ctx, cancel := startup()
		defer cancel()
		pg, err := attest.OpenStatePostgres(ctx, s.db)
		if err != nil {
			return err
		}
		state = pg
	}
	s.Attest, err = attest.New(attest.Config{
		State: state, Leases: s.leases,
		Inventory: s.Inv, History: s.history, Policies: s.Policy, Selections: sels,
		Interval: time.Duration(cfg.AttestInterval), StaleAfter: cfg.StaleAfter, VerdictMaxAge: time.Duration(cfg.VerdictMaxAge),
		Logger: s.log.With("component", "attest"), Send: s.sendDevice,
		Disconnect: s.transport.Disconnect, Alert: s.attestAlert, Verdict: s.attestVerdict,
	})
	return err
}

// openRotation opens the rotation jobs and builds certificate renewal.
func (s *Server) openRotation() (err error) {
	if s.jobs, err = openStore(s, rotation.OpenJobsPostgres, func() (*rotation.Jobs, error) {
		return rotation.OpenJobs(filepath.Join(s.cfg.DataDir, JobsFile))
	}); err != nil {
		return err
	}
	s.Rotation, err = rotation.New(rotation.Config{
		CA: s.CA, Inventory: s.Inv, Attest: s.Attest, Jobs: s.jobs, Lifetime: time.Duration(s.cfg.DeviceLifetime),
		Connected: s.transport.Connected, Logger: s.log.With("component", "rotation"), Send: s.sendDevice, Leases: s.leases, WaitHandled: s.cfg.BrokerPool != nil,
	})
	s.caRotation = rotation.NewCARotation(rotation.CARotationConfig{CA: s.CA, ServerCert: s.serverCert, Jobs: s.Rotation,
		Sessions: s.transport, Send: s.sendDevice, Logger: s.log})
	return err
}

// openSecrets opens the sealed secrets and their delivery records, and
// builds their delivery (fleet/secrets).
func (s *Server) openSecrets() error {
	log := s.log.With("component", "secrets")
	var err error
	scfg := secrets.Config{Dir: s.cfg.DataDir, Logger: log} // Dir holds secrets.key on both backends
	if s.Secrets, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*secrets.Store, error) {
		return secrets.OpenPostgres(ctx, db, scfg)
	},
		func() (*secrets.Store, error) { return secrets.Open(scfg) }); err != nil {
		return err
	}
	if s.deliveries, err = openStore(s, secrets.OpenDeliveriesPostgres, func() (*secrets.DeliveryStore, error) {
		return secrets.OpenDeliveries(filepath.Join(s.cfg.DataDir, secrets.DeliveriesFile))
	}); err != nil {
		return err
	}
	sels, err := attest.Selections(s.cfg.AttestBanks, s.cfg.AttestPCRs)
	if err != nil {
		return err
	}
	s.secretSvc = secrets.NewService(secrets.ServiceConfig{
		Store: s.Secrets, Deliveries: s.deliveries, Devices: s.Inv, Attestations: s.history, PCRs: secrets.BoundPCRs(sels),
		Connected: s.transport.Connected, Current: s.Attest.Current, Send: s.sendDevice, Logger: log,
	})
	return nil
}

// openApprovals opens the two-person rule's requests (two_person_rule).
func (s *Server) openApprovals() (err error) {
	if !s.cfg.TwoPersonRule {
		return nil
	}
	cfg := approval.Config{Path: filepath.Join(s.cfg.DataDir, ApprovalsFile), Auditor: approval.AuditLog{Log: s.Audit},
		Requester: approval.RequesterFrom(s.Auth), Logger: s.log.With("component", "approvals")}
	s.Approvals, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*approval.Manager, error) {
		return approval.OpenPostgres(ctx, db, cfg)
	},
		func() (*approval.Manager, error) { return approval.Open(cfg) })
	return err
}

// openWorkload opens workload identities (fleet/workload.Setup).
func (s *Server) openWorkload() error {
	return workload.Wiring{Options: s.cfg.Options, DataDir: s.cfg.DataDir, DB: s.db, CA: s.CA, Devices: s.Inv, Verdicts: s.Attest, TrustDomain: s.cfg.TrustDomain, Risk: s.Governance, Audit: s.Audit, Leases: s.leases, Send: s.sendDevice, Logger: s.log.With("component", "workload"), OnClose: s.onClose}.Open(&s.Workload)
}

// openAPI builds the HTTPS API over every part.
func (s *Server) openAPI() error {
	s.apiTLS = s.fw.ListenerTLS(&tls.Config{GetCertificate: s.serverCert.GetCertificate, MinVersion: tls.VersionTLS12}, s.CA.Pool)
	s.apiHandler = api.New(api.Config{Approvals: s.Approvals, RateLimit: s.cfg.APIRateLimit, RateBurst: s.cfg.APIRateBurst,
		Inventory: s.Inv, Approver: s.Enroll, Attestation: s.Attest, Policies: s.Policy, Auth: s.Auth, Audit: s.Audit, AnonymousAudit: s.anonAudit,
		Rotation: s.Rotation, CA: s.CA, CARotation: s.caRotation, Disconnect: s.transport.Disconnect, Secrets: s.secretSvc, SSHCA: s.SSH.CA(),
		Connected: s.transport.Connected, Logger: s.log.With("component", "api"), Firmware: s.firmwareAPI(), Quarantiner: s.quarantiner(),
		Telemetry: s.Telemetry, Alerts: s.Alerts, AlertSinks: s.sinks, Metrics: metrics.Handler(s.Metrics, s.log.With("component", "metrics")),
		Governance: s.Governance, CRL: s.crls, Bridges: s.bridges, Workloads: s.Workload, Access: s.Access, Backup: backup.NewLive(backup.LiveConfig{DataDir: s.cfg.DataDir, TrustDomain: s.cfg.TrustDomain, Database: s.db != nil, Audit: s.Audit}),
	})
	return nil
}

// listen binds the API listener and, with debug_addr, the debug one.
func (s *Server) listen() (err error) {
	if s.apiLn, err = net.Listen("tcp", s.cfg.APIAddr); err != nil {
		return fmt.Errorf("server: api listener: %w", err)
	}
	s.onClose(api.CloseListener(s.apiLn))
	if s.cfg.DebugAddr != "" {
		if s.debugLn, err = profile.Listen(s.cfg.DebugAddr); err != nil {
			return err
		}
		s.onClose(api.CloseListener(s.debugLn))
	}
	return nil
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
	if !s.events.Put(ev.Identity.DeviceID, ev) {
		s.log.Warn("connection events arrive faster than the inventory records them; one dropped", "device_id", ev.Identity.DeviceID)
	}
}

func (s *Server) connectionEvent(ev broker.Event) {
	if ev.Kind == broker.Connected && ev.Identity.Cert != nil {
		s.Rotation.Connected(ev.Identity.DeviceID, hex.EncodeToString(ev.Identity.Cert.SerialNumber.Bytes()))
	}
	err := s.Inv.SetConnected(context.TODO(), ev.Identity.DeviceID, ev.Kind == broker.Connected, time.Now().UTC())
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("inventory update on connection event failed", "err", err)
	}
	s.rescore(ev.Identity.DeviceID) // silence counts in the risk score
}

// sendDevice is the one way the fleet's services send to a device (downlink.Send).
func (s *Server) sendDevice(deviceID, kind string, payload []byte) error {
	return downlink.Send(context.TODO(), s.Inv, s.transport.Publish, deviceID, s.topics.DeviceDown(deviceID, kind), payload)
}

// AdminToken returns the admin API bearer token.
func (s *Server) AdminToken() string { return s.adminToken }

// APIURL returns the API's base URL.
func (s *Server) APIURL() string {
	_, port, _ := net.SplitHostPort(s.apiLn.Addr().String())
	return "https://localhost:" + port
}

// MQTTAddr returns the address devices connect to (after Ready).
func (s *Server) MQTTAddr() string { return s.transport.Addr().String() }

// CACertPath is the fleet CA certificate devices trust at bootstrap.
func (s *Server) CACertPath() string { return filepath.Join(s.cfg.DataDir, CACertFile) }

// AdminTokenPath is where the admin token is stored.
func (s *Server) AdminTokenPath() string { return filepath.Join(s.cfg.DataDir, AdminTokenFile) }

// API returns the HTTPS API's handler (for its route table in tests).
func (s *Server) API() http.Handler { return s.apiHandler }

// DebugAddr is the debug listener's bound address (fleet/profile), ""
// when it is off.
func (s *Server) DebugAddr() string { return profile.Addr(s.debugLn) }

// Ready is closed once every listener serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx ends or a part fails; then it closes what New
// opened.
func (s *Server) Run(ctx context.Context) error {
	defer s.close()
	if err := s.transport.Start(); err != nil {
		return err
	}
	err := s.transport.Subscribe(s.topics.Filter(wire.SegEnroll, "+", wire.Up), func(id broker.Identity, topic string, payload []byte) {
		tp, err := s.topics.Parse(topic)
		if err != nil || tp.ID != id.ClientID {
			return // the broker's ACL already forbids this; never trust the topic over the session
		}
		s.Enroll.Submit(id.ClientID, payload)
	})
	if err == nil {
		err = s.transport.Subscribe(s.topics.Filter(wire.SegDevice, "+", wire.Up), s.deviceMessage)
	}
	if err == nil && s.Broker != nil { // bridged device messages (fleet/bridge): verified end to end, then served as direct ones
		err = s.bridges.Consume(s.Broker, bridge.Consume{Devices: s.Inv, TrustDomain: s.cfg.TrustDomain, Dispatch: s.deviceMessage, Metrics: s.Metrics})
	}
	if err != nil {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_ = s.transport.Run(cctx) // closes the started broker
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, task := range s.tasks() {
		g.Go(func() error { return task(ctx) })
	}
	close(s.ready)
	s.log.Info("fleet ready", "mqtt", s.MQTTAddr(), "api", s.APIURL(), "ca", s.CACertPath(), "admin_token_file", s.AdminTokenPath())
	return g.Wait()
}

// tasks are the fleet's long-running parts, each running until its
// context ends; Run runs them in one errgroup, so the first to fail stops
// all of them.
func (s *Server) tasks() []func(context.Context) error {
	tasks := []func(context.Context) error{
		s.transport.Run, s.recordEvents, s.Enroll.Run, s.Attest.Run, s.Rotation.Run, s.SSH.Run, s.secretSvc.Run, s.Workload.Run,
		s.Auth.Run, s.Governance.Run, s.Audit.Run, s.anonAudit.Run, s.Telemetry.Run, s.Alerts.Run, s.feed.Run,
		s.serveAPI, s.Access.Run,
	}
	if s.fw != nil {
		tasks = append(tasks, s.fw.Run)
	}
	if s.Approvals != nil {
		tasks = append(tasks, s.Approvals.Run)
	}
	if s.bus != nil {
		tasks = append(tasks, s.bus.Run)
	}
	if s.debugLn != nil {
		tasks = append(tasks, func(ctx context.Context) error { return profile.Serve(ctx, s.debugLn) })
	}
	return tasks
}

// serveAPI serves the API, the console (with sso) and the device downloads until ctx ends.
func (s *Server) serveAPI(ctx context.Context) error {
	h, err := sso.Wrap(s.cfg.SSO, sso.Options{Auth: s.Auth, Audit: s.Audit, Anonymous: s.anonAudit, Logger: s.log.With("component", "sso")}, s.fw.WithDownloads(s.withConsole(s.apiHandler)))
	if err != nil {
		return err
	}
	return api.Serve(ctx, s.apiLn, h, s.apiTLS, s.log)
}

// deviceMessage handles messages from enrolled devices. The device ID is
// the one the broker authenticated, never one from the payload. A message
// is handled only if admission.Check allows it: its type belongs to the
// topic kind it came on and the device's state, as the inventory holds it
// now, accepts that kind; through a broker pool, only while the device
// holds a current certificate.
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
	st, err := admission.Check(context.TODO(), s.Inv, id, env.Type, tp.Kind)
	if errors.Is(err, admission.ErrStaleSession) {
		s.staleSession(id.DeviceID)
		return
	}
	if err != nil {
		state := inventory.State("unknown")
		if errors.Is(err, admission.ErrRefused) {
			state = st
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
	case wire.TypeWorkloadRequest:
		s.Workload.Submit(id.DeviceID, env)
	case wire.TypeAccessSessions:
		s.Access.Submit(id.DeviceID, env)
	case wire.TypeSecretAck:
		s.secretSvc.Ack(id.DeviceID, env)
	case wire.TypeTelemetryBatch:
		s.Telemetry.Submit(id.DeviceID, env)
	case wire.TypeFirmwareReport:
		s.fw.Report(id.DeviceID, env) // nil when firmware is off: ignored
	case wire.TypeHello:
		var h wire.Hello
		if err := wire.DecodeBody(env, wire.TypeHello, &h); err != nil {
			s.log.Warn("malformed hello", "device_id", id.DeviceID, "err", err)
			return
		}
		if from, changed, err := s.Inv.Hello(context.TODO(), id.DeviceID, h.Firmware, env.V, time.Now().UTC()); err != nil {
			s.log.Warn("hello: inventory update failed", "device_id", id.DeviceID, "err", err)
		} else if changed {
			s.log.Info("device reports a new firmware version", "device_id", id.DeviceID, "from", from, "to", h.Firmware)
		}
		s.rescore(id.DeviceID) // its reported firmware counts in the risk score
		if s.feed != nil {
			s.feed.Seen(id.DeviceID) // absence rules
		}
		// A device says hello once subscribed after each connect: deliver
		// the secrets it has not acknowledged, and during a CA rotation the
		// trust bundle it may have missed.
		s.secretSvc.Queue(id.DeviceID)
		s.fw.Hello(id.DeviceID)
		s.caRotation.Hello(id.DeviceID)
	}
}

// bootstrap admits bootstrap clients at the broker (enroll.Bootstrap):
// a client ID operators decided to enroll from governance's triage list
// needs no credential.
func (s *Server) bootstrap() enroll.Bootstrap {
	return enroll.Bootstrap{Devices: s.Inv, TriageEnrolled: func(clientID string) bool {
		return s.Governance.TriageEnrolled(governance.TriageKey(governance.AttemptUnknownClient, "client", clientID))
	}}
}
