package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestOpenAPI: the document served at /api/v1/openapi.json is valid
// OpenAPI 3.1 as an independent implementation (kin-openapi) reads it; it
// lists every registered route with its method and permission, and every
// route is described. Real exchanges with the fleet are checked against
// it by kin-openapi's openapi3filter: the live JSON answers of the read
// routes and of a few state-changing routes match their documented
// schemas (with no property the document does not describe), the
// requests that the fleet refuses the document refuses too, and those
// refusals are the documented problem+json.
func TestOpenAPI(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	c, _ := f.Client()
	ctx := context.Background()
	if u := api.Undocumented(f.API()); len(u) > 0 {
		t.Fatalf("routes without an OpenAPI description: %v", u)
	}
	resp, err := c.HTTP.Get(f.APIURL() + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("document: %d %v", resp.StatusCode, err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatalf("the document does not load: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("document version %q", doc.OpenAPI)
	}
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("the document is not valid OpenAPI: %v", err)
	}

	routes := api.Routes(f.API())
	for _, r := range routes {
		method, path, _ := strings.Cut(r.Pattern, " ")
		var op *openapi3.Operation
		if item := doc.Paths.Value(path); item != nil {
			op = item.GetOperation(method)
		}
		if op == nil || op.Summary == "" {
			t.Errorf("%s is not in the document", r.Pattern)
			continue
		}
		if r.Perm != "" && op.Extensions["x-permission"] != string(r.Perm) {
			t.Errorf("%s: documented permission %v, route requires %s", r.Pattern, op.Extensions["x-permission"], r.Perm)
		}
	}
	n := 0
	for _, item := range doc.Paths.Map() {
		n += len(item.Operations())
	}
	if n != len(routes) {
		t.Errorf("document has %d operations, the server %d routes", n, len(routes))
	}

	// Answers may carry no property their schema does not list.
	closeObjects(doc)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, AuthenticationFunc: authenticated}
	// exchange sends a request and checks it and its answer against the
	// document; it returns the answer's status and body, and the
	// validator's opinion of the request.
	exchange := func(method, path, body string) (int, []byte, error) {
		t.Helper()
		newReq := func() *http.Request {
			req, _ := http.NewRequestWithContext(ctx, method, f.APIURL()+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+f.AdminToken())
			if body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			return req
		}
		req := newReq()
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Fatalf("%s %s: no route in the document: %v", method, path, err)
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
		reqErr := openapi3filter.ValidateRequest(ctx, in)
		res, err := c.HTTP.Do(newReq())
		if err != nil {
			t.Fatal(err)
		}
		resBody, _ := io.ReadAll(res.Body)
		res.Body.Close()
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: res.StatusCode, Header: res.Header, Options: opts}
		out.SetBodyBytes(resBody)
		if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
			t.Errorf("%s %s answered %d, not as documented: %v\n%s", method, path, res.StatusCode, err, resBody)
		}
		return res.StatusCode, resBody, reqErr
	}

	// The read routes, live.
	checked := 0
	for _, r := range routes {
		method, path, _ := strings.Cut(r.Pattern, " ")
		if method != "GET" || strings.Contains(path, "export") || strings.Contains(path, "crl") || strings.Contains(path, "openapi") || path == "/metrics" {
			continue
		}
		if strings.Contains(path, "{") {
			// Path values that exist in this fleet: the device's.
			if !slices.Contains([]string{"/api/v1/devices/{id}", "/api/v1/devices/{id}/attestations", "/api/v1/devices/{id}/secrets", "/api/v1/devices/{id}/risk", "/api/v1/devices/{id}/certificate"}, path) {
				continue
			}
			path = strings.ReplaceAll(path, "{id}", id)
		}
		if path == "/api/v1/ssh/ca" {
			path += "?format=json"
		}
		status, body, reqErr := exchange(method, path, "")
		if reqErr != nil {
			t.Errorf("GET %s: the document refuses the request: %v", path, reqErr)
		}
		switch status {
		case http.StatusNotImplemented:
			continue // a feature this fleet has not configured (e.g. firmware without release_trust)
		case http.StatusOK:
			checked++
		default:
			t.Errorf("GET %s: %d %s", path, status, body)
		}
	}
	if checked < 10 {
		t.Fatalf("only %d answers checked", checked)
	}

	// State changes with bodies, both ways.
	for _, good := range []struct{ method, path, body string }{
		{"POST", "/api/v1/enrollment-tokens", `{"model": "gw-1", "ttl": "1h"}`},
		{"POST", "/api/v1/tokens", `{"name": "openapi", "role": "viewer", "ttl": "1h"}`},
		{"PATCH", "/api/v1/devices/" + id, `{"owner": "ops", "tags": ["lab"]}`},
		{"POST", "/api/v1/devices/" + id + "/attest", ""},
	} {
		status, body, reqErr := exchange(good.method, good.path, good.body)
		if reqErr != nil {
			t.Errorf("%s %s: the document refuses the request: %v", good.method, good.path, reqErr)
		}
		if status/100 != 2 {
			t.Errorf("%s %s: %d %s", good.method, good.path, status, body)
		}
		checked++
	}
	t.Logf("%d routes documented; %d live exchanges checked against the document", len(routes), checked)

	// Bad input: refused by the fleet with a problem+json that has a
	// reason, and refused by the document too, but for the size limit,
	// which OpenAPI cannot state.
	for _, bad := range []struct {
		method, path, body string
		undocumented       bool
	}{
		{"POST", "/api/v1/enrollment-tokens", `{"ttl": 5}`, false},
		{"POST", "/api/v1/enrollment-tokens", `{`, false},
		{"POST", "/api/v1/enrollment-tokens", strings.Repeat(" ", 70<<10) + "{}", true},
		{"POST", "/api/v1/tokens", `{"name": ["not", "a", "name"]}`, false},
		{"PATCH", "/api/v1/devices/" + id, `{"tags": "lab"}`, false},
	} {
		status, body, reqErr := exchange(bad.method, bad.path, bad.body)
		var p api.Problem
		if status/100 != 4 || json.Unmarshal(body, &p) != nil || p.Detail == "" {
			t.Errorf("%s %s (%d bytes): %d %s", bad.method, bad.path, len(bad.body), status, body)
		}
		var re *openapi3filter.RequestError
		if !bad.undocumented && !errors.As(reqErr, &re) {
			t.Errorf("%s %s (%d bytes): the fleet refused it (%d), the document accepts it (%v)", bad.method, bad.path, len(bad.body), status, reqErr)
		}
	}
	// A bad query parameter, which the document leaves open: the fleet's
	// refusal is still the documented problem.
	if status, body, _ := exchange("GET", "/api/v1/devices?limit=-1", ""); status != http.StatusBadRequest {
		t.Errorf("GET /api/v1/devices?limit=-1: %d %s", status, body)
	}
}

