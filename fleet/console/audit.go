package console

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// AuditLog reads the fleet's audit log. *audit.Log implements it.
type AuditLog interface {
	List(ctx context.Context, f audit.Filter) (audit.Page, error)
}

var _ AuditLog = (*audit.Log)(nil)

// AuditPages are the audit log's page (browse with filters and paging,
// verify the chain and its signed checkpoints through the API, sign a
// checkpoint, export as JSON lines) and the device page's audit trail.
type AuditPages struct {
	// Log is the audit log; nil makes an empty Extension.
	Log AuditLog
}

// Limits of the audit pages.
const (
	auditShown      = 50
	auditTrailShown = 20
)

// Extension returns the audit page and the device section.
func (a AuditPages) Extension() Extension {
	if a.Log == nil {
		return Extension{}
	}
	return Extension{
		Pages: []Page{{Name: "audit", Path: "/audit", Nav: "Audit", Title: "Audit log", Perm: auth.PermAuditRead,
			Template: source("audit.html"), Load: a.load, Actions: []Action{
				{Name: "audit.verify", Path: "/audit/verify", API: "POST /api/v1/audit/verify", Then: "/audit", Reveal: verifyReveal},
				{Name: "audit.checkpoint", Path: "/audit/checkpoint", API: "POST /api/v1/audit/checkpoint", Then: "/audit",
					OK: "Checkpoint signed: the fleet's key now vouches for every entry up to the newest."},
			}}},
		Sections: []Section{{Name: "audit-trail", Title: "Audit trail", Perm: auth.PermAuditRead,
			Template: source("section-audit.html"), Load: a.trail}},
	}
}

// verifyReveal shows what POST /api/v1/audit/verify established.
func verifyReveal(answer []byte) (Reveal, error) {
	var v struct {
		OK     bool         `json:"ok"`
		Report audit.Report `json:"report"`
	}
	if err := json.Unmarshal(answer, &v); err != nil {
		return Reveal{}, err
	}
	if !v.OK {
		return Reveal{}, errors.New("console: the verification answer is not a success")
	}
	rep := v.Report
	rv := Reveal{Heading: "Audit log verified", Back: "/audit",
		Note: "Every entry's hash and its link to the one before were recomputed, and every checkpoint's signature was checked with the fleet's key: nothing was edited, removed or reordered."}
	if rep.Entries == 0 {
		rv.Note = "The log is empty: there was nothing to verify."
	}
	rv.Facts = [][2]string{
		{"Entries verified", strconv.Itoa(rep.Entries)},
		{"From entry", strconv.FormatUint(rep.First, 10) + " to " + strconv.FormatUint(rep.Last, 10)},
		{"Newest entry's hash", rep.Head.String()},
		{"Signed checkpoints verified", strconv.Itoa(rep.Checkpoints)},
	}
	if rep.Checkpoints > 0 {
		rv.Facts = append(rv.Facts, [2]string{"Newest checkpoint", "entry " + strconv.FormatUint(rep.Checkpoint.Seq, 10) + ", signed " + when(rep.Checkpoint.Time)})
	}
	unsigned := strconv.Itoa(rep.Unsigned)
	if rep.Unsigned > 0 {
		unsigned += " (sound chain, but no signature vouches for them yet: sign a checkpoint to cover them)"
	}
	rv.Facts = append(rv.Facts, [2]string{"Entries after the newest checkpoint", unsigned})
	return rv, nil
}

// AuditEntry is an entry as the pages list it.
type AuditEntry struct {
	audit.Entry
	Tone string
	// Details in key order.
	Details [][2]string
	// TargetIsDevice links the target to its device page.
	TargetIsDevice bool
}

func auditEntry(e audit.Entry) AuditEntry {
	// Device lifecycle events and device routes name a device as target.
	dev := strings.HasPrefix(e.Action, "device.") || strings.HasPrefix(e.Action, "api.devices.")
	out := AuditEntry{Entry: e, TargetIsDevice: dev && isDeviceID(e.Target)}
	switch e.Outcome {
	case audit.OK:
		out.Tone = "ok"
	case audit.Denied:
		out.Tone = "warn"
	default:
		out.Tone = "bad"
	}
	for _, k := range slices.Sorted(maps.Keys(e.Details)) {
		out.Details = append(out.Details, [2]string{k, e.Details[k]})
	}
	return out
}

