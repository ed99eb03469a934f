package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// Approvals reads the two-person rule's requests. *approval.Manager
// implements it.
type Approvals interface {
	Inbox(ctx context.Context, actor approval.Actor) ([]approval.Request, error)
	Pending(ctx context.Context) ([]approval.Request, error)
	List(ctx context.Context, f approval.Filter) ([]approval.Request, string, error)
}

var _ Approvals = (*approval.Manager)(nil)

// ApprovalPages is the approvals inbox: what waits for the operator's
// decision and why (approve with a comment, reject with a reason), what
// waits for others (the requester may withdraw it), and the decisions
// taken, with their outcome.
type ApprovalPages struct {
	// Approvals is the two-person rule's manager; nil (the rule is off)
	// makes an empty Extension.
	Approvals Approvals
	// Now is the clock for expiry. Nil means time.Now.
	Now func() time.Time
}

// approvalsHistoryShown is the page size of the decided requests.
const approvalsHistoryShown = 25

// approveBody is the body of an approval: an optional comment.
func approveBody(form url.Values) (any, error) {
	c, err := optionalNote(form, "comment", 500)
	return api.DecisionRequest{Comment: c}, err
}

// rejectBody is the body of a refusal (a rejection, a withdrawal, a
// revocation): the reason, required.
func rejectBody(form url.Values) (any, error) {
	j, err := justification(url.Values{"justification": {form.Get("reason")}})
	if err != nil {
		return nil, errUser("say why (at least 3 characters): the requester and the audit log see it")
	}
	return api.DecisionRequest{Reason: j}, nil
}

// Extension returns the approvals page.
func (a ApprovalPages) Extension() Extension {
	if a.Approvals == nil {
		return Extension{}
	}
	a.Now = clockOr(a.Now)
	return Extension{Pages: []Page{{Name: "approvals", Path: "/approvals", Nav: "Approvals", Title: "Approvals inbox",
		Perm: auth.PermApprovalsRead, Template: source("approvals.html"), Load: a.load, Actions: []Action{
			{Name: "approval.approve", Path: "/approvals/{id}/approve", API: "POST /api/v1/approvals/{id}/approve", Then: "/approvals",
				Body: approveBody,
				OK:   "Approved: the change is carried out once it has every approval it needs; its outcome is in the history below."},
			{Name: "approval.reject", Path: "/approvals/{id}/reject", API: "POST /api/v1/approvals/{id}/reject", Then: "/approvals",
				Body: rejectBody, OK: "Rejected: the change will not be made."},
			{Name: "approval.withdraw", Path: "/approvals/{id}/withdraw", API: "POST /api/v1/approvals/{id}/reject", Then: "/approvals",
				Body: rejectBody, OK: "Withdrawn: the change will not be made."},
		}}}}
}

// ApprovalRow is a request as the inbox shows it.
type ApprovalRow struct {
	approval.Request
	// What names the kind of change for people.
	What string
	// Mine says the operator requested it.
	Mine bool
	// Progress is "1 of 2 approvals".
	Progress string
	// Status is the request's state now (an unanswered request past its
	// expiry is expired); Outcome describes a decided request; Tone
	// colours its state.
	Status  approval.State
	Outcome string
	Tone    string
}

// ApprovalsPage is the approvals page's data.
type ApprovalsPage struct {
	// Inbox is what the operator may decide now; Waiting what waits for
	// other people (including the operator's own requests).
	Inbox, Waiting []ApprovalRow
	History        []ApprovalRow
	// Next links to older decisions; First to the newest.
	Next, First string
}

// kindLabel names a kind of change for people.
func kindLabel(k approval.Kind) string {
	switch k {
	case approval.KindFirmwareRelease:
		return "Firmware release"
	case approval.KindMassRevocation:
		return "Revocation of many devices"
	case approval.KindMassRotation:
		return "Credential rotation of many devices"
	case approval.KindCARotation:
		return "Fleet CA rotation"
	case approval.KindPolicyChange:
		return "Attestation policy change"
	case approval.KindSecretChange:
		return "Secret change"
	case approval.KindAccessGrant:
		return "SSH access grant"
	}
	return string(k)
}

func (a ApprovalPages) row(r approval.Request, p auth.Principal, now time.Time) ApprovalRow {
	row := ApprovalRow{Request: r, What: kindLabel(r.Kind), Mine: r.Requester == p.User,
		Progress: fmt.Sprintf("%d of %s", len(r.Approvals), mustPlural(r.Required, "approval"))}
	row.Status = r.StateAt(now)
	switch row.Status {
	case approval.StateExecuted:
		row.Tone, row.Outcome = "ok", "carried out "+when(r.Executed)
	case approval.StateFailed:
		row.Tone, row.Outcome = "bad", "approved, but carrying it out failed: "+r.Error
	case approval.StateInterrupted:
		row.Tone, row.Outcome = "warn", "the server stopped while carrying it out: check whether it took effect"
	case approval.StateRejected:
		row.Tone = "muted"
		if r.Rejection != nil {
			verb := "rejected"
			if r.Rejection.By == r.Requester {
				verb = "withdrawn"
			}
			row.Outcome = fmt.Sprintf("%s by %s %s: %s", verb, r.Rejection.By, when(r.Rejection.At), r.Rejection.Comment)
		}
	case approval.StateExpired:
		row.Tone, row.Outcome = "muted", "expired "+when(r.Expires)+" without enough approvals"
	case approval.StateExecuting:
		row.Tone, row.Outcome = "warn", "approved; being carried out"
	default:
		row.Tone = "warn"
	}
	return row
}

func (a ApprovalPages) load(r *http.Request, p auth.Principal) (any, error) {
	now := a.Now()
	out := ApprovalsPage{}
	inbox, err := a.Approvals.Inbox(r.Context(), p)
	if err != nil {
		return nil, err
	}
	mine := map[string]bool{}
	for _, req := range inbox {
		mine[req.ID] = true
		out.Inbox = append(out.Inbox, a.row(req, p, now))
	}
	pending, err := a.Approvals.Pending(r.Context())
	if err != nil {
		return nil, err
	}
	for _, req := range pending {
		if !mine[req.ID] {
			out.Waiting = append(out.Waiting, a.row(req, p, now))
		}
	}
	before := r.URL.Query().Get("before")
	if len(before) > 128 || strings.ContainsAny(before, "\x00/") {
		return nil, badRequestf("before must be a request ID")
	}
	hist, next, err := a.Approvals.List(r.Context(), approval.Filter{Before: before, Limit: approvalsHistoryShown})
	if err != nil {
		return nil, err
	}
	for _, req := range hist {
		if req.StateAt(now) == approval.StatePending {
			continue // listed above
		}
		out.History = append(out.History, a.row(req, p, now))
	}
	if next != "" {
		out.Next = pageLink("/approvals", "before", next)
	}
	if before != "" {
		out.First = "/approvals"
	}
	return out, nil
}
