package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/sink"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// Alerts is the alert engine as the API uses it (fleet/alert.Engine).
type Alerts interface {
	Alerts(q alert.Query) ([]alert.Alert, uint64, error)
	Alert(id uint64) (*alert.Alert, error)
	Acknowledge(id uint64, by, note string) (*alert.Alert, error)
	Resolve(id uint64, by, note string) (*alert.Alert, error)
	Rules() []alert.Rule
	Rule(id string) (*alert.Rule, error)
	PutRule(r alert.Rule) (*alert.Rule, error)
	DeleteRule(id string) error
	DeadLetters(before uint64, limit int) ([]alert.DeadLetter, uint64, error)
	Redrive(id uint64) error
	RedriveAll(route string) (int, error)
	Groups(q alert.Query, by alert.GroupBy) ([]alert.Group, bool, error)
	AcknowledgeMany(ids []uint64, q alert.Query, by, note string) (alert.AckReport, error)
}

var _ Alerts = (*alert.Engine)(nil)

// AlertSink describes a configured alert sink, without its secrets
// (sink.Info).
type AlertSink = sink.Info

// AlertList is GET /api/v1/alerts. With group_by=rule or device it holds
// Groups (counts of every alert the filters select) instead of Alerts.
type AlertList struct {
	Alerts []alert.Alert `json:"alerts"`
	Next   uint64        `json:"next,omitempty"` // pass as ?before= for older alerts
	// GroupBy, Groups and Truncated answer group_by (Truncated: more
	// alerts matched than alert.MaxGrouped, which were counted).
	GroupBy   string        `json:"group_by,omitempty"`
	Groups    []alert.Group `json:"groups,omitempty"`
	Truncated bool          `json:"truncated,omitempty"`
}

// AlertFilter selects alerts for a bulk acknowledgement: the filters of
// GET /api/v1/alerts.
type AlertFilter struct {
	Rule     string   `json:"rule,omitempty"`
	Device   string   `json:"device,omitempty"`
	Severity []string `json:"severity,omitempty"` // any of info, warning, critical
}

// BulkAckRequest is the body of POST /api/v1/alerts/ack: the alerts to
// acknowledge by ID (a selection, at most 1000), or every firing alert
// the filter selects (a group is a filter on its rule or device); All
// must be set to acknowledge every firing alert with an empty filter.
type BulkAckRequest struct {
	IDs    []uint64     `json:"ids,omitempty"`
	Filter *AlertFilter `json:"filter,omitempty"`
	All    bool         `json:"all,omitempty"`
	Note   string       `json:"note,omitempty"`
}

// AlertRuleList is GET /api/v1/alerts/rules.
type AlertRuleList struct {
	Rules []alert.Rule `json:"rules"`
}

// DeadLetterList is GET /api/v1/alerts/deadletters.
type DeadLetterList struct {
	DeadLetters []alert.DeadLetter `json:"dead_letters"`
	Next        uint64             `json:"next,omitempty"` // pass as ?before= for older ones
}

// AlertSinkList is GET /api/v1/alerts/sinks.
type AlertSinkList struct {
	Sinks []AlertSink `json:"sinks"`
}

// AlertNote is the optional body of an acknowledgement or resolution.
type AlertNote struct {
	Note string `json:"note"`
}

// Redriven says how many dead letters were queued again.
type Redriven struct {
	Queued int `json:"queued"`
}

// RedriveRequest is the optional body of POST
// /api/v1/alerts/deadletters/redrive: the route whose dead letters are sent
// again; empty for every route.
type RedriveRequest struct {
	Route string `json:"route"`
}

