package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Firmware files, relative to DataDir.
const (
	FirmwareDir   = "firmware"     // the release store (fleet/firmware): firmware.db and images/
	StagingDir    = "firmware/new" // images uploaded ahead of their release (two-step upload)
	CampaignsFile = "campaigns.db" // campaigns (fleet/campaign)
)

// ReleaseRotation names one rotation of the release trust set in the
// configuration: a statement file, the new set as `sigil firmware trust`
// writes it, and the bundle files that sign it (`sigil firmware sign`), by
// the current threshold of the current keys and the new threshold of the
// new keys.
type ReleaseRotation struct {
	Statement string   `json:"statement"`
	Bundles   []string `json:"bundles"`
}

// Limits of the firmware service.
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

// Errors of the firmware service.
var (
	// errFirmwareOff: the fleet has no release_trust.
	errFirmwareOff = errors.New("server: firmware releases are not configured (release_trust)")
)

// firmwareService wires the release store and the campaign engine to the
// broker, the inventory and the API: it announces releases to devices,
// takes their reports, serves their downloads, hands out the release trust
// set, and stages images uploaded ahead of their release.
type firmwareService struct {
	store     *firmware.Store
	cstore    *campaign.Store
	campaigns *campaign.Manager
	trust     []byte               // current release trust set, canonical
	rotations []wire.TrustRotation // from the configured set to the current one
	staging   string
	maxImage  int64
	inv       *inventory.Store
	policies  *policy.Store
	admit     func(deviceID string, c *x509.Certificate) error
	domain    string
	send      func(deviceID, kind string, payload []byte) error
	now       func() time.Time
	log       *slog.Logger
	hellos    chan string
}

var _ api.Firmware = (*firmwareService)(nil)

// openFirmware opens the release store and the campaigns when
// release_trust is set; without it firmware is off (s.fw stays nil, the
// API answers 501).
func (s *Server) openFirmware() error {
	if s.cfg.ReleaseTrust == "" {
		s.log.Info("firmware releases off: no release_trust configured")
		return nil
	}
	chain, rotations, err := loadReleaseTrust(s.cfg.ReleaseTrust, s.cfg.ReleaseTrustRotations)
	if err != nil {
		return err
	}
	// Devices hold the set served last: refuse a configuration that does
	// not rotate from it (release_trust changed in place).
	if err := firmware.RememberTrust(filepath.Join(s.cfg.DataDir, FirmwareDir), chain); err != nil {
		return err
	}
	trust := chain[len(chain)-1]
	for i, r := range rotations {
		if bytes.HasSuffix(r.Statement, []byte("\n")) {
			s.log.Warn("release trust rotation statement ends in a newline, as signed; devices of protocol 5 refuse it (sign the statement without one for them)",
				"rotation", i, "sequence", chain[i+1].Sequence())
		}
	}
	raw, err := trust.Marshal()
	if err != nil {
		return fmt.Errorf("server: release trust: %w", err)
	}
	log := s.log.With("component", "firmware")
	var rec audit.Recorder
	if s.Audit != nil {
		rec = s.Audit
	}
	f := &firmwareService{
		trust: raw, rotations: rotations, staging: filepath.Join(s.cfg.DataDir, StagingDir),
		maxImage: firmware.DefaultMaxImageSize, inv: s.Inv, policies: s.Policy, domain: s.cfg.TrustDomain,
		admit: func(id string, c *x509.Certificate) error {
			acc, err := gate{s.Inv, s.CA}.AdmitDevice(id, c)
			if err == nil && acc.UpKinds != nil {
				err = errors.New("device quarantined")
			}
			return err
		},
		send: func(deviceID, kind string, payload []byte) error {
			return s.Broker.Publish(s.topics.DeviceDown(deviceID, kind), payload, 1)
		},
		now: time.Now, log: log, hellos: make(chan string, helloQueue),
	}
	if err := os.MkdirAll(f.staging, 0o700); err != nil {
		return fmt.Errorf("server: firmware staging: %w", err)
	}
	f.removeOldStaged()
	f.store, err = firmware.Open(firmware.Config{
		Dir: filepath.Join(s.cfg.DataDir, FirmwareDir), Trust: trust, Approvals: s.cfg.FirmwareApprovals,
		Auditor: releaseAuditor(rec, log), Logger: log,
	})
	if err != nil {
		return err
	}
	if f.cstore, err = campaign.Open(filepath.Join(s.cfg.DataDir, CampaignsFile)); err != nil {
		f.store.Close()
		return err
	}
	f.campaigns, err = campaign.New(campaign.Config{
		Store: f.cstore, Targets: campaign.TargetsFunc(f.resolve), Announcer: campaign.AnnouncerFunc(f.announce),
		Auditor: campaignAuditor(rec, log), Logger: log.With("component", "campaign"),
	})
	if err != nil {
		f.close()
		return err
	}
	s.fw = f
	log.Info("firmware releases on", "trust_sequence", trust.Sequence(), "threshold", trust.Threshold(),
		"keys", len(trust.KeyIDs()), "rotations", len(rotations), "approvals", max(s.cfg.FirmwareApprovals, 1))
	return nil
}

