package rollout

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
)

// releaseAuditor records release actions in rec (nil: logs them only).
func releaseAuditor(rec audit.Recorder, log *slog.Logger) firmware.Auditor {
	return firmware.AuditorFunc(func(ctx context.Context, actor, action, target, outcome, reason string) error {
		log.Info("audit", "actor", actor, "action", action, "release", target, "outcome", outcome, "reason", reason)
		if rec == nil {
			return nil
		}
		e := audit.New(audit.User(actor), action, target)
		switch outcome {
		case firmware.OutcomeOK:
			e = e.Because(reason)
		case firmware.OutcomeDenied:
			e = e.Deny(reason)
		default:
			e = e.Fail(errors.New(reason))
		}
		return rec.Record(ctx, e)
	})
}

// campaignAuditor records campaign actions in rec (nil: the campaign
// engine logs them).
func campaignAuditor(rec audit.Recorder, log *slog.Logger) campaign.Auditor {
	return campaign.AuditorFunc(func(ev campaign.AuditEvent) {
		if rec == nil {
			return
		}
		actor := audit.User(ev.Actor)
		if ev.Actor == campaign.SystemActor {
			actor = audit.System("campaign")
		}
		e := audit.New(actor, ev.Action, ev.Target).Because(ev.Justification)
		if ev.Detail != "" {
			e = e.With("detail", ev.Detail)
		}
		if ev.Outcome != "ok" {
			e = e.Fail(errors.New(ev.Detail))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rec.Record(ctx, e); err != nil {
			log.Error("campaign audit record failed", "action", ev.Action, "campaign", ev.Target, "err", err)
		}
	})
}
