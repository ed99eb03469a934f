// Command tiers prints the packages of one of the Makefile's test tiers,
// one import path a line, so that make test-unit, test-swtpm, test-e2e and
// test-browser run every package of the module exactly once between them.
// Membership is computed from the tree, never listed by hand, so a package
// cannot drift into the wrong tier:
//
//   - browser: test/browser and below (the console in Chromium);
//   - e2e: test/e2e and below (the real binaries, end to end);
//   - swtpm: a package whose test binary links sim/swtpm (it starts swtpm
//     processes: directly, through sim/swtpm/swtpmtest or through
//     sim/harness), or whose test files run a service program (a string
//     literal naming one of services — mosquitto, rsyslogd, sshd, ... —
//     passed to exec.Command, exec.CommandContext, exec.LookPath or a
//     RequireBinaries helper);
//   - unit: every other package. Its tests need no service; they may run
//     short-lived command-line tools (openssl, argon2, mosquitto_pub
//     against the in-process broker, tpm2-tools never: those need a TPM).
//
// Usage:
//
//	go run ./scripts/tiers TIER...
//
// prints the packages of ./... in any of the named tiers (unit, swtpm,
// e2e, browser). A tier without a package is an error: the rules no
// longer recognize the tree.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// module is the import path of Sigil's module.
const module = "github.com/sigil-iot/sigil"

// The tiers, in the order make test runs them.
const (
	Unit    = "unit"
	SWTPM   = "swtpm"
	E2E     = "e2e"
	Browser = "browser"
)

// tiers lists every tier.
func tiers() []string { return []string{Unit, SWTPM, E2E, Browser} }

// swtpmPackage is the package that starts swtpm processes.
const swtpmPackage = module + "/sim/swtpm"

// services are the programs a test may start that keep running as a
// service: a test whose files name one is not a unit test.
func services() []string {
	return []string{"swtpm", "mosquitto", "rsyslogd", "sshd", "chromium", "postgres"}
}

func main() {
	want := os.Args[1:]
	for _, t := range want {
		if !slices.Contains(tiers(), t) {
			want = nil
			break
		}
	}
	if len(want) == 0 {
		fmt.Fprintf(os.Stderr, "usage: tiers %s...\n", strings.Join(tiers(), "|"))
		os.Exit(2)
	}
	pkgs, err := load("./...")
	if err == nil {
		err = write(os.Stdout, pkgs, want)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tiers:", err)
		os.Exit(1)
	}
}

// write writes the import paths of the packages in the tiers want, one a
// line; it fails when one of those tiers has no package.
func write(w io.Writer, pkgs []*pkg, want []string) error {
	n := map[string]int{}
	var out []string
	for _, p := range pkgs {
		t, err := p.tier()
		if err != nil {
			return err
		}
		n[t]++
		if slices.Contains(want, t) {
			out = append(out, p.ImportPath)
		}
	}
	for _, t := range want {
		if n[t] == 0 {
			return fmt.Errorf("no package in tier %s", t)
		}
	}
	_, err := io.WriteString(w, strings.Join(out, "\n")+"\n")
	return err
}

// pkg is what go list says of a package and of its test binary.
type pkg struct {
	ImportPath   string
	Dir          string
	TestGoFiles  []string
	XTestGoFiles []string
	// Deps are the packages its test binary links (its own when it has
	// no tests).
	Deps []string
}

// load lists the packages matching patterns with go list -test: the entry
// named P.test is the test binary of P, and its Deps are what the tests
// link.
func load(patterns ...string) ([]*pkg, error) {
	args := append([]string{"list", "-e", "-test", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles,Deps,ForTest,Error"}, patterns...)
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %v: %s", err, stderr.Bytes())
	}
	type entry struct {
		pkg
		ForTest string
		Error   *struct{ Err string }
	}
	var (
		order []*pkg
		byID  = map[string]*pkg{}
		tests = map[string][]string{}
	)
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var e entry
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		if e.Error != nil {
			return nil, fmt.Errorf("go list: %s: %s", e.ImportPath, e.Error.Err)
		}
		switch {
		case e.ForTest != "":
			// A package recompiled for a test binary: its own entry says
			// the same of its files.
		case strings.HasSuffix(e.ImportPath, ".test"):
			tests[strings.TrimSuffix(e.ImportPath, ".test")] = e.Deps
		default:
			p := e.pkg
			byID[p.ImportPath] = &p
			order = append(order, &p)
		}
	}
	for id, deps := range tests {
		if p, ok := byID[id]; ok {
			p.Deps = deps
		}
	}
	return order, nil
}

// tier says which tier p belongs to (the rules are in the command's doc).
func (p *pkg) tier() (string, error) {
	rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
	switch {
	case under(rel, "test/browser"):
		return Browser, nil
	case under(rel, "test/e2e"):
		return E2E, nil
	case p.ImportPath == swtpmPackage || slices.Contains(p.Deps, swtpmPackage):
		return SWTPM, nil
	}
	svc, err := p.startsService()
	if err != nil {
		return "", err
	}
	if svc != "" {
		return SWTPM, nil
	}
	return Unit, nil
}

// under reports whether rel is dir or a path below it.
func under(rel, dir string) bool {
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

// startsService returns the first service program p's test files run: a
// string literal whose base name is a service, passed to exec.Command,
// exec.CommandContext, exec.LookPath or a RequireBinaries helper
// (testenv's, swtpmtest's). It returns "" when they run none.
func (p *pkg) startsService() (string, error) {
	fset := token.NewFileSet()
	for _, name := range slices.Concat(p.TestGoFiles, p.XTestGoFiles) {
		f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			return "", err
		}
		var found string
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || found != "" {
				return found == ""
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !slices.Contains(runners(), sel.Sel.Name) {
				return true
			}
			for _, a := range call.Args {
				lit, ok := a.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				if s, err := strconv.Unquote(lit.Value); err == nil && slices.Contains(services(), path.Base(s)) {
					found = s
				}
			}
			return true
		})
		if found != "" {
			return found, nil
		}
	}
	return "", nil
}

// runners are the names of the functions that run or look up a program
// named by one of their arguments.
func runners() []string {
	return []string{"Command", "CommandContext", "LookPath", "RequireBinaries"}
}
