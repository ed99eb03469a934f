package console_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"html"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/fleet/workload"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// fleetFixture is the console fixture with the subsystems behind the
// extension pages — release store, campaign manager (its engine running),
// alert engine, approvals, audit log, telemetry ingester, governance —
// all real, behind a real API handler that has them too.
type fleetFixture struct {
	*fixture
	releases  *firmware.Store
	campaigns *campaign.Manager
	alerts    *alert.Engine
	approvals *approval.Manager
	access    *access.Service
	workloads *workload.Service
	audit     *audit.Log
	tel       *telemetry.Ingester
	gov       *governance.Service
	policies  *policy.Store
	signer    *sign.Signer
	sinks     []api.AlertSink
	exposure  *exposure.Service
	// attested holds the attestation records the exposure service reads.
	attested attestations
	// announced receives the engine's announcements.
	announced chan campaign.Announcement
}

// fleetOptions switch parts off.
type fleetOptions struct {
	noApprovals bool        // no two-person rule
	flood       alert.Flood // the alert engine's flood control
}

func newFleetFixture(t testing.TB, opt fleetOptions) *fleetFixture {
	t.Helper()
	ff := &fleetFixture{announced: make(chan campaign.Announcement, 1000),
		sinks: []api.AlertSink{{Name: "ops-webhook", Type: "webhook", Target: "https://hooks.example/sigil", MinSeverity: "warning", Signed: true}}}
	ff.fixture = newFixture(t, func(c *console.Config) {
		inv := c.Inventory.(*inventory.Store)
		ff.policies = c.Policies.(*policy.Store)
		ff.open(t, inv, c.Now, c.Auth, opt)
		ff.openWorkloads(t, inv, c.CA.(*ca.CA), c.Now)
		c.API = api.New(api.Config{
			Inventory: inv, Policies: ff.policies, Auth: c.Auth, Audit: ff.audit, Approvals: ff.approvals,
			Firmware: fwService{ff.releases, ff.campaigns, c.Now, ff.exposure}, Alerts: ff.alerts, AlertSinks: ff.sinks, Telemetry: ff.tel,
			Governance: ff.gov, Now: c.Now, RateLimit: -1, Access: ff.access, Workloads: ff.workloads, CA: c.CA.(*ca.CA), CARotation: caRotation{c.CA.(*ca.CA)},
		})
		ext := []console.Extension{
			console.FirmwarePages{Releases: ff.releases, Campaigns: ff.campaigns, Exposure: ff.exposure, Now: c.Now}.Extension(),
			console.AlertPages{Alerts: ff.alerts, Sinks: ff.sinks}.Extension(),
			console.AuditPages{Log: ff.audit}.Extension(),
			console.TelemetryCharts{Telemetry: ff.tel, Now: c.Now}.Extension(),
			console.RiskPages{Risk: ff.gov}.Extension(),
			console.AccessPages{Grants: ff.access, Now: c.Now}.Extension(),
			console.WorkloadPages{Workloads: ff.workloads}.Extension(),
		}
		if ff.approvals != nil {
			ext = append(ext, console.ApprovalPages{Approvals: ff.approvals, Now: c.Now}.Extension())
		}
		*c = c.With(ext...)
	})
	return ff
}

