// Command vulncheck checks Sigil for known vulnerabilities without the
// public vulnerability database host: it builds a govulncheck database
// from a pinned version of the golang.org/x/vulndb module (served by the
// module proxy; its cmd/indexdb turns data/osv into a database), runs a
// pinned govulncheck against it with -format json, and fails when a
// vulnerability is reachable (a vulnerable function is called) unless the
// accepted-findings table of docs/VULNERABILITIES.md lists it with its
// mitigation and the tests that prove the mitigation, which must exist.
// Vulnerabilities in modules or packages Sigil imports without calling
// the vulnerable code are reported, and do not fail.
//
// The database is built once per vulndb version in the user's cache
// directory (-cache). Every step that cannot run (no module proxy, no
// database, an unexpected govulncheck output) fails the check: it is never
// skipped.
//
// Usage (make vuln):
//
//	go run ./scripts/vulncheck -vulndb v0.0.0-... -govulncheck v1.9.0 [-cache DIR] [-allow FILE] [packages]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

const (
	vulndbModule      = "golang.org/x/vulndb"
	indexdbCommand    = "golang.org/x/vulndb/cmd/indexdb"
	govulncheckModule = "golang.org/x/vuln/cmd/govulncheck"
)

func main() {
	var c config
	flag.StringVar(&c.vulndb, "vulndb", "", "version of the "+vulndbModule+" module to build the database from (required)")
	flag.StringVar(&c.govulncheck, "govulncheck", "", "version of golang.org/x/vuln to run govulncheck from (required)")
	flag.StringVar(&c.cache, "cache", "", "directory that keeps the built databases (default: sigil-vulndb in the user's cache directory)")
	flag.StringVar(&c.allow, "allow", "docs/VULNERABILITIES.md", "file whose accepted-findings table lists the reachable vulnerabilities Sigil mitigates")
	flag.Parse()
	c.patterns = flag.Args()
	if len(c.patterns) == 0 {
		c.patterns = []string{"./..."}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := c.run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulncheck:", err)
		os.Exit(1)
	}
}

type config struct {
	vulndb, govulncheck string
	cache, allow        string
	patterns            []string
}

// errFindings is returned when reachable vulnerabilities are not listed.
var errFindings = errors.New("reachable vulnerabilities are not listed with a mitigation in the accepted findings")

func (c *config) run(ctx context.Context, out io.Writer) error {
	if c.vulndb == "" || c.govulncheck == "" {
		return errors.New("-vulndb and -govulncheck are required")
	}
	allowText, err := os.ReadFile(c.allow)
	if err != nil {
		return err
	}
	accepted, err := parseAccepted(allowText)
	if err != nil {
		return fmt.Errorf("%s: %w", c.allow, err)
	}
	if c.cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("no cache directory (set -cache): %w", err)
		}
		c.cache = filepath.Join(dir, "sigil-vulndb")
	}
	db, err := buildDB(ctx, c.cache, c.vulndb)
	if err != nil {
		return err
	}
	goVersion, err := goOutput(ctx, "env", "GOVERSION")
	if err != nil {
		return err
	}
	args := append([]string{"run", govulncheckModule + "@" + c.govulncheck, "-db", "file://" + db, "-format", "json"}, c.patterns...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stderr = os.Stderr
	stream, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("govulncheck: %w", err)
	}
	rep, err := parseReport(bytes.NewReader(stream))
	if err != nil {
		return fmt.Errorf("govulncheck output: %w", err)
	}
	if rep.Config.DB != "file://"+db || rep.Config.ScanLevel != "symbol" || rep.Config.GoVersion != strings.TrimSpace(goVersion) {
		return fmt.Errorf("govulncheck scanned %s at level %q with %s, want %s at level symbol with %s",
			rep.Config.DB, rep.Config.ScanLevel, rep.Config.GoVersion, "file://"+db, strings.TrimSpace(goVersion))
	}
	tests, err := testNames(".")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "govulncheck %s, database %s (%s), %s\n", rep.Config.ScannerVersion, vulndbModule+"@"+c.vulndb, db, rep.Config.GoVersion)
	return judge(out, rep, accepted, func(name string) bool { return tests[name] })
}

