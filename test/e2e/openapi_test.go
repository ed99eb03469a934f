package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestOpenAPI: the document served at /api/v1/openapi.json lists every
// registered route with its method, and every route is described; the live
// JSON answers of the fleet's read routes conform to the documented
// response schemas (types, required properties), and bad input gets
// problem+json.
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
	var doc struct {
		OpenAPI    string                               `json:"openapi"`
		Paths      map[string]map[string]map[string]any `json:"paths"`
		Components struct {
			Schemas map[string]map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc.OpenAPI != "3.1.0" {
		t.Fatalf("document: %v %q", err, doc.OpenAPI)
	}
	resp.Body.Close()
	routes := api.Routes(f.API())
	for _, r := range routes {
		method, path, _ := strings.Cut(r.Pattern, " ")
		op := doc.Paths[path][strings.ToLower(method)]
		if op == nil || op["summary"] == "" {
			t.Errorf("%s is not in the document", r.Pattern)
			continue
		}
		if r.Perm != "" && op["x-permission"] != string(r.Perm) {
			t.Errorf("%s: documented permission %v, route requires %s", r.Pattern, op["x-permission"], r.Perm)
		}
	}
	n := 0
	for _, ops := range doc.Paths {
		n += len(ops)
	}
	if n != len(routes) {
		t.Errorf("document has %d operations, the server %d routes", n, len(routes))
	}

	// Live answers against the schemas.
	v := &validator{defs: doc.Components.Schemas}
	checked := 0
	for _, r := range routes {
		method, path, _ := strings.Cut(r.Pattern, " ")
		if method != "GET" || strings.Contains(path, "export") || strings.Contains(path, "crl") || strings.Contains(path, "openapi") {
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
		op := doc.Paths[strings.SplitN(r.Pattern, " ", 2)[1]]["get"]
		ok, _ := op["responses"].(map[string]any)["200"].(map[string]any)
		content, _ := ok["content"].(map[string]any)
		if content == nil {
			continue
		}
		schema := content["application/json"].(map[string]any)["schema"].(map[string]any)
		req, _ := http.NewRequestWithContext(ctx, "GET", f.APIURL()+path, nil)
		req.Header.Set("Authorization", "Bearer "+f.AdminToken())
		res, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == http.StatusNotImplemented {
			continue // a feature this fleet has not configured (e.g. firmware without release_trust)
		}
		if res.StatusCode != 200 {
			t.Errorf("GET %s: %d %s", path, res.StatusCode, body)
			continue
		}
		var got any
		if err := json.Unmarshal(body, &got); err != nil {
			t.Errorf("GET %s: not JSON: %v", path, err)
			continue
		}
		if errs := v.check(schema, got, "$"); len(errs) > 0 {
			t.Errorf("GET %s does not match its schema:\n  %s", path, strings.Join(errs, "\n  "))
		}
		checked++
	}
	if checked < 10 {
		t.Fatalf("only %d answers checked", checked)
	}
	t.Logf("%d routes documented; %d live answers checked against their schemas", len(routes), checked)

	// Bad input: problem+json with a reason.
	for _, bad := range []struct{ method, path, body string }{
		{"POST", "/api/v1/enrollment-tokens", `{"ttl": 5}`},
		{"POST", "/api/v1/enrollment-tokens", `{`},
		{"POST", "/api/v1/enrollment-tokens", strings.Repeat(" ", 70<<10) + "{}"},
		{"GET", "/api/v1/devices?limit=-1", ""},
	} {
		req, _ := http.NewRequestWithContext(ctx, bad.method, f.APIURL()+bad.path, strings.NewReader(bad.body))
		req.Header.Set("Authorization", "Bearer "+f.AdminToken())
		req.Header.Set("Content-Type", "application/json")
		res, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p api.Problem
		json.NewDecoder(res.Body).Decode(&p)
		res.Body.Close()
		if res.StatusCode/100 != 4 || res.Header.Get("Content-Type") != "application/problem+json" || p.Detail == "" {
			t.Errorf("%s %s (%d bytes): %d %s %+v", bad.method, bad.path, len(bad.body), res.StatusCode, res.Header.Get("Content-Type"), p)
		}
	}
}

// validator checks a decoded JSON value against the subset of JSON Schema
// the document uses: type (string or list), properties, required, items,
// additionalProperties, $ref.
type validator struct{ defs map[string]map[string]any }

func (v *validator) check(s map[string]any, x any, at string) []string {
	if ref, ok := s["$ref"].(string); ok {
		return v.check(v.defs[strings.TrimPrefix(ref, "#/components/schemas/")], x, at)
	}
	var types []string
	switch t := s["type"].(type) {
	case string:
		types = []string{t}
	case []any:
		for _, e := range t {
			types = append(types, e.(string))
		}
	}
	if len(types) == 0 {
		return nil
	}
	kind := jsonKind(x)
	if !slices.Contains(types, kind) && !(kind == "integer" && slices.Contains(types, "number")) {
		if !(kind == "number" && slices.Contains(types, "integer") && x.(float64) == float64(int64(x.(float64)))) {
			return []string{fmt.Sprintf("%s: %s, want %v", at, kind, types)}
		}
	}
	var errs []string
	switch kind {
	case "object":
		obj := x.(map[string]any)
		props, _ := s["properties"].(map[string]any)
		for _, r := range asStrings(s["required"]) {
			if _, ok := obj[r]; !ok {
				errs = append(errs, fmt.Sprintf("%s: required %q missing", at, r))
			}
		}
		for k, val := range obj {
			if ps, ok := props[k].(map[string]any); ok {
				errs = append(errs, v.check(ps, val, at+"."+k)...)
			} else if ap, ok := s["additionalProperties"].(map[string]any); ok {
				errs = append(errs, v.check(ap, val, at+"."+k)...)
			} else if props != nil {
				errs = append(errs, fmt.Sprintf("%s: undocumented property %q", at, k))
			}
		}
	case "array":
		if items, ok := s["items"].(map[string]any); ok {
			for i, e := range x.([]any) {
				errs = append(errs, v.check(items, e, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return errs
}

func jsonKind(x any) string {
	switch x := x.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		if x == float64(int64(x)) {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "unknown"
}

func asStrings(x any) []string {
	var out []string
	if l, ok := x.([]any); ok {
		for _, e := range l {
			out = append(out, e.(string))
		}
	}
	return out
}
