package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Releases reads the firmware release store. *firmware.Store implements
// it.
type Releases interface {
	List(ctx context.Context) ([]*firmware.Release, error)
	Offerable(ctx context.Context, id string, now time.Time) (*firmware.Release, error)
}

// Campaigns reads firmware campaigns. *campaign.Manager implements it.
type Campaigns interface {
	List() ([]campaign.Campaign, error)
	Get(id string) (*campaign.Campaign, error)
	Devices(id string, f campaign.DeviceFilter) ([]campaign.Device, string, error)
	Device(id, deviceID string) (*campaign.Device, error)
}

var (
	_ Releases  = (*firmware.Store)(nil)
	_ Campaigns = (*campaign.Manager)(nil)
)

// FirmwarePages are the firmware pages: releases (approve under the
// two-person rule, withdraw), campaigns (create from an approved release
// with waves and thresholds; start, pause, resume, abort and roll back
// with a justification; progress per wave and per device), the overview's
// campaign progress tiles and the device page's firmware history.
type FirmwarePages struct {
	// Releases and Campaigns are read by the pages; either nil makes an
	// empty Extension (firmware off).
	Releases  Releases
	Campaigns Campaigns
	// Exposure, when set, adds the vulnerability exposure page
	// (fleet/exposure: advisories and the devices they expose).
	Exposure *exposure.Service
	// Now is the clock that decides whether a release may be offered (its
	// expiry). Nil means time.Now.
	Now func() time.Time
}

// Limits of the firmware pages.
const (
	// campaignDevicesShown is the page size of a campaign's device table.
	campaignDevicesShown = 50
	// activeCardsShown bounds the campaign tiles on the overview.
	activeCardsShown = 3
	// historyCampaigns bounds how many campaigns, newest first, the
	// device page's firmware history looks into.
	historyCampaigns = 100
)

// Extension returns the pages, the overview tiles and the device section.
func (f FirmwarePages) Extension() Extension {
	if f.Releases == nil || f.Campaigns == nil {
		return Extension{}
	}
	f.Now = clockOr(f.Now)
	ext := Extension{
		Pages: []Page{
			{Name: "campaigns", Path: "/campaigns", Nav: "Campaigns", Title: "Firmware campaigns", Perm: auth.PermFirmwareRead,
				Template: source("campaigns.html"), Load: f.loadCampaigns, Actions: []Action{{
					Name: "campaign.create", Path: "/campaigns/new", API: "POST /api/v1/campaigns", Body: campaignBody,
					Reveal: createdReveal("Campaign created", "It is a draft: nothing is announced until you start it on its page.")}}},
			{Name: "campaign", Path: "/campaigns/{id}", Perm: auth.PermFirmwareRead, Template: source("campaign.html"),
				Load: f.loadCampaign, Actions: campaignActions()},
			{Name: "releases", Path: "/releases", Nav: "Firmware", Title: "Firmware releases", Perm: auth.PermFirmwareRead,
				Template: source("releases.html"), Load: f.loadReleases, Actions: releaseActions()},
		},
		Cards: []CardFunc{f.campaignCards},
		Sections: []Section{{Name: "firmware-history", Title: "Firmware history", Perm: auth.PermFirmwareRead,
			Template: source("section-firmware.html"), Load: f.loadHistory}},
	}
	if f.Exposure != nil {
		ext.Pages = append(ext.Pages, f.exposurePage())
	}
	return ext
}

// ReleaseView is a release as the console shows it.
type ReleaseView struct {
	*firmware.Release
	Size   string
	Digest string
	// Offerable says whether campaigns may offer it now; NotOfferable
	// says why not.
	Offerable    bool
	NotOfferable string
	// Mine says the operator uploaded it: the two-person rule bars them
	// from approving it. ApprovedByMe says they approved it already.
	Mine, ApprovedByMe bool
}

// Label names the release for people: "gw-os 2.0.0".
func (r ReleaseView) Label() string { return releaseLabel(r.Release) }

func releaseLabel(r *firmware.Release) string {
	if r == nil || r.Manifest == nil {
		return ""
	}
	return r.Manifest.Name + " " + r.Manifest.Version
}

// ReleasesPage is the releases page's data.
type ReleasesPage struct{ Releases []ReleaseView }