// loadReleaseTrust reads the configured release trust set and applies the
// configured rotations in order, each verified with verify.Rotate. It
// returns the configured set followed by the set each rotation leads to
// (the last is the current set) and the rotations devices need.
//
// A statement is used as its file holds it, byte for byte: the signatures
// cover those bytes (cosign sign-blob signs the file as it is, a trailing
// newline included), and devices check them over the bytes they receive.
// Bundles made over the file without its one trailing newline (what sigil
// firmware sign signs) count too: the statement then goes to devices in
// that form, the one its signers signed.
func loadReleaseTrust(path string, rots []ReleaseRotation) ([]*verify.TrustSet, []wire.TrustRotation, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("server: release_trust: %w", err)
	}
	cur, err := verify.ParseTrustSet(trimNewline(b))
	if err != nil {
		return nil, nil, fmt.Errorf("server: release_trust %s: %w", path, err)
	}
	if len(rots) > wire.MaxFirmwareRotations {
		return nil, nil, fmt.Errorf("server: release_trust_rotations: %d, at most %d", len(rots), wire.MaxFirmwareRotations)
	}
	chain := []*verify.TrustSet{cur}
	var out []wire.TrustRotation
	for i, r := range rots {
		stmt, err := os.ReadFile(r.Statement)
		if err != nil {
			return nil, nil, fmt.Errorf("server: release_trust_rotations[%d]: %w", i, err)
		}
		var bundles [][]byte
		for _, p := range r.Bundles {
			bb, err := os.ReadFile(p)
			if err != nil {
				return nil, nil, fmt.Errorf("server: release_trust_rotations[%d]: %w", i, err)
			}
			bundles = append(bundles, bb)
		}
		next, err := verify.Rotate(cur, stmt, bundles)
		if trimmed := trimNewline(stmt); errors.Is(err, verify.ErrSignature) && len(trimmed) < len(stmt) {
			if n, err2 := verify.Rotate(cur, trimmed, bundles); err2 == nil {
				next, stmt, err = n, trimmed, nil
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("server: release_trust_rotations[%d] (%s): %w%s", i, r.Statement, err, causeOf(err))
		}
		cur = next
		chain = append(chain, cur)
		out = append(out, wire.TrustRotation{Statement: stmt, Bundles: bundles})
	}
	return chain, out, nil
}

// causeOf is the internal cause of a refusal in parentheses, for the
// operator who configured what was refused; "" for other errors.
func causeOf(err error) string {
	if we, ok := errors.AsType[*wire.Error](err); ok && we.Err != nil {
		return " (" + we.Err.Error() + ")"
	}
	return ""
}

// trimNewline drops one trailing newline, which editors and `>` add to
// files whose canonical form has none.
func trimNewline(b []byte) []byte {
	b = []byte(strings.TrimSuffix(string(b), "\n"))
	return []byte(strings.TrimSuffix(string(b), "\r"))
}

func (f *firmwareService) close() {
	if f.cstore != nil {
		f.cstore.Close()
	}
	if f.store != nil {
		f.store.Close()
	}
}

// closeFirmware closes the firmware stores, if open.
func (s *Server) closeFirmware() {
	if s.fw != nil {
		s.fw.close()
	}
}