// buildDB returns the database built from vulndb version in cache,
// building it first when it is not there. A database is built in a
// temporary directory and renamed into place once complete, so a
// directory under its final name is a whole database.
func buildDB(ctx context.Context, cache, version string) (string, error) {
	dir, err := filepath.Abs(filepath.Join(cache, version))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "index", "db.json")); err == nil {
		return dir, nil
	}
	download, err := goOutput(ctx, "mod", "download", "-json", vulndbModule+"@"+version)
	if err != nil {
		return "", err
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal([]byte(download), &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("%s@%s: no module directory (%s)", vulndbModule, version, mod.Error)
	}
	osv := filepath.Join(mod.Dir, "data", "osv")
	entries, err := countJSON(osv)
	if err != nil {
		return "", err
	}
	if entries == 0 {
		return "", fmt.Errorf("%s: no OSV entries", osv)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, version+".building-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	built := filepath.Join(tmp, "db")
	if _, err := goOutput(ctx, "run", indexdbCommand+"@"+version, "-vulns", osv, "-out", built); err != nil {
		return "", err
	}
	n, err := countJSON(filepath.Join(built, "ID"))
	if err != nil {
		return "", err
	}
	if n != entries {
		return "", fmt.Errorf("indexdb wrote %d entries from %d OSV files", n, entries)
	}
	if err := os.Rename(built, dir); err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "index", "db.json")); statErr == nil {
			return dir, nil // built meanwhile by another run
		}
		return "", err
	}
	return dir, nil
}

// countJSON counts the .json files in dir.
func countJSON(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			n++
		}
	}
	return n, nil
}

// goOutput runs the go command and returns its standard output; its
// standard error goes to ours.
func goOutput(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// report is what the checker reads from govulncheck's JSON stream
// (golang.org/x/vuln/internal/govulncheck: a stream of messages, each an
// object with one field).
type report struct {
	Config   govulncheckConfig
	OSV      map[string]osvEntry
	Findings []finding
}

type govulncheckConfig struct {
	ScannerVersion string `json:"scanner_version"`
	DB             string `json:"db"`
	GoVersion      string `json:"go_version"`
	ScanLevel      string `json:"scan_level"`
}

type osvEntry struct {
	ID      string `json:"id"`
	Summary string `json:"summary"`
}

// finding is one way code reaches a vulnerability. Trace[0] is the
// vulnerable module, package or function; a function means the vulnerable
// code is called (reachable), the rest of the trace the call path from
// Sigil's code.
type finding struct {
	OSV          string  `json:"osv"`
	FixedVersion string  `json:"fixed_version"`
	Trace        []frame `json:"trace"`
}

type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
	Receiver string `json:"receiver"`
}

func (f frame) String() string {
	name := f.Package
	if f.Function != "" {
		fn := f.Function
		if f.Receiver != "" {
			fn = "(" + f.Receiver + ")." + fn
		}
		name += "." + fn
	}
	return name
}

// reachable reports whether the finding calls vulnerable code.
func (f finding) reachable() bool { return len(f.Trace) > 0 && f.Trace[0].Function != "" }

// parseReport reads govulncheck's JSON stream. It requires the config
// message and refuses messages it does not know, so that a change of
// format fails the check rather than hiding findings.
func parseReport(r io.Reader) (*report, error) {
	rep := &report{OSV: map[string]osvEntry{}}
	dec := json.NewDecoder(r)
	seenConfig := false
	for {
		var msg map[string]json.RawMessage
		if err := dec.Decode(&msg); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		for kind, body := range msg {
			var err error
			switch kind {
			case "config":
				seenConfig = true
				err = json.Unmarshal(body, &rep.Config)
			case "osv":
				var e osvEntry
				if err = json.Unmarshal(body, &e); err == nil {
					rep.OSV[e.ID] = e
				}
			case "finding":
				var f finding
				if err = json.Unmarshal(body, &f); err == nil && (f.OSV == "" || len(f.Trace) == 0) {
					err = errors.New("a finding without vulnerability or trace")
				}
				rep.Findings = append(rep.Findings, f)
			case "progress", "SBOM":
			default:
				err = errors.New("unknown message")
			}
			if err != nil {
				return nil, fmt.Errorf("%q message: %w", kind, err)
			}
		}
	}
	if !seenConfig {
		return nil, errors.New("no config message")
	}
	return rep, nil
}

// accepted is one row of the accepted-findings table.
type accepted struct {
	ID, Module, Mitigation string
	Tests                  []string
}

var (
	acceptedRow = regexp.MustCompile(`^\|\s*(GO-\d{4}-\d+)\s*\|`) // a table row whose first cell is a Go vulnerability ID
	quoted      = regexp.MustCompile("`([^`]+)`")                 // a name in backquotes
)