// releases reads every release, newest first, with what the operator may
// do with it.
func (f FirmwarePages) releases(p auth.Principal) ([]ReleaseView, error) {
	rs, err := f.Releases.List(context.TODO())
	if err != nil {
		return nil, err
	}
	now := f.Now()
	out := make([]ReleaseView, 0, len(rs))
	for _, r := range rs {
		v := ReleaseView{Release: r, Digest: r.ImageDigest(), Mine: r.UploadedBy == p.User}
		if r.Manifest != nil {
			v.Size = sizeText(r.Manifest.Size)
		}
		for _, a := range r.Approvals {
			v.ApprovedByMe = v.ApprovedByMe || a.By == p.User
		}
		if _, err := f.Releases.Offerable(context.TODO(), r.ID, now); err != nil {
			v.NotOfferable = notOfferable(err)
		} else {
			v.Offerable = true
		}
		out = append(out, v)
	}
	return out, nil
}

// notOfferable says for people why a release is not offered.
func notOfferable(err error) string {
	switch {
	case errors.Is(err, firmware.ErrNotApproved):
		return "waiting for approval"
	case errors.Is(err, firmware.ErrWithdrawn):
		return "withdrawn"
	case errors.Is(err, verify.ErrExpired):
		return "its signed metadata expired: re-sign it with a later expiry"
	case errors.Is(err, verify.ErrSignature):
		return "no longer signed by enough of the fleet's current release keys"
	case errors.Is(err, firmware.ErrNotFound):
		return "not found"
	}
	return "cannot be offered now"
}

func (f FirmwarePages) loadReleases(_ *http.Request, p auth.Principal) (any, error) {
	rs, err := f.releases(p)
	if err != nil {
		return nil, err
	}
	return ReleasesPage{Releases: rs}, nil
}

func releaseActions() []Action {
	return []Action{
		{Name: "release.approve", Path: "/releases/{id}/approve", API: "POST /api/v1/firmware/{id}/approve", Then: "/releases",
			OK: "Approved: once it has every approval it needs, campaigns may offer it."},
		{Name: "release.withdraw", Path: "/releases/{id}/withdraw", API: "POST /api/v1/firmware/{id}/withdraw", Then: "/releases",
			Body: justificationBody, OK: "Withdrawn: the release is never offered again."},
	}
}

// justificationBody is the body of the actions that only need a
// justification.
func justificationBody(form url.Values) (any, error) {
	j, err := justification(form)
	return api.Justification{Justification: j}, err
}

// CampaignView is a campaign with what the lists show of it.
type CampaignView struct {
	campaign.Campaign
	// Release names the release ("gw-os 2.0.0"), or is its ID when the
	// store no longer has it.
	Release string
	// Done counts the devices finished with the campaign.
	Done int
	Tone string
}

// Label names the campaign: its name, or its ID.
func (c CampaignView) Label() string {
	if c.Definition.Name != "" {
		return c.Definition.Name
	}
	return c.ID
}

func campaignView(c campaign.Campaign, labels map[string]string) CampaignView {
	v := CampaignView{Campaign: c, Release: labels[c.Definition.Release], Done: c.Counts.Finished(), Tone: campaignTone(c)}
	if v.Release == "" {
		v.Release = c.Definition.Release
	}
	return v
}

func campaignTone(c campaign.Campaign) string {
	switch c.State {
	case campaign.StateCompleted:
		if c.Counts.Failures() > 0 {
			return "warn"
		}
		return "ok"
	case campaign.StatePaused:
		return "warn"
	case campaign.StateAborted:
		return "bad"
	case campaign.StateDraft:
		return "muted"
	}
	return ""
}

// releaseLabels maps release IDs to their labels.
func (f FirmwarePages) releaseLabels() (map[string]string, error) {
	rs, err := f.Releases.List(context.TODO())
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(rs))
	for _, r := range rs {
		out[r.ID] = releaseLabel(r)
	}
	return out, nil
}