// open opens the subsystems in a temporary directory and starts the
// campaign engine.
func (ff *fleetFixture) open(t testing.TB, inv *inventory.Store, now func() time.Time, operators *auth.Service, opt fleetOptions) {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var trust *verify.TrustSet
	ff.signer, trust = signtest.Key(t)

	auditKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	ff.audit, err = audit.Open(audit.Config{Path: filepath.Join(dir, "audit.db"), Signer: auditKey, Now: now, NoSync: true})
	must(err)
	t.Cleanup(func() { ff.audit.Close() })

	ff.releases, err = firmware.Open(firmware.Config{Dir: filepath.Join(dir, "firmware"), Trust: trust, Now: now, NoSync: true})
	must(err)
	t.Cleanup(func() { ff.releases.Close() })
	cstore, err := campaign.Open(filepath.Join(dir, "campaigns.db"))
	must(err)
	t.Cleanup(func() { cstore.Close() })
	ff.campaigns, err = campaign.New(campaign.Config{Store: cstore, Now: now, Tick: 5 * time.Millisecond,
		Targets: campaign.TargetsFunc(func(_ context.Context, _ string, sel campaign.Selector) ([]string, error) { return resolve(inv, sel) }),
		Announcer: campaign.AnnouncerFunc(func(_ context.Context, a campaign.Announcement) error {
			select {
			case ff.announced <- a:
			default:
			}
			return nil
		})})
	must(err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = ff.campaigns.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	ff.alerts, err = alert.Open(alert.Config{Path: filepath.Join(dir, "alerts.db"), Now: now, NoSync: true, Flood: opt.flood})
	must(err)
	t.Cleanup(func() { ff.alerts.Close() })

	if !opt.noApprovals {
		ff.approvals, err = approval.Open(approval.Config{Path: filepath.Join(dir, "approvals.db"), Now: now, NoSync: true,
			Requester: approval.RequesterFrom(operators)})
		must(err)
		t.Cleanup(func() { ff.approvals.Close() })
	}
	ff.access, err = access.Open(access.Config{Dir: dir, TrustDomain: "fleet.example", Approvals: ff.approvals, Devices: inv, Audit: ff.audit, Now: now, NoSync: true})
	must(err)
	t.Cleanup(func() { ff.access.Close() })
	ff.tel, err = telemetry.New(telemetry.Config{Now: now})
	must(err)
	ff.gov, err = governance.Open(governance.Config{Path: filepath.Join(dir, "governance.db"), Devices: inv, Now: now, NoSync: true})
	must(err)
	t.Cleanup(func() { ff.gov.Close() })

	edb, err := boltdb.Open(filepath.Join(dir, "exposure.db"), boltdb.Schema{Buckets: exposure.Buckets()}, boltdb.Options{NoSync: true})
	must(err)
	t.Cleanup(func() { edb.Close() })
	ff.attested = attestations{}
	ff.exposure, err = exposure.New(exposure.Config{DB: kv.Bolt(edb), Releases: ff.releases, Devices: inv, Attestations: ff.attested,
		Campaigns: ff.campaigns, Now: now})
	must(err)
}

// openWorkloads opens the workload service (its issuer
// https://fleet.example) in a temporary directory.
func (ff *fleetFixture) openWorkloads(t testing.TB, inv *inventory.Store, c *ca.CA, now func() time.Time) {
	t.Helper()
	st, err := workload.Open(filepath.Join(t.TempDir(), workload.File), bytes.Repeat([]byte{0x5a}, 32))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ff.workloads, err = workload.New(workload.Config{Store: st, CA: c, Devices: inv, Verdicts: attestedNow{}, TrustDomain: "fleet.example",
		Issuer: "https://fleet.example", Now: now})
	if err != nil {
		t.Fatal(err)
	}
}

// attestedNow says every device's attestation is current.
type attestedNow struct{}

func (attestedNow) Current(string) error { return nil }

// attestations are devices' attestation records, newest first.
type attestations map[string][]attest.Record

func (a attestations) List(_ context.Context, id string, limit int) ([]attest.Record, error) {
	return a[id][:min(limit, len(a[id]))], nil
}

// resolve selects active devices by IDs, group and model, as the server
// does.
func resolve(inv *inventory.Store, sel campaign.Selector) ([]string, error) {
	var out []string
	devs, _, err := inv.ListDevices(context.Background(), inventory.Filter{Limit: 1000})
	if err != nil {
		return nil, err
	}
	listed := map[string]bool{}
	for _, id := range sel.DeviceIDs {
		listed[id] = true
	}
	for _, d := range devs {
		if d.State == inventory.StateActive && (len(listed) == 0 || listed[d.ID]) &&
			(sel.Group == "" || d.Group == sel.Group) && (sel.Model == "" || d.Model == sel.Model) {
			out = append(out, d.ID)
		}
	}
	return out, nil
}

// fwService is the API's firmware service over the real store and
// manager (the server's adds image staging and policy preparation).
type fwService struct {
	store *firmware.Store
	mgr   *campaign.Manager
	now   func() time.Time
	exp   *exposure.Service
}

func (f fwService) Releases() *firmware.Store    { return f.store }
func (f fwService) Campaigns() *campaign.Manager { return f.mgr }
func (f fwService) StageImage(context.Context, string, io.Reader) (int64, error) {
	return 0, errors.New("staging is not part of this fixture")
}
func (f fwService) Upload(ctx context.Context, who string, m []byte, bundles [][]byte, image io.Reader) (*firmware.Release, error) {
	return f.store.Upload(ctx, who, m, bundles, image)
}
func (f fwService) StartCampaign(id string, at time.Time, who, why string) error {
	c, err := f.mgr.Get(id)
	if err != nil {
		return err
	}
	if _, err := f.store.Offerable(context.TODO(), c.Definition.Release, f.now()); err != nil {
		return err
	}
	return f.mgr.Start(id, at, who, why)
}

func (f fwService) Exposure() *exposure.Service { return f.exp }

// upload signs and uploads a release of a small image as who.
func (ff *fleetFixture) upload(who, version string, sv uint64) *firmware.Release {
	ff.t.Helper()
	image := bytes.Repeat([]byte("gw-os "+version+"\n"), 500)
	m := &manifest.Manifest{Name: "gw-os", Version: version, SecurityVersion: sv, Models: []string{"gw-1"},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: ff.clock.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second)}
	raw, bundles := signtest.Release(ff.t, m, ff.signer)
	r, err := ff.releases.Upload(context.Background(), who, raw, bundles, bytes.NewReader(image))
	if err != nil {
		ff.t.Fatal(err)
	}
	return r
}