func (h *handler) routesAlerts() {
	h.route("GET /api/v1/alerts", auth.PermAlertsRead, h.listAlerts)
	h.route("GET /api/v1/alerts/{id}", auth.PermAlertsRead, h.getAlert)
	h.route("POST /api/v1/alerts/{id}/ack", auth.PermAlertsWrite, h.ackAlert)
	h.route("POST /api/v1/alerts/{id}/resolve", auth.PermAlertsWrite, h.resolveAlert)
	h.route("POST /api/v1/alerts/ack", auth.PermAlertsWrite, h.bulkAck)
	h.route("GET /api/v1/alerts/rules", auth.PermAlertsRead, h.listAlertRules)
	h.route("GET /api/v1/alerts/rules/{id}", auth.PermAlertsRead, h.getAlertRule)
	h.route("PUT /api/v1/alerts/rules/{id}", auth.PermAlertsWrite, h.putAlertRule)
	h.route("DELETE /api/v1/alerts/rules/{id}", auth.PermAlertsWrite, h.deleteAlertRule)
	h.route("GET /api/v1/alerts/deadletters", auth.PermAlertsRead, h.listDeadLetters)
	h.route("POST /api/v1/alerts/deadletters/{id}/redrive", auth.PermAlertsWrite, h.redrive)
	h.route("POST /api/v1/alerts/deadletters/redrive", auth.PermAlertsWrite, h.redriveAll)
	h.route("GET /api/v1/alerts/sinks", auth.PermAlertsRead, h.listSinks)

	h.describe("GET /api/v1/alerts", "List alerts, newest first (device, rule, state or open=true, severity=critical,warning; page with before and limit), or count them with group_by=rule|device", nil, AlertList{})
	h.describe("POST /api/v1/alerts/ack", "Acknowledge firing alerts in bulk: by IDs, or all that a filter (rule, device, severity) selects", BulkAckRequest{}, alert.AckReport{})
	h.describe("GET /api/v1/alerts/{id}", "An alert with its evidence", nil, alert.Alert{})
	h.describe("POST /api/v1/alerts/{id}/ack", "Acknowledge an open alert (optional note)", AlertNote{}, alert.Alert{})
	h.describe("POST /api/v1/alerts/{id}/resolve", "Resolve an open alert by hand (optional note)", AlertNote{}, alert.Alert{})
	h.describe("GET /api/v1/alerts/rules", "List alert rules", nil, AlertRuleList{})
	h.describe("GET /api/v1/alerts/rules/{id}", "An alert rule", nil, alert.Rule{})
	h.describe("PUT /api/v1/alerts/rules/{id}", "Create or replace an alert rule", alert.Rule{}, alert.Rule{})
	h.describe("DELETE /api/v1/alerts/rules/{id}", "Delete an alert rule (its open alerts resolve)", nil, nil, 204)
	h.describe("GET /api/v1/alerts/deadletters", "Notifications no sink accepted, newest first (page with before and limit)", nil, DeadLetterList{})
	h.describe("POST /api/v1/alerts/deadletters/{id}/redrive", "Send a dead letter again", nil, Redriven{})
	h.describe("POST /api/v1/alerts/deadletters/redrive", "Send every dead letter again (optionally of one route)", RedriveRequest{}, Redriven{})
	h.describe("GET /api/v1/alerts/sinks", "The configured alert sinks (no secrets)", nil, AlertSinkList{})
}

// alertsOn writes a 501 when no alert engine is configured.
func (h *handler) alertsOn(w http.ResponseWriter) bool {
	if h.cfg.Alerts == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "alerting is not enabled on this server")
		return false
	}
	return true
}

// uintParam parses an optional non-negative integer query parameter; on
// failure it has written a 400.
func uintParam(w http.ResponseWriter, r *http.Request, name string, max uint64) (uint64, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		problem(w, http.StatusBadRequest, "bad request", name+" must be an integer from 0 to "+strconv.FormatUint(max, 10))
		return 0, false
	}
	return n, true
}

func (h *handler) listAlerts(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.alertsOn(w) {
		return
	}
	q := r.URL.Query()
	aq := alert.Query{DeviceID: q.Get("device"), RuleID: q.Get("rule")}
	switch st := q.Get("state"); st {
	case "":
	case "open":
		aq.Open = true
	case string(alert.StateFiring), string(alert.StateAcknowledged), string(alert.StateResolved):
		aq.State = alert.State(st)
	default:
		problem(w, http.StatusBadRequest, "bad request", "state must be firing, acknowledged, resolved or open")
		return
	}
	if q.Get("open") == "true" {
		aq.Open = true
	}
	sevs, ok := severities(w, strings.Split(q.Get("severity"), ","))
	if !ok {
		return
	}
	aq.Severities = sevs
	if by := q.Get("group_by"); by != "" {
		if by != string(alert.GroupByRule) && by != string(alert.GroupByDevice) {
			problem(w, http.StatusBadRequest, "bad request", "group_by must be rule or device")
			return
		}
		groups, truncated, err := h.cfg.Alerts.Groups(aq, alert.GroupBy(by))
		if err != nil {
			h.internal(w, err)
			return
		}
		writeJSON(w, http.StatusOK, AlertList{Alerts: []alert.Alert{}, GroupBy: by, Groups: emptyIfNil(groups), Truncated: truncated})
		return
	}
	before, ok := uintParam(w, r, "before", 1<<63)
	if !ok {
		return
	}
	limit, ok := uintParam(w, r, "limit", 1000)
	if !ok {
		return
	}
	aq.Before, aq.Limit = before, int(limit)
	list, next, err := h.cfg.Alerts.Alerts(aq)
	if err != nil {
		h.internal(w, err)
		return
	}
	if list == nil {
		list = []alert.Alert{}
	}
	writeJSON(w, http.StatusOK, AlertList{Alerts: list, Next: next})
}

