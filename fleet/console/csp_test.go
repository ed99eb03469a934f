package console_test

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// What the Content-Security-Policy would block, and so must never be
// written: script without src, event-handler attributes, javascript: URLs,
// style attributes and <style> elements.
var (
	inlineScript = regexp.MustCompile(`(?is)<script\b[^>]*>`)
	scriptSrc    = regexp.MustCompile(`(?is)<script\b[^>]*\bsrc\s*=`)
	eventAttr    = regexp.MustCompile(`(?is)<[a-z][^>]*\son[a-z]+\s*=`)
	styleAttr    = regexp.MustCompile(`(?is)<[a-z][^>]*\sstyle\s*=`)
	styleElem    = regexp.MustCompile(`(?is)<style\b`)
	jsURL        = regexp.MustCompile(`(?i)javascript:`)
)

// cspViolations lists what in an HTML text the policy forbids.
func cspViolations(text string) []string {
	var out []string
	for _, tag := range inlineScript.FindAllString(text, -1) {
		if !scriptSrc.MatchString(tag) {
			out = append(out, "inline script "+tag)
		}
	}
	for name, re := range map[string]*regexp.Regexp{"event handler attribute": eventAttr, "style attribute": styleAttr, "style element": styleElem, "javascript: URL": jsURL} {
		for _, m := range re.FindAllString(text, -1) {
			out = append(out, name+" "+m)
		}
	}
	return out
}

// TestCSPViolationsAreCaught: the checker itself finds each kind.
func TestCSPViolationsAreCaught(t *testing.T) {
	for _, bad := range []string{`<script>alert(1)</script>`, `<SCRIPT type="module">x</SCRIPT>`, `<button onclick="x()">`, `<div
		onmouseover='x'>`, `<p style="color:red">`, `<style>p{}</style>`, `<a href="javascript:x()">`} {
		if len(cspViolations(bad)) == 0 {
			t.Errorf("not caught: %s", bad)
		}
	}
	if v := cspViolations(`<script src="/static/console.js" defer></script><form data-confirm="x" action="/a">`); len(v) != 0 {
		t.Errorf("false alarm: %v", v)
	}
}

// TestNoInlineScriptInTemplates: no template or static HTML holds what the
// policy forbids.
func TestNoInlineScriptInTemplates(t *testing.T) {
	files, err := filepath.Glob("templates/*.html")
	if err != nil || len(files) < 10 {
		t.Fatalf("templates: %v %v", files, err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range cspViolations(string(b)) {
			t.Errorf("%s: %s", name, v)
		}
	}
}

// TestNoInlineScriptInPages: neither do the pages as served, with data in
// them, for the most powerful role (which sees every form).
func TestNoInlineScriptInPages(t *testing.T) {
	f := newFixture(t, nil)
	admin := f.login("ada", auth.RoleAdmin)
	f.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.Owner = `"><script>alert(1)</script>` })
	f.addDevice(2, inventory.StateQuarantined, nil)
	f.addDevice(3, inventory.StatePending, nil)
	for _, path := range []string{"/", "/devices", "/devices/" + devID(1), "/devices/" + devID(2), "/devices/" + devID(3),
		"/enrollment", "/policies", "/ca", "/settings", "/devices/none", "/login"} {
		s := admin
		if path == "/login" {
			s = nil
		}
		w := f.get(s, path)
		if w.Code != http.StatusOK && w.Code != http.StatusNotFound {
			t.Errorf("%s: status %d", path, w.Code)
		}
		for _, v := range cspViolations(w.Body.String()) {
			t.Errorf("%s: %s", path, v)
		}
		if strings.Contains(w.Body.String(), "<script>alert(1)") {
			t.Errorf("%s: device data was not escaped", path)
		}
	}
}