// newestFirst sorts campaigns by creation, newest first.
func newestFirst(cs []campaign.Campaign) {
	slices.SortStableFunc(cs, func(a, b campaign.Campaign) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
}

// CampaignsPage is the campaigns page's data.
type CampaignsPage struct {
	Campaigns []CampaignView
	// Offerable are the releases a new campaign may install.
	Offerable []ReleaseView
}

func (f FirmwarePages) loadCampaigns(_ *http.Request, p auth.Principal) (any, error) {
	rs, err := f.releases(p)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{}
	out := CampaignsPage{}
	for _, r := range rs {
		labels[r.ID] = r.Label()
		if r.Offerable {
			out.Offerable = append(out.Offerable, r)
		}
	}
	cs, err := f.Campaigns.List()
	if err != nil {
		return nil, err
	}
	newestFirst(cs)
	for _, c := range cs {
		out.Campaigns = append(out.Campaigns, campaignView(c, labels))
	}
	return out, nil
}

// campaignBody reads the create form into the API's request.
func campaignBody(form url.Values) (any, error) {
	def, err := parseDefinition(form, true)
	if err != nil {
		return nil, err
	}
	j, err := justification(form)
	if err != nil {
		return nil, err
	}
	return api.CampaignRequest{Definition: def, Justification: j}, nil
}

// parseDefinition reads a campaign definition from the create form, or,
// with targets false, from the rollback form (whose devices are those
// that committed the campaign). It checks the form's syntax and reports
// every problem at once; the API validates the definition itself.
func parseDefinition(form url.Values, targets bool) (campaign.Definition, error) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	field := func(name string) string { return strings.TrimSpace(form.Get(name)) }
	var def campaign.Definition

	def.Name = field("name")
	if len(def.Name) > 128 {
		bad("the name is at most 128 characters")
	}
	def.Release = field("release")
	if def.Release == "" {
		bad("choose a release")
	}
	if targets {
		def.Targets.Group, def.Targets.Model = field("group"), field("model")
		for _, id := range splitList(form.Get("devices")) {
			id = strings.ToLower(id)
			if !isDeviceID(id) {
				bad("%q is not a device ID (letters, digits, '.', '_' and '-', as the device list shows them)", short(id))
				continue
			}
			def.Targets.DeviceIDs = append(def.Targets.DeviceIDs, id)
		}
		if def.Targets.Group == "" && def.Targets.Model == "" && len(def.Targets.DeviceIDs) == 0 {
			bad("choose the devices: a group, a model or device IDs")
		}
	}

	integer := func(name string, min int) int {
		s := field(name)
		if s == "" {
			return 0
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < min {
			bad("%s must be a whole number of at least %d", strings.ReplaceAll(name, "_", " "), min)
		}
		return n
	}
	share := func(name string) float64 {
		s := strings.TrimSuffix(field(name), "%")
		if s == "" {
			return 0
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 || v > 100 || v != v {
			bad("%s is a percentage from 0 to 100", strings.ReplaceAll(name, "_", " "))
			return 0
		}
		return v / 100
	}

	if sizes := splitList(form.Get("sizes")); len(sizes) > 0 {
		for _, s := range sizes {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				bad("wave sizes are whole numbers of at least 1; %q is not", s)
				continue
			}
			def.Waves.Sizes = append(def.Waves.Sizes, n)
		}
	} else {
		def.Waves.Canary = integer("canary", 1)
		if s := field("growth"); s != "" {
			g, err := strconv.ParseFloat(s, 64)
			if err != nil || g < 1 || g > 1000 {
				bad("the growth factor is a number from 1 to 1000")
			}
			def.Waves.Growth = g
		}
	}
	def.SuccessThreshold = share("success_threshold")
	def.FailureThreshold = share("failure_threshold")
	switch a := campaign.Action(field("on_failure")); a {
	case "", campaign.ActionPause, campaign.ActionAbort:
		def.OnFailure = a
	default:
		bad("when a wave fails, the campaign pauses or aborts")
	}
	if s := field("device_timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			bad("the device timeout is a duration such as 30m or 2h")
		}
		def.DeviceTimeout = config.Duration(d)
	}
	def.Retries = integer("retries", 0)
	def.MaxInFlight = integer("max_in_flight", 0)
	if len(problems) > 0 {
		return campaign.Definition{}, errUser(strings.Join(problems, "; "))
	}
	return def, nil
}

// createdReveal shows a campaign the API created (a new one, or a
// rollback) with a link to its page.
func createdReveal(heading, note string) func([]byte) (Reveal, error) {
	return func(answer []byte) (Reveal, error) {
		var c campaign.Campaign
		if err := json.Unmarshal(answer, &c); err != nil {
			return Reveal{}, err
		}
		sizes := make([]string, 0, len(c.Waves))
		for _, w := range c.Waves {
			sizes = append(sizes, strconv.Itoa(w.Size))
		}
		return Reveal{Heading: heading, Note: note, Back: "/campaigns/" + url.PathEscape(c.ID),
			Facts: [][2]string{{"Campaign", c.ID}, {"Devices", strconv.Itoa(c.Total)}, {"Waves", strings.Join(sizes, ", ")}, {"State", string(c.State)}}}, nil
	}
}

