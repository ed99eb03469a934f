// Package api serves the fleet's JSON API under /api/v1 over HTTPS with
// bearer-token authentication. Errors are RFC 9457 problem+json documents
// whose detail is public; internal causes are logged, never returned.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/crl"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/sshca"
)

// Approver approves pending devices (the enrollment service).
type Approver interface {
	Approve(deviceID, by string) error
}

// Inventory is what the API reads and changes of the device inventory.
// *inventory.Store implements it (bbolt or PostgreSQL).
type Inventory interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	Query(ctx context.Context, q inventory.Query) (inventory.Page, error)
	Update(ctx context.Context, id string, fn func(*inventory.Device) error) error
	Events(ctx context.Context, deviceID string, limit int) ([]inventory.Event, error)
	AddEvent(ctx context.Context, e inventory.Event) error
	RevokeDevice(ctx context.Context, id string, reason int) (*inventory.Device, []string, error)
	Decommission(ctx context.Context, id string) (*inventory.Device, []string, error)
	Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error)
	CreateToken(ctx context.Context, g inventory.Grant, owner string, ttl time.Duration) (string, *inventory.Token, error)
	CreatePendingToken(ctx context.Context, g inventory.Grant, owner string, ttl time.Duration) (string, *inventory.Token, error)
	ActivateToken(ctx context.Context, id string, g inventory.Grant) (*inventory.Token, error)
	DeleteToken(ctx context.Context, id string) error
	Tokens(ctx context.Context, f inventory.TokenFilter) ([]inventory.Token, string, error)
}

var _ Inventory = (*inventory.Store)(nil)

// Config configures the handler.
type Config struct {
	Inventory Inventory
	Approver  Approver
	// Attestation and Policies serve the attestation routes.
	Attestation Attestation
	Policies    Policies
	// Rotation, CA and Disconnect serve the credential lifecycle routes.
	Rotation   *rotation.Service
	CA         *ca.CA
	Disconnect func(deviceID string)
	// CARotation serves the CA rotation routes; nil answers them with 501.
	CARotation CARotation
	// Secrets serves the sealed-secrets routes; nil answers them with 501.
	Secrets Secrets
	// SSHCA serves GET /api/v1/ssh/ca; nil answers it with 404.
	SSHCA *sshca.CA
	// Access serves just-in-time operator access (/api/v1/access); nil
	// leaves its routes out.
	Access Access
	// Auth authenticates operators (sessions, API tokens) and holds their
	// roles. Nil accepts only the bearer token whose SHA-256 is
	// AdminTokenHash, with every permission (for tests of this package).
	Auth *auth.Service
	// Approvals, when set, holds the dangerous routes' calls for a second
	// person's approval (see approvals.go); nil lets them act at once.
	Approvals *approval.Manager
	// RateLimit is the requests per second each client address may make
	// (bursts of RateBurst); 0 means 50 (bursts of 200), negative means no
	// limit.
	RateLimit float64
	RateBurst int
	// Audit records every state-changing request; nil records nothing.
	Audit *audit.Log
	// AnonymousAudit records the entries of state-changing requests that
	// no credential identifies (refused with 401): anyone can send them,
	// so it should be an audit.Sampler over Audit, which keeps the log
	// from growing with their number. Nil records them in Audit.
	AnonymousAudit audit.Recorder
	// Firmware serves the firmware release and campaign routes; nil
	// answers them with 501.
	Firmware Firmware
	// AdminTokenHash is the SHA-256 of the admin bearer token when Auth is
	// nil.
	AdminTokenHash []byte
	// Telemetry serves devices' telemetry, Alerts the alert routes and
	// AlertSinks lists the configured sinks; nil answers with 501.
	Telemetry  Telemetry
	Alerts     Alerts
	AlertSinks []AlertSink
	// Metrics is served at GET /metrics (Prometheus text format); nil
	// answers with 501.
	Metrics http.Handler
	// Connected reports live broker sessions; nil means unknown.
	Connected func(deviceID string) bool
	// Quarantiner serves POST /api/v1/devices/{id}/quarantine; nil answers
	// it with 501.
	Quarantiner Quarantiner
	// CRL serves GET /crl; nil signs it with CA from Inventory's
	// revocations, told of the changes this handler makes only.
	CRL *crl.Publisher
	// Governance serves owners, triage, blocks, clones and risk
	// (governance.go); nil answers them with 501.
	Governance *governance.Service
	// Workloads serves workload registrations and the OIDC documents
	// (workloads.go); nil answers them with 501.
	Workloads Workloads
	// Backup serves POST /api/v1/backup (backup.Live); nil answers it
	// with 501.
	Backup Backups
	// Bridges serves the OT bridges (bridges.go); nil answers them with 501.
	Bridges Bridges
	Logger  *slog.Logger
	Now     func() time.Time
}

