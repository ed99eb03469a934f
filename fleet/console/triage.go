package console

import (
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/governance"
)

// Triage reads the shadow-device triage list and the block list.
// *governance.Service implements it.
type Triage interface {
	// Triage pages through the unknown identities that tried to connect,
	// most recently seen first.
	Triage(f governance.TriageFilter) ([]governance.Shadow, string, error)
	// TriageStats counts the entries and the attempts not recorded.
	TriageStats() (governance.TriageStats, error)
	// Blocks pages through the block list.
	Blocks(after string, limit int) ([]governance.Block, string, error)
}

var _ Triage = (*governance.Service)(nil)

// TriagePages is the shadow-device triage page, the enrollment page's
// companion: the unknown identities that tried to connect and wait for a
// decision (enroll, block or dismiss, with a note), and the block list
// the broker and enrollment consult (a block is removed with
// security.approve). Decisions and removals go through the API's
// governance routes.
type TriagePages struct {
	// Governance is the governance service; nil makes an empty Extension.
	Governance Triage
}

// Page sizes of the triage page.
const (
	triageShown = 50
	blocksShown = 100
)

// triageNoteMax bounds a decision's note (governance keeps 256 bytes).
const triageNoteMax = 256

// Extension returns the triage page.
func (tp TriagePages) Extension() Extension {
	if tp.Governance == nil {
		return Extension{}
	}
	decide := func(d governance.Decision) func(url.Values) (any, error) {
		return func(form url.Values) (any, error) {
			note, err := optionalNote(form, "note", triageNoteMax)
			return api.TriageDecisionRequest{Decision: string(d), Note: note}, err
		}
	}
	const decision = "POST /api/v1/triage/{id}/decision"
	return Extension{Pages: []Page{{Name: "triage", Path: "/triage", Nav: "Triage", Title: "Shadow-device triage",
		Perm: auth.PermDevicesRead, Template: source("triage.html"), Load: tp.load, Actions: []Action{
			{Name: "triage.enroll", Path: "/triage/{id}/enroll", API: decision, Then: "/triage", Body: decide(governance.DecisionEnroll),
				OK: "Enrolled: the identity was handed to enrollment."},
			{Name: "triage.block", Path: "/triage/{id}/block", API: decision, Then: "/triage", Body: decide(governance.DecisionBlock),
				OK: "Blocked: its identity is on the block list below; the broker and enrollment refuse it."},
			{Name: "triage.dismiss", Path: "/triage/{id}/dismiss", API: decision, Then: "/triage", Body: decide(governance.DecisionDismiss),
				OK: "Dismissed: the entry leaves this list; its later attempts are still counted."},
			{Name: "triage.unblock", Path: "/triage/blocks/remove", API: "DELETE /api/v1/blocks", Then: "/triage", Query: unblockQuery,
				OK: "Block removed: that identity may connect again."},
		}}}}
}

// unblockQuery reads the block to remove from the form.
func unblockQuery(form url.Values) (url.Values, error) {
	kind, value := governance.BlockKind(form.Get("kind")), form.Get("value")
	switch kind {
	case governance.BlockClientID, governance.BlockAddress, governance.BlockEK:
	default:
		return nil, errUser("the block's kind must be client-id, address or ek")
	}
	if value == "" || len(value) > triageNoteMax {
		return nil, errUser("the block's value is missing or too long")
	}
	return url.Values{"kind": {string(kind)}, "value": {value}}, nil
}

// TriageRow is a triage entry as the page shows it.
type TriageRow struct {
	governance.Shadow
	// What names the kind of attempt for people.
	What string
	// NoEnroll says why the entry is not offered enroll (a certificate
	// from another CA names no TPM); empty when it is.
	NoEnroll string
}

// TriagePage is the triage page's data.
type TriagePage struct {
	// Pending are the undecided entries, most recently seen first.
	Pending []TriageRow
	Stats   governance.TriageStats
	Blocks  []governance.Block
	// Next and BlocksNext link to the next page of each list; Paged and
	// BlocksPaged say a list is not on its first page.
	Next, BlocksNext   string
	Paged, BlocksPaged bool
}

// attemptLabel names a kind of attempt for people.
func attemptLabel(k governance.AttemptKind) string {
	switch k {
	case governance.AttemptForeignCert:
		return "Certificate from another CA"
	case governance.AttemptUnknownDevice:
		return "Fleet certificate of an unknown device"
	case governance.AttemptUnknownClient:
		return "Unknown client ID"
	case governance.AttemptUnknownEK:
		return "Unknown TPM (EK)"
	}
	return string(k)
}

// isCursor reports whether s may be a governance page cursor (hex).
func isCursor(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && len(s) <= 1024
}

func (tp TriagePages) load(r *http.Request, _ auth.Principal) (any, error) {
	q := r.URL.Query()
	after, blocksAfter := q.Get("after"), q.Get("blocks")
	if !isCursor(after) || !isCursor(blocksAfter) || (after != "" && len(after) < 16) {
		return nil, badRequestf("after and blocks must be cursors from this page's links")
	}
	out := TriagePage{Paged: after != "", BlocksPaged: blocksAfter != ""}
	pending, next, err := tp.Governance.Triage(governance.TriageFilter{Undecided: true, After: after, Limit: triageShown})
	if err != nil {
		return nil, err
	}
	for _, sh := range pending {
		row := TriageRow{Shadow: sh, What: attemptLabel(sh.Kind)}
		var ne *governance.NotEnrollableError
		if errors.As(sh.Enrollable(), &ne) {
			row.NoEnroll = ne.Reason
		}
		out.Pending = append(out.Pending, row)
	}
	if next != "" {
		out.Next = pageLink("/triage", "after", next)
	}
	if out.Stats, err = tp.Governance.TriageStats(); err != nil {
		return nil, err
	}
	if out.Blocks, next, err = tp.Governance.Blocks(strings.ToLower(blocksAfter), blocksShown); err != nil {
		return nil, err
	}
	if next != "" {
		out.BlocksNext = pageLink("/triage", "blocks", next)
	}
	return out, nil
}
