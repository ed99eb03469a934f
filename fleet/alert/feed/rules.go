package feed

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Rules are the rules for the feed's own events, installed with
// alert.DefaultRules at the fleet's first start.
func Rules() []alert.Rule {
	d := func(x time.Duration) config.Duration { return config.Duration(x) }
	rules := []alert.Rule{
		{ID: "telemetry-dropped", Name: "Telemetry dropped by a full outbox", Severity: alert.SeverityWarning,
			Event: &alert.EventMatch{Kind: EventTelemetryDropped, ClearAfter: d(time.Hour)}},
		{ID: "device-rebooted", Name: "Device rebooted", Severity: alert.SeverityInfo,
			Event: &alert.EventMatch{Kind: EventReboot, ClearAfter: d(30 * time.Minute)}},
		{ID: "tpm-unhealthy", Name: "TPM does not answer", Severity: alert.SeverityCritical,
			Threshold: &alert.Threshold{Metric: "tpm.ok", Op: alert.OpLT, Value: 1}},
	}
	for i := range rules {
		rules[i].SetDefaults()
	}
	return rules
}

// RuleStore is where InstallDefaultRules puts the rules (*alert.Engine).
type RuleStore interface {
	Rule(id string) (*alert.Rule, error)
	PutRule(r alert.Rule) (*alert.Rule, error)
	Rules() []alert.Rule
}

// Flags remember that the rules were installed (telemetry.CursorStore).
type Flags interface {
	Flag(ctx context.Context, name string) (bool, error)
	SetFlag(ctx context.Context, name string) error
}

// flagRulesInstalled marks that the default alert rules were installed.
const flagRulesInstalled = "default_rules_installed"

// InstallDefaultRules puts alert.DefaultRules and Rules once, at the
// fleet's first start; rules the operators delete later stay deleted.
func InstallDefaultRules(rules RuleStore, flags Flags, log *slog.Logger) error {
	ctx := context.Background()
	done, err := flags.Flag(ctx, flagRulesInstalled)
	if err != nil || done {
		return err
	}
	for _, r := range append(alert.DefaultRules(), Rules()...) {
		if _, err := rules.Rule(r.ID); err == nil {
			continue
		}
		if _, err := rules.PutRule(r); err != nil {
			return fmt.Errorf("feed: default alert rule %s: %w", r.ID, err)
		}
	}
	log.Info("default alert rules installed", "rules", len(rules.Rules()))
	return flags.SetFlag(ctx, flagRulesInstalled)
}
