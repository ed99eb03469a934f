package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/govulncheck.json is part of the output of govulncheck v1.9.0
// on Sigil with the database of golang.org/x/vulndb
// v0.0.0-20261105234957-e22db6528018: GO-2026-5298 reachable (module-level
// and one call path), GO-2026-6303 imported and not called.
func fixture(t *testing.T) *report {
	t.Helper()
	b, err := os.ReadFile("testdata/govulncheck.json")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := parseReport(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// repoTests are the tests declared in the repository.
func repoTests(t *testing.T) func(string) bool {
	t.Helper()
	names, err := testNames("../..")
	if err != nil {
		t.Fatal(err)
	}
	if !names["TestSecureBootInjectedDbx"] || !names["FuzzSignatureDatabase"] || names["fixture"] {
		t.Fatalf("test names %d, missing the known ones", len(names))
	}
	return func(name string) bool { return names[name] }
}

func TestParseReport(t *testing.T) {
	rep := fixture(t)
	if rep.Config.ScanLevel != "symbol" || rep.Config.GoVersion != "go1.27.3" || rep.Config.ScannerVersion != "v1.9.0" || len(rep.Findings) != 3 {
		t.Fatalf("report %+v", rep)
	}
	reachable := 0
	for _, f := range rep.Findings {
		if f.reachable() {
			reachable++
			if f.OSV != "GO-2026-5298" || f.Trace[0].String() != "github.com/google/go-attestation/attest.ParseSecurebootState" {
				t.Fatalf("reachable finding %+v", f)
			}
		}
	}
	if reachable != 1 || !strings.Contains(rep.OSV["GO-2026-5298"].Summary, "SignatureHeaderSize") {
		t.Fatalf("%d reachable findings; summary %q", reachable, rep.OSV["GO-2026-5298"].Summary)
	}

	for name, stream := range map[string]string{
		"empty":           "",
		"no config":       `{"progress":{"message":"x"}}`,
		"unknown message": `{"config":{}} {"surprise":{}}`,
		"finding no osv":  `{"config":{}} {"finding":{"trace":[{"module":"m"}]}}`,
		"finding no path": `{"config":{}} {"finding":{"osv":"GO-2026-1"}}`,
		"truncated":       `{"config":{}} {"finding":{"osv":`,
		"not JSON":        "Your code is affected by 1 vulnerability",
	} {
		if rep, err := parseReport(strings.NewReader(stream)); err == nil {
			t.Errorf("%s: read as %+v", name, rep)
		}
	}
}

// The accepted-findings table of docs/VULNERABILITIES.md lists
// GO-2026-5298 with its mitigation and tests that exist: the real
// govulncheck output passes.
func TestJudgeAccepted(t *testing.T) {
	doc, err := os.ReadFile("../../docs/VULNERABILITIES.md")
	if err != nil {
		t.Fatal(err)
	}
	accepted, err := parseAccepted(doc)
	if err != nil {
		t.Fatal(err)
	}
	a, ok := accepted["GO-2026-5298"]
	if !ok || a.Module != "github.com/google/go-attestation" || !strings.Contains(a.Mitigation, "EFI_SIGNATURE_LIST parser") {
		t.Fatalf("accepted %+v", accepted)
	}
	var out bytes.Buffer
	if err := judge(&out, fixture(t), accepted, repoTests(t)); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"reachable, mitigated: GO-2026-5298 github.com/google/go-attestation@v0.6.4 (no fixed version)",
		"call: github.com/sigil-iot/sigil/fleet/verifier.(*fastSecureBoot).state -> github.com/google/go-attestation/attest.ParseSecurebootState",
		"imported, not called: GO-2026-6303 golang.org/x/crypto@v0.54.0 (fixed in v0.55.0)",
		"no unmitigated reachable vulnerability",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output does not say %q:\n%s", want, out.String())
		}
	}
}

