package console

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// RiskScores reads devices' risk scores. *governance.Service implements
// it.
type RiskScores interface {
	// Score rates a device now, from its current inputs.
	Score(deviceID string) (*governance.Risk, error)
	// Ranking pages through the stored scores, riskiest first.
	Ranking(after string, limit int) ([]governance.Risk, string, error)
}

var _ RiskScores = (*governance.Service)(nil)

// RiskPages are the risk pages: the ranking of the stored scores (kept
// current as devices' inputs change, and by every sweep) with a "sweep
// now" button, the overview's highest-risk tile and the device page's risk breakdown
// (factors with their points and evidence).
type RiskPages struct {
	// Risk is the governance service; nil makes an empty Extension.
	Risk RiskScores
}

// Limits of the risk pages.
const (
	riskShown     = 50
	riskCardShown = 3
)

// Extension returns the risk page, the overview tile and the device
// section.
func (rp RiskPages) Extension() Extension {
	if rp.Risk == nil {
		return Extension{}
	}
	return Extension{
		Pages: []Page{{Name: "risk", Path: "/risk", Nav: "Risk", Title: "Devices by risk", Perm: auth.PermDevicesRead,
			Template: source("risk.html"), Load: rp.load, Actions: []Action{
				{Name: "risk.sweep", Path: "/risk/sweep", API: "POST /api/v1/governance/sweep", Then: "/risk",
					OK: "Swept: every device was judged and scored now."},
			}}},
		Cards: []CardFunc{rp.card},
		Sections: []Section{{Name: "risk", Title: "Risk", Perm: auth.PermDevicesRead,
			Template: source("section-risk.html"), Load: rp.device}},
	}
}

// RiskView is a device's risk as the pages show it.
type RiskView struct {
	governance.Risk
	Tone string
	// Top names the largest factors.
	Top string
}

// riskTone colours a score: 70 and above is high, 40 and above medium.
func riskTone(score int) string {
	switch {
	case score >= 70:
		return "bad"
	case score >= 40:
		return "warn"
	case score > 0:
		return ""
	}
	return "ok"
}

// riskView shows a risk with its factors largest first.
func riskView(r governance.Risk) RiskView {
	r.Factors = slices.Clone(r.Factors)
	slices.SortStableFunc(r.Factors, func(a, b governance.Factor) int { return b.Points - a.Points })
	v := RiskView{Risk: r, Tone: riskTone(r.Score)}
	var top []string
	for _, f := range r.Factors {
		if len(top) == 3 {
			break
		}
		if f.Points > 0 {
			top = append(top, fmt.Sprintf("%s (+%d)", f.Name, f.Points))
		}
	}
	v.Top = strings.Join(top, ", ")
	return v
}

// RiskPage is the risk page's data.
type RiskPage struct {
	Risks []RiskView
	// Next links to the next page; Paged says this is not the first.
	Next  string
	Paged bool
}

func (rp RiskPages) load(r *http.Request, _ auth.Principal) (any, error) {
	after := r.URL.Query().Get("after")
	if after != "" && !isDeviceID(after) {
		return nil, badRequestf("after must be a device ID")
	}
	risks, next, err := rp.Risk.Ranking(after, riskShown)
	if err != nil {
		return nil, err
	}
	out := RiskPage{Paged: after != ""}
	for _, x := range risks {
		out.Risks = append(out.Risks, riskView(x))
	}
	if next != "" {
		out.Next = pageLink("/risk", "after", next)
	}
	return out, nil
}

// card is the overview's tile of the riskiest devices.
func (rp RiskPages) card(_ *http.Request, p auth.Principal) ([]Card, error) {
	if !p.Can(auth.PermDevicesRead) {
		return nil, nil
	}
	risks, _, err := rp.Risk.Ranking("", riskCardShown)
	if err != nil {
		return nil, err
	}
	if len(risks) == 0 {
		return []Card{{Title: "Highest risk", Value: "—", Detail: "no device scored yet", Link: "/risk", Tone: "muted"}}, nil
	}
	var names []string
	for _, x := range risks {
		names = append(names, short(x.DeviceID)+" "+strconv.Itoa(x.Score))
	}
	return []Card{{Title: "Highest risk", Value: strconv.Itoa(risks[0].Score), Detail: strings.Join(names, " · "),
		Link: "/risk", Tone: riskTone(risks[0].Score)}}, nil
}

func (rp RiskPages) device(_ *http.Request, _ auth.Principal, d *inventory.Device) (any, error) {
	risk, err := rp.Risk.Score(d.ID)
	if errors.Is(err, inventory.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return riskView(*risk), nil
}
