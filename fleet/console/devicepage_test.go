package console_test

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

var anchorRE = regexp.MustCompile(`<a href="#([a-z0-9-]+)"`)

// TestDevicePageContents: the top of the device page lists its sections
// as links to anchors that exist, so each is one step away without
// scrolling (and without script).
func TestDevicePageContents(t *testing.T) {
	f := newFixture(t, nil)
	admin := f.login("ada", auth.RoleAdmin)
	d := f.addDevice(1, inventory.StateActive, nil)
	f.secrets[d.ID] = sampleSecrets(f.clock.Now())
	page := body(t, admin.get("/devices/"+d.ID), http.StatusOK)
	toc := page[strings.Index(page, `<nav class="toc"`):]
	toc = toc[:strings.Index(toc, "</nav>")]
	var got []string
	for _, m := range anchorRE.FindAllStringSubmatch(toc, -1) {
		got = append(got, m[1])
		if !strings.Contains(page, `id="`+m[1]+`"`) {
			t.Errorf("the contents link to #%s, which the page does not have", m[1])
		}
	}
	want := []string{"identity", "certificate", "actions", "attestations", "secrets", "events"}
	for _, w := range want {
		if !strings.Contains(strings.Join(got, " "), w) {
			t.Errorf("the contents lack #%s: %v", w, got)
		}
	}
	if i, j := strings.Index(page, `<nav class="toc"`), strings.Index(page, `id="identity"`); i < 0 || i > j {
		t.Errorf("the contents are not at the top")
	}
}