// maxBody bounds request bodies.
const maxBody = 64 << 10

type handler struct {
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	crls   *crl.Publisher
	routes []route
	gated  gated
	docState
	limit *limiter
}

// New returns the API handler.
func New(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), limit: newLimiter(cfg.RateLimit, cfg.RateBurst, cfg.Now), crls: cfg.CRL}
	if h.crls == nil {
		c := crl.Config{Revocations: cfg.Inventory, Now: cfg.Now}
		if cfg.CA != nil {
			c.Signer = cfg.CA
		}
		h.crls = crl.New(c)
	}
	h.public("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	h.route("GET /api/v1/devices", auth.PermDevicesRead, h.listDevices)
	h.route("GET /api/v1/devices/{id}", auth.PermDevicesRead, h.getDevice)
	h.routesDeviceCert()
	h.route("POST /api/v1/devices/{id}/approve", auth.PermDevicesWrite, h.approve)
	h.route("PATCH /api/v1/devices/{id}", auth.PermDevicesWrite, h.patchDevice)
	h.fieldsNeed("PATCH /api/v1/devices/{id}", assignPerm, "model", "group")
	h.route("POST /api/v1/enrollment-tokens", auth.PermDevicesWrite, h.createToken)
	h.fieldsNeed("POST /api/v1/enrollment-tokens", assignPerm, "model", "group")
	h.registerAssignExecutors()
	h.routesEnrollmentTokens()
	h.routesAttest()
	h.routesLifecycle()
	h.routesSSH()
	h.routesAccess()
	h.routesSecrets()
	h.routesCA()
	h.routesUsers()
	h.routesAudit()
	h.routesApprovals()
	h.routesTelemetry()
	h.routesAlerts()
	h.routesFirmware()
	h.routesExposure()
	h.routesQuarantine()
	h.routesBulk()
	h.routesGovernance()
	h.routesWorkloads()
	h.routesBackup()
	h.routesBridges()
	h.public("GET /api/v1/openapi.json", h.openAPI)
	h.describeCore()
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		problem(w, http.StatusNotFound, "not found", "no such resource: "+r.URL.Path)
	})
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Strict-Transport-Security", "max-age=31536000")
	if h.limited(w, r) {
		return
	}
	if n := bodyLimit(r); n > 0 {
		r.Body = http.MaxBytesReader(w, r.Body, n)
	}
	h.mux.ServeHTTP(w, r)
}

// Device is the API's view of an inventory record.
type Device struct {
	ID            string    `json:"id"`
	State         string    `json:"state"`
	Model         string    `json:"model"`
	ClaimedModel  string    `json:"claimed_model,omitempty"` // what the device said it is; targets nothing
	Firmware      string    `json:"firmware,omitempty"`
	Owner         string    `json:"owner,omitempty"`
	Purpose       string    `json:"purpose,omitempty"`
	Serial        string    `json:"serial,omitempty"`
	EKFingerprint string    `json:"ek_fingerprint"`
	TrustPath     string    `json:"trust_path,omitempty"`
	CertSerial    string    `json:"cert_serial,omitempty"`
	CertExpiry    time.Time `json:"cert_expiry,omitzero"`
	FirstSeen     time.Time `json:"first_seen,omitzero"`
	LastSeen      time.Time `json:"last_seen,omitzero"`
	EnrolledAt    time.Time `json:"enrolled_at,omitzero"`
	Connected     bool      `json:"connected"`
	Flags         []string  `json:"flags,omitempty"`
	Group         string    `json:"group,omitempty"`
	Tags          []string  `json:"tags,omitempty"`
	Attestation   string    `json:"attestation,omitempty"`
	LastAttested  time.Time `json:"last_attested,omitzero"`
	Protocol      int       `json:"protocol,omitempty"` // the wire protocol version the fleet speaks to it (its last)
}

func (h *handler) view(d *inventory.Device) Device {
	v := Device{
		ID: d.ID, State: string(d.State), Model: d.Model, ClaimedModel: d.ClaimedModel, Firmware: d.Firmware, Owner: d.Owner, Purpose: d.Purpose, Serial: d.Serial,
		EKFingerprint: d.EKFingerprint, TrustPath: d.TrustPath, CertSerial: d.CertSerial, CertExpiry: d.CertExpiry,
		FirstSeen: d.FirstSeen, LastSeen: d.LastSeen, EnrolledAt: d.EnrolledAt, Connected: d.Connected, Flags: d.Flags,
		Group: d.Group, Tags: d.Tags, Attestation: d.Attestation, LastAttested: d.LastAttested, Protocol: d.Protocol,
	}
	if h.cfg.Connected != nil {
		v.Connected = h.cfg.Connected(d.ID)
	}
	return v
}