// runFirmware runs the campaign engine and the hello worker until ctx
// ends; it returns at once when firmware is off.
func (s *Server) runFirmware(ctx context.Context) error {
	f := s.fw
	if f == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.helloLoop(ctx)
	}()
	err := f.campaigns.Run(ctx)
	<-done
	return err
}

// Releases returns the release store, or nil when firmware is off.
func (s *Server) Releases() *firmware.Store {
	if s.fw == nil {
		return nil
	}
	return s.fw.store
}

// Campaigns returns the campaign manager, or nil when firmware is off.
func (s *Server) Campaigns() *campaign.Manager {
	if s.fw == nil {
		return nil
	}
	return s.fw.campaigns
}

// StartCampaign starts a draft campaign as the API does: once its release
// may be offered, with the release's attestation policies prepared.
func (s *Server) StartCampaign(id string, at time.Time, who, why string) error {
	if s.fw == nil {
		return errFirmwareOff
	}
	return s.fw.StartCampaign(id, at, who, why)
}

// firmwareAPI is the API's view of the firmware service; nil (firmware
// off) makes the firmware routes answer 501.
func (s *Server) firmwareAPI() api.Firmware {
	if s.fw == nil {
		return nil
	}
	return s.fw
}

// firmwareTrust is the release trust set enrolled devices get and the
// signed rotations that lead to it; nil when firmware is off.
func (s *Server) firmwareTrust() ([]byte, []wire.TrustRotation) {
	if s.fw == nil {
		return nil, nil
	}
	return s.fw.trust, s.fw.rotations
}

// firmwareTLS makes the API listener ask for (not require) a client
// certificate, verified against the fleet CA's current pool at each
// handshake (a CA rotation swaps the pool), so that devices download
// images with their mTLS identity. Operators' requests carry none. With
// firmware off the listener asks for nothing.
func (s *Server) firmwareTLS(base *tls.Config) *tls.Config {
	if s.fw == nil {
		return base
	}
	withPool := func() *tls.Config {
		c := base.Clone()
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = s.CA.Pool()
		return c
	}
	c := withPool()
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return withPool(), nil }
	return c
}

// withDownloads mounts the device download endpoint (GET /firmware/{sha256})
// beside the API on the HTTPS listener.
func (s *Server) withDownloads(apiHandler http.Handler) http.Handler {
	if s.fw == nil {
		return apiHandler
	}
	downloads := s.fw.store.Handler(s.fw.authorizeDownload)
	mux := http.NewServeMux()
	mux.Handle(firmware.DownloadPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The listener's write timeout suits API calls, not images.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(downloadTime))
		downloads.ServeHTTP(w, r)
	}))
	mux.Handle("/", apiHandler)
	return mux
}

// authorizeDownload lets a device download an image only while it is
// admitted to the fleet (active, certificate not revoked, of a current CA
// generation) and in flight in a campaign of a release with that image.
// The device is the one its verified certificate names (SPIFFE ID).
func (f *firmwareService) authorizeDownload(r *http.Request, digest string) error {
	cert := r.TLS.VerifiedChains[0][0]
	id, err := identity.FromCertificate(cert, f.domain)
	if err != nil {
		return err
	}
	if err := f.admit(id, cert); err != nil {
		return err
	}
	as, err := f.campaigns.InFlight(id)
	if err != nil {
		return err
	}
	for _, a := range as {
		rel, err := f.store.Release(a.Release)
		if err == nil && rel.ImageDigest() == digest {
			return nil
		}
	}
	return fmt.Errorf("device %s is in no campaign in flight for image %s", id, digest)
}