func campaignActions() []Action {
	acts := []Action{
		{Name: "campaign.start", Path: "/campaigns/{id}/start", API: "POST /api/v1/campaigns/{id}/start", Then: "/campaigns/{id}",
			Body: startBody, OK: "Started: the first wave is announced at the next step of the engine (or at the start time)."},
		{Name: "campaign.rollback", Path: "/campaigns/{id}/rollback", API: "POST /api/v1/campaigns/{id}/rollback",
			Body: func(form url.Values) (any, error) {
				def, err := parseDefinition(form, false)
				if err != nil {
					return nil, err
				}
				j, err := justification(form)
				if err != nil {
					return nil, err
				}
				return api.CampaignRequest{Definition: def, Justification: j}, nil
			},
			Reveal: createdReveal("Rollback campaign created",
				"It announces the chosen release to the devices that committed this campaign. It is a draft: start it on its page.")},
	}
	for _, a := range []struct{ name, ok string }{
		{"pause", "Paused: nothing more is announced; devices in flight still report."},
		{"resume", "Resumed: announcements continue with the open wave."},
		{"abort", "Aborted: nothing more is announced; devices in flight still report or time out."},
	} {
		acts = append(acts, Action{Name: "campaign." + a.name, Path: "/campaigns/{id}/" + a.name, API: "POST /api/v1/campaigns/{id}/" + a.name,
			Then: "/campaigns/{id}", Body: justificationBody, OK: a.ok})
	}
	return acts
}

// startBody reads the start form: a justification and an optional start
// time (a datetime-local field, in UTC).
func startBody(form url.Values) (any, error) {
	j, err := justification(form)
	if err != nil {
		return nil, err
	}
	req := api.Justification{Justification: j}
	if s := strings.TrimSpace(form.Get("at")); s != "" {
		t, err := time.ParseInLocation("2006-01-02T15:04", s, time.UTC)
		if err != nil {
			return nil, errUser("the start time is a date and time (UTC), e.g. 2026-03-01T22:00")
		}
		req.At = t
	}
	return req, nil
}

// CampaignPage is a campaign's page.
type CampaignPage struct {
	CampaignView
	Facts [][2]string
	Waves []WaveView
	// Bar is the whole campaign's progress.
	Bar     StackedBar
	Devices []CampaignDevice
	// StepFilter and WaveFilter are the device table's filters; Steps and
	// WaveNumbers their choices.
	StepFilter  string
	WaveFilter  int
	Steps       []campaign.Step
	WaveNumbers []int
	// Next is the link to the next page of devices; empty on the last.
	Next string
	// Paged says the table is not on its first page.
	Paged bool
	// CanStart, ... say which actions the campaign's state allows.
	CanStart, CanPause, CanResume, CanAbort, CanRollback bool
	// RollbackTo are the releases the committed devices may go back to.
	RollbackTo []ReleaseView
	// Fetched sets the bytes the devices say they fetched against a full
	// download of the image by each device; empty when none said.
	Fetched string
}

// PageTitle names the page after the campaign.
func (p CampaignPage) PageTitle() string { return "Campaign " + p.Label() }

// WaveView is one wave's progress.
type WaveView struct {
	campaign.Wave
	Bar     StackedBar
	Summary string
}

// CampaignDevice is a row of a campaign's device table.
type CampaignDevice struct {
	campaign.Device
	Tone string
	// Why says why it failed, rolled back or timed out.
	Why string
	// Fetched sets the bytes the device says it fetched against the
	// image's size; "—" when it said nothing.
	Fetched string
}

// fetchedText sets the bytes a campaign's devices say they fetched against
// a full download of the image (size bytes, 0 when unknown) by each of
// them (adaptive updates fetch only the blocks a device lacks); empty when
// they said nothing.
func fetchedText(fetched, size int64, devices int) string {
	if fetched <= 0 {
		return ""
	}
	s := "Devices say they fetched " + sizeText(fetched) + " in all"
	if size > 0 && devices > 0 {
		s += fmt.Sprintf(": %.1f %% of a full download by each of its %d devices (%s each)",
			100*float64(fetched)/float64(size*int64(devices)), devices, sizeText(size))
	}
	return s
}

