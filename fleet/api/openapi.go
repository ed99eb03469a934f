package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
)

// The OpenAPI 3.1 document at GET /api/v1/openapi.json is built from the
// route table: every registered route must be described (describe) with a
// summary and the Go types of its request and response bodies, whose JSON
// schemas are derived by reflection from the same structs the handlers
// encode. A test fails when a route lacks a description, and the e2e suite
// (TestOpenAPI) validates the document and real requests and answers
// against it with an independent implementation, kin-openapi.

// routeDoc describes one route for the OpenAPI document.
type routeDoc struct {
	Summary  string
	Request  any // a value of the request body's type; nil for none
	Response any // a value of the success body's type; nil for none
	Status   int // success status; 0 means 200
	// Also lists other media types of the success body (text such as a
	// PEM chain), besides application/json.
	Also []string
}

// describe documents a route registered with route, public or dangerous.
func (h *handler) describe(pattern, summary string, req, resp any, status ...int) {
	if h.docs == nil {
		h.docs = map[string]routeDoc{}
	}
	d := routeDoc{Summary: summary, Request: req, Response: resp}
	if len(status) > 0 {
		d.Status = status[0]
	}
	h.docs[pattern] = d
}

// alsoServes documents another media type of a described route's success
// body.
func (h *handler) alsoServes(pattern, mediaType string) {
	d := h.docs[pattern]
	d.Also = append(d.Also, mediaType)
	h.docs[pattern] = d
}

// Undocumented lists the handler's routes without a description.
func Undocumented(h http.Handler) []string {
	hh, ok := h.(*handler)
	if !ok {
		return nil
	}
	var out []string
	for _, r := range hh.routes {
		if _, ok := hh.docs[r.Pattern]; !ok {
			out = append(out, r.Pattern)
		}
	}
	return out
}

