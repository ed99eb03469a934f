package exposure

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/package-url/packageurl-go"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// Buckets of the store: components per release ID, advisories (OSV JSON as
// imported) per advisory ID, and what Attested last saw of each device
// (deviceState JSON) per device ID.
var (
	bucketComponents = []byte("exposure_components")
	bucketAdvisories = []byte("exposure_advisories")
	bucketDevices    = []byte("exposure_devices")
)

// File is the store's bbolt file in the release store's directory
// (firmware.DataDir); on PostgreSQL its buckets share the release records'
// table (firmware.Table).
const File = "exposure.db"

// Buckets are the store's buckets (boltdb.Schema); sigil migrate copies
// them.
func Buckets() [][]byte { return [][]byte{bucketComponents, bucketAdvisories, bucketDevices} }

// More errors. Compare with errors.Is.
var (
	// ErrNoSBOM: the release's signed manifest binds no SBOM.
	ErrNoSBOM = errors.New("exposure: the release's manifest binds no SBOM")
	// ErrSBOMDigest: the SBOM is not the one the signed manifest binds.
	ErrSBOMDigest = errors.New("exposure: the SBOM's digest differs from the one in the signed manifest")
	// ErrNotFound: no such advisory.
	ErrNotFound = errors.New("exposure: not found")
)

// DefaultPCR is the SHA-256 PCR that device/update measures the running
// image into (update.DefaultPCR).
const DefaultPCR = 14

// historyDepth is how many of a device's newest attestation records are
// read to find its running release and since when it runs it.
const historyDepth = 50

// Releases lists the fleet's releases. *firmware.Store implements it.
type Releases interface {
	List(ctx context.Context) ([]*firmware.Release, error)
}

// Devices lists the inventory. *inventory.Store implements it.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
}

// Attestations gives a device's attestation records, newest first.
// *attest.History implements it.
type Attestations interface {
	List(ctx context.Context, deviceID string, limit int) ([]attest.Record, error)
}

// Campaigns are the firmware campaigns, for the status of an exposed
// device's update. *campaign.Manager implements it.
type Campaigns interface {
	List() ([]campaign.Campaign, error)
	Device(id, deviceID string) (*campaign.Device, error)
}

// Alerter hears of an advisory that, when imported, matched deployed
// devices.
type Alerter interface {
	Exposed(ctx context.Context, r *Report) error
}

// AlerterFunc adapts a function to Alerter.
type AlerterFunc func(ctx context.Context, r *Report) error

// Exposed calls f.
func (f AlerterFunc) Exposed(ctx context.Context, r *Report) error { return f(ctx, r) }

// Config configures New.
type Config struct {
	// DB holds the store's buckets (Buckets). Required.
	DB           kv.DB
	Releases     Releases     // required
	Devices      Devices      // required
	Attestations Attestations // required
	// Alerter, when set, hears of each newly imported advisory that
	// matches deployed devices.
	Alerter Alerter
	// Campaigns, when set, gives each exposed device's campaign status in
	// reports.
	Campaigns Campaigns
	// PCR is the firmware PCR of the SHA-256 bank; 0 means DefaultPCR.
	PCR int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service keeps release components and advisories, and computes exposure
// from what devices attested. Safe for concurrent use.
type Service struct {
	cfg Config
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.DB == nil || cfg.Releases == nil || cfg.Devices == nil || cfg.Attestations == nil {
		return nil, errors.New("exposure: DB, Releases, Devices and Attestations are required")
	}
	if cfg.PCR == 0 {
		cfg.PCR = DefaultPCR
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}, nil
}

// SetSBOM stores the components of release rel from sbom, after checking
// that the release's signed manifest binds this SBOM (SHA-256 equal to the
// manifest's; read in the manifest's format, CycloneDX JSON with ParseSBOM
// or SPDX JSON with ParseSPDX): the components are as trusted as the
// manifest. Setting it again replaces nothing different: the digest
// pins the content. When the release had no components yet, the Alerter
// hears of the stored advisories that affect the devices running it
// (they ran a release of unknown components until now); when only that
// fails, the components are returned with the error.
func (s *Service) SetSBOM(ctx context.Context, rel *firmware.Release, sbom []byte) ([]Component, error) {
	m := rel.Manifest
	if m == nil || m.SBOM == nil {
		return nil, ErrNoSBOM
	}
	if sha256.Sum256(sbom) != m.SBOM.SHA256 {
		return nil, ErrSBOMDigest
	}
	cs, err := parse(m.SBOM.Format, sbom)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(cs)
	if err != nil {
		return nil, fmt.Errorf("exposure: %w", err)
	}
	existed := false
	err = s.cfg.DB.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketComponents)
		if err != nil {
			return err
		}
		existed = bk.Get([]byte(rel.ID)) != nil
		return bk.Put([]byte(rel.ID), b)
	})
	if err != nil {
		return nil, fmt.Errorf("exposure: store components: %w", err)
	}
	if !existed {
		if err := s.sbomAdded(ctx, rel); err != nil {
			return cs, err
		}
	}
	return cs, nil
}