// deviceFetchedText sets the bytes a device says it fetched against the
// image's size (0 when unknown); "—" when it said nothing.
func deviceFetchedText(fetched, size int64) string {
	if fetched <= 0 {
		return "—"
	}
	if size <= 0 {
		return sizeText(fetched)
	}
	return fmt.Sprintf("%s (%.1f %% of the image)", sizeText(fetched), 100*float64(fetched)/float64(size))
}

// StackedBar is a progress bar drawn as SVG rectangles on a 0-1000 wide
// view box: the template writes their coordinates, so no style is needed.
type StackedBar struct {
	Segments []Segment
	// Label describes the bar for screen readers.
	Label string
}

// Segment is one coloured part of a StackedBar.
type Segment struct {
	X, W  int
	Class string
	Title string
}

// progressBar draws committed, failed and in-flight devices of a total.
func progressBar(c campaign.Counts, total int, label string) StackedBar {
	b := StackedBar{Label: fmt.Sprintf("%s: %d of %d committed, %d failed, %d in flight", label, c.Committed, total, c.Failures(), c.InFlight())}
	if total <= 0 {
		return b
	}
	x := 0
	for _, part := range []struct {
		n            int
		class, title string
	}{{c.Committed, "committed", "committed"}, {c.Failures(), "failed", "failed, rolled back or timed out"}, {c.InFlight(), "inflight", "in flight"}} {
		if part.n <= 0 {
			continue
		}
		w := part.n * 1000 / total
		if x+w > 1000 {
			w = 1000 - x
		}
		b.Segments = append(b.Segments, Segment{X: x, W: max(w, 4), Class: part.class, Title: fmt.Sprintf("%d %s", part.n, part.title)})
		x += w
	}
	return b
}

func stepTone(s campaign.Step) string {
	switch s {
	case campaign.StepCommitted:
		return "ok"
	case campaign.StepFailed, campaign.StepRolledBack, campaign.StepTimedOut:
		return "bad"
	case campaign.StepPending:
		return "muted"
	}
	return "warn"
}

func (f FirmwarePages) loadCampaign(r *http.Request, p auth.Principal) (any, error) {
	c, err := f.Campaigns.Get(r.PathValue("id"))
	if errors.Is(err, campaign.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	rs, err := f.releases(p)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{}
	var size int64 // the image's, 0 when unknown
	for _, rel := range rs {
		labels[rel.ID] = rel.Label()
		if rel.ID == c.Definition.Release && rel.Manifest != nil {
			size = rel.Manifest.Size
		}
	}
	out := CampaignPage{CampaignView: campaignView(*c, labels), Steps: allSteps(), Fetched: fetchedText(c.ClaimedFetchedBytes, size, c.Total)}
	out.Bar = progressBar(c.Counts, c.Total, "All waves")
	for _, w := range c.Waves {
		label := fmt.Sprintf("Wave %d", w.Number)
		wv := WaveView{Wave: w, Bar: progressBar(w.Counts, w.Size, label),
			Summary: fmt.Sprintf("%d of %d committed (%d needed), %d failed (%d allowed), %d in flight, %d waiting",
				w.Counts.Committed, w.Size, w.Need, w.Counts.Failures(), w.MaxFailures, w.Counts.InFlight(), w.Counts.Pending)}
		out.Waves = append(out.Waves, wv)
		out.WaveNumbers = append(out.WaveNumbers, w.Number)
	}
	out.Facts = campaignFacts(out.CampaignView)

	q := r.URL.Query()
	filter := campaign.DeviceFilter{Step: campaign.Step(q.Get("step")), After: q.Get("after"), Limit: campaignDevicesShown}
	if filter.Step != "" && !slices.Contains(out.Steps, filter.Step) {
		return nil, badRequestf("step must be one of the device steps, e.g. committed")
	}
	if s := q.Get("wave"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > len(c.Waves) {
			return nil, badRequestf("wave must be a wave number from 1 to %d", len(c.Waves))
		}
		filter.Wave = n
	}
	devs, next, err := f.Campaigns.Devices(c.ID, filter)
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		row := CampaignDevice{Device: d, Tone: stepTone(d.Step), Fetched: deviceFetchedText(d.ClaimedFetchedBytes, size)}
		if d.Reason != 0 {
			row.Why = d.Reason.Description()
		}
		out.Devices = append(out.Devices, row)
	}
	out.StepFilter, out.WaveFilter, out.Paged = string(filter.Step), filter.Wave, filter.After != ""
	if next != "" {
		wave := ""
		if filter.Wave > 0 {
			wave = strconv.Itoa(filter.Wave)
		}
		out.Next = pageLink("/campaigns/"+url.PathEscape(c.ID), "step", string(filter.Step), "wave", wave, "after", next)
	}

	switch c.State {
	case campaign.StateDraft:
		out.CanStart, out.CanAbort = true, true
	case campaign.StateScheduled, campaign.StateRunning:
		out.CanPause, out.CanAbort = true, true
	case campaign.StatePaused:
		out.CanResume, out.CanAbort = true, true
	}
	if c.Counts.Committed > 0 {
		for _, rel := range rs {
			if rel.Offerable && rel.ID != c.Definition.Release {
				out.RollbackTo = append(out.RollbackTo, rel)
			}
		}
		out.CanRollback = len(out.RollbackTo) > 0
	}
	return out, nil
}

