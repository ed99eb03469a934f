package approval

import (
	"context"
	"errors"

	"github.com/sigil-iot/sigil/fleet/audit"
)

// AuditLog is the Auditor that records two-person decisions and outcomes
// in the fleet's audit log (inside the decision's transaction: a failed
// record refuses it).
type AuditLog struct{ Log audit.Recorder }

var _ Auditor = AuditLog{}

// Record implements Auditor.
func (a AuditLog) Record(ctx context.Context, e Event) error {
	actor := audit.System("approvals")
	if e.Actor != "" {
		actor = audit.User(e.Actor)
	}
	entry := audit.New(actor, "approval."+e.Action, e.RequestID).With("kind", string(e.Kind)).With("target", e.Target)
	if e.Detail != "" {
		entry = entry.With("detail", e.Detail)
	}
	if e.Action == "failed" || e.Action == "interrupted" {
		entry = entry.Fail(errors.New(e.Detail))
	}
	return a.Log.Record(ctx, entry)
}