// describeCore documents the routes of this package's core files; files
// that add routes describe them next to their registration.
func (h *handler) describeCore() {
	type list = map[string]any
	h.describe("GET /healthz", "Liveness probe", nil, map[string]string{"status": "ok"})
	h.describe("GET /api/v1/openapi.json", "This OpenAPI document", nil, map[string]any{})
	h.describe("GET /api/v1/devices", "List devices (filter by state, model; page with after)", nil, struct {
		Devices []Device `json:"devices"`
		Next    string   `json:"next,omitempty"`
	}{})
	h.describe("GET /api/v1/devices/{id}", "A device with its recent lifecycle events", nil, DeviceDetail{})
	h.describe("POST /api/v1/devices/{id}/approve", "Approve a pending device", nil, Device{})
	h.describe("PATCH /api/v1/devices/{id}", "Change a device's owner, tags, model or group (model and group: secrets.write; under two_person_rule a change of model or group answers 202 with the approval request, and the whole change is made once a second person approves)", devicePatch{}, Device{})
	h.describe("POST /api/v1/enrollment-tokens", "Create a single-use enrollment token (shown once); granting a model or group needs secrets.write, and under two_person_rule such a token is created pending, with its approval request, and works only once a second person approves", EnrollmentTokenRequest{}, TokenResponse{}, 201)
	h.describe("GET /api/v1/devices/{id}/attestations", "A device's attestation verdicts, newest first", nil, AttestationList{})
	h.describe("POST /api/v1/devices/{id}/attest", "Challenge a device to attest now", nil, map[string]string{}, 202)
	h.describe("POST /api/v1/devices/{id}/release", "Release a quarantined device (justification required)", releaseRequest{}, Device{})
	h.describe("GET /api/v1/policies", "List reference policies", nil, list{"policies": []policy.Policy{}})
	h.describe("POST /api/v1/policies", "Create a reference policy", policy.Policy{}, policy.Policy{}, 201)
	h.describe("POST /api/v1/policies/learn", "Learn a policy from a golden device's last passing attestation", learnRequest{}, policy.Policy{}, 201)
	h.describe("GET /api/v1/policies/{id}", "A reference policy", nil, policy.Policy{})
	h.describe("PUT /api/v1/policies/{id}", "Replace a reference policy (new version)", policy.Policy{}, policy.Policy{})
	h.describe("DELETE /api/v1/policies/{id}", "Delete a reference policy", nil, nil, 204)
	h.describe("GET /api/v1/policies/{id}/versions", "Every version of a policy", nil, list{"versions": []policy.Policy{}})
	h.describe("GET /api/v1/ca", "The CA's generations and the trust bundle", nil, CAView{})
	h.describe("POST /api/v1/ca/prepare", "Prepare the next CA generation", nil, ca.Generation{}, 201)
	h.describe("POST /api/v1/ca/activate", "Activate the prepared generation and re-issue devices", CAActivateRequest{}, CAActivateResponse{})
	h.describe("POST /api/v1/ca/retire", "Retire superseded generations", nil, list{"retired": []ca.Generation{}})
	h.describe("POST /api/v1/devices/{id}/revoke", "Revoke every unexpired certificate of a device (reason) and close its sessions; it may enroll again from its EK", revokeRequest{}, Device{})
	h.describe("POST /api/v1/devices/{id}/decommission", "Decommission a device", revokeRequest{}, Device{})
	h.describe("POST /api/v1/devices/{id}/rotate", "Rotate one device's certificate now", nil, RotationView{}, 201)
	h.describe("GET /api/v1/rotations", "List rotation jobs", nil, list{"rotations": []RotationView{}})
	h.describe("POST /api/v1/rotations", "Start a forced rotation job (devices, group, model or all)", rotationRequest{}, RotationView{}, 201)
	h.describe("GET /api/v1/rotations/{id}", "A rotation job and its progress", nil, RotationView{})
	h.describe("POST /api/v1/rotations/{id}/cancel", "Cancel a rotation job", nil, RotationView{})
	h.describe("GET /api/v1/rotations/{id}/devices", "A rotation job's devices, paged", nil, list{"devices": []rotation.JobDevice{}, "next": ""})
	h.describe("GET /api/v1/crl", "The CA's signed CRL (DER)", nil, nil)
	h.describe("GET /crl", "The CA's signed CRL (DER); with after=N (a CRL number), waits up to 50s for a newer one (304 when none came); a broker sync's token (brokers.sync) waits in slots kept for the syncs; with set=generations, the trust bundle, cross certificates and one CRL per trusted CA generation (PEM)", nil, nil)
	h.describe("GET /api/v1/secrets", "List secrets (never values) with delivery and version states", nil, SecretList{})
	h.describe("PUT /api/v1/secrets/{name}", "Store a new version of a secret (value base64), optionally on a rotation schedule", SecretRequest{}, secrets.Info{}, 201)
	h.describe("DELETE /api/v1/secrets/{name}", "Delete a secret", nil, nil, 204)
	h.describe("PUT /api/v1/secrets/{name}/rotation", "Set a secret's rotation schedule", secrets.Rotation{}, nil, 204)
	h.describe("DELETE /api/v1/secrets/{name}/rotation", "Clear a secret's rotation schedule", nil, nil, 204)
	h.describe("POST /api/v1/secrets/{name}/rotate", "Generate and deliver a new version now", nil, secrets.Info{}, 201)
	h.describe("GET /api/v1/devices/{id}/secrets", "A device's secrets and their delivery state", nil, DeviceSecretList{})
	h.describe("GET /api/v1/ssh/ca", "The SSH host CA (JSON, or ?format=known_hosts text)", nil, SSHCA{})
	h.describe("POST /api/v1/login", "Log in (JSON or form); sets the session cookie", map[string]string{"user": "", "password": ""}, auth.LoginResponse{})
	h.describe("POST /api/v1/logout", "End the session", nil, nil, 204)
	h.describe("GET /api/v1/me", "Who the caller is and what they may do", nil, Me{})
	h.describe("GET /api/v1/users", "List operators", nil, list{"users": []auth.User{}})
	h.describe("POST /api/v1/users/me/password", "Change your own password (the current one is required; throttled like logins): every session of yours ends, a browser's own continues under a new ID; API tokens are not affected", PasswordRequest{}, PasswordChanged{})
	h.describe("POST /api/v1/users", "Create an operator with a role the caller covers (a generated password is shown once; under two_person_rule the account stays disabled until a second person approves)", UserRequest{}, UserCreated{}, 201)
	h.describe("PATCH /api/v1/users/{name}", "Change an operator's role or disable them, within the caller's scope (under two_person_rule a role change or enabling answers 202 with the approval request)", UserPatch{}, auth.User{})
	h.describe("DELETE /api/v1/users/{name}", "Delete an operator", nil, nil, 204)
	h.describe("GET /api/v1/tokens", "The caller's API tokens (?owner= for admins)", nil, list{"tokens": []auth.Token{}})
	h.describe("POST /api/v1/tokens", "Create an API token for the caller, scoped to at most the caller's own scope and never outliving a token that creates it (secret shown once; under two_person_rule a token that may approve stays pending until a second person approves)", TokenRequest{}, TokenCreated{}, 201)
	h.describe("DELETE /api/v1/tokens/{id}", "Revoke an API token: itself, or one that may do no more than the caller", nil, nil, 204)
	h.describe("GET /api/v1/audit", "Browse the audit log (actor, action, target, time; paged by before)", nil, AuditList{})
	h.describe("GET /api/v1/audit/export", "Export the audit log as JSON lines (after a checkpoint)", nil, nil)
	h.describe("POST /api/v1/audit/verify", "Verify the stored audit log's chain and checkpoints", nil, map[string]any{"ok": true, "report": audit.Report{}})
	h.describe("POST /api/v1/audit/checkpoint", "Sign a checkpoint now", nil, audit.Checkpoint{})
	h.describe("GET /api/v1/approvals", "The caller's approvals inbox (?all for history)", nil, ApprovalList{})
	h.describe("GET /api/v1/approvals/{id}", "An approval request", nil, approval.Request{})
	h.describe("POST /api/v1/approvals/{id}/approve", "Approve a request (not one's own, nor with an account created or changed after it)", DecisionRequest{}, approval.Request{})
	h.describe("POST /api/v1/approvals/{id}/reject", "Reject a request (reason required)", DecisionRequest{}, approval.Request{})
}

