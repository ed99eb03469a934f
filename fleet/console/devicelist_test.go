package console_test

import (
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

var (
	rowRE  = regexp.MustCompile(`<a class="mono" href="/devices/([0-9a-f]{64})">`)
	nextRE = regexp.MustCompile(`<a href="([^"]+)" rel="next">`)
)

// listed returns the device IDs a list page shows, in order.
func listed(page string) []string {
	var ids []string
	for _, m := range rowRE.FindAllStringSubmatch(page, -1) {
		ids = append(ids, m[1])
	}
	return ids
}

// follow pages from path through the next links and returns every device
// listed, failing on a repeat.
func follow(t *testing.T, s *session, path string) []string {
	t.Helper()
	var ids []string
	seen := map[string]bool{}
	for pages := 0; path != ""; pages++ {
		if pages > 50 {
			t.Fatalf("paging from %s does not end", path)
		}
		page := body(t, s.get(path), http.StatusOK)
		for _, id := range listed(page) {
			if seen[id] {
				t.Fatalf("device listed twice: %s", id)
			}
			seen[id] = true
			ids = append(ids, id)
		}
		path = ""
		if m := nextRE.FindStringSubmatch(page); m != nil {
			path = html.UnescapeString(m[1])
		}
	}
	return ids
}

func ids(ns ...int) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = devID(n)
	}
	return out
}

// TestDeviceListTotalsAndPlurals: the list says how many devices match
// (the whole fleet, a filter) in words that agree with the number.
func TestDeviceListTotalsAndPlurals(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	f.addDevice(1, inventory.StateQuarantined, nil)
	page := body(t, op.get("/devices"), http.StatusOK)
	mustContain(t, page, "1 device in the fleet")
	mustNotContain(t, page, "1 devices")
	for i := 2; i <= 120; i++ {
		f.addDevice(i, inventory.StateActive, nil)
	}
	mustContain(t, body(t, op.get("/devices"), http.StatusOK), "Devices 1–50 of 120", "120 devices in the fleet")
	page = body(t, op.get("/devices?state=quarantined"), http.StatusOK)
	mustContain(t, page, "1 device matches", "120 devices in the fleet")
	mustNotContain(t, page, "1 devices")
	mustContain(t, body(t, op.get("/devices?state=active"), http.StatusOK), "119 devices match", "Devices 1–50 of 119")
	// The overview too.
	page = body(t, op.get("/"), http.StatusOK)
	mustContain(t, page, "120 devices")
	f2 := newFixture(t, nil)
	ada := f2.login("ada", auth.RoleAdmin)
	f2.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.CertExpiry = f2.clock.Now().Add(time.Hour) })
	page = body(t, ada.get("/"), http.StatusOK)
	mustContain(t, page, "1 device ·", "1 active device; the soonest:")
	mustNotContain(t, page, "1 devices", "1 active devices")
}

// TestDeviceListSorting: each sortable column lists every device once,
// in its order and the reverse, across pages; the headers link to the
// sorts and mark the current one for assistive technology.
func TestDeviceListSorting(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	now := f.clock.Now()
	var bySeen []int
	for i := range 70 {
		f.addDevice(i, inventory.StateActive, func(d *inventory.Device) {
			d.LastSeen = now.Add(-time.Duration((i*37)%70) * time.Minute)
			d.Firmware = []string{"1.4.2", "1.5.0", "2.0.0"}[i%3]
		})
	}
	// Newest first: (i*37)%70 ascending.
	for k := range 70 {
		for i := range 70 {
			if (i*37)%70 == k {
				bySeen = append(bySeen, i)
			}
		}
	}
	if got := follow(t, op, "/devices?sort=last_seen&dir=desc"); !slices.Equal(got, ids(bySeen...)) {
		t.Fatalf("by last seen, newest first:\n got %v\nwant %v", got, ids(bySeen...))
	}
	slices.Reverse(bySeen)
	if got := follow(t, op, "/devices?sort=last_seen"); !slices.Equal(got, ids(bySeen...)) {
		t.Fatalf("by last seen, oldest first:\n got %v\nwant %v", got, ids(bySeen...))
	}
	var byFW []int
	for _, r := range []int{0, 1, 2} {
		for i := r; i < 70; i += 3 {
			byFW = append(byFW, i)
		}
	}
	if got := follow(t, op, "/devices?sort=firmware"); !slices.Equal(got, ids(byFW...)) {
		t.Fatalf("by firmware:\n got %v\nwant %v", got, ids(byFW...))
	}
	page := body(t, op.get("/devices?sort=firmware&state=active"), http.StatusOK)
	mustContain(t, page, `aria-sort="ascending"`, `href="/devices?dir=desc&amp;sort=firmware&amp;state=active"`,
		`href="/devices?dir=desc&amp;sort=last_seen&amp;state=active"`)
	body(t, op.get("/devices?sort=colour"), http.StatusBadRequest)
	body(t, op.get("/devices?sort=firmware&after=%21%21"), http.StatusBadRequest)
}

