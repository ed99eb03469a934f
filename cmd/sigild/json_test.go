package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestReleaseJSON holds the release build of sigild to Go's classic
// encoding/json (SIGILD_GOEXPERIMENT in the Makefile: log/slog links
// encoding/json in every program, and Go 1.27's is built on
// encoding/json/v2, 320 KiB more on arm64). It fails when the release
// build links encoding/json/v2 again, when Go no longer knows the switch
// (go list refuses an unknown GOEXPERIMENT), and when a package of sigild
// that uses encoding/json fails its own tests with the JSON sigild ships:
// the fleet encodes manifests and trust sets with Go's default JSON, and
// the device re-encodes them to check their canonical form. The
// workloadapi build is held to the same. The test runs are skipped with
// -short.
func TestReleaseJSON(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var experiment string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SIGILD_GOEXPERIMENT :="); ok {
			experiment = strings.TrimSpace(v)
		}
	}
	if experiment == "" {
		t.Fatal("Makefile: no SIGILD_GOEXPERIMENT line")
	}
	// The default build, then the workloadapi build (its own packages only).
	var tested []string
	for _, tags := range [][]string{nil, {"-tags", "workloadapi"}} {
		users := releaseJSONUsers(t, experiment, tags)
		users = slices.DeleteFunc(users, func(p string) bool { return slices.Contains(tested, p) })
		tested = append(tested, users...)
		if testing.Short() || len(users) == 0 {
			continue
		}
		args := append(append([]string{"test", "-count=1", "-skip", "^TestReleaseJSON$"}, tags...), users...)
		cmd := exec.Command("go", args...)
		cmd.Env = append(cmd.Environ(), "GOEXPERIMENT="+experiment)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("GOEXPERIMENT=%s go %s: %v\n%s", experiment, strings.Join(args, " "), err, out)
		}
		t.Logf("GOEXPERIMENT=%s go %s:\n%s", experiment, strings.Join(args, " "), out)
	}
	if testing.Short() {
		t.Skipf("-short: not running the tests of %v with GOEXPERIMENT=%s", tested, experiment)
	}
}

// releaseJSONUsers lists the packages of sigild's release build (with the
// given build tags) that import encoding/json, and fails the test if that
// build links encoding/json/v2.
func releaseJSONUsers(t *testing.T, experiment string, tags []string) []string {
	t.Helper()
	args := append(append([]string{"list", "-deps"}, tags...), "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".")
	cmd := exec.Command("go", args...)
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64", "GOEXPERIMENT="+experiment)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("GOEXPERIMENT=%s go %s: %v", experiment, strings.Join(args, " "), err)
	}
	var users []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if f[0] == "encoding/json/v2" {
			t.Errorf("the release build %v (GOEXPERIMENT=%s) links encoding/json/v2", tags, experiment)
		}
		if strings.HasPrefix(f[0], "github.com/sigil-iot/sigil/") && slices.Contains(f[1:], "encoding/json") {
			users = append(users, f[0])
		}
	}
	if len(users) == 0 {
		t.Fatalf("go %s: no package of sigild imports encoding/json; is the list real?", strings.Join(args, " "))
	}
	return users
}