// Components returns the stored components of a release, nil when it has
// none.
func (s *Service) Components(ctx context.Context, releaseID string) ([]Component, error) {
	var cs []Component
	err := s.cfg.DB.View(ctx, func(tx kv.Tx) error {
		bk := tx.Bucket(bucketComponents)
		if bk == nil {
			return nil
		}
		if v := bk.Get([]byte(releaseID)); v != nil {
			return json.Unmarshal(v, &cs)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("exposure: %w", err)
	}
	return cs, nil
}

// Running is the release a device runs as it attested.
type Running struct {
	// ReleaseID and Version name the release whose image digest the
	// device's TPM quoted ("" when the quoted value matches no release).
	ReleaseID string `json:"release_id,omitempty"`
	Version   string `json:"version,omitempty"`
	// Since is the first attestation, in the records kept, that quoted
	// this image without another in between; Attested the newest.
	Since    time.Time `json:"since"`
	Attested time.Time `json:"attested"`
	// Claimed is the version the device reports: shown, never used.
	Claimed string `json:"claimed,omitempty"`

	pcr string // the firmware PCR value of the newest verified quote
}

// Finding is one device running an affected (or queried) component.
type Finding struct {
	DeviceID  string    `json:"device_id"`
	Group     string    `json:"group,omitempty"`
	Model     string    `json:"model,omitempty"`
	Owner     string    `json:"owner,omitempty"`
	Release   string    `json:"release"`
	Version   string    `json:"release_version"`
	Component Component `json:"component"`
	// FirstSeen is when the device was first attested running the
	// release (Running.Since); Attested the newest such attestation.
	FirstSeen time.Time `json:"first_seen"`
	Attested  time.Time `json:"attested"`
	// Fixed is the component version that fixes the advisory ("" when
	// unknown or for a query); FixRelease an approved release for the
	// device's model whose components the advisory does not affect (""
	// when none: no fixed release available).
	Fixed      string `json:"fixed,omitempty"`
	FixRelease string `json:"fix_release,omitempty"`
	// Campaign and CampaignStep name a campaign that has not ended
	// (draft, scheduled, running or paused) targeting the device, the
	// newest, and where the device is in it; empty when none.
	Campaign     string `json:"campaign,omitempty"`
	CampaignStep string `json:"campaign_step,omitempty"`
}

// snapshot is what one computation reads: the releases by image digest,
// each image digest by the firmware PCR value it gives after a TPM reset,
// and the releases' components.
type snapshot struct {
	releases []*firmware.Release
	byImage  map[[32]byte][]*firmware.Release
	byPCR    map[string][32]byte
	comps    map[string][]Component
}

// imagePCR is the PCR value after measuring an image of digest d into a
// reset PCR: SHA-256(32 zero bytes || d), as device/update extends it.
func imagePCR(d [32]byte) string {
	var buf [64]byte
	copy(buf[32:], d[:])
	sum := sha256.Sum256(buf[:])
	return hex.EncodeToString(sum[:])
}

func (s *Service) snapshot(ctx context.Context) (*snapshot, error) {
	rels, err := s.cfg.Releases.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("exposure: releases: %w", err)
	}
	sn := &snapshot{releases: rels, byImage: map[[32]byte][]*firmware.Release{}, byPCR: map[string][32]byte{}, comps: map[string][]Component{}}
	for _, r := range rels {
		if r.Manifest == nil {
			continue
		}
		d := r.Manifest.SHA256
		sn.byImage[d] = append(sn.byImage[d], r)
		sn.byPCR[imagePCR(d)] = d
	}
	err = s.cfg.DB.View(ctx, func(tx kv.Tx) error {
		bk := tx.Bucket(bucketComponents)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			var cs []Component
			if err := json.Unmarshal(v, &cs); err != nil {
				return err
			}
			sn.comps[string(k)] = cs
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("exposure: components: %w", err)
	}
	return sn, nil
}

// running finds the release a device runs from its attestation records
// (newest first), using only PCR values from verified quotes (a record
// without them is skipped). Walking them oldest first, the firmware PCR's
// value names an image when it is SHA-256(zeros || digest) of a release's
// image (measured after a TPM reset), or SHA-256(previous value ||
// digest) of the previous record's value (one more image measured in the
// same TPM boot, as an update without a TPM reset leaves it); a value
// unchanged keeps the image, any other value makes it unknown. Since is the
// first record of the newest run on that image. nil when the device has no
// verified quote; a Running without ReleaseID when the image is unknown.
func (s *Service) running(sn *snapshot, recs []attest.Record) (*Running, *firmware.Release) {
	var run *Running
	var prev string
	var img *[32]byte
	for i := len(recs) - 1; i >= 0; i-- {
		rec := &recs[i]
		v := rec.PCRs["sha256"][s.cfg.PCR]
		if v == "" {
			continue // no verified quote in this record
		}
		if run == nil {
			run = &Running{}
		}
		run.Attested, run.Claimed, run.pcr = rec.Time, rec.Firmware, v
		if v == prev {
			continue
		}
		was := img
		img = sn.image(prev, v)
		prev = v
		if img == nil || was == nil || *img != *was {
			run.Since = rec.Time
		}
	}
	if run == nil || img == nil {
		return run, nil
	}
	var best *firmware.Release
	for _, r := range sn.byImage[*img] {
		_, has := sn.comps[r.ID]
		_, bestHas := sn.comps[idOf(best)]
		if best == nil || has && !bestHas || has == bestHas && r.UploadedAt.After(best.UploadedAt) {
			best = r
		}
	}
	run.ReleaseID, run.Version = best.ID, best.Manifest.Version
	return run, best
}

// image returns the digest of the release image whose measurement turns
// the firmware PCR from prev ("" when unknown) into v, trying a reset PCR
// first; nil when none does.
func (sn *snapshot) image(prev, v string) *[32]byte {
	if d, ok := sn.byPCR[v]; ok {
		return &d
	}
	p, err := hex.DecodeString(prev)
	if err != nil || len(p) != sha256.Size {
		return nil
	}
	var buf [64]byte
	copy(buf[:32], p)
	for d := range sn.byImage {
		copy(buf[32:], d[:])
		if sum := sha256.Sum256(buf[:]); hex.EncodeToString(sum[:]) == v {
			return &d
		}
	}
	return nil
}

func idOf(r *firmware.Release) string {
	if r == nil {
		return ""
	}
	return r.ID
}

// eachDevice calls fn with every device of the inventory and the release
// it runs as attested (nil when unknown).
func (s *Service) eachDevice(ctx context.Context, sn *snapshot, fn func(d *inventory.Device, run *Running, rel *firmware.Release)) error {
	after := ""
	for {
		page, next, err := s.cfg.Devices.ListDevices(ctx, inventory.Filter{After: after, Limit: 1000})
		if err != nil {
			return fmt.Errorf("exposure: devices: %w", err)
		}
		for i := range page {
			recs, err := s.cfg.Attestations.List(ctx, page[i].ID, historyDepth)
			if err != nil {
				return fmt.Errorf("exposure: attestations of %s: %w", page[i].ID, err)
			}
			run, rel := s.running(sn, recs)
			fn(&page[i], run, rel)
		}
		if next == "" {
			return nil
		}
		after = next
	}
}

// Query returns the devices whose attested release holds a component with
// the package URL purl (its version, qualifiers and subpath ignored) in the
// version range constraint (Masterminds semver syntax, e.g. ">= 1.2, <
// 1.4.2"; "" for any version), in device ID order. A component version that
// is not a semantic version matches only the empty range. Errors for a bad
// purl or range wrap ErrQuery.
func (s *Service) Query(ctx context.Context, purl, constraint string) ([]Finding, error) {
	p, err := packageurl.FromString(purl)
	if err != nil {
		return nil, fmt.Errorf("%w: package URL: %w", ErrQuery, err)
	}
	base := basePURL(p)
	var c *semver.Constraints
	if constraint != "" {
		if c, err = semver.NewConstraint(constraint); err != nil {
			return nil, fmt.Errorf("%w: version range: %w", ErrQuery, err)
		}
	}
	match := func(comp Component) bool {
		q, err := packageurl.FromString(comp.PURL)
		if err != nil || basePURL(q) != base {
			return false
		}
		if c == nil {
			return true
		}
		v, err := semver.NewVersion(comp.Version)
		return err == nil && c.Check(v)
	}
	sn, err := s.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	var out []Finding
	err = s.eachDevice(ctx, sn, func(d *inventory.Device, run *Running, rel *firmware.Release) {
		if rel == nil {
			return
		}
		for _, comp := range sn.comps[rel.ID] {
			if match(comp) {
				out = append(out, finding(d, run, comp))
			}
		}
	})
	return out, err
}

func finding(d *inventory.Device, run *Running, comp Component) Finding {
	return Finding{DeviceID: d.ID, Group: d.Group, Model: d.Model, Owner: d.Owner, Release: run.ReleaseID, Version: run.Version,
		Component: comp, FirstSeen: run.Since, Attested: run.Attested}
}

// Report is an advisory's exposure across the fleet.
type Report struct {
	Advisory  Advisory  `json:"advisory"`
	Generated time.Time `json:"generated"`
	// Devices are the exposed devices, in device ID order (a device with
	// several affected components appears once per component).
	Devices []Finding `json:"devices"`
	// ByGroup, ByModel and ByOwner count the exposed devices ("" for
	// none assigned).
	ByGroup map[string]int `json:"by_group"`
	ByModel map[string]int `json:"by_model"`
	ByOwner map[string]int `json:"by_owner"`
	// Unknown counts the devices whose running release is unknown: no
	// verified attestation, or an image of no release with an SBOM.
	Unknown int `json:"unknown"`

	seen map[string]deviceState // per device with a verified quote
}

// ImportAdvisory parses an OSV advisory, stores it (replacing one of the
// same ID) and returns its report. When the advisory is new and exposes
// devices, the Alerter hears of it.
func (s *Service) ImportAdvisory(ctx context.Context, raw []byte) (*Report, error) {
	a, err := ParseOSV(raw)
	if err != nil {
		return nil, err
	}
	existed := false
	err = s.cfg.DB.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketAdvisories)
		if err != nil {
			return err
		}
		existed = bk.Get([]byte(a.ID)) != nil
		return bk.Put([]byte(a.ID), bytes.Clone(raw))
	})
	if err != nil {
		return nil, fmt.Errorf("exposure: store advisory: %w", err)
	}
	r, err := s.report(ctx, a)
	if err != nil {
		return nil, err
	}
	if !existed {
		// The devices seen now were told of it here: Attested raises it
		// again only for a device that changes release.
		if err := s.saveStates(ctx, r.seen); err != nil {
			return r, err
		}
	}
	if !existed && len(r.Devices) > 0 && s.cfg.Alerter != nil {
		if err := s.cfg.Alerter.Exposed(ctx, r); err != nil {
			return r, fmt.Errorf("exposure: alert: %w", err)
		}
	}
	return r, nil
}