// AuditPage is the audit page's data.
type AuditPage struct {
	// The filters as typed.
	Actor, Action, Target, Since, Until string
	Entries                             []AuditEntry
	// Next links to older entries; First to the newest.
	Next, First string
	// Sparse says the page holds fewer entries than it could although
	// older ones may match (the log examines a bounded number per page).
	Sparse bool
}

func (a AuditPages) load(r *http.Request, _ auth.Principal) (any, error) {
	q := r.URL.Query()
	out := AuditPage{Actor: strings.TrimSpace(q.Get("actor")), Action: strings.TrimSpace(q.Get("action")),
		Target: strings.TrimSpace(q.Get("target")), Since: strings.TrimSpace(q.Get("since")), Until: strings.TrimSpace(q.Get("until"))}
	f := audit.Filter{Action: out.Action, Target: out.Target, Limit: auditShown}
	if out.Actor != "" {
		kind, id, _ := strings.Cut(out.Actor, ":")
		switch audit.ActorKind(kind) {
		case audit.ActorUser, audit.ActorToken, audit.ActorDevice, audit.ActorSystem:
		default:
			return nil, badRequestf("actor is kind:id or a kind alone: user:alice, device:<id>, token:<id>, system:<component>, or user")
		}
		f.Actor = audit.Actor{Kind: audit.ActorKind(kind), ID: id}
	}
	var err error
	if f.Since, err = auditTime(out.Since, false); err != nil {
		return nil, err
	}
	if f.Until, err = auditTime(out.Until, true); err != nil {
		return nil, err
	}
	if s := q.Get("before"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, badRequestf("before must be an entry's sequence number")
		}
		f.Before = n
		out.First = pageLink("/audit", "actor", out.Actor, "action", out.Action, "target", out.Target, "since", out.Since, "until", out.Until)
	}
	page, err := a.Log.List(r.Context(), f)
	if err != nil {
		return nil, err
	}
	for _, e := range page.Entries {
		out.Entries = append(out.Entries, auditEntry(e))
	}
	if page.Next != 0 {
		out.Next = pageLink("/audit", "actor", out.Actor, "action", out.Action, "target", out.Target, "since", out.Since, "until", out.Until,
			"before", strconv.FormatUint(page.Next, 10))
		out.Sparse = len(page.Entries) < auditShown
	}
	return out, nil
}

// auditTime reads a filter's time: a date (the start of that day, or with
// end set the start of the next one, in UTC), a date and time from a
// datetime-local field (UTC), or RFC 3339.
func auditTime(s string, end bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		if end {
			t = t.AddDate(0, 0, 1)
		}
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04", time.RFC3339} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, badRequestf("times are a date (2026-03-01), a date and time (2026-03-01T09:30, UTC) or RFC 3339")
}

// AuditTrail is the device page's audit section.
type AuditTrail struct {
	Entries []AuditEntry
	// More says older entries exist; All links to them on the audit page.
	More bool
	All  string
	// Page links the section's own pages (?audit=<before>).
	Page HistoryPage
}

func (a AuditPages) trail(r *http.Request, _ auth.Principal, d *inventory.Device) (any, error) {
	f := audit.Filter{Target: d.ID, Limit: auditTrailShown}
	if s := r.URL.Query().Get("audit"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			return nil, badRequestf("audit is an entry's sequence number")
		}
		f.Before = n
	}
	page, err := a.Log.List(r.Context(), f)
	if err != nil {
		return nil, err
	}
	out := AuditTrail{More: page.Next != 0, All: pageLink("/audit", "target", d.ID)}
	if page.Next != 0 {
		out.Page.Older = historyLink(r, d.ID, "audit", strconv.FormatUint(page.Next, 10), "audit-trail")
	}
	if f.Before != 0 {
		out.Page.Newer = historyLink(r, d.ID, "audit", "", "audit-trail")
	}
	for _, e := range page.Entries {
		out.Entries = append(out.Entries, auditEntry(e))
	}
	return out, nil
}
