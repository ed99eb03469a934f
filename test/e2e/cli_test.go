package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// runBinary runs a built binary and returns its stdout, stderr and exit
// code.
func runBinary(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %s: %v", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// TestEveryCommandHelp runs the real binaries: every sigil command and
// subcommand its completion script offers (asked in bash, word by word), and every sigild command its
// usage names, answers --help and -h with exit 0 and its usage on stdout
// (`sigil audit verify --help` exited 2).
func TestEveryCommandHelp(t *testing.T) {
	sigil, sigild := buildBinaries(t)
	dir := t.TempDir() // nothing a command might write lands elsewhere
	script, _, code := runBinary(t, sigil, "completion", "bash")
	if code != 0 {
		t.Fatalf("sigil completion bash: exit %d", code)
	}
	scriptFile := filepath.Join(dir, "sigil.bash")
	if err := os.WriteFile(scriptFile, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	// complete asks the completion script, in bash, what follows words.
	complete := func(words ...string) []string {
		t.Helper()
		args := append([]string{"-c", `source "$0"; COMP_WORDS=(sigil "$@" ""); COMP_CWORD=$(( $# + 1 )); _sigil; printf '%s\n' "${COMPREPLY[@]}"`, scriptFile}, words...)
		out, err := exec.Command("bash", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	var invocations [][]string
	var walk func(words []string)
	walk = func(words []string) {
		for _, w := range complete(words...) {
			next := append(append([]string{}, words...), w)
			invocations = append(invocations, next)
			walk(next)
		}
	}
	walk(nil)
	if len(invocations) < 100 {
		t.Fatalf("only %d sigil invocations found", len(invocations))
	}
	check := func(bin string, args []string) {
		t.Helper()
		for _, help := range []string{"--help", "-h"} {
			all := append(append([]string{}, args...), help)
			cmd := exec.Command(bin, all...)
			cmd.Dir = dir
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			name := filepath.Base(bin) + " " + strings.Join(all, " ")
			if err != nil || o.Len() == 0 || !strings.Contains(o.String(), "usage:") || e.Len() != 0 {
				t.Errorf("%s: %v, stdout %q, stderr %q", name, err, o.String(), e.String())
			}
		}
	}
	for _, args := range invocations {
		check(sigil, args)
	}

	usage, _, code := runBinary(t, sigild, "--help")
	if code != 0 {
		t.Fatalf("sigild --help: exit %d", code)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(usage, "\n") {
		// "  sigild CMD [SUB] ARGS   description": the words before the description.
		f := strings.Fields(regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), 2)[0])
		if len(f) < 2 || f[0] != "sigild" {
			continue
		}
		args := []string{f[1]}
		if len(f) > 2 && regexp.MustCompile(`^[a-z]+$`).MatchString(f[2]) {
			args = append(args, f[2])
		}
		seen[args[0]] = true
		check(sigild, args)
	}
	for _, want := range []string{"run", "status", "secret", "version"} {
		if !seen[want] {
			t.Errorf("sigild --help does not name %q:\n%s", want, usage)
		}
	}
}

// TestSigildMissingConfig: `sigild status` and `sigild secret` with a
// --config that does not exist say so (exit 2) instead of blaming the
// state file.
func TestSigildMissingConfig(t *testing.T) {
	_, sigild := buildBinaries(t)
	missing := filepath.Join(t.TempDir(), "sigild.json")
	for _, args := range [][]string{{"status"}, {"secret", "list"}, {"secret", "get", "db-password"}} {
		args = append(args, "--config", missing)
		stdout, stderr, code := runBinary(t, sigild, args...)
		want := "sigild: config file " + missing + " does not exist"
		if code != 2 || !strings.HasPrefix(stderr, want) || strings.Contains(stderr, "state") || stdout != "" {
			t.Errorf("sigild %s: exit %d, stderr %q, want %q", strings.Join(args, " "), code, stderr, want)
		}
	}
}

// TestSigildStatusAfterUpdate: a device updated from 1.0.0 to 2.0.0 by a
// campaign, its daemon then stopped: `sigild status` (the real binary)
// reports 2.0.0 from the update record, not the configured 1.0.0.
func TestSigildStatusAfterUpdate(t *testing.T) {
	_, sigild := buildBinaries(t)
	kit := newReleaseKit(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.ReleaseTrust = kit.trustFile }))
	admin, _ := f.Client()
	ctx := context.Background()
	dir := t.TempDir()
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: dir, Firmware: "1.0.0", Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	waitFirmware(t, f, id, "1.0.0")
	assign(t, admin, id, "gw-1", "")

	ana := asUser(t, f, admin, "ana", auth.RoleOperator)
	bo := asUser(t, f, admin, "bo", auth.RoleReleaseApprover)
	image := bytes.Repeat([]byte("gw-os 2.0.0 "), 10_000)
	raw, bundles := kit.release(t, "2.0.0", 2, image, 2)
	rel, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bo.ApproveRelease(ctx, rel.ID); err != nil {
		t.Fatal(err)
	}
	ca, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: []string{id}},
		Waves: campaign.Waves{Sizes: []int{1}}, DeviceTimeout: config.Duration(30 * time.Second)}, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ana.CampaignAction(ctx, ca.ID, "start", "e2e", time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitCampaign(t, ana, ca.ID, 60*time.Second, "the device committed", func(c *campaign.Campaign) bool { return c.Counts.Committed == 1 })
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}

	cfg := filepath.Join(dir, "sigild.json")
	b, err := json.Marshal(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runBinary(t, sigild, "status", "--config", cfg, "--json")
	var st struct {
		Firmware string `json:"firmware"`
		Running  bool   `json:"running"`
		DeviceID string `json:"device_id"`
	}
	if code != 3 || json.Unmarshal([]byte(stdout), &st) != nil {
		t.Fatalf("sigild status: exit %d\n%s%s", code, stdout, stderr)
	}
	if st.Running || st.DeviceID != id || st.Firmware != "2.0.0" {
		t.Fatalf("sigild status with the daemon stopped: %+v, want firmware 2.0.0 (configured: %s)", st, d.Config.Firmware)
	}
}
