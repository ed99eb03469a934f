package rollout

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Limits of the service.
const (
	// stagedMaxAge is how long an image uploaded ahead of its release is
	// kept; older ones are removed at start.
	stagedMaxAge = 24 * time.Hour
	// helloQueue bounds the devices waiting for their firmware hello work.
	helloQueue = 4096
	// downloadTime bounds one image download on the API listener, whose
	// write timeout is too short for large images.
	downloadTime = time.Hour
)

// Devices is what the service reads of the inventory.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
}

// Policies are the reference policies a release's measurements are
// prepared in (policy.Store).
type Policies interface {
	Select(ctx context.Context, model, firmware, group string) (*policy.Policy, error)
	Put(ctx context.Context, p policy.Policy) (policy.Policy, error)
}

// Config configures Open. Every field without a default is required,
// except Policies and Audit.
type Config struct {
	// Dir is the release store's directory (fleet/firmware), StagingDir
	// where images uploaded ahead of their release wait (created 0700),
	// and CampaignsPath the campaigns' file (fleet/campaign).
	Dir, StagingDir, CampaignsPath string
	// TrustFile is the release trust set file (`sigil firmware trust`
	// writes it), Rotations the signed rotations from it to the current
	// set, in order (LoadTrust).
	TrustFile string
	Rotations []Rotation
	// Approvals is how many people other than the uploader must approve
	// a release; 0 means 1.
	Approvals int
	// TrustDomain is the SPIFFE trust domain of device IDs, which names
	// the device of a download's client certificate.
	TrustDomain string
	Devices     Devices
	// Policies gets the policies prepared for a release (StartCampaign);
	// nil prepares none.
	Policies Policies
	// Admit refuses a device that may not download now (the broker's
	// gate: unknown, revoked, quarantined, of a retired CA generation).
	Admit func(deviceID string, cert *x509.Certificate) error
	// Send publishes a message to a device on a down kind.
	Send func(deviceID, kind string, payload []byte) error
	// Audit records release and campaign actions; nil logs them only.
	Audit audit.Recorder
	// Database, when set, keeps the release records and the campaigns in
	// PostgreSQL (firmware.OpenPostgres: the images stay in Dir, which
	// replicas must share; campaign.OpenPostgres, CampaignsPath unused);
	// nil keeps them in bbolt files.
	Database *postgres.DB
	// Leases runs the campaigns' stepping under a lease, once across the
	// replicas sharing Database (campaign.Config.Leases); nil: here.
	Leases campaign.Leases
	// Attestations gives devices' attestation records, from which the
	// exposure service (fleet/exposure) knows the release each runs; nil
	// turns that service off.
	Attestations exposure.Attestations
	// Alert raises an alert event for a device (an advisory exposes it);
	// nil raises none.
	Alert func(attest.Alert)
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Service is the fleet's firmware service (package doc). Its methods
// Releases, Campaigns, StageImage, Upload and StartCampaign are the API's
// (api.Firmware).
type Service struct {
	store     *firmware.Store
	cstore    *campaign.Store
	campaigns *campaign.Manager
	trust     []byte               // current release trust set, canonical
	rotations []wire.TrustRotation // from the configured set to the current one
	staging   string
	maxImage  int64
	inv       Devices
	policies  Policies
	admit     func(deviceID string, c *x509.Certificate) error
	domain    string
	send      func(deviceID, kind string, payload []byte) error
	now       func() time.Time
	log       *slog.Logger
	hellos    chan string
	verdicts  chan attest.Record // for the exposure worker (Attested)

	exposure   *exposure.Service
	exposureDB kv.DB
}

// Open loads the release trust (refusing a configuration that does not
// rotate from the set devices were served last), opens the release store
// and the campaigns, and removes stale staged images; Run serves.
func Open(cfg Config) (*Service, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chain, rotations, err := LoadTrust(cfg.TrustFile, cfg.Rotations)
	if err != nil {
		return nil, err
	}
	// Devices hold the set served last: refuse a configuration that does
	// not rotate from it (release_trust changed in place).
	if err := firmware.RememberTrust(cfg.Dir, chain); err != nil {
		return nil, err
	}
	trust := chain[len(chain)-1]
	for i, r := range rotations {
		if bytes.HasSuffix(r.Statement, []byte("\n")) {
			log.Warn("release trust rotation statement ends in a newline, as signed; devices of protocol 5 refuse it (sign the statement without one for them)",
				"rotation", i, "sequence", chain[i+1].Sequence())
		}
	}
	raw, err := trust.Marshal()
	if err != nil {
		return nil, fmt.Errorf("rollout: release trust: %w", err)
	}
	s := &Service{
		trust: raw, rotations: rotations, staging: cfg.StagingDir,
		maxImage: firmware.DefaultMaxImageSize, inv: cfg.Devices, policies: cfg.Policies, domain: cfg.TrustDomain,
		admit: cfg.Admit, send: cfg.Send, now: cfg.Now, log: log, hellos: make(chan string, helloQueue),
		verdicts: make(chan attest.Record, verdictQueue),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := os.MkdirAll(s.staging, 0o700); err != nil {
		return nil, fmt.Errorf("rollout: firmware staging: %w", err)
	}
	s.removeOldStaged()
	fcfg := firmware.Config{
		Dir: cfg.Dir, Trust: trust, Approvals: cfg.Approvals,
		Auditor: releaseAuditor(cfg.Audit, log), Logger: log,
	}
	if cfg.Database != nil {
		s.store, err = firmware.OpenPostgres(context.Background(), cfg.Database, fcfg)
	} else {
		s.store, err = firmware.Open(fcfg)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Database != nil {
		s.cstore, err = campaign.OpenPostgres(context.Background(), cfg.Database)
	} else {
		s.cstore, err = campaign.Open(cfg.CampaignsPath)
	}
	if err != nil {
		s.store.Close()
		return nil, err
	}
	s.campaigns, err = campaign.New(campaign.Config{
		Store: s.cstore, Targets: campaign.TargetsFunc(s.resolve), Announcer: campaign.AnnouncerFunc(s.announce),
		Auditor: campaignAuditor(cfg.Audit, log), Logger: log.With("component", "campaign"), Leases: cfg.Leases,
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	if cfg.Attestations != nil {
		if err := s.openExposure(cfg); err != nil {
			s.Close()
			return nil, err
		}
	}
	log.Info("firmware releases on", "trust_sequence", trust.Sequence(), "threshold", trust.Threshold(),
		"keys", len(trust.KeyIDs()), "rotations", len(rotations), "approvals", max(cfg.Approvals, 1))
	return s, nil
}

// Close closes the stores (after Run returned).
func (s *Service) Close() error {
	var errs []error
	if s.exposureDB != nil {
		errs = append(errs, s.exposureDB.Close())
	}
	if s.cstore != nil {
		errs = append(errs, s.cstore.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	return errors.Join(errs...)
}

// Run runs the campaign engine, the hello worker and the exposure
// worker until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.helloLoop(ctx) })
	if s.exposure != nil {
		wg.Go(func() { s.verdictLoop(ctx) })
	}
	err := s.campaigns.Run(ctx)
	wg.Wait()
	return err
}

// A nil *Service is firmware off (no release_trust): Releases and
// Campaigns are nil, Trust is empty, StartCampaign fails with ErrOff, and
// ListenerTLS and WithDownloads leave the listener as it is.

// ErrOff: the fleet has no release_trust, so no firmware service.
var ErrOff = errors.New("rollout: firmware releases are not configured (release_trust)")

// Releases is the release store.
func (s *Service) Releases() *firmware.Store {
	if s == nil {
		return nil
	}
	return s.store
}

// Campaigns is the campaign engine.
func (s *Service) Campaigns() *campaign.Manager {
	if s == nil {
		return nil
	}
	return s.campaigns
}

// Trust is the release trust set enrolled devices get and the signed
// rotations that lead to it.
func (s *Service) Trust() ([]byte, []wire.TrustRotation) {
	if s == nil {
		return nil, nil
	}
	return s.trust, s.rotations
}

// ListenerTLS makes the API listener ask for (not require) a client
// certificate, verified against clientCAs at each handshake (a CA rotation
// swaps the pool), so that devices download images with their mTLS
// identity. Operators' requests carry none.
func (s *Service) ListenerTLS(base *tls.Config, clientCAs func() *x509.CertPool) *tls.Config {
	if s == nil {
		return base
	}
	withPool := func() *tls.Config {
		c := base.Clone()
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = clientCAs()
		return c
	}
	c := withPool()
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return withPool(), nil }
	return c
}

// WithDownloads mounts the device download endpoint (GET
// /firmware/{sha256}) beside next on the HTTPS listener.
func (s *Service) WithDownloads(next http.Handler) http.Handler {
	if s == nil {
		return next
	}
	downloads := s.store.Handler(s.authorizeDownload)
	mux := http.NewServeMux()
	mux.Handle(firmware.DownloadPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The listener's write timeout suits API calls, not images.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(downloadTime))
		downloads.ServeHTTP(w, r)
	}))
	mux.Handle("/", next)
	return mux
}

// authorizeDownload lets a device download an image only while it is
// admitted to the fleet (active, certificate not revoked, of a current CA
// generation) and in flight in a campaign of a release with that image.
// The device is the one its verified certificate names (SPIFFE ID).
func (s *Service) authorizeDownload(r *http.Request, digest string) error {
	cert := r.TLS.VerifiedChains[0][0]
	id, err := identity.FromCertificate(cert, s.domain)
	if err != nil {
		return err
	}
	if err := s.admit(id, cert); err != nil {
		return err
	}
	as, err := s.campaigns.InFlight(id)
	if err != nil {
		return err
	}
	for _, a := range as {
		rel, err := s.store.Release(context.TODO(), a.Release)
		if err == nil && rel.ImageDigest() == digest {
			return nil
		}
	}
	return fmt.Errorf("device %s is in no campaign in flight for image %s", id, digest)
}

// resolve is the campaigns' Targets: the active devices a selector
// matches that release is built for (builtFor), in device ID order
// (explicit device IDs in their given order).
func (s *Service) resolve(ctx context.Context, release string, sel campaign.Selector) ([]string, error) {
	r, err := s.store.Release(ctx, release)
	if err != nil {
		return nil, err
	}
	match := func(d *inventory.Device) bool {
		return d.State == inventory.StateActive && builtFor(r, d) && (sel.Model == "" || d.Model == sel.Model) &&
			(sel.Group == "" || d.Group == sel.Group) && d.HasTags(sel.Tags)
	}
	var out []string
	if len(sel.DeviceIDs) > 0 {
		for _, id := range sel.DeviceIDs {
			d, err := s.inv.Device(context.TODO(), id)
			if errors.Is(err, inventory.ErrNotFound) {
				return nil, fmt.Errorf("rollout: no device %q", id)
			}
			if err != nil {
				return nil, err
			}
			if match(d) {
				out = append(out, id)
			}
		}
		return out, nil
	}
	after := ""
	for {
		devs, next, err := s.inv.ListDevices(context.TODO(), inventory.Filter{State: inventory.StateActive, Model: sel.Model, After: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		for i := range devs {
			if match(&devs[i]) {
				out = append(out, devs[i].ID)
			}
		}
		if next == "" {
			return out, nil
		}
		after = next
	}
}

// builtFor reports whether release r is for device d: the model the fleet
// assigned d is among the models of r's manifest. A device the fleet
// assigned no model (enrolled by its EK certificate, until an operator
// assigns one) gets no release: the model a device claims decides nothing,
// and the attestation policies prepared for a release (preparePolicies)
// are per manifest model.
func builtFor(r *firmware.Release, d *inventory.Device) bool {
	return d.Model != "" && slices.Contains(r.Manifest.Models, d.Model)
}

// manifestProtocol is the lowest protocol version whose sigild parses
// r's manifest: the fields SBOM and Blocks came with the first release
// speaking protocol 5, and a sigild before it refuses a manifest with a
// field it does not know (its parser takes no unknown field). 0 when any
// sigild parses it.
func manifestProtocol(r *firmware.Release) int {
	if r.Manifest.SBOM != nil || r.Manifest.Blocks != nil {
		return 5
	}
	return 0
}

// eligible checks, at announce time, that release r is for device id (its
// model may have changed since the campaign resolved it, and a rollback
// campaign takes the devices that committed another release): an
// *campaign.IneligibleError (wire.ReasonFirmwareModel) if not, which fails
// the device for good; the same (wire.ReasonUnsupportedVersion) for a
// device whose sigild, by the protocol version it last spoke, would refuse
// the manifest. That version is the device's claim: a device that lies
// about it only fails its own update.
func (s *Service) eligible(id string, r *firmware.Release) error {
	d, err := s.inv.Device(context.TODO(), id)
	if err != nil {
		return err
	}
	if !builtFor(r, d) {
		model := d.Model
		if model == "" {
			model = "none (assign the device a model)"
		}
		return &campaign.IneligibleError{Reason: wire.ReasonFirmwareModel,
			Message: fmt.Sprintf("the fleet's model of the device, %s, is not one the release is built for (%s)", model, strings.Join(r.Manifest.Models, ", "))}
	}
	if v := manifestProtocol(r); d.Protocol != 0 && d.Protocol < v {
		return &campaign.IneligibleError{Reason: wire.ReasonUnsupportedVersion,
			Message: fmt.Sprintf("the device's sigild speaks protocol %d and would refuse this release's manifest (it binds an SBOM or a block index, read from protocol %d on): sign the release without them for such devices", d.Protocol, v)}
	}
	return nil
}

// announce is the campaigns' Announcer: it publishes firmware.announce to
// the device, only for a release that may be offered now and is built for
// the device's model (eligible). A device without a session misses it and
// gets it again when it says hello; one that stays away times out and
// counts as failed.
func (s *Service) announce(ctx context.Context, a campaign.Announcement) error {
	r, err := s.store.Offerable(ctx, a.Release, s.now())
	if err != nil {
		return err
	}
	if err := s.eligible(a.Device, r); err != nil {
		return err
	}
	return s.sendAnnounce(a.Device, a.Campaign, r)
}

func (s *Service) sendAnnounce(deviceID, campaignID string, r *firmware.Release) error {
	msg, err := wire.Encode(wire.TypeFirmwareAnnounce, nil, s.now(), &wire.FirmwareAnnounce{
		Campaign: campaignID, Update: campaignID, Manifest: r.ManifestJSON, Bundles: r.Bundles,
		Path: firmware.DownloadPrefix + r.ImageDigest(),
	})
	if err != nil {
		return err
	}
	return s.send(deviceID, wire.KindFirmware, msg)
}

// stepOf maps a device's update phase to its campaign step.
func stepOf(phase string) campaign.Step {
	switch phase {
	case "announced":
		return campaign.StepAnnounced
	case "downloading":
		return campaign.StepDownloading
	case "verifying":
		return campaign.StepVerifying
	case "installing":
		return campaign.StepInstalling
	case "switching", "rebooting":
		return campaign.StepSwitching
	case "health", "committing", "advancing_floor", "rolling_back":
		return campaign.StepHealth
	case "committed":
		return campaign.StepCommitted
	case "rolled_back":
		return campaign.StepRolledBack
	case "failed":
		return campaign.StepFailed
	}
	return ""
}

// Report takes a device's firmware.report into its campaign. The device
// is the one the broker authenticated. A nil Service (firmware off)
// ignores it.
func (s *Service) Report(deviceID string, env *wire.Envelope) {
	if s == nil {
		return
	}
	var r wire.FirmwareReport
	if err := wire.DecodeBody(env, wire.TypeFirmwareReport, &r); err != nil {
		s.log.Warn("malformed firmware report", "device_id", deviceID, "err", err)
		return
	}
	log := s.log
	if r.Phase == "advancing_floor" && r.Message != "" {
		// The release runs but the device's TPM anti-rollback counter
		// lags: it retries, and the campaign times it out if it never
		// gets there.
		log.Warn("device cannot advance its anti-rollback counter", "device_id", deviceID, "campaign", r.Campaign, "message", r.Message)
	}
	s.campaigns.Submit(campaign.DeviceReport{
		DeviceID: deviceID, Campaign: r.Campaign, Step: stepOf(r.Phase), Reason: r.Reason,
		RunningVersion: r.Running, At: env.Timestamp(), ClaimedFetched: r.Fetched,
	}, func(applied bool, err error) {
		switch {
		case err != nil:
			log.Info("firmware report not taken", "device_id", deviceID, "campaign", r.Campaign, "phase", r.Phase, "err", err)
		case applied && r.Final:
			log.Info("firmware update finished", "device_id", deviceID, "campaign", r.Campaign, "phase", r.Phase,
				"reason", r.Reason.String(), "running", r.Running)
		}
	})
}

// Hello queues a device that said hello: it gets the release trust, and
// the announcements of the campaigns it is in flight in (a device that
// restarted or reconnected may have missed them). A nil Service
// (firmware off) ignores it.
func (s *Service) Hello(deviceID string) {
	if s == nil {
		return
	}
	select {
	case s.hellos <- deviceID:
	default:
		s.log.Warn("firmware hello queue full; the device gets its announcements at its next hello", "device_id", deviceID)
	}
}

func (s *Service) helloLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-s.hellos:
			s.hello(id)
		}
	}
}

func (s *Service) hello(deviceID string) {
	msg, err := wire.Encode(wire.TypeFirmwareTrust, nil, s.now(), &wire.FirmwareTrust{Trust: s.trust, Rotations: s.rotations})
	if err == nil {
		err = s.send(deviceID, wire.KindFirmware, msg)
	}
	if err != nil {
		s.log.Warn("release trust not sent", "device_id", deviceID, "err", err)
	}
	as, err := s.campaigns.InFlight(deviceID)
	if err != nil {
		s.log.Warn("campaigns in flight not read", "device_id", deviceID, "err", err)
		return
	}
	for _, a := range as {
		r, err := s.store.Offerable(context.TODO(), a.Release, s.now())
		if err == nil && a.Step == campaign.StepAnnounced {
			err = s.eligible(deviceID, r)
		}
		if ie, ok := errors.AsType[*campaign.IneligibleError](err); ok {
			// Its model changed since the announcement, before it started:
			// the fleet fails it on its behalf.
			s.campaigns.Submit(campaign.DeviceReport{DeviceID: deviceID, Campaign: a.Campaign, Step: campaign.StepFailed,
				Reason: ie.Reason, At: s.now()}, nil)
			s.log.Warn("device may no longer get the release; failed", "device_id", deviceID, "campaign", a.Campaign, "why", ie.Message)
			continue
		}
		if err == nil {
			err = s.sendAnnounce(deviceID, a.Campaign, r)
		}
		if err != nil {
			s.log.Info("announcement not repeated", "device_id", deviceID, "campaign", a.Campaign, "err", err)
		}
	}
}

// Target is the firmware version a device should run (governance's
// Firmware): the newest approved, unexpired release built for its model.
func (s *Service) Target(d *inventory.Device) (string, error) {
	return newestFor(s.store, d.Model, s.now())
}

// releaseLister lists the releases (firmware.Store).
type releaseLister interface {
	List(ctx context.Context) ([]*firmware.Release, error)
}

// newestFor is the version of the newest approved release for model that
// has not expired at now; "" when there is none.
func newestFor(rels releaseLister, model string, now time.Time) (string, error) {
	list, err := rels.List(context.TODO())
	if err != nil {
		return "", err
	}
	var best *manifest.Version
	target := ""
	for _, r := range list {
		m := r.Manifest
		if r.State != firmware.StateApproved || m == nil || !m.Compatible(model) || m.Expired(now) {
			continue
		}
		v, err := manifest.ParseVersion(m.Version)
		if err != nil {
			continue
		}
		if best == nil || v.Compare(*best) > 0 {
			best, target = &v, m.Version
		}
	}
	return target, nil
}