func allSteps() []campaign.Step {
	return []campaign.Step{campaign.StepPending, campaign.StepAnnounced, campaign.StepDownloading, campaign.StepVerifying,
		campaign.StepInstalling, campaign.StepSwitching, campaign.StepHealth, campaign.StepCommitted, campaign.StepFailed,
		campaign.StepRolledBack, campaign.StepTimedOut}
}

// campaignFacts describes a campaign's definition and history for people.
func campaignFacts(c CampaignView) [][2]string {
	d := c.Definition
	facts := [][2]string{{"Campaign ID", c.ID}, {"Release", c.Release + " (" + d.Release + ")"}}
	var sel []string
	if d.Targets.Group != "" {
		sel = append(sel, "group "+d.Targets.Group)
	}
	if d.Targets.Model != "" {
		sel = append(sel, "model "+d.Targets.Model)
	}
	if len(d.Targets.Tags) > 0 {
		sel = append(sel, "tags "+strings.Join(d.Targets.Tags, ", "))
	}
	if n := len(d.Targets.DeviceIDs); n > 0 {
		sel = append(sel, mustPlural(n, "listed device"))
	}
	if d.RollbackOf != "" {
		sel = append(sel, "the devices that committed "+d.RollbackOf)
	}
	facts = append(facts, [2]string{"Devices", fmt.Sprintf("%d: %s", c.Total, strings.Join(sel, "; "))})
	if len(d.Waves.Sizes) > 0 {
		var s []string
		for _, n := range d.Waves.Sizes {
			s = append(s, strconv.Itoa(n))
		}
		facts = append(facts, [2]string{"Wave sizes", strings.Join(s, ", ") + " (the last repeats)"})
	} else {
		facts = append(facts, [2]string{"Waves", fmt.Sprintf("canary of %d, then ×%s", max(d.Waves.Canary, 1), strconv.FormatFloat(d.Waves.Growth, 'g', 4, 64))})
	}
	onFailure := d.OnFailure
	if onFailure == "" {
		onFailure = campaign.ActionPause
	}
	facts = append(facts,
		[2]string{"To open the next wave", percentText(d.SuccessThreshold) + " of a wave committed"},
		[2]string{"Failures allowed per wave", percentText(d.FailureThreshold) + "; then the campaign " + map[campaign.Action]string{campaign.ActionPause: "pauses", campaign.ActionAbort: "aborts"}[onFailure]},
		[2]string{"Device timeout", time.Duration(d.DeviceTimeout).String()},
	)
	if d.Retries > 0 {
		facts = append(facts, [2]string{"Retries of silent devices", strconv.Itoa(d.Retries)})
	}
	if d.MaxInFlight > 0 {
		facts = append(facts, [2]string{"Most devices in flight", strconv.Itoa(d.MaxInFlight)})
	}
	for _, w := range d.Windows {
		days := "every day"
		if len(w.Days) > 0 {
			days = strings.Join(w.Days, ", ")
		}
		loc := w.Location
		if loc == "" {
			loc = "UTC"
		}
		facts = append(facts, [2]string{"Maintenance window", fmt.Sprintf("%s %s–%s %s", days, w.Start, w.End, loc)})
	}
	facts = append(facts, [2]string{"Created", when(c.Created) + " by " + c.CreatedBy})
	if !c.StartAt.IsZero() {
		facts = append(facts, [2]string{"Starts at", when(c.StartAt)})
	}
	if !c.Started.IsZero() {
		facts = append(facts, [2]string{"Started", when(c.Started)})
	}
	if !c.Finished.IsZero() {
		facts = append(facts, [2]string{"Finished", when(c.Finished)})
	}
	if c.ChangedBy != "" {
		why := c.Why
		if why == "" {
			why = "—"
		}
		facts = append(facts, [2]string{"Last change", fmt.Sprintf("%s by %s: %s", when(c.Changed), c.ChangedBy, why)})
	}
	return facts
}

