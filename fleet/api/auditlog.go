package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// Every state-changing API request is recorded in the audit log: who (the
// user, or the bootstrap admin), what (the route), the target (the path's
// ID or name, truncated with a marker past audit.MaxID bytes), the outcome
// from the answer's status (2xx ok; 401 and 403 denied; others failed,
// with the status), and the request ID, which the answer carries in
// X-Request-ID. A read (GET, HEAD) is recorded only when it is refused for
// a missing permission (403): denied reads by authenticated people, not
// every read. Requests no credential identifies go to
// Config.AnonymousAudit, which records a sample of them and counts the
// rest. Bodies are never recorded: they may hold secrets.

// RequestIDHeader names the request ID in answers.
const RequestIDHeader = "X-Request-ID"

// auditInfo is filled in by the inner handler once the principal is known.
type auditInfo struct{ who, token string }

type auditKey struct{}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets streaming answers (audit export) through.
func (w *statusRecorder) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// audited wraps a route's handler: it assigns the request ID and records
// the outcome of methods that change state, and of reads refused for a
// missing permission.
func (h *handler) audited(pattern string, next http.Handler) http.Handler {
	method, path, _ := strings.Cut(pattern, " ")
	action := routeAction(method, path)
	read := method == http.MethodGet || method == http.MethodHead
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := newRequestID()
		w.Header().Set(RequestIDHeader, id)
		if h.cfg.Audit == nil {
			next.ServeHTTP(w, r)
			return
		}
		info := &auditInfo{}
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), auditKey{}, info)))
		if read && rec.status != http.StatusForbidden {
			return
		}
		if info.who == "" && h.cfg.Auth != nil && rec.status == http.StatusForbidden {
			// Refused for a missing permission before the handler ran:
			// name who tried (a 401 has no one to name).
			if p, err := h.cfg.Auth.Authenticate(r); err == nil {
				info.who, info.token = p.User, p.TokenID
			}
		}
		actor, recorder := audit.User(info.who), audit.Recorder(h.cfg.Audit)
		if info.who == "" {
			actor = audit.System("api-anonymous")
			if h.cfg.AnonymousAudit != nil {
				recorder = h.cfg.AnonymousAudit
			}
		}
		e := audit.New(actor, action, routeTarget(r)).Request(id).With("route", pattern)
		if info.token != "" {
			e = e.With("token", info.token)
		}
		switch s := rec.status; {
		case s == 0 || s/100 == 2 || s/100 == 3:
		case s == http.StatusUnauthorized || s == http.StatusForbidden:
			e = e.Deny(http.StatusText(s))
		default:
			e = e.Fail(errors.New(strconv.Itoa(s) + " " + http.StatusText(s)))
		}
		if err := recorder.Record(context.WithoutCancel(r.Context()), e); err != nil {
			h.log.Error("audit: recording an API request failed", "request_id", id, "err", err)
		}
	})
}

// noteWho tells the audit wrapper who the principal is.
func noteWho(r *http.Request, who, tokenID string) {
	if info, ok := r.Context().Value(auditKey{}).(*auditInfo); ok {
		info.who, info.token = who, tokenID
	}
}

// routeAction names a route for the audit log: "api." + the path's
// constant words + the method, e.g. POST /api/v1/devices/{id}/revoke →
// api.devices.revoke.post.
func routeAction(method, path string) string {
	words := []string{"api"}
	for _, seg := range strings.Split(strings.TrimPrefix(path, "/api/v1/"), "/") {
		if seg == "" || strings.HasPrefix(seg, "{") {
			continue
		}
		words = append(words, strings.ToLower(seg))
	}
	return strings.Join(append(words, strings.ToLower(method)), ".")
}

// routeTarget is the request's path values, or the path.
func routeTarget(r *http.Request) string {
	for _, k := range []string{"id", "name"} {
		if v := r.PathValue(k); v != "" {
			return v
		}
	}
	return r.URL.Path
}

// Audit log routes.
func (h *handler) routesAudit() {
	if h.cfg.Audit == nil {
		return
	}
	h.route("GET /api/v1/audit", auth.PermAuditRead, h.listAudit)
	h.route("GET /api/v1/audit/export", auth.PermAuditRead, h.exportAudit)
	h.route("POST /api/v1/audit/verify", auth.PermAuditRead, h.verifyAudit)
	h.route("POST /api/v1/audit/checkpoint", auth.PermAuditRead, h.checkpointAudit)
}

// AuditList is GET /api/v1/audit.
type AuditList struct {
	Entries []audit.Entry `json:"entries"`
	Next    uint64        `json:"next,omitempty"` // pass as ?before= for older entries
}

func (h *handler) listAudit(w http.ResponseWriter, r *http.Request, _ string) {
	q := r.URL.Query()
	f := audit.Filter{Action: q.Get("action"), Target: q.Get("target")}
	if a := q.Get("actor"); a != "" {
		kind, id, ok := strings.Cut(a, ":")
		if !ok {
			problem(w, http.StatusBadRequest, "bad request", "actor is kind:id, e.g. user:alice or device:<id>")
			return
		}
		f.Actor = audit.Actor{Kind: audit.ActorKind(kind), ID: id}
	}
	for name, dst := range map[string]*uint64{"before": &f.Before} {
		if v := q.Get(name); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				problem(w, http.StatusBadRequest, "bad request", name+" must be a sequence number")
				return
			}
			*dst = n
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			problem(w, http.StatusBadRequest, "bad request", "limit must be 1 to 1000")
			return
		}
		f.Limit = n
	}
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				problem(w, http.StatusBadRequest, "bad request", name+" must be an RFC 3339 time")
				return
			}
			*dst = t
		}
	}
	page, err := h.cfg.Audit.List(r.Context(), f)
	if err != nil {
		h.internal(w, err)
		return
	}
	if page.Entries == nil {
		page.Entries = []audit.Entry{}
	}
	writeJSON(w, http.StatusOK, AuditList{Entries: page.Entries, Next: page.Next})
}

// exportAudit writes the log as JSON lines, after signing a checkpoint so
// that everything exported is covered by one.
func (h *handler) exportAudit(w http.ResponseWriter, r *http.Request, _ string) {
	if _, err := h.cfg.Audit.Checkpoint(r.Context()); err != nil && !errors.Is(err, audit.ErrEmpty) {
		h.internal(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="sigil-audit.jsonl"`)
	if err := h.cfg.Audit.Export(r.Context(), w, 0, 0); err != nil {
		h.log.Error("audit export failed midway", "err", err)
	}
}

func (h *handler) verifyAudit(w http.ResponseWriter, r *http.Request, _ string) {
	rep, err := h.cfg.Audit.VerifyStore(r.Context(), nil)
	if err != nil {
		var ve *audit.VerifyError
		if errors.As(err, &ve) {
			writeJSON(w, http.StatusConflict, map[string]any{"ok": false, "error": ve.Error(), "seq": ve.Seq})
			return
		}
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "report": rep})
}

func (h *handler) checkpointAudit(w http.ResponseWriter, r *http.Request, _ string) {
	cp, err := h.cfg.Audit.Checkpoint(r.Context())
	if errors.Is(err, audit.ErrEmpty) {
		problem(w, http.StatusConflict, "conflict", "the audit log is empty")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, cp)
}