// authenticated is the document's security schemes as the validator
// checks them: the request carries the credential the scheme names (the
// fleet itself decides whether it is good).
func authenticated(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	req := in.RequestValidationInput.Request
	switch in.SecuritySchemeName {
	case "bearer":
		if strings.HasPrefix(req.Header.Get("Authorization"), "Bearer ") {
			return nil
		}
	case "session":
		if _, err := req.Cookie(in.SecurityScheme.Name); err == nil {
			return nil
		}
	}
	return fmt.Errorf("no %s credential", in.SecuritySchemeName)
}

// closeObjects makes every object schema of doc that lists its properties
// refuse others (additionalProperties: false), so that an answer with an
// undocumented property fails validation. The document itself leaves
// them open, as clients should tolerate new properties.
func closeObjects(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	var walk func(s *openapi3.SchemaRef)
	walk = func(s *openapi3.SchemaRef) {
		if s == nil || s.Value == nil || seen[s.Value] {
			return
		}
		v := s.Value
		seen[v] = true
		if len(v.Properties) > 0 && v.AdditionalProperties.Has == nil && v.AdditionalProperties.Schema == nil {
			no := false
			v.AdditionalProperties.Has = &no
		}
		for _, p := range v.Properties {
			walk(p)
		}
		walk(v.Items)
		walk(v.AdditionalProperties.Schema)
		for _, l := range []openapi3.SchemaRefs{v.AllOf, v.AnyOf, v.OneOf} {
			for _, s := range l {
				walk(s)
			}
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				for _, mt := range op.RequestBody.Value.Content {
					walk(mt.Schema)
				}
			}
			for _, r := range op.Responses.Map() {
				if r.Value != nil {
					for _, mt := range r.Value.Content {
						walk(mt.Schema)
					}
				}
			}
		}
	}
}
