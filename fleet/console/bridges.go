package console

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/bridge"
)

// Bridges lists the OT bridges and what the fleet saw of each;
// *bridge.Service implements it.
type Bridges interface {
	List(ctx context.Context) ([]*bridge.Bridge, error)
	Health(site string) bridge.Health
}

var _ Bridges = (*bridge.Service)(nil)

// BridgePages is the OT bridges page (bridges.read): for each plant
// broker's site, its newest credential (serial, expiry, active, revoked or
// expired), whether it is connected now, when it last carried a device
// message, and the messages the fleet accepted from it and refused, by
// reason, since the fleet started.
type BridgePages struct {
	// Bridges is the bridge service; nil makes an empty Extension.
	Bridges Bridges
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// BridgeRow is a site's bridge as the page shows it.
type BridgeRow struct {
	Site string
	// Cert is the site's newest credential (zero when it has none) and
	// State "active", "revoked", "expired" or "none".
	Cert   bridge.Cert
	State  string
	Health bridge.Health
	// Refused are the reasons with a refusal, in the order of the
	// reason's name.
	Refused []RefusedCount
}

// RefusedCount is how many messages a bridge had refused for a reason.
type RefusedCount struct {
	Reason string
	N      uint64
}

// Extension returns the bridges page.
func (bp BridgePages) Extension() Extension {
	if bp.Bridges == nil {
		return Extension{}
	}
	bp.Now = clockOr(bp.Now)
	return Extension{Pages: []Page{{Name: "bridges", Path: "/bridges", Nav: "Bridges", Title: "OT bridges",
		Perm: auth.PermBridgesRead, Template: source("bridges.html"), Load: bp.load}}}
}

func (bp BridgePages) load(r *http.Request, _ auth.Principal) (any, error) {
	bs, err := bp.Bridges.List(r.Context())
	if err != nil {
		return nil, err
	}
	now := bp.Now()
	rows := make([]BridgeRow, 0, len(bs))
	for _, b := range bs {
		row := BridgeRow{Site: b.Site, State: "none", Health: bp.Bridges.Health(b.Site)}
		if n := len(b.Certs); n > 0 {
			row.Cert = b.Certs[n-1]
			switch {
			case !row.Cert.Revoked.IsZero():
				row.State = "revoked"
			case !now.Before(row.Cert.NotAfter):
				row.State = "expired"
			default:
				row.State = "active"
			}
		}
		for reason, n := range row.Health.Refused {
			if n > 0 {
				row.Refused = append(row.Refused, RefusedCount{reason, n})
			}
		}
		slices.SortFunc(row.Refused, func(a, b RefusedCount) int { return cmp.Compare(a.Reason, b.Reason) })
		rows = append(rows, row)
	}
	return rows, nil
}