// approved uploads a release as who and has approver approve it.
func (ff *fleetFixture) approved(who, approver, version string, sv uint64) *firmware.Release {
	ff.t.Helper()
	r := ff.upload(who, version, sv)
	r, err := ff.releases.Approve(context.Background(), approver, r.ID)
	if err != nil || r.State != firmware.StateApproved {
		ff.t.Fatalf("approve %s: %v (%s)", version, err, r.State)
	}
	return r
}

// waitFor polls cond until it holds, failing after a generous bound (a
// stuck engine, not a slow one).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	wait.For(t, what, cond)
}

// report has a device report a step of a campaign, as its connection
// would.
func (ff *fleetFixture) report(campaignID, deviceID string, step campaign.Step, reason wire.Reason, version string) {
	ff.t.Helper()
	if _, err := ff.campaigns.Report(campaign.DeviceReport{DeviceID: deviceID, Campaign: campaignID, Step: step, Reason: reason,
		RunningVersion: version, At: ff.clock.Now()}); err != nil {
		ff.t.Fatal(err)
	}
}

// ingest sends a device's telemetry batch of points, one per interval
// ending now, through the real ingester.
func (ff *fleetFixture) ingest(deviceID string, stream []byte, first uint64, points []map[string]float64, interval time.Duration) {
	ff.t.Helper()
	now := ff.clock.Now()
	b := &wire.TelemetryBatch{Stream: stream, First: first, Acked: first - 1}
	for i, m := range points {
		at := now.Add(-time.Duration(len(points)-1-i) * interval)
		b.Points = append(b.Points, wire.TelemetryPoint{Time: at.UnixMilli(), Metrics: m})
	}
	raw, err := wire.Encode(wire.TypeTelemetryBatch, nil, now, b)
	if err != nil {
		ff.t.Fatal(err)
	}
	env, err := wire.Decode(raw)
	if err != nil {
		ff.t.Fatal(err)
	}
	if _, err := ff.tel.Ingest(deviceID, env); err != nil {
		ff.t.Fatal(err)
	}
}

// apiAs calls the API as a user with a bearer token for role, with an
// optional justification.
func (ff *fleetFixture) apiAs(user string, role auth.Role, method, path string, body []byte, why string) *http.Response {
	ff.t.Helper()
	secret, _, err := ff.auth.CreateToken(context.Background(), user, "test", role, time.Hour)
	if err != nil {
		ff.t.Fatal(err)
	}
	r := newRequest(method, path, bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+secret)
	r.Header.Set("Content-Type", "application/json")
	if why != "" {
		r.Header.Set(api.JustificationHeader, why)
	}
	return ff.serve(r).Result()
}

var nextLink = regexp.MustCompile(`<a href="([^"]+)" rel="next">`)

// regexpLink returns the page's link to its next page.
func regexpLink(t testing.TB, page string) string {
	t.Helper()
	m := nextLink.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("the page has no link to a next page")
	}
	return html.UnescapeString(m[1])
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
