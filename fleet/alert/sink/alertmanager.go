package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// AlertmanagerConfig configures NewAlertmanager.
type AlertmanagerConfig struct {
	// URL is the Alertmanager's base URL, e.g. "http://alertmanager:9093";
	// alerts are POSTed to URL + "/api/v2/alerts". Required.
	URL string
	// Client sends the requests. Nil: a client that does not follow
	// redirects.
	Client *http.Client
	// Header is added to every request (e.g. Authorization for a proxy in
	// front of the Alertmanager). Its values never appear in errors.
	Header http.Header
	// GeneratorURL is the base of each alert's generatorURL,
	// GeneratorURL + "/alerts/<id>" (the console's alert page). Empty:
	// none.
	GeneratorURL string
	// EndsAfter sets an open alert's endsAt this far past the notification:
	// the Alertmanager resolves the alert by itself unless it is sent again
	// before. Keep it several times the engine's Config.Resend and route
	// TransitionRepeat to this sink. Default 4m (four re-sends at the
	// engine's default, as Prometheus does).
	EndsAfter time.Duration
}

// Alertmanager posts notifications to a Prometheus Alertmanager (API v2).
type Alertmanager struct {
	cfg      AlertmanagerConfig
	endpoint string
}

var _ alert.BatchNotifier = (*Alertmanager)(nil)

// NewAlertmanager returns an Alertmanager sink.
func NewAlertmanager(cfg AlertmanagerConfig) (*Alertmanager, error) {
	if err := checkURL("alertmanager", cfg.URL); err != nil {
		return nil, err
	}
	if cfg.GeneratorURL != "" {
		if err := checkURL("alertmanager generator", cfg.GeneratorURL); err != nil {
			return nil, err
		}
	}
	if cfg.Client == nil {
		cfg.Client = defaultClient()
	}
	if cfg.EndsAfter <= 0 {
		cfg.EndsAfter = 4 * time.Minute
	}
	return &Alertmanager{cfg: cfg, endpoint: strings.TrimSuffix(cfg.URL, "/") + "/api/v2/alerts"}, nil
}

// PostableAlert is one element of the JSON array the Alertmanager API v2
// accepts at POST /api/v2/alerts.
type PostableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// Notify posts n as a one-element array. Resolved alerts carry their
// resolution time as endsAt; open ones (firing, acknowledged, repeated)
// n.At + EndsAfter.
func (s *Alertmanager) Notify(ctx context.Context, n alert.Notification) error {
	body, err := json.Marshal([]PostableAlert{s.Postable(&n)})
	if err != nil {
		return fmt.Errorf("%w: sink: alertmanager: encode: %v", alert.ErrPermanent, err)
	}
	return post(ctx, "alertmanager", s.cfg.Client, s.endpoint, s.cfg.Header, body)
}

// NotifyBatch posts several notifications as one array.
func (s *Alertmanager) NotifyBatch(ctx context.Context, ns []alert.Notification) error {
	ps := make([]PostableAlert, len(ns))
	for i := range ns {
		ps[i] = s.Postable(&ns[i])
	}
	body, err := json.Marshal(ps)
	if err != nil {
		return fmt.Errorf("%w: sink: alertmanager: encode: %v", alert.ErrPermanent, err)
	}
	return post(ctx, "alertmanager", s.cfg.Client, s.endpoint, s.cfg.Header, body)
}

// Postable converts a notification. Labels are the alert's labels
// (alert.LabelsOf), so the Alertmanager identifies an alert by rule, device
// and key, as the engine does; empty values are left out. Annotations
// carry the summary and description, the alert's ID, state, count,
// acknowledgement, action and evidence ("evidence_<name>", names made
// valid label names).
func (s *Alertmanager) Postable(n *alert.Notification) PostableAlert {
	a := &n.Alert
	labels := map[string]string{}
	for k, v := range alert.LabelsOf(a) {
		if v != "" {
			labels[k] = v
		}
	}
	ann := map[string]string{
		"summary":  a.Summary,
		"alert_id": strconv.FormatUint(a.ID, 10),
		"state":    string(a.State),
		"count":    strconv.Itoa(a.Count),
	}
	if a.Description != "" {
		ann["description"] = a.Description
	}
	if a.AckedBy != "" {
		ann["acknowledged_by"] = a.AckedBy
		ann["acknowledge_note"] = a.AckNote
	}
	if a.Action != "" {
		ann["action"] = string(a.Action)
		if a.ActionError != "" {
			ann["action_error"] = a.ActionError
		}
	}
	for _, k := range sortedKeys(a.Evidence) {
		name := "evidence_" + labelName(k)
		if _, dup := ann[name]; !dup {
			ann[name] = a.Evidence[k]
		}
	}
	p := PostableAlert{Labels: labels, Annotations: ann, StartsAt: a.StartsAt.UTC(), EndsAt: n.At.Add(s.cfg.EndsAfter).UTC()}
	if a.State == alert.StateResolved {
		p.EndsAt = a.ResolvedAt.UTC()
	}
	if p.EndsAt.Before(p.StartsAt) {
		p.EndsAt = p.StartsAt // the Alertmanager refuses an end before the start
	}
	if s.cfg.GeneratorURL != "" {
		p.GeneratorURL = strings.TrimSuffix(s.cfg.GeneratorURL, "/") + "/alerts/" + strconv.FormatUint(a.ID, 10)
	}
	return p
}

// labelName maps s to [a-zA-Z_][a-zA-Z0-9_]*, replacing other characters
// with '_'.
func labelName(s string) string {
	var b strings.Builder
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
			b.WriteRune(c)
		case c >= '0' && c <= '9' && i > 0:
			b.WriteRune(c)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "_"
	}
	return b.String()
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