// A reachable vulnerability fails the check unless accepted for its module
// with tests that exist; one imported and not called does not.
func TestJudgeRefuses(t *testing.T) {
	tests := repoTests(t)
	good := accepted{ID: "GO-2026-5298", Module: "github.com/google/go-attestation", Mitigation: "a mitigation of some length", Tests: []string{"TestSecureBootInjectedDbx"}}
	for _, c := range []struct {
		name     string
		accepted map[string]accepted
		want     string
	}{
		{"not listed", nil, "FAIL reachable, not listed: GO-2026-5298"},
		{"listed for another module", map[string]accepted{good.ID: func() accepted { a := good; a.Module = "github.com/google/go-tpm-tools"; return a }()},
			"FAIL reachable, listed for module github.com/google/go-tpm-tools: GO-2026-5298"},
		{"listed with a test that does not exist", map[string]accepted{good.ID: func() accepted { a := good; a.Tests = append(a.Tests, "TestGone"); return a }()},
			"FAIL reachable, listed with tests that do not exist (TestGone): GO-2026-5298"},
		{"only the unreachable one listed", map[string]accepted{"GO-2026-6303": {ID: "GO-2026-6303", Module: "golang.org/x/crypto", Mitigation: good.Mitigation, Tests: good.Tests}},
			"note: GO-2026-6303 is listed as accepted but no longer reachable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := judge(&out, fixture(t), c.accepted, tests)
			if !errors.Is(err, errFindings) || !strings.Contains(out.String(), c.want) {
				t.Fatalf("error %v, output:\n%s\nwant it to say %q", err, out.String(), c.want)
			}
			if strings.Contains(out.String(), "FAIL reachable, not listed: GO-2026-6303") {
				t.Fatalf("an imported, uncalled vulnerability fails:\n%s", out.String())
			}
		})
	}
}

func TestParseAccepted(t *testing.T) {
	row := "| GO-2026-5298 | `github.com/google/go-attestation` | a strict parser of our own, cross-checked | `TestA`, `FuzzB` |\n"
	got, err := parseAccepted([]byte("# doc\n\n| ID | Module | Mitigation | Proved by |\n|----|----|----|----|\n" + row + "| not a row |\n"))
	if err != nil || len(got) != 1 || got["GO-2026-5298"].Module != "github.com/google/go-attestation" ||
		strings.Join(got["GO-2026-5298"].Tests, ",") != "TestA,FuzzB" {
		t.Fatalf("accepted %+v, %v", got, err)
	}
	for name, doc := range map[string]string{
		"twice":         row + row,
		"no mitigation": "| GO-2026-5298 | `github.com/google/go-attestation` | tbd | `TestA` |\n",
		"no test":       "| GO-2026-5298 | `github.com/google/go-attestation` | a strict parser of our own, cross-checked | none |\n",
		"no module":     "| GO-2026-5298 |  | a strict parser of our own, cross-checked | `TestA` |\n",
		"three cells":   "| GO-2026-5298 | `github.com/google/go-attestation` | a strict parser of our own, cross-checked |\n",
	} {
		if got, err := parseAccepted([]byte(doc)); err == nil {
			t.Errorf("%s: accepted %+v", name, got)
		}
	}
}

// Without the module proxy the check fails: it never skips.
func TestRunFailsWithoutModuleProxy(t *testing.T) {
	// The go command of the toolchain running this test, with a module
	// cache that lacks the vulndb module and no proxy to fetch it from.
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Join(strings.TrimSpace(string(goroot)), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("GOTOOLCHAIN", "local")
	t.Setenv("GOPROXY", "off")
	t.Setenv("GOFLAGS", "-modcacherw")
	t.Setenv("GOMODCACHE", t.TempDir())
	c := config{vulndb: "v0.0.0-20261105234957-e22db6528018", govulncheck: "v1.9.0", cache: t.TempDir(),
		allow: "../../docs/VULNERABILITIES.md", patterns: []string{"./..."}}
	var out bytes.Buffer
	err = c.run(context.Background(), &out)
	if err == nil || !strings.Contains(err.Error(), "golang.org/x/vulndb@v0.0.0-20261105234957-e22db6528018") {
		t.Fatalf("error %v, output %s", err, out.String())
	}
	if entries, _ := os.ReadDir(c.cache); len(entries) != 0 {
		t.Fatalf("cache holds %d entries after a failed build", len(entries))
	}
	t.Logf("refused: %v", err)
}