// TestQuarantineReasonBanner: a quarantined device's page says at the top
// why, with each cause inventory.Quarantine recorded (source, reason,
// policy, time).
func TestQuarantineReasonBanner(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	d := f.addDevice(1, inventory.StateActive, nil)
	if _, _, err := f.inv.Quarantine(t.Context(), d.ID, inventory.Cause{Source: inventory.CauseAttestation, Policy: "gw-base",
		Reason: "PCR 4 differs from policy gw-base", Time: f.clock.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.inv.Quarantine(t.Context(), d.ID, inventory.Cause{Source: inventory.CauseOperator, Reason: "quarantined by olga: <odd> traffic"}); err != nil {
		t.Fatal(err)
	}
	page := body(t, op.get("/devices/"+d.ID), http.StatusOK)
	i := strings.Index(page, `class="banner quarantine"`)
	if i < 0 || i > strings.Index(page, `id="identity"`) {
		t.Fatalf("no quarantine banner above the identity:\n%s", page)
	}
	banner := page[i : i+strings.Index(page[i:], "</section>")]
	mustContain(t, banner, "Quarantined", "attestation", "PCR 4 differs from policy gw-base", `href="/policies/gw-base"`,
		"operator", "quarantined by olga: &lt;odd&gt; traffic", `<time datetime="2026-03-01T08:30:00Z"`)
	// An active device has none.
	other := f.addDevice(2, inventory.StateActive, nil)
	mustNotContain(t, body(t, op.get("/devices/"+other.ID), http.StatusOK), `class="banner quarantine"`)
}

var pageLinkRE = regexp.MustCompile(`<a href="(/devices/[0-9a-f]+\?[^"]*)" rel="next"[^>]*>`)

// historyPages follows one history section's "older" links from the
// device page and returns each page's entries (matched by entryRE).
func historyPages(t *testing.T, s *session, path, anchor string, entryRE *regexp.Regexp) [][]string {
	t.Helper()
	var pages [][]string
	for n := 0; path != ""; n++ {
		if n > 20 {
			t.Fatalf("paging %s does not end", anchor)
		}
		req, _, _ := strings.Cut(path, "#") // browsers keep the fragment to themselves
		page := body(t, s.get(req), http.StatusOK)
		start := strings.Index(page, `id="`+anchor+`"`)
		if start < 0 {
			t.Fatalf("no section #%s on %s", anchor, path)
		}
		sec := page[start:]
		sec = sec[:strings.Index(sec, "</section>")]
		var entries []string
		for _, m := range entryRE.FindAllStringSubmatch(sec, -1) {
			entries = append(entries, m[1])
		}
		pages = append(pages, entries)
		path = ""
		if m := pageLinkRE.FindStringSubmatch(sec); m != nil {
			path = html.UnescapeString(m[1])
			if !strings.HasSuffix(path, "#"+anchor) {
				t.Errorf("the older-entries link %q does not return to #%s", path, anchor)
			}
		}
	}
	return pages
}

// TestDeviceHistoryPaging: the attestation history and the lifecycle
// events show 20 entries and page back through the rest, newest first,
// each entry once.
func TestDeviceHistoryPaging(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	d := f.addDevice(1, inventory.StateActive, nil)
	start := f.clock.Now().Add(-10 * time.Hour)
	for i := range 47 {
		if err := f.inv.AddEvent(t.Context(), inventory.Event{DeviceID: d.ID, Time: start.Add(time.Duration(i) * time.Minute), Kind: "note", Detail: fmt.Sprintf("event-%02d", i)}); err != nil {
			t.Fatal(err)
		}
		if err := f.hist.Add(t.Context(), &attest.Record{DeviceID: d.ID, Time: start.Add(time.Duration(i) * time.Minute), Result: "pass", Message: fmt.Sprintf("verdict-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		anchor string
		re     *regexp.Regexp
	}{{"events", regexp.MustCompile(`(event-\d\d)`)}, {"attestations", regexp.MustCompile(`(verdict-\d\d)`)}} {
		pages := historyPages(t, op, "/devices/"+d.ID, c.anchor, c.re)
		var sizes []int
		var all []string
		for _, p := range pages {
			sizes = append(sizes, len(p))
			all = append(all, p...)
		}
		if fmt.Sprint(sizes) != "[20 20 7]" {
			t.Errorf("%s: pages of %v, want [20 20 7]", c.anchor, sizes)
		}
		for i, e := range all {
			if want := fmt.Sprintf("%s-%02d", strings.Split(e, "-")[0], 46-i); e != want {
				t.Errorf("%s: entry %d is %s, want %s", c.anchor, i, e, want)
				break
			}
		}
	}
	body(t, op.get("/devices/"+d.ID+"?events=-1"), http.StatusBadRequest)
	body(t, op.get("/devices/"+d.ID+"?attestations=x"), http.StatusBadRequest)
}

// TestDeviceSectionsPaging: the firmware history (one entry per campaign)
// and the audit trail page like the built-in histories: 20 entries, then
// the older ones, each once.
func TestDeviceSectionsPaging(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{noApprovals: true})
	admin := ff.login("ada", auth.RoleAdmin)
	d := ff.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.Group = "g" })
	rel := ff.approved("rita", "ravi", "2.0.0", 2)
	for i := range 23 {
		if _, err := ff.campaigns.Create(context.Background(), campaign.Definition{Name: fmt.Sprintf("camp-%02d", i), Release: rel.ID,
			Targets: campaign.Selector{Group: "g"}}, "ada", "paging test"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 27 {
		redirect(t, admin.post("/devices/"+d.ID+"/edit", url.Values{"owner": {fmt.Sprint("owner-", i)}}))
	}
	count := func(pages [][]string) (sizes []int, all []string) {
		seen := map[string]bool{}
		for _, p := range pages {
			sizes = append(sizes, len(p))
			for _, e := range p {
				if seen[e] {
					t.Errorf("entry %s listed twice", e)
				}
				seen[e] = true
				all = append(all, e)
			}
		}
		return sizes, all
	}
	sizes, _ := count(historyPages(t, admin, "/devices/"+d.ID, "firmware-history", regexp.MustCompile(`>(camp-\d\d)</a>`)))
	if fmt.Sprint(sizes) != "[20 3]" {
		t.Errorf("firmware history pages of %v, want [20 3]", sizes)
	}
	sizes, all := count(historyPages(t, admin, "/devices/"+d.ID, "audit-trail", regexp.MustCompile(`<td class="mono" data-label="#">(\d+)</td>`)))
	if len(sizes) < 2 || sizes[0] != 20 || len(all) < 27 {
		t.Errorf("audit trail pages of %v (%d entries), want 20 first and at least 27 in all", sizes, len(all))
	}
}