// resolve is the campaigns' Targets: the active devices a selector
// matches that release is built for (builtFor), in device ID order
// (explicit device IDs in their given order).
func (f *firmwareService) resolve(_ context.Context, release string, sel campaign.Selector) ([]string, error) {
	r, err := f.store.Release(release)
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
			d, err := f.inv.Device(id)
			if errors.Is(err, inventory.ErrNotFound) {
				return nil, fmt.Errorf("server: no device %q", id)
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
		devs, next, err := f.inv.ListDevices(inventory.Filter{State: inventory.StateActive, Model: sel.Model, After: after, Limit: 1000})
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

// eligible checks, at announce time, that release r is for device id (its
// model may have changed since the campaign resolved it, and a rollback
// campaign takes the devices that committed another release): an
// *campaign.IneligibleError (wire.ReasonFirmwareModel) if not, which fails
// the device for good.
func (f *firmwareService) eligible(id string, r *firmware.Release) error {
	d, err := f.inv.Device(id)
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
	return nil
}

// announce is the campaigns' Announcer: it publishes firmware.announce to
// the device, only for a release that may be offered now and is built for
// the device's model (eligible). A device without a session misses it and
// gets it again when it says hello; one that stays away times out and
// counts as failed.
func (f *firmwareService) announce(_ context.Context, a campaign.Announcement) error {
	r, err := f.store.Offerable(a.Release, f.now())
	if err != nil {
		return err
	}
	if err := f.eligible(a.Device, r); err != nil {
		return err
	}
	return f.sendAnnounce(a.Device, a.Campaign, r)
}

func (f *firmwareService) sendAnnounce(deviceID, campaignID string, r *firmware.Release) error {
	msg, err := wire.Encode(wire.TypeFirmwareAnnounce, nil, f.now(), &wire.FirmwareAnnounce{
		Campaign: campaignID, Update: campaignID, Manifest: r.ManifestJSON, Bundles: r.Bundles,
		Path: firmware.DownloadPrefix + r.ImageDigest(),
	})
	if err != nil {
		return err
	}
	return f.send(deviceID, wire.KindFirmware, msg)
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

// firmwareReport takes a device's firmware.report into its campaign. The
// device is the one the broker authenticated.
func (s *Server) firmwareReport(deviceID string, env *wire.Envelope) {
	if s.fw == nil {
		return
	}
	var r wire.FirmwareReport
	if err := wire.DecodeBody(env, wire.TypeFirmwareReport, &r); err != nil {
		s.log.Warn("malformed firmware report", "device_id", deviceID, "err", err)
		return
	}
	log := s.fw.log
	if r.Phase == "advancing_floor" && r.Message != "" {
		// The release runs but the device's TPM anti-rollback counter
		// lags: it retries, and the campaign times it out if it never
		// gets there.
		log.Warn("device cannot advance its anti-rollback counter", "device_id", deviceID, "campaign", r.Campaign, "message", r.Message)
	}
	s.fw.campaigns.Submit(campaign.DeviceReport{
		DeviceID: deviceID, Campaign: r.Campaign, Step: stepOf(r.Phase), Reason: r.Reason,
		RunningVersion: r.Running, At: env.Timestamp(),
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

// firmwareHello queues a device that said hello: it gets the release
// trust, and the announcements of the campaigns it is in flight in (a
// device that restarted or reconnected may have missed them).
func (s *Server) firmwareHello(deviceID string) {
	if s.fw == nil {
		return
	}
	select {
	case s.fw.hellos <- deviceID:
	default:
		s.fw.log.Warn("firmware hello queue full; the device gets its announcements at its next hello", "device_id", deviceID)
	}
}

func (f *firmwareService) helloLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-f.hellos:
			f.hello(id)
		}
	}
}

func (f *firmwareService) hello(deviceID string) {
	msg, err := wire.Encode(wire.TypeFirmwareTrust, nil, f.now(), &wire.FirmwareTrust{Trust: f.trust, Rotations: f.rotations})
	if err == nil {
		err = f.send(deviceID, wire.KindFirmware, msg)
	}
	if err != nil {
		f.log.Warn("release trust not sent", "device_id", deviceID, "err", err)
	}
	as, err := f.campaigns.InFlight(deviceID)
	if err != nil {
		f.log.Warn("campaigns in flight not read", "device_id", deviceID, "err", err)
		return
	}
	for _, a := range as {
		r, err := f.store.Offerable(a.Release, f.now())
		if err == nil && a.Step == campaign.StepAnnounced {
			err = f.eligible(deviceID, r)
		}
		if ie, ok := errors.AsType[*campaign.IneligibleError](err); ok {
			// Its model changed since the announcement, before it started:
			// the fleet fails it on its behalf.
			f.campaigns.Submit(campaign.DeviceReport{DeviceID: deviceID, Campaign: a.Campaign, Step: campaign.StepFailed,
				Reason: ie.Reason, At: f.now()}, nil)
			f.log.Warn("device may no longer get the release; failed", "device_id", deviceID, "campaign", a.Campaign, "why", ie.Message)
			continue
		}
		if err == nil {
			err = f.sendAnnounce(deviceID, a.Campaign, r)
		}
		if err != nil {
			f.log.Info("announcement not repeated", "device_id", deviceID, "campaign", a.Campaign, "err", err)
		}
	}
}

// Releases implements api.Firmware.
func (f *firmwareService) Releases() *firmware.Store { return f.store }

// Campaigns implements api.Firmware.
func (f *firmwareService) Campaigns() *campaign.Manager { return f.campaigns }

// Errors of StageImage, for the API.
var (
	errStagedDigest = fmt.Errorf("%w: the image's SHA-256 differs from the one in the URL", firmware.ErrInvalid)
)

// StageImage implements api.Firmware: it streams an image into the staging
// directory, checking its SHA-256 against digest, for an upload of its
// release that follows. An image the store already holds is not kept
// again.
func (f *firmwareService) StageImage(_ context.Context, digest string, body io.Reader) (int64, error) {
	if !validHexDigest(digest) {
		return 0, fmt.Errorf("%w: image digest must be 64 lowercase hex digits", firmware.ErrInvalid)
	}
	tmp, err := os.CreateTemp(f.staging, ".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("server: stage image: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing to remove
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(body, f.maxImage+1))
	if err == nil && n > f.maxImage {
		err = fmt.Errorf("%w: more than %d bytes", firmware.ErrTooLarge, f.maxImage)
	}
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: empty image", firmware.ErrInvalid)
	}
	if err == nil && hex.EncodeToString(h.Sum(nil)) != digest {
		err = errStagedDigest
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(f.staging, digest))
	}
	if err != nil {
		return n, err
	}
	f.log.Info("firmware image staged", "image", digest, "bytes", n)
	return n, nil
}

// Upload implements api.Firmware: it stores a release through the store
// (which verifies everything); a nil image takes the staged image of the
// manifest's digest, if any, and removes it once the release is stored.
func (f *firmwareService) Upload(ctx context.Context, who string, manifestJSON []byte, bundles [][]byte, image io.Reader) (*firmware.Release, error) {
	staged := ""
	if image == nil {
		if m, err := manifest.Parse(manifestJSON); err == nil {
			p := filepath.Join(f.staging, hex.EncodeToString(m.SHA256[:]))
			if file, err := os.Open(p); err == nil {
				defer file.Close()
				image, staged = file, p
			}
		}
	}
	r, err := f.store.Upload(ctx, who, manifestJSON, bundles, image)
	if err == nil && staged != "" {
		if err := os.Remove(staged); err != nil {
			f.log.Warn("staged image not removed", "file", staged, "err", err)
		}
	}
	return r, err
}

// StartCampaign implements api.Firmware: it starts a draft campaign when
// its release may be offered, after preparing the attestation policies of
// the release (see preparePolicies).
func (f *firmwareService) StartCampaign(id string, at time.Time, who, why string) error {
	c, err := f.campaigns.Get(id)
	if err != nil {
		return err
	}
	r, err := f.store.Offerable(c.Definition.Release, f.now())
	if err != nil {
		return err
	}
	if err := f.preparePolicies(r, who); err != nil {
		return err
	}
	return f.campaigns.Start(id, at, who, why)
}

// preparePolicies gives devices that will run release r a reference policy
// before any runs it, so that attestation expects the new measurements
// instead of raising a false alarm: for each model of the release whose
// manifest states expected measurements, the policy that applies to the
// model's devices (any firmware, any group) is copied into a policy for
// the release's version, with the manifest's PCR values in place of its
// own and the manifest's event digests added to those it allows. Models
// without a policy, or with one for this version already, are left alone.
func (f *firmwareService) preparePolicies(r *firmware.Release, who string) error {
	m := r.Manifest
	ms := m.Measurements
	if f.policies == nil || ms == nil || len(ms.PCRs) == 0 && len(ms.EventDigests) == 0 {
		return nil
	}
	for _, model := range m.Models {
		base, err := f.policies.Select(model, "", "")
		if err != nil {
			return err
		}
		if base == nil {
			continue
		}
		if cur, err := f.policies.Select(model, m.Version, ""); err != nil {
			return err
		} else if cur != nil && cur.Firmware == m.Version {
			continue
		}
		p := *base
		p.ID = policyID(model, m.Version)
		p.Name = fmt.Sprintf("%s %s (from %s and the release manifest)", model, m.Version, base.ID)
		p.Model, p.Firmware, p.Group = model, m.Version, ""
		p.CreatedBy, p.Comment = who, "prepared for release "+r.ID
		for bank, values := range ms.PCRs {
			if p.PCRs == nil {
				p.PCRs = map[string]map[int]string{}
			}
			if p.PCRs[bank] == nil {
				p.PCRs[bank] = map[int]string{}
			}
			for pcr, v := range values {
				p.PCRs[bank][pcr] = v
			}
		}
		if p.Events != nil && p.Events.AllowedDigests != nil {
			for pcr, ds := range ms.EventDigests {
				for _, d := range ds {
					if !slices.Contains(p.Events.AllowedDigests[pcr], d) {
						p.Events.AllowedDigests[pcr] = append(p.Events.AllowedDigests[pcr], d)
					}
				}
			}
		}
		if _, err := f.policies.Put(p); err != nil && !errors.Is(err, policy.ErrConflict) {
			return fmt.Errorf("server: policy for %s %s: %w", model, m.Version, err)
		}
		f.log.Info("attestation policy prepared for a release", "policy", p.ID, "model", model, "version", m.Version, "from", base.ID)
	}
	return nil
}

// policyID names the policy preparePolicies makes for a model and version.
func policyID(model, version string) string {
	sum := sha256.Sum256([]byte(model + "\x00" + version))
	v := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '-'
	}, version)
	id := "fw-" + hex.EncodeToString(sum[:4]) + "-" + v
	if len(id) > 64 {
		id = id[:64]
	}
	return strings.TrimRight(id, ".-")
}