// Advisories returns the IDs of the stored advisories, in order.
func (s *Service) Advisories(ctx context.Context) ([]string, error) {
	var ids []string
	err := s.cfg.DB.View(ctx, func(tx kv.Tx) error {
		bk := tx.Bucket(bucketAdvisories)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("exposure: %w", err)
	}
	return ids, nil
}

// Report computes the exposure to a stored advisory now.
func (s *Service) Report(ctx context.Context, id string) (*Report, error) {
	var raw []byte
	err := s.cfg.DB.View(ctx, func(tx kv.Tx) error {
		if bk := tx.Bucket(bucketAdvisories); bk != nil {
			raw = bytes.Clone(bk.Get([]byte(id)))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("exposure: %w", err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: advisory %q", ErrNotFound, id)
	}
	a, err := ParseOSV(raw)
	if err != nil {
		return nil, err
	}
	return s.report(ctx, a)
}

func (s *Service) report(ctx context.Context, a *Advisory) (*Report, error) {
	sn, err := s.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	open, err := s.openCampaigns()
	if err != nil {
		return nil, err
	}
	r := &Report{Advisory: *a, Generated: s.cfg.Now().UTC(), Devices: []Finding{},
		ByGroup: map[string]int{}, ByModel: map[string]int{}, ByOwner: map[string]int{}, seen: map[string]deviceState{}}
	affected := func(relID string) bool {
		for _, c := range sn.comps[relID] {
			if ok, _ := a.Match(c); ok {
				return true
			}
		}
		return false
	}
	var cerr error // the first campaign lookup that failed
	err = s.eachDevice(ctx, sn, func(d *inventory.Device, run *Running, rel *firmware.Release) {
		if cerr != nil {
			return
		}
		if run != nil {
			r.seen[d.ID] = deviceState{PCR: run.pcr, Release: idOf(rel)}
		}
		if rel == nil || sn.comps[rel.ID] == nil {
			r.Unknown++
			return
		}
		exposed := false
		for _, c := range sn.comps[rel.ID] {
			ok, fixed := a.Match(c)
			if !ok {
				continue
			}
			f := finding(d, run, c)
			f.Fixed = fixed
			f.FixRelease = s.fixRelease(sn, d.Model, rel, affected)
			if f.Campaign, f.CampaignStep, cerr = s.campaignOf(open, d.ID); cerr != nil {
				return
			}
			r.Devices = append(r.Devices, f)
			exposed = true
		}
		if exposed {
			r.ByGroup[d.Group]++
			r.ByModel[d.Model]++
			r.ByOwner[d.Owner]++
		}
	})
	if err = cmp.Or(err, cerr); err != nil {
		return nil, err
	}
	return r, nil
}

// openCampaigns returns the campaigns that have not ended, newest first.
func (s *Service) openCampaigns() ([]campaign.Campaign, error) {
	if s.cfg.Campaigns == nil {
		return nil, nil
	}
	all, err := s.cfg.Campaigns.List()
	if err != nil {
		return nil, fmt.Errorf("exposure: campaigns: %w", err)
	}
	var open []campaign.Campaign
	for _, c := range all {
		if c.State != campaign.StateCompleted && c.State != campaign.StateAborted {
			open = append(open, c)
		}
	}
	slices.SortStableFunc(open, func(a, b campaign.Campaign) int { return b.Created.Compare(a.Created) })
	return open, nil
}

// campaignOf returns the newest open campaign targeting the device and
// its step there.
func (s *Service) campaignOf(open []campaign.Campaign, deviceID string) (string, string, error) {
	for _, c := range open {
		d, err := s.cfg.Campaigns.Device(c.ID, deviceID)
		if errors.Is(err, campaign.ErrNotTarget) {
			continue
		}
		if err != nil {
			return "", "", fmt.Errorf("exposure: campaign %s: %w", c.ID, err)
		}
		return c.ID, string(d.Step), nil
	}
	return "", "", nil
}

// fixRelease returns an approved release for model, with components, whose
// security version is not below cur's and which the advisory does not
// affect: the newest uploaded; "" when there is none.
func (s *Service) fixRelease(sn *snapshot, model string, cur *firmware.Release, affected func(string) bool) string {
	var best *firmware.Release
	for _, r := range sn.releases {
		if r.State != firmware.StateApproved || r.Manifest == nil || !r.Manifest.Compatible(model) ||
			r.Manifest.SecurityVersion < cur.Manifest.SecurityVersion || sn.comps[r.ID] == nil || affected(r.ID) {
			continue
		}
		if best == nil || r.UploadedAt.After(best.UploadedAt) {
			best = r
		}
	}
	return idOf(best)
}

var _ Attestations = (*attest.History)(nil)