// severities parses severity names ("" entries ignored); on failure it
// has written a 400.
func severities(w http.ResponseWriter, names []string) ([]alert.Severity, bool) {
	var out []alert.Severity
	for _, n := range names {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if !alert.Severity(n).Valid() {
			problem(w, http.StatusBadRequest, "bad request", "severity must be info, warning or critical (several separated by commas)")
			return nil, false
		}
		out = append(out, alert.Severity(n))
	}
	return out, true
}

// bulkAck acknowledges firing alerts by IDs or by filter.
func (h *handler) bulkAck(w http.ResponseWriter, r *http.Request, who string) {
	if !h.alertsOn(w) {
		return
	}
	var req BulkAckRequest
	if !decode(w, r, &req) {
		return
	}
	if len(req.Note) > maxNote {
		problem(w, http.StatusBadRequest, "bad request", "note is at most 1024 bytes")
		return
	}
	if len(req.IDs) > alert.MaxAckIDs {
		problem(w, http.StatusBadRequest, "bad request", "at most 1000 alert IDs at once; acknowledge a larger set with a filter")
		return
	}
	var q alert.Query
	if f := req.Filter; f != nil {
		sevs, ok := severities(w, f.Severity)
		if !ok {
			return
		}
		q = alert.Query{RuleID: f.Rule, DeviceID: f.Device, Severities: sevs}
	}
	switch {
	case len(req.IDs) > 0 && req.Filter != nil:
		problem(w, http.StatusBadRequest, "bad request", "give either ids or a filter, not both")
		return
	case len(req.IDs) == 0 && q.RuleID == "" && q.DeviceID == "" && len(q.Severities) == 0 && !req.All:
		problem(w, http.StatusBadRequest, "bad request", "name the alerts: ids, a filter (rule, device, severity), or all: true for every firing alert")
		return
	}
	rep, err := h.cfg.Alerts.AcknowledgeMany(req.IDs, q, who, req.Note)
	if err != nil {
		h.alertError(w, err, "alert")
		return
	}
	if rep.IDs == nil {
		rep.IDs = []uint64{}
	}
	h.log.Info("alerts acknowledged in bulk", "count", rep.Acknowledged, "skipped", rep.Skipped, "by", who)
	writeJSON(w, http.StatusOK, rep)
}

// alertID parses the {id} path value; on failure it has written a 404.
func alertID(w http.ResponseWriter, r *http.Request, what string) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		problem(w, http.StatusNotFound, "not found", "no "+what+" with that ID")
		return 0, false
	}
	return id, true
}