func (h *handler) listDevices(w http.ResponseWriter, r *http.Request, _ string) {
	q := r.URL.Query()
	f := inventory.Filter{State: inventory.State(q.Get("state")), Model: q.Get("model"), After: q.Get("after"), Limit: 100}
	if s := q.Get("state"); s != "" && !validState(s) {
		problem(w, http.StatusBadRequest, "bad request", "state must be one of pending, active, quarantined, decommissioned")
		return
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			problem(w, http.StatusBadRequest, "bad request", "limit must be an integer from 1 to 1000")
			return
		}
		f.Limit = n
	}
	devs, next, err := h.cfg.Inventory.ListDevices(r.Context(), f)
	if errors.Is(err, inventory.ErrQuery) {
		problem(w, http.StatusBadRequest, "bad request", "after must be a device ID from a previous page")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	out := struct {
		Devices []Device `json:"devices"`
		Next    string   `json:"next,omitempty"`
	}{Devices: make([]Device, 0, len(devs)), Next: next}
	for i := range devs {
		out.Devices = append(out.Devices, h.view(&devs[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func validState(s string) bool {
	switch inventory.State(s) {
	case inventory.StatePending, inventory.StateActive, inventory.StateQuarantined, inventory.StateDecommissioned:
		return true
	}
	return false
}

// Event is a lifecycle event in the API.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail,omitempty"`
}

func (h *handler) getDevice(w http.ResponseWriter, r *http.Request, _ string) {
	d, err := h.cfg.Inventory.Device(r.Context(), r.PathValue("id"))
	if errors.Is(err, inventory.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	evs, err := h.cfg.Inventory.Events(r.Context(), d.ID, 50)
	if err != nil {
		h.internal(w, err)
		return
	}
	out := struct {
		Device
		Events []Event `json:"events"`
	}{Device: h.view(d), Events: make([]Event, 0, len(evs))}
	for _, e := range evs {
		out.Events = append(out.Events, Event{Time: e.Time, Kind: e.Kind, Detail: e.Detail})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) approve(w http.ResponseWriter, r *http.Request, who string) {
	id := r.PathValue("id")
	err := h.cfg.Approver.Approve(id, who)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
		return
	case errors.Is(err, enroll.ErrNotPending):
		problem(w, http.StatusConflict, "conflict", "the device is not pending approval")
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	d, err := h.cfg.Inventory.Device(r.Context(), id)
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.view(d))
}

// assignPerm guards what secrets and policies target a device by: minting
// an enrollment token that grants a model or group, and changing a
// device's model or group. Whoever can choose a device's group can have a
// secret delivered to a TPM of their choosing, so it is a secret-level
// permission, not devices.write.
const assignPerm = auth.PermSecretsWrite

// errAssign refuses a change of model or group without assignPerm.
var errAssign = errors.New("api: changing a device's model or group needs " + string(assignPerm))

// devicePatch changes operator-owned fields; absent fields stay. Changing
// model or group (to another value) also needs assignPerm, and under the
// two-person rule a second person's approval (assign.go).
type devicePatch struct {
	Owner *string   `json:"owner"`
	Model *string   `json:"model"`
	Group *string   `json:"group"`
	Tags  *[]string `json:"tags"` // replaces the device's tags
}

func (h *handler) patchDevice(w http.ResponseWriter, r *http.Request, who string) {
	var p devicePatch
	if !decode(w, r, &p) {
		return
	}
	for name, v := range map[string]*string{"owner": p.Owner, "model": p.Model, "group": p.Group} {
		if v != nil && (len(*v) > 128 || strings.ContainsAny(*v, "\x00\n\r")) {
			problem(w, http.StatusBadRequest, "bad request", name+" must be at most 128 characters on one line")
			return
		}
	}
	if p.Tags != nil {
		if len(*p.Tags) > inventory.MaxTags {
			problem(w, http.StatusBadRequest, "bad request", fmt.Sprintf("at most %d tags", inventory.MaxTags))
			return
		}
		for _, t := range *p.Tags {
			if !inventory.ValidTag(t) {
				problem(w, http.StatusBadRequest, "bad request", "a tag is 1 to 64 characters of a-z, 0-9 and ._:-=, starting with a letter or digit: "+strconv.Quote(t))
				return
			}
		}
	}
	id := r.PathValue("id")
	mayAssign, held := h.can(r, assignPerm), h.cfg.Approvals != nil
	err := h.cfg.Inventory.Update(r.Context(), id, func(d *inventory.Device) error { return p.apply(d, mayAssign, held) })
	if errors.Is(err, inventory.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
		return
	}
	if errors.Is(err, errAssign) {
		problem(w, http.StatusForbidden, "forbidden", "changing a device's model or group decides which secrets it receives: it needs the "+string(assignPerm)+" permission")
		return
	}
	if errors.Is(err, errHeld) {
		h.fileDeviceAssign(w, r, id, p)
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("device updated", "device_id", id, "by", who)
	d, err := h.cfg.Inventory.Device(r.Context(), id)
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.view(d))
}

// EnrollmentTokenRequest is the body of POST /api/v1/enrollment-tokens.
// A token that grants a model or group (the device enrolled with it gets
// them) needs assignPerm.
type EnrollmentTokenRequest struct {
	Model string `json:"model"`
	Group string `json:"group"`
	Owner string `json:"owner"`
	TTL   string `json:"ttl"`
}

// TokenResponse shows a new enrollment token; the secret is shown once.
type TokenResponse struct {
	ID      string    `json:"id"`
	Token   string    `json:"token"`
	Model   string    `json:"model,omitempty"`
	Group   string    `json:"group,omitempty"`
	Owner   string    `json:"owner,omitempty"`
	Expires time.Time `json:"expires"`
	// Pending, under the two-person rule for a token that grants a model
	// or group: no device enrolls with it until a second person approves
	// Approval, the request filed for it.
	Pending  bool              `json:"pending,omitempty"`
	Approval *approval.Request `json:"approval,omitempty"`
}

func (h *handler) createToken(w http.ResponseWriter, r *http.Request, _ string) {
	var req EnrollmentTokenRequest
	if !decode(w, r, &req) {
		return
	}
	if (req.Model != "" || req.Group != "") && !h.can(r, assignPerm) {
		problem(w, http.StatusForbidden, "forbidden", "a token that grants a model or group decides which secrets a device receives: minting it needs the "+string(assignPerm)+" permission")
		return
	}
	ttl := 24 * time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > 365*24*time.Hour {
			problem(w, http.StatusBadRequest, "bad request", "ttl must be a positive duration up to 8760h, e.g. \"24h\"")
			return
		}
		ttl = d
	}
	for _, v := range []string{req.Model, req.Group, req.Owner} {
		if len(v) > 128 || strings.ContainsAny(v, "\x00\n\r") {
			problem(w, http.StatusBadRequest, "bad request", "model, group and owner are at most 128 characters on one line")
			return
		}
	}
	if (req.Model != "" || req.Group != "") && h.cfg.Approvals != nil {
		h.createHeldToken(w, r, req, ttl)
		return
	}
	secret, tok, err := h.cfg.Inventory.CreateToken(r.Context(), inventory.Grant{Model: req.Model, Group: req.Group}, req.Owner, ttl)
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("enrollment token created", "token_id", tok.ID, "model", tok.Model, "group", tok.Group, "owner", tok.Owner, "expires", tok.Expires)
	writeJSON(w, http.StatusCreated, TokenResponse{ID: tok.ID, Token: secret, Model: tok.Model, Group: tok.Group, Owner: tok.Owner, Expires: tok.Expires})
}

// decode reads a JSON body strictly; on failure it has written a 4xx.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		problem(w, http.StatusUnsupportedMediaType, "unsupported media type", "send the body as JSON with Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			problem(w, http.StatusRequestEntityTooLarge, "request too large", fmt.Sprintf("bodies are limited to %d bytes", maxBody))
			return false
		}
		problem(w, http.StatusBadRequest, "bad request", "malformed JSON body: "+publicJSONError(err))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		problem(w, http.StatusBadRequest, "bad request", "trailing data after the JSON body")
		return false
	}
	return true
}

// decodeAt decodes a JSON body like decode for a resource the path names by
// its param value: the body's key field (*key, a field of v) must be empty or
// equal that value, and on success holds it. On failure it has written a 4xx.
func decodeAt(w http.ResponseWriter, r *http.Request, v any, key *string, param string) bool {
	if !decode(w, r, v) {
		return false
	}
	want := r.PathValue(param)
	if *key != "" && *key != want {
		problem(w, http.StatusBadRequest, "bad request", "the body's "+param+" differs from the path's")
		return false
	}
	*key = want
	return true
}

func publicJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	}
	if strings.HasPrefix(err.Error(), "json: unknown field") {
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "syntax error"
}

func (h *handler) internal(w http.ResponseWriter, err error) {
	h.log.Error("api internal error", "err", err)
	problem(w, http.StatusInternalServerError, "internal error", "the server could not complete the request")
}

// Problem is an RFC 9457 problem document.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: "about:blank", Title: title, Status: status, Detail: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