// removeOldStaged removes staged images older than stagedMaxAge and
// temporary files a crash left.
func (f *firmwareService) removeOldStaged() {
	entries, err := os.ReadDir(f.staging)
	if err != nil {
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		if strings.HasPrefix(e.Name(), ".tmp-") || f.now().Sub(info.ModTime()) > stagedMaxAge {
			_ = os.Remove(filepath.Join(f.staging, e.Name()))
		}
	}
}

func validHexDigest(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// releaseAuditor records release actions in rec (nil: logs them only).
func releaseAuditor(rec audit.Recorder, log *slog.Logger) firmware.Auditor {
	return firmware.AuditorFunc(func(ctx context.Context, actor, action, target, outcome, reason string) error {
		log.Info("audit", "actor", actor, "action", action, "release", target, "outcome", outcome, "reason", reason)
		if rec == nil {
			return nil
		}
		e := audit.New(audit.User(actor), action, target)
		switch outcome {
		case firmware.OutcomeOK:
			e = e.Because(reason)
		case firmware.OutcomeDenied:
			e = e.Deny(reason)
		default:
			e = e.Fail(errors.New(reason))
		}
		return rec.Record(ctx, e)
	})
}

// campaignAuditor records campaign actions in rec (nil: the campaign
// engine logs them).
func campaignAuditor(rec audit.Recorder, log *slog.Logger) campaign.Auditor {
	return campaign.AuditorFunc(func(ev campaign.AuditEvent) {
		if rec == nil {
			return
		}
		actor := audit.User(ev.Actor)
		if ev.Actor == campaign.SystemActor {
			actor = audit.System("campaign")
		}
		e := audit.New(actor, ev.Action, ev.Target).Because(ev.Justification)
		if ev.Detail != "" {
			e = e.With("detail", ev.Detail)
		}
		if ev.Outcome != "ok" {
			e = e.Fail(errors.New(ev.Detail))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rec.Record(ctx, e); err != nil {
			log.Error("campaign audit record failed", "action", ev.Action, "campaign", ev.Target, "err", err)
		}
	})
}
