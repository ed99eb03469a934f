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
// the device re-encodes them to check their canonical form. Those test
// runs are skipped with -short.
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
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64", "GOEXPERIMENT=" + experiment}
	cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".")
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list with GOEXPERIMENT=%s: %v", experiment, err)
	}
	var users []string // sigild's own packages that import encoding/json
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if f[0] == "encoding/json/v2" {
			t.Errorf("the release build (GOEXPERIMENT=%s) links encoding/json/v2", experiment)
		}
		if strings.HasPrefix(f[0], "github.com/sigil-iot/sigil/") && slices.Contains(f[1:], "encoding/json") {
			users = append(users, f[0])
		}
	}
	if len(users) == 0 {
		t.Fatal("go list: no package of sigild imports encoding/json; is the list real?")
	}
	if testing.Short() {
		t.Skipf("-short: not running the tests of %v with GOEXPERIMENT=%s", users, experiment)
	}
	args := append([]string{"test", "-count=1", "-skip", "^TestReleaseJSON$"}, users...)
	cmd = exec.Command("go", args...)
	cmd.Env = append(cmd.Environ(), "GOEXPERIMENT="+experiment)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s with GOEXPERIMENT=%s: %v\n%s", strings.Join(args, " "), experiment, err, out)
	} else {
		t.Logf("GOEXPERIMENT=%s go %s:\n%s", experiment, strings.Join(args, " "), out)
	}
}