// openAPI serves the document, built once.
func (h *handler) openAPI(w http.ResponseWriter, _ *http.Request) {
	h.docOnce.Do(func() { h.docJSON, h.docErr = json.Marshal(h.buildOpenAPI()) })
	if h.docErr != nil {
		h.internal(w, h.docErr)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(h.docJSON)
}

// docState holds the built document.
type docState struct {
	docs    map[string]routeDoc
	docOnce sync.Once
	docJSON []byte
	docErr  error
}

func (h *handler) buildOpenAPI() map[string]any {
	sg := &schemaGen{defs: map[string]any{}}
	in := &schemaGen{defs: sg.defs, input: true}
	paths := map[string]map[string]any{}
	for _, r := range h.routes {
		method, path, _ := strings.Cut(r.Pattern, " ")
		d := h.docs[r.Pattern]
		op := map[string]any{"summary": d.Summary, "operationId": operationID(method, path)}
		var params []any
		for _, seg := range strings.Split(path, "/") {
			if strings.HasPrefix(seg, "{") {
				params = append(params, map[string]any{"name": strings.Trim(seg, "{}"), "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
			}
		}
		if params != nil {
			op["parameters"] = params
		}
		if d.Request != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": in.schema(reflect.TypeOf(d.Request))}}}
		}
		status := d.Status
		if status == 0 {
			status = 200
		}
		resp := map[string]any{"description": http.StatusText(status)}
		if d.Response != nil {
			content := map[string]any{"application/json": map[string]any{"schema": sg.schema(reflect.TypeOf(d.Response))}}
			for _, mt := range d.Also {
				content[mt] = map[string]any{"schema": map[string]any{"type": "string"}}
			}
			resp["content"] = content
		}
		responses := map[string]any{itoa(status): resp, "default": map[string]any{
			"description": "an RFC 9457 problem", "content": map[string]any{"application/problem+json": map[string]any{"schema": sg.schema(reflect.TypeOf(Problem{}))}}}}
		op["responses"] = responses
		if r.Perm != "" {
			op["security"] = []any{map[string]any{"bearer": []string{}}, map[string]any{"session": []string{}}}
			op["x-permission"] = string(r.Perm)
			if len(r.Fields) > 0 {
				op["x-field-permissions"] = map[string]any{"fields": r.Fields, "permission": string(r.FieldPerm)}
			}
		} else {
			op["security"] = []any{}
		}
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info":    map[string]any{"title": "Sigil fleet API", "version": "v1"},
		"paths":   paths,
		"components": map[string]any{
			"schemas": sg.defs,
			"securitySchemes": map[string]any{
				"bearer":  map[string]any{"type": "http", "scheme": "bearer", "description": "an API token (sga_…)"},
				"session": map[string]any{"type": "apiKey", "in": "cookie", "name": "__Host-sigil-session", "description": "a console session; state changes also need the X-CSRF-Token header"},
			},
		},
	}
}

// operationID names a route uniquely, as OpenAPI requires: like its
// audit action (routeAction), which leaves path values out, with each path
// value's name in its place ("api.devices.by_id.get"); routes outside
// /api/v1 are named by their path alone ("crl.get").
func operationID(method, path string) string {
	var words []string
	if rest, ok := strings.CutPrefix(path, "/api/v1/"); ok {
		words, path = []string{"api"}, rest
	}
	for _, seg := range strings.Split(path, "/") {
		switch {
		case seg == "":
		case strings.HasPrefix(seg, "{"):
			words = append(words, "by_"+strings.Trim(seg, "{}."))
		default:
			words = append(words, strings.ToLower(seg))
		}
	}
	return strings.Join(append(words, strings.ToLower(method)), ".")
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// schemaGen derives JSON schemas from Go types the way encoding/json
// encodes them; named struct types become components. An input schema,
// of a request body, requires no property: encoding/json decodes any
// subset, and a handler that needs a field refuses its absence with a
// problem that says so. Its components are named with an ".input" suffix.
type schemaGen struct {
	defs  map[string]any
	input bool
}

var (
	timeType    = reflect.TypeOf(time.Time{})
	rawJSONType = reflect.TypeOf(json.RawMessage{})
	marshaler   = reflect.TypeOf((*json.Marshaler)(nil)).Elem()
	textMarsh   = reflect.TypeOf((*interface{ MarshalText() ([]byte, error) })(nil)).Elem()
)

func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t == rawJSONType:
		return map[string]any{}
	case t.Kind() != reflect.Struct && (t.Implements(marshaler) || reflect.PointerTo(t).Implements(marshaler)):
		return map[string]any{"type": "string"} // e.g. config.Duration "30s"
	case t.Implements(textMarsh) || reflect.PointerTo(t).Implements(textMarsh):
		return map[string]any{"type": "string"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.schema(t.Elem())
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "contentEncoding": "base64"}
		}
		return map[string]any{"type": []string{"array", "null"}, "items": g.schema(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": []string{"object", "null"}, "additionalProperties": g.schema(t.Elem())}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		name := t.Name()
		if name != "" {
			key := strings.ReplaceAll(t.PkgPath()[strings.LastIndexByte(t.PkgPath(), '/')+1:]+"."+name, "/", ".")
			if g.input {
				key += ".input"
			}
			if _, ok := g.defs[key]; !ok {
				g.defs[key] = map[string]any{} // recursion guard
				g.defs[key] = g.object(t)
			}
			return map[string]any{"$ref": "#/components/schemas/" + key}
		}
		return g.object(t)
	}
	return map[string]any{}
}

// object is the schema of a struct's JSON object: its exported fields by
// their JSON names, embedded structs flattened; in an output schema,
// fields without omitempty or omitzero are required.
func (g *schemaGen) object(t reflect.Type) map[string]any {
	props := map[string]any{}
	var required []string
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if f.Anonymous && name == "" {
				ft := f.Type
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct {
					walk(ft)
					continue
				}
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = g.schema(f.Type)
			if !g.input && !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				required = append(required, name)
			}
		}
	}
	walk(t)
	sort.Strings(required)
	out := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		out["required"] = required
	}
	return out
}
