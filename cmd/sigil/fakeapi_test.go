package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// update rewrites the golden files of the command tests (testdata/api)
// and the generated command reference (docs/CLI.md).
var update = flag.Bool("update", false, "rewrite golden files and docs/CLI.md")

// fakeToken is the bearer token the commands under test present.
const fakeToken = "sga_fake-token"

// fakeAPI is an HTTPS server that answers canned JSON by route and records
// every request it receives, as the fleet's API would see it.
type fakeAPI struct {
	t       *testing.T
	srv     *httptest.Server
	answers map[string]string // "METHOD /path" → answer (see answer)

	mu   sync.Mutex
	reqs []string
}

// newFakeAPI starts a fake API; its answers are keyed "METHOD /path" (the
// path without its query). An answer is the JSON body of a 200, or
// "NNN BODY" for another status; a route with no answer gets a 404
// problem. SIGIL_SERVER, SIGIL_TOKEN and SIGIL_CA point the CLI at it.
func newFakeAPI(t *testing.T, answers map[string]string) *fakeAPI {
	f := &fakeAPI{t: t, answers: answers}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIGIL_SERVER", f.srv.URL)
	t.Setenv("SIGIL_TOKEN", fakeToken)
	t.Setenv("SIGIL_CA", caFile)
	t.Setenv("SIGIL_JUSTIFICATION", "")
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.t.Errorf("fake API: reading %s %s: %v", r.Method, r.URL, err)
	}
	line := r.Method + " " + r.URL.RequestURI()
	if j := r.Header.Get("X-Sigil-Justification"); j != "" {
		line += fmt.Sprintf("  [justification %q]", j)
	}
	switch ct := r.Header.Get("Content-Type"); {
	case len(body) == 0:
	case ct == "application/json":
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			f.t.Errorf("fake API: %s: a body that is not JSON: %q", line, body)
		}
		// Sorted keys: the golden file does not depend on field order.
		var canon bytes.Buffer
		enc := json.NewEncoder(&canon)
		enc.SetEscapeHTML(false)
		enc.Encode(v)
		line += "\n  " + strings.TrimSuffix(canon.String(), "\n")
	default:
		line += fmt.Sprintf("\n  %d bytes of %s", len(body), ct)
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, line)
	f.mu.Unlock()
	if got := r.Header.Get("Authorization"); got != "Bearer "+fakeToken {
		f.t.Errorf("fake API: %s with Authorization %q", line, got)
	}
	answer, ok := f.answers[r.Method+" "+r.URL.Path]
	status := http.StatusOK
	if !ok {
		status, answer = http.StatusNotFound, `{"type":"about:blank","title":"Not Found","status":404,"detail":"the fake API has no answer for this route"}`
	} else if len(answer) > 4 && answer[3] == ' ' && strings.Trim(answer[:3], "0123456789") == "" {
		fmt.Sscan(answer[:3], &status)
		answer = answer[4:]
	}
	if status/100 == 2 {
		w.Header().Set("Content-Type", "application/json")
	} else {
		w.Header().Set("Content-Type", "application/problem+json")
	}
	w.WriteHeader(status)
	io.WriteString(w, answer)
}

// requests returns what the fake received so far.
func (f *fakeAPI) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// checkGolden compares got with DIR/NAME.golden (rewritten with -update).
func checkGolden(t *testing.T, dir, name, got string) {
	t.Helper()
	path := filepath.Join(dir, name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", t.Name(), path, got, want)
	}
}

// transcript is what a golden file holds: the command, the requests it
// sent, its exit status and its output.
func transcript(args []string, reqs []string, code int, stdout, stderr string) string {
	var b strings.Builder
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if a == "" || strings.ContainsAny(a, " '\"") {
			quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	fmt.Fprintf(&b, "$ sigil %s\n", strings.Join(quoted, " "))
	for _, r := range reqs {
		fmt.Fprintf(&b, "> %s\n", r)
	}
	fmt.Fprintf(&b, "exit %d\n", code)
	if stdout != "" {
		fmt.Fprintf(&b, "--- stdout\n%s", stdout)
	}
	if stderr != "" {
		fmt.Fprintf(&b, "--- stderr\n%s", stderr)
	}
	return b.String()
}

// goldenNames lists the golden files of dir, to find those no case writes.
func goldenNames(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".golden"))
	}
	sort.Strings(names)
	return names
}

// captureOutput collects a command's stdout and stderr.
type captureOutput struct{ stdout, stderr bytes.Buffer }

// runCLI runs sigil with args and stdin and returns its stdout, stderr
// and exit status.
func runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out captureOutput
	code = run(args, strings.NewReader(stdin), &out.stdout, &out.stderr)
	return out.stdout.String(), out.stderr.String(), code
}