// TestDeviceListFirmwareAndConnected: the list shows each device's
// firmware and whether the broker holds a session for it now (not the
// inventory's last word), and filters by both.
func TestDeviceListFirmwareAndConnected(t *testing.T) {
	live := map[string]bool{devID(2): true, devID(4): true}
	f := newFixture(t, func(c *console.Config) { c.Connected = func(id string) bool { return live[id] } })
	op := f.login("olga", auth.RoleOperator)
	for i := 1; i <= 5; i++ {
		f.addDevice(i, inventory.StateActive, func(d *inventory.Device) {
			d.Firmware = []string{"1.4.2", "2.0.0"}[i%2]
			d.Connected = i == 1 // stale: the broker says otherwise
		})
	}
	page := body(t, op.get("/devices"), http.StatusOK)
	mustContain(t, page, "<th scope=\"col\"", "Firmware", "Connected", "1.4.2", "2.0.0")
	if got := follow(t, op, "/devices?connected=yes"); !slices.Equal(got, ids(2, 4)) {
		t.Errorf("connected: %v", got)
	}
	if got := follow(t, op, "/devices?connected=no"); !slices.Equal(got, ids(1, 3, 5)) {
		t.Errorf("not connected: %v", got)
	}
	if got := follow(t, op, "/devices?firmware=2.0.0"); !slices.Equal(got, ids(1, 3, 5)) {
		t.Errorf("firmware 2.0.0: %v", got)
	}
	if got := follow(t, op, "/devices?firmware=2.0.0&connected=no&sort=firmware"); !slices.Equal(got, ids(1, 3, 5)) {
		t.Errorf("firmware 2.0.0, not connected: %v", got)
	}
	body(t, op.get("/devices?connected=maybe"), http.StatusBadRequest)
}

// agoOutsideTime finds relative times not inside a <time> element.
var relText = regexp.MustCompile(`>([^<>]*(?:\bago|just now|\bin \d+ (?:min|h|days)|in under a minute))[^<>]*<`)

// TestRelativeTimesCarryAbsolute: wherever a page says "5 min ago", the
// words are a <time> element whose datetime and title hold the absolute
// UTC time.
func TestRelativeTimesCarryAbsolute(t *testing.T) {
	f := newFixture(t, nil)
	admin := f.login("ada", auth.RoleAdmin)
	now := f.clock.Now()
	f.addDevice(1, inventory.StateActive, func(d *inventory.Device) {
		d.LastSeen = now.Add(-5 * time.Minute)
		d.Attestation, d.LastAttested = "pass", now.Add(-3*time.Hour)
		d.CertExpiry = now.Add(3 * time.Hour)
	})
	f.secrets[devID(1)] = sampleSecrets(now)
	for _, path := range []string{"/", "/devices", "/devices/" + devID(1), "/settings", "/enrollment"} {
		page := body(t, admin.get(path), http.StatusOK)
		for _, m := range relText.FindAllStringSubmatchIndex(page, -1) {
			before := page[:m[0]+1]
			open := strings.LastIndex(before, "<")
			if !strings.HasPrefix(before[open:], "<time ") {
				t.Errorf("%s: relative time %q outside a <time> element: %s", path, page[m[2]:m[3]], before[open:])
			}
		}
	}
	page := body(t, admin.get("/devices"), http.StatusOK)
	mustContain(t, page, `<time datetime="2026-03-01T09:25:00Z" title="2026-03-01T09:25:00Z">5 min ago</time>`,
		`<time datetime="2026-03-01T12:30:00Z" title="2026-03-01T12:30:00Z">in 3 h</time>`)
}