// campaignCards are the overview's tiles: the progress of the campaigns
// that are running, paused or scheduled, newest first.
func (f FirmwarePages) campaignCards(_ *http.Request, p auth.Principal) ([]Card, error) {
	if !p.Can(auth.PermFirmwareRead) {
		return nil, nil
	}
	cs, err := f.Campaigns.List()
	if err != nil {
		return nil, err
	}
	newestFirst(cs)
	var cards []Card
	active := 0
	for _, c := range cs {
		switch c.State {
		case campaign.StateRunning, campaign.StatePaused, campaign.StateScheduled:
		default:
			continue
		}
		active++
		if len(cards) == activeCardsShown {
			continue
		}
		v := campaignView(c, nil)
		tone := v.Tone
		if c.Counts.Failures() > 0 {
			tone = "warn"
		}
		detail := fmt.Sprintf("%s · wave %d · %d failed", c.State, c.Wave, c.Counts.Failures())
		cards = append(cards, Card{Title: "Campaign " + v.Label(), Value: strconv.Itoa(pct(v.Done, c.Total)) + "%", Detail: detail,
			Link: "/campaigns/" + url.PathEscape(c.ID), Tone: tone, Done: v.Done, Total: c.Total})
	}
	if active == 0 {
		return []Card{{Title: "Campaigns", Value: "0", Detail: "none running", Link: "/campaigns", Tone: "muted"}}, nil
	}
	if active > len(cards) {
		cards = append(cards, Card{Title: "Campaigns", Value: strconv.Itoa(active), Detail: "running, paused or scheduled", Link: "/campaigns"})
	}
	return cards, nil
}

// FirmwareHistory is the device page's firmware section.
type FirmwareHistory struct {
	// Running is the version the device last said it runs.
	Running string
	Entries []FirmwareEntry
	// Examined counts the campaigns looked into; Skipped those beyond
	// historyCampaigns.
	Examined, Skipped int
	// Page links the pages of Entries (historyShown each).
	Page HistoryPage
}

// FirmwareEntry is the device's part in one campaign.
type FirmwareEntry struct {
	Campaign CampaignView
	Device   campaign.Device
	Tone     string
	Why      string
}

func (f FirmwarePages) loadHistory(r *http.Request, _ auth.Principal, d *inventory.Device) (any, error) {
	n, err := pageNumber(r, "firmware")
	if err != nil {
		return nil, err
	}
	cs, err := f.Campaigns.List()
	if err != nil {
		return nil, err
	}
	newestFirst(cs)
	out := FirmwareHistory{Running: d.Firmware}
	if len(cs) > historyCampaigns {
		out.Skipped = len(cs) - historyCampaigns
		cs = cs[:historyCampaigns]
	}
	out.Examined = len(cs)
	var labels map[string]string
	for _, c := range cs {
		dev, err := f.Campaigns.Device(c.ID, d.ID)
		if errors.Is(err, campaign.ErrNotTarget) || errors.Is(err, campaign.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if labels == nil {
			if labels, err = f.releaseLabels(); err != nil {
				return nil, err
			}
		}
		e := FirmwareEntry{Campaign: campaignView(c, labels), Device: *dev, Tone: stepTone(dev.Step)}
		if dev.Reason != 0 {
			e.Why = dev.Reason.Description()
		}
		out.Entries = append(out.Entries, e)
	}
	more := len(out.Entries) > n*historyShown
	from := min(len(out.Entries), (n-1)*historyShown)
	out.Entries = out.Entries[from:min(len(out.Entries), from+historyShown)]
	out.Page = numberedPage(r, d.ID, "firmware", "firmware-history", n, more)
	return out, nil
}