// alertError answers an engine error.
func (h *handler) alertError(w http.ResponseWriter, err error, what string) {
	switch {
	case errors.Is(err, alert.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no "+what+" with that ID")
	case errors.Is(err, alert.ErrResolved):
		problem(w, http.StatusConflict, "conflict", "the alert is already resolved")
	case errors.Is(err, alert.ErrQueueFull):
		problem(w, http.StatusServiceUnavailable, "queue full", "the route's delivery queue is full; try again later")
	case errors.Is(err, alert.ErrInvalidRule):
		problem(w, http.StatusBadRequest, "invalid rule", publicRuleError(err))
	default:
		h.internal(w, err)
	}
}

// publicRuleError lists a rule's problems without the package's prefix
// ("alert: invalid rule \"id\": ").
func publicRuleError(err error) string {
	var out []string
	for _, line := range strings.Split(err.Error(), "\n") {
		if rest, ok := strings.CutPrefix(line, alert.ErrInvalidRule.Error()); ok {
			if _, after, ok := strings.Cut(rest, ": "); ok {
				line = after
			}
		}
		out = append(out, line)
	}
	return strings.Join(out, "; ")
}

func (h *handler) getAlert(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.alertsOn(w) {
		return
	}
	id, ok := alertID(w, r, "alert")
	if !ok {
		return
	}
	a, err := h.cfg.Alerts.Alert(id)
	if err != nil {
		h.alertError(w, err, "alert")
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// optionalBody decodes a JSON body if there is one.
func optionalBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.ContentLength == 0 {
		return true
	}
	return decode(w, r, v)
}

// maxNote bounds an acknowledgement or resolution note.
const maxNote = 1024

func (h *handler) ackAlert(w http.ResponseWriter, r *http.Request, who string) {
	h.closeAlert(w, r, who, false)
}

func (h *handler) resolveAlert(w http.ResponseWriter, r *http.Request, who string) {
	h.closeAlert(w, r, who, true)
}

// closeAlert acknowledges or resolves an alert.
func (h *handler) closeAlert(w http.ResponseWriter, r *http.Request, who string, resolve bool) {
	if !h.alertsOn(w) {
		return
	}
	act := h.cfg.Alerts.Acknowledge
	if resolve {
		act = h.cfg.Alerts.Resolve
	}
	var req AlertNote
	if !optionalBody(w, r, &req) {
		return
	}
	if len(req.Note) > maxNote {
		problem(w, http.StatusBadRequest, "bad request", "note is at most 1024 bytes")
		return
	}
	id, ok := alertID(w, r, "alert")
	if !ok {
		return
	}
	a, err := act(id, who, req.Note)
	if err != nil {
		h.alertError(w, err, "alert")
		return
	}
	h.log.Info("alert changed by an operator", "alert_id", a.ID, "state", a.State, "by", who)
	writeJSON(w, http.StatusOK, a)
}

func (h *handler) listAlertRules(w http.ResponseWriter, _ *http.Request, _ string) {
	if !h.alertsOn(w) {
		return
	}
	rules := h.cfg.Alerts.Rules()
	if rules == nil {
		rules = []alert.Rule{}
	}
	writeJSON(w, http.StatusOK, AlertRuleList{Rules: rules})
}

func (h *handler) getAlertRule(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.alertsOn(w) {
		return
	}
	rule, err := h.cfg.Alerts.Rule(r.PathValue("id"))
	if err != nil {
		h.alertError(w, err, "rule")
		return
	}
	writeJSON(w, http.StatusOK, rule)
}

func (h *handler) putAlertRule(w http.ResponseWriter, r *http.Request, who string) {
	if !h.alertsOn(w) {
		return
	}
	var rule alert.Rule
	if !decodeAt(w, r, &rule, &rule.ID, "id") {
		return
	}
	stored, err := h.cfg.Alerts.PutRule(rule)
	if err != nil {
		h.alertError(w, err, "rule")
		return
	}
	h.log.Info("alert rule stored", "rule_id", stored.ID, "kind", stored.Kind(), "by", who)
	writeJSON(w, http.StatusOK, stored)
}

func (h *handler) deleteAlertRule(w http.ResponseWriter, r *http.Request, who string) {
	if !h.alertsOn(w) {
		return
	}
	id := r.PathValue("id")
	if err := h.cfg.Alerts.DeleteRule(id); err != nil {
		h.alertError(w, err, "rule")
		return
	}
	h.log.Info("alert rule deleted", "rule_id", id, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) listDeadLetters(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.alertsOn(w) {
		return
	}
	before, ok := uintParam(w, r, "before", 1<<63)
	if !ok {
		return
	}
	limit, ok := uintParam(w, r, "limit", 1000)
	if !ok {
		return
	}
	list, next, err := h.cfg.Alerts.DeadLetters(before, int(limit))
	if err != nil {
		h.internal(w, err)
		return
	}
	if list == nil {
		list = []alert.DeadLetter{}
	}
	writeJSON(w, http.StatusOK, DeadLetterList{DeadLetters: list, Next: next})
}

func (h *handler) redrive(w http.ResponseWriter, r *http.Request, who string) {
	if !h.alertsOn(w) {
		return
	}
	id, ok := alertID(w, r, "dead letter")
	if !ok {
		return
	}
	if err := h.cfg.Alerts.Redrive(id); err != nil {
		h.alertError(w, err, "dead letter")
		return
	}
	h.log.Info("dead letter sent again", "dead_letter", id, "by", who)
	writeJSON(w, http.StatusOK, Redriven{Queued: 1})
}

func (h *handler) redriveAll(w http.ResponseWriter, r *http.Request, who string) {
	if !h.alertsOn(w) {
		return
	}
	var req RedriveRequest
	if !optionalBody(w, r, &req) {
		return
	}
	n, err := h.cfg.Alerts.RedriveAll(req.Route)
	if err != nil && n == 0 {
		h.alertError(w, err, "dead letter")
		return
	}
	h.log.Info("dead letters sent again", "route", req.Route, "queued", n, "by", who)
	writeJSON(w, http.StatusOK, Redriven{Queued: n})
}

func (h *handler) listSinks(w http.ResponseWriter, _ *http.Request, _ string) {
	if !h.alertsOn(w) {
		return
	}
	sinks := h.cfg.AlertSinks
	if sinks == nil {
		sinks = []AlertSink{}
	}
	writeJSON(w, http.StatusOK, AlertSinkList{Sinks: sinks})
}

// AlertQuery selects alerts for Client.Alerts.
type AlertQuery struct {
	DeviceID, RuleID string
	State            string // firing, acknowledged, resolved or open
	Severity         string // info, warning, critical, or several separated by commas
	GroupBy          string // rule or device: count instead of list
	Before           uint64
	Limit            int
}

// AckAlerts acknowledges firing alerts in bulk.
func (c *Client) AckAlerts(ctx context.Context, req BulkAckRequest) (*alert.AckReport, error) {
	var out alert.AckReport
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/alerts/ack", req, &out)
}

// Alerts lists alerts, newest first.
func (c *Client) Alerts(ctx context.Context, q AlertQuery) (*AlertList, error) {
	v := url.Values{}
	for k, s := range map[string]string{"device": q.DeviceID, "rule": q.RuleID, "state": q.State, "severity": q.Severity, "group_by": q.GroupBy} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Before > 0 {
		v.Set("before", strconv.FormatUint(q.Before, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/api/v1/alerts"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out AlertList
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}

// Alert fetches one alert.
func (c *Client) Alert(ctx context.Context, id uint64) (*alert.Alert, error) {
	var out alert.Alert
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/alerts/"+strconv.FormatUint(id, 10), nil, &out)
}

// AckAlert acknowledges an open alert.
func (c *Client) AckAlert(ctx context.Context, id uint64, note string) (*alert.Alert, error) {
	var out alert.Alert
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/alerts/"+strconv.FormatUint(id, 10)+"/ack", AlertNote{Note: note}, &out)
}

// ResolveAlert resolves an open alert by hand.
func (c *Client) ResolveAlert(ctx context.Context, id uint64, note string) (*alert.Alert, error) {
	var out alert.Alert
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/alerts/"+strconv.FormatUint(id, 10)+"/resolve", AlertNote{Note: note}, &out)
}

// AlertRules lists the alert rules.
func (c *Client) AlertRules(ctx context.Context) (*AlertRuleList, error) {
	var out AlertRuleList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/alerts/rules", nil, &out)
}

// PutAlertRule creates or replaces a rule.
func (c *Client) PutAlertRule(ctx context.Context, r alert.Rule) (*alert.Rule, error) {
	var out alert.Rule
	return &out, c.Do(ctx, http.MethodPut, "/api/v1/alerts/rules/"+url.PathEscape(r.ID), r, &out)
}

// DeleteAlertRule deletes a rule.
func (c *Client) DeleteAlertRule(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/alerts/rules/"+url.PathEscape(id), nil, nil)
}

// DeadLetters pages the dead letters, newest first (before 0: from the
// newest).
func (c *Client) DeadLetters(ctx context.Context, before uint64, limit int) (*DeadLetterList, error) {
	v := url.Values{}
	if before > 0 {
		v.Set("before", strconv.FormatUint(before, 10))
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	path := "/api/v1/alerts/deadletters"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out DeadLetterList
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}

// Redrive sends one dead letter again.
func (c *Client) Redrive(ctx context.Context, id uint64) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/alerts/deadletters/"+strconv.FormatUint(id, 10)+"/redrive", nil, nil)
}

// RedriveAll sends every dead letter of a route ("" for all) again.
func (c *Client) RedriveAll(ctx context.Context, route string) (int, error) {
	var out Redriven
	err := c.Do(ctx, http.MethodPost, "/api/v1/alerts/deadletters/redrive", RedriveRequest{Route: route}, &out)
	return out.Queued, err
}

// AlertSinks lists the configured sinks.
func (c *Client) AlertSinks(ctx context.Context) (*AlertSinkList, error) {
	var out AlertSinkList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/alerts/sinks", nil, &out)
}
