package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadTree lists the module's packages from its root.
func loadTree(t *testing.T) map[string]string {
	t.Helper()
	pkgs, err := load(module + "/...")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range pkgs {
		tier, err := p.tier()
		if err != nil {
			t.Fatal(err)
		}
		got[strings.TrimPrefix(p.ImportPath, module+"/")] = tier
	}
	return got
}

// TestTreeTiers: the rules put the packages whose needs are known where
// they belong: a test that starts swtpm (directly, through swtpmtest or
// the harness) or a service program is never in the unit tier, and a test
// that only runs command-line tools or the in-process TPM simulator is.
func TestTreeTiers(t *testing.T) {
	got := loadTree(t)
	for pkg, want := range map[string]string{
		"pkg/wire":            Unit,
		"fleet/broker":        Unit, // mosquitto_pub and mosquitto_sub against the in-process broker
		"fleet/auth":          Unit, // the argon2 tool, through testenv
		"fleet/alert":         Unit, // names sshd as a process in its data, runs nothing
		"fleet/attest":        Unit, // the in-process TPM simulator
		"scripts/tiers":       Unit,
		"sim/swtpm":           SWTPM, // the package that starts swtpm
		"device/tpm":          SWTPM, // swtpmtest
		"sim/swarm":           SWTPM, // sim/harness
		"device/link":         SWTPM, // starts a mosquitto broker
		"fleet/alert/sink":    SWTPM, // starts rsyslogd
		"test/e2e":            E2E,
		"test/browser":        Browser,
		"sim/swtpm/swtpmtest": SWTPM,
	} {
		if got[pkg] != want {
			t.Errorf("%s: tier %q, want %q", pkg, got[pkg], want)
		}
	}
	n := map[string]int{}
	for _, tier := range got {
		n[tier]++
	}
	if n[Unit] < 30 || n[SWTPM] < 5 || n[E2E] != 1 || n[Browser] != 1 {
		t.Fatalf("tiers: %v", n)
	}
}

// TestStartsService: a service program counts when the tests run it or
// look it up, not when its name is only data.
func TestStartsService(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"LookPath", `bin, _ := exec.LookPath("mosquitto")`, "mosquitto"},
		{"full path", `exec.Command("/usr/sbin/rsyslogd", "-n")`, "/usr/sbin/rsyslogd"},
		{"CommandContext", `exec.CommandContext(ctx, "sshd", "-D")`, "sshd"},
		{"RequireBinaries", `testenv.RequireBinaries(t, "openssl", "swtpm")`, "swtpm"},
		{"a tool", `exec.Command("mosquitto_pub", "-t", "x")`, ""},
		{"data", `procs := []string{"sshd", "swtpm"}`, ""},
		{"another call", `fmt.Println("chromium")`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := "package x\n\nfunc f() {\n\t" + tc.src + "\n}\n"
			if err := os.WriteFile(filepath.Join(dir, "x_test.go"), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			p := &pkg{ImportPath: "example.com/x", Dir: dir, TestGoFiles: []string{"x_test.go"}}
			got, err := p.startsService()
			if err != nil || got != tc.want {
				t.Fatalf("startsService = %q, %v; want %q", got, err, tc.want)
			}
			tier, err := p.tier()
			want := Unit
			if tc.want != "" {
				want = SWTPM
			}
			if err != nil || tier != want {
				t.Fatalf("tier = %q, %v; want %q", tier, err, want)
			}
		})
	}
}

// TestMakeRunsEveryTier: make test runs every tier, and each tier's target
// takes its packages from this command.
func TestMakeRunsEveryTier(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	mk := string(b)
	recipe := func(target string) string {
		i := strings.Index(mk, "\n"+target+":")
		if i < 0 {
			t.Fatalf("Makefile: no target %s", target)
		}
		r := mk[i+1:]
		if j := strings.Index(r, "\n\n"); j >= 0 {
			r = r[:j]
		}
		return r
	}
	test := recipe("test")
	// The tiers make test runs: through their targets or in one go test.
	ran := map[string]bool{}
	for _, f := range strings.Fields(test) {
		if tier, ok := strings.CutPrefix(f, "test-"); ok {
			ran[tier] = true
		}
	}
	for _, call := range strings.Split(test, "$(call tiers,")[1:] {
		for _, tier := range strings.Fields(call[:strings.IndexByte(call, ')')]) {
			ran[tier] = true
		}
	}
	for _, tier := range tiers() {
		target := "test-" + tier
		if !strings.Contains(recipe(target), "$(call tiers,"+tier+")") {
			t.Errorf("make %s does not run the packages of tier %s", target, tier)
		}
		if !ran[tier] {
			t.Errorf("make test does not run tier %s", tier)
		}
	}
	for _, check := range []string{"lint", "vuln"} {
		if !strings.Contains(strings.SplitN(test, "\n", 2)[0], " "+check) {
			t.Errorf("make test does not depend on make %s", check)
		}
	}
	if !strings.Contains(recipe("test-unit"), "-shuffle=on") || !strings.Contains(recipe("test-unit"), "-race") {
		t.Error("make test-unit runs without -race -shuffle=on")
	}
}

// TestWrite: a tier with no package fails, so a tree the rules no longer
// recognize cannot run an empty tier and pass.
func TestWrite(t *testing.T) {
	var b strings.Builder
	pkgs := []*pkg{{ImportPath: module + "/pkg/x"}, {ImportPath: module + "/test/e2e"}}
	if err := write(&b, pkgs, []string{Unit, E2E}); err != nil || b.String() != module+"/pkg/x\n"+module+"/test/e2e\n" {
		t.Fatalf("write = %q, %v", b.String(), err)
	}
	if err := write(&b, pkgs, []string{Browser}); err == nil {
		t.Fatal("an empty tier is not an error")
	}
}
