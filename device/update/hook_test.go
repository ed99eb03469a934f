package update_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// abHook is a hook program following the contract in doc.go: a small A/B
// boot loader emulated with files in $SIGIL_TEST_AB. It logs each call to
// $SIGIL_TEST_AB/calls. A board's hook would call RAUC, SWUpdate or
// fw_setenv instead.
const abHook = `#!/bin/sh
set -eu
d="$SIGIL_TEST_AB"
cmd="$1"; shift
get() { cat "$d/$1" 2>/dev/null || true; }
put() { printf '%s\n' "$2" > "$d/$1.tmp" && mv "$d/$1.tmp" "$d/$1"; }
echo "$cmd $*" >> "$d/calls"
case "$cmd" in
booted)
	if [ -n "${SIGIL_TEST_NO_BOOT_ID:-}" ]; then echo "$(get booted)"; else echo "$(get booted) $(get boot)"; fi ;;
install)
	[ "$1" != "$(get booted)" ] || { echo "refusing to overwrite the booted slot" >&2; exit 1; }
	cp "$2" "$d/slot-$1.img.tmp" && mv "$d/slot-$1.img.tmp" "$d/slot-$1.img" ;;
switch)
	[ -f "$d/slot-$1.img" ] || { echo "slot $1 is empty" >&2; exit 1; }
	put pending "$1" ;;
reboot)
	put boot $(( $(get boot) + 1 ))
	if [ -n "$(get pending)" ]; then put booted "$(get pending)"; rm -f "$d/pending"; else put booted "$(get active)"; fi ;;
health)
	[ -z "${SIGIL_TEST_SLOW:-}" ] || exec sleep 30
	if grep -q unhealthy "$d/slot-$(get booted).img"; then echo "service did not start" >&2; exit 1; fi ;;
commit)
	[ "$1" = "$(get booted)" ] || { echo "commit of a slot that is not booted" >&2; exit 1; }
	put active "$1" ;;
rollback)
	put active "$1"; rm -f "$d/pending" ;;
*)
	echo "unknown command $cmd" >&2; exit 2 ;;
esac
`

func newHook(t *testing.T, env ...string) (*update.HookBackend, string) {
	t.Helper()
	dir := t.TempDir()
	ab := filepath.Join(dir, "ab")
	if err := os.MkdirAll(ab, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"booted": "a", "active": "a", "boot": "1"} {
		if err := os.WriteFile(filepath.Join(ab, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := filepath.Join(dir, "sigil-hook")
	if err := os.WriteFile(script, []byte(abHook), 0o700); err != nil {
		t.Fatal(err)
	}
	hb, err := update.NewHook(update.HookConfig{Path: script, Env: append([]string{"SIGIL_TEST_AB=" + ab}, env...)})
	if err != nil {
		t.Fatal(err)
	}
	return hb, ab
}

// TestHookBackend runs updates through a real shell script that follows
// the hook contract: one commits, one fails its health check and rolls
// back, and the calls the script saw are the contract's.
func TestHookBackend(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	e := newEnv(t)
	hb, ab := newHook(t)
	eng := e.engine(func(c *update.Config) { c.Backend = hb })

	img := image("v2", 10000)
	m, b := release("2.0.0", 2, img)
	rep := e.run(eng, "u1", m, b, e.srv.put("/v2.img", img))
	if rep.Phase != update.PhaseCommitted || rep.Running != "2.0.0" || rep.Slot != "b" {
		t.Fatalf("u1: %+v", rep)
	}
	if got, _ := os.ReadFile(filepath.Join(ab, "slot-b.img")); !bytes.Equal(got, img) {
		t.Fatal("the hook did not install the image into slot b")
	}
	bad := image("v3-unhealthy", 10000)
	m, b = release("3.0.0", 3, bad)
	rep = e.run(eng, "u2", m, b, e.srv.put("/v3.img", bad))
	if rep.Phase != update.PhaseRolledBack || rep.Reason != wire.ReasonFirmwareHealth || rep.Running != "2.0.0" || rep.Slot != "b" {
		t.Fatalf("u2: %+v", rep)
	}
	if got := strings.TrimSpace(readFile(t, filepath.Join(ab, "active"))); got != "b" {
		t.Fatalf("active slot %q after the rollback, want b", got)
	}

	// The calls, without the booted queries in between.
	var calls []string
	for _, c := range strings.Split(strings.TrimSpace(readFile(t, filepath.Join(ab, "calls"))), "\n") {
		if strings.TrimSpace(c) != "booted" {
			calls = append(calls, strings.TrimSpace(c))
		}
	}
	work := filepath.Join(e.dir, "work")
	want := []string{
		"install b " + filepath.Join(work, "u1.part"), "switch b", "reboot", "health", "commit b",
		"install a " + filepath.Join(work, "u2.part"), "switch a", "reboot", "health", "rollback b", "reboot",
	}
	if strings.Join(calls, "|") != strings.Join(want, "|") {
		t.Fatalf("hook calls:\n got %q\nwant %q", calls, want)
	}
}

func TestHookErrors(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	ctx := context.Background()
	hb, ab := newHook(t)
	if err := os.WriteFile(filepath.Join(ab, "slot-a.img"), []byte("unhealthy"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := hb.Health(ctx); err == nil || !strings.Contains(err.Error(), "service did not start") {
		t.Fatalf("health error does not carry the hook's message: %v", err)
	}
	if err := hb.Install(ctx, "a", "/dev/null"); err == nil || !strings.Contains(err.Error(), "booted slot") {
		t.Fatalf("install into the booted slot: %v", err)
	}
	if err := hb.Switch(ctx, "c"); err == nil {
		t.Fatal("unknown slot passed to the hook")
	}

	// Without a boot ID from the hook, BootID is used.
	noID, _ := newHook(t, "SIGIL_TEST_NO_BOOT_ID=1")
	b, err := noID.Booted(ctx)
	if err != nil || b.Slot != "a" || b.ID == "" {
		t.Fatalf("booted without boot ID: %+v, %v", b, err)
	}

	// A hook that hangs is stopped at the timeout.
	slowDir := t.TempDir()
	script := filepath.Join(slowDir, "hook")
	os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 30\n"), 0o700)
	slow, err := update.NewHook(update.HookConfig{Path: script, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Health(ctx); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("hung hook: %v", err)
	}
	for _, bad := range []update.HookConfig{{}, {Path: script, Slots: [2]string{"a", "a"}}, {Path: script, Slots: [2]string{"a", "-b"}}, {Path: script, Slots: [2]string{"a", "b c"}}} {
		if _, err := update.NewHook(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