// TestBulkTagSelection: an operator ticks two devices and tags them: the
// console runs the API's bulk route, which tags exactly those two.
func TestBulkTagSelection(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	for i := 1; i <= 4; i++ {
		f.addDevice(i, inventory.StateActive, nil)
	}
	page := body(t, op.get("/devices"), http.StatusOK)
	mustContain(t, page, `type="checkbox" name="id" value="`+devID(1)+`"`, `formaction="/devices/bulk/tag"`,
		`formaction="/devices/bulk/quarantine"`, `formaction="/devices/bulk/attest"`, `formaction="/devices/bulk/rotate"`)
	w := op.post("/devices/bulk/tag", url.Values{"scope": {"selected"}, "id": {devID(2), devID(3)}, "add_tags": {"canary, site:7"}})
	res := body(t, w, http.StatusOK)
	mustContain(t, res, "Tagged 2 devices")
	for i := 1; i <= 4; i++ {
		tagged := slices.Contains(f.device(devID(i)).Tags, "canary") && slices.Contains(f.device(devID(i)).Tags, "site:7")
		if tagged != (i == 2 || i == 3) {
			t.Errorf("device %d tags %v", i, f.device(devID(i)).Tags)
		}
	}
	if got := follow(t, op, "/devices?tag=canary"); !slices.Equal(got, ids(2, 3)) {
		t.Errorf("tag filter: %v", got)
	}
	// Nothing selected: the form says so.
	mustContain(t, body(t, op.post("/devices/bulk/tag", url.Values{"scope": {"selected"}, "add_tags": {"x"}}), http.StatusBadRequest), "tick")
	// A viewer gets neither the boxes nor the buttons, and the API's 403.
	vera := f.login("vera", auth.RoleViewer)
	page = body(t, vera.get("/devices"), http.StatusOK)
	mustNotContain(t, page, `type="checkbox"`, `formaction=`)
	body(t, vera.post("/devices/bulk/tag", url.Values{"scope": {"selected"}, "id": {devID(1)}, "add_tags": {"x"}}), http.StatusForbidden)
}

// TestBulkQuarantineByFilter: quarantine every device a search matches,
// with the justification typed in; without one nothing happens.
func TestBulkQuarantineByFilter(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	for i := 1; i <= 6; i++ {
		f.addDevice(i, inventory.StateActive, func(d *inventory.Device) { d.Owner = []string{"plant-a", "plant-b"}[i%2] })
	}
	form := url.Values{"scope": {"filter"}, "owner": {"plant-b"}}
	mustContain(t, body(t, op.post("/devices/bulk/quarantine", form), http.StatusBadRequest), "justification")
	form.Set("justification", "plant B reported tampered enclosures")
	mustContain(t, body(t, op.post("/devices/bulk/quarantine", form), http.StatusOK), "Quarantined 3 devices")
	for i := 1; i <= 6; i++ {
		d := f.device(devID(i))
		want := inventory.StateActive
		if i%2 == 1 {
			want = inventory.StateQuarantined
		}
		if d.State != want {
			t.Errorf("device %d: %s, want %s", i, d.State, want)
		}
		if want == inventory.StateQuarantined && (len(d.Quarantine) != 1 || !strings.Contains(d.Quarantine[0].Reason, "plant B reported tampered enclosures")) {
			t.Errorf("device %d causes %+v", i, d.Quarantine)
		}
	}
}

// TestBulkRotate: rotating the ticked devices starts one forced rotation
// job over the active ones among them; rotating the whole fleet's search
// is one job over every active device (the rotation service's own
// selector), whatever its size.
func TestBulkRotate(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	for i := 1; i <= 5; i++ {
		state := inventory.StateActive
		if i == 3 {
			state = inventory.StatePending
		}
		f.addDevice(i, state, nil)
	}
	page := body(t, op.post("/devices/bulk/rotate", url.Values{"scope": {"selected"}, "id": {devID(1), devID(2), devID(3)}}), http.StatusOK)
	mustContain(t, page, "Rotation started", "Skipped "+devID(3)[:12], "only active devices rotate")
	m := regexp.MustCompile(`<dd>(rot_[0-9a-f]+)</dd>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no rotation job named:\n%s", page)
	}
	job := apiJSON[struct {
		Devices []struct {
			ID string `json:"id"`
		} `json:"devices"`
	}](t, op, "/api/v1/rotations/"+m[1])
	var got []string
	for _, d := range job.Devices {
		got = append(got, d.ID)
	}
	if !slices.Equal(got, ids(1, 2)) {
		t.Errorf("the job rotates %v, want devices 1 and 2", got)
	}
	page = body(t, op.post("/devices/bulk/rotate", url.Values{"scope": {"filter"}, "justification": {"yearly rotation"}}), http.StatusOK)
	mustContain(t, page, "Rotation started", "<dt>Devices</dt><dd>4</dd>")
}

// apiJSON reads an API answer as the browser's session.
func apiJSON[T any](t *testing.T, s *session, path string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body(t, s.get(path), http.StatusOK)), &v); err != nil {
		t.Fatal(err)
	}
	return v
}
