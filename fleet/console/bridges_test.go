package console_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/console"
)

// fakeBridges is a fleet's bridges and what it saw of each.
type fakeBridges struct {
	list   []*bridge.Bridge
	health map[string]bridge.Health
}

func (f fakeBridges) List(context.Context) ([]*bridge.Bridge, error) { return f.list, nil }
func (f fakeBridges) Health(site string) bridge.Health               { return f.health[site] }

// TestBridgesPage: the bridges page lists each site's bridge with its
// newest credential's serial, expiry and state (active, revoked), whether
// it is connected, when it was last seen and the messages accepted and
// refused by reason, in a table with column and row headers; a fleet
// without bridges says so; the navigation links it for bridges.read.
func TestBridgesPage(t *testing.T) {
	start := time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)
	fb := &fakeBridges{
		list: []*bridge.Bridge{
			{Site: "plant1", Certs: []bridge.Cert{{Serial: "0a1b2c", NotBefore: start.Add(-time.Hour), NotAfter: start.Add(90 * 24 * time.Hour)}}},
			{Site: "plant2", Certs: []bridge.Cert{{Serial: "3d4e5f", NotBefore: start.Add(-time.Hour), NotAfter: start.Add(24 * time.Hour), Revoked: start.Add(-time.Minute), Reason: 1}}},
		},
		health: map[string]bridge.Health{
			"plant1": {Connected: true, LastSeen: start.Add(-2 * time.Minute), Accepted: 1234,
				Refused: map[string]uint64{bridge.RefusedReplay: 3, bridge.RefusedSignature: 12, bridge.RefusedSite: 0}},
			"plant2": {Refused: map[string]uint64{bridge.RefusedSite: 0}},
		},
	}
	f := newFixture(t, func(c *console.Config) {
		*c = c.With(console.BridgePages{Bridges: fb, Now: c.Now}.Extension())
	})
	viewer := f.login("vera", auth.RoleViewer)

	page := body(t, viewer.get("/bridges"), http.StatusOK)
	mustContain(t, page, `<th scope="col">Site</th>`, `<th scope="col">Certificate serial</th>`, `<th scope="col">Refused by reason</th>`,
		`<th scope="row" class="mono">plant1</th>`, "0a1b2c", "2026-05-30 09:30 UTC", `<span class="badge ok">active</span>`, "1,234",
		"<li>replay: 3</li><li>signature: 12</li>",
		`<th scope="row" class="mono">plant2</th>`, "3d4e5f", `<span class="badge bad">revoked</span>`, "never", `href="/bridges"`)
	mustNotContain(t, page, "site: 0")

	fb.list = nil
	mustContain(t, body(t, viewer.get("/bridges"), http.StatusOK), "No bridge yet")
}