// parseAccepted reads the rows of the accepted-findings table: ID, module,
// mitigation, and the tests that prove it (names in backquotes).
func parseAccepted(doc []byte) (map[string]accepted, error) {
	out := map[string]accepted{}
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if !acceptedRow.MatchString(text) {
			continue
		}
		cells := strings.Split(strings.Trim(text, "|"), "|")
		if len(cells) != 4 {
			return nil, fmt.Errorf("line %d: %d cells, want ID | module | mitigation | tests", line, len(cells))
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		a := accepted{ID: cells[0], Module: strings.Trim(cells[1], "`"), Mitigation: cells[2]}
		for _, m := range quoted.FindAllStringSubmatch(cells[3], -1) {
			a.Tests = append(a.Tests, m[1])
		}
		switch {
		case a.Module == "" || strings.ContainsAny(a.Module, " \t"):
			return nil, fmt.Errorf("line %d: %s: no module", line, a.ID)
		case len(a.Mitigation) < 20:
			return nil, fmt.Errorf("line %d: %s: no mitigation", line, a.ID)
		case len(a.Tests) == 0:
			return nil, fmt.Errorf("line %d: %s: no test proves the mitigation", line, a.ID)
		}
		if _, dup := out[a.ID]; dup {
			return nil, fmt.Errorf("line %d: %s listed twice", line, a.ID)
		}
		out[a.ID] = a
	}
	return out, sc.Err()
}

// testDecl matches the declaration of a test, fuzz test, benchmark or example.
var testDecl = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark|Example)\w*)\(`)

// testNames returns the names of the tests declared in the _test.go files
// under root.
func testNames(root string) (map[string]bool, error) {
	names := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "node_modules" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range testDecl.FindAllSubmatch(b, -1) {
			names[string(m[1])] = true
		}
		return nil
	})
	return names, err
}

// judge writes what govulncheck found, and returns errFindings when a
// reachable vulnerability is not accepted, or is accepted for another
// module or with a test that does not exist.
func judge(out io.Writer, rep *report, accepted map[string]accepted, testExists func(string) bool) error {
	type vuln struct {
		id, module, version, fixed string
		reachable                  bool
		paths                      []string
	}
	byID := map[string]*vuln{}
	for _, f := range rep.Findings {
		v := byID[f.OSV]
		if v == nil {
			v = &vuln{id: f.OSV, module: f.Trace[0].Module, version: f.Trace[0].Version, fixed: f.FixedVersion}
			byID[f.OSV] = v
		}
		if f.reachable() {
			v.reachable = true
			// The call into the vulnerable module: from Sigil's own code (the
			// main module's frames carry no version) when the trace shows it,
			// else from the first frame outside the module.
			path := f.Trace[0].String()
			caller := slices.IndexFunc(f.Trace, func(fr frame) bool { return fr.Version == "" && fr.Module != "" })
			if caller < 0 {
				caller = slices.IndexFunc(f.Trace, func(fr frame) bool { return fr.Module != f.Trace[0].Module })
			}
			if caller > 0 {
				path = f.Trace[caller].String() + " -> " + path
			}
			if !slices.Contains(v.paths, path) {
				v.paths = append(v.paths, path)
			}
		}
	}
	failed := false
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		v := byID[id]
		fix := "no fixed version"
		if v.fixed != "" {
			fix = "fixed in " + v.fixed
		}
		head := fmt.Sprintf("%s %s@%s (%s): %s", v.id, v.module, v.version, fix, rep.OSV[v.id].Summary)
		if !v.reachable {
			fmt.Fprintf(out, "imported, not called: %s\n", head)
			continue
		}
		a, ok := accepted[v.id]
		var missing []string
		for _, t := range a.Tests {
			if !testExists(t) {
				missing = append(missing, t)
			}
		}
		switch {
		case !ok:
			failed = true
			fmt.Fprintf(out, "FAIL reachable, not listed: %s\n", head)
		case a.Module != v.module:
			failed = true
			fmt.Fprintf(out, "FAIL reachable, listed for module %s: %s\n", a.Module, head)
		case len(missing) > 0:
			failed = true
			fmt.Fprintf(out, "FAIL reachable, listed with tests that do not exist (%s): %s\n", strings.Join(missing, ", "), head)
		default:
			fmt.Fprintf(out, "reachable, mitigated: %s\n  mitigation: %s\n  proved by: %s\n", head, a.Mitigation, strings.Join(a.Tests, ", "))
		}
		slices.Sort(v.paths)
		for i, p := range v.paths {
			if i == 5 {
				fmt.Fprintf(out, "  ... and %d more calls\n", len(v.paths)-5)
				break
			}
			fmt.Fprintf(out, "  call: %s\n", p)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(accepted)) {
		if v := byID[id]; v == nil || !v.reachable {
			fmt.Fprintf(out, "note: %s is listed as accepted but no longer reachable: remove it from the table\n", id)
		}
	}
	if failed {
		return errFindings
	}
	fmt.Fprintln(out, "no unmitigated reachable vulnerability")
	return nil
}
