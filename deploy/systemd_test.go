package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// need fails the test when a program is missing under CI=true and skips
// it otherwise (scripts/deps.sh installs them: make test-deps).
func need(t *testing.T, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			msg := p + " is missing (make test-deps installs it)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// needRoot is need for root (mount namespaces, overlayfs, chroot).
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := "needs root: mount namespaces, overlayfs and chroot"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// exposureLimits are the highest overall exposure systemd-analyze
// security may give each shipped long-running unit (issue 19: the fleet's
// units at most 2.0, the daemon's at most 3.0). The oneshot reload units
// (sigild-sshd-reload, sigil-mosquitto-reload@) run systemctl as root by
// design and are not rated.
var exposureLimits = map[string]float64{
	"sigil.service":  2.0,
	"sigild.service": 3.0,
	// The broker pool's units: Mosquitto, and the CRL sync beside it.
	"sigil-mosquitto@.service":   2.0,
	"sigil-broker-sync@.service": 2.0,
}

var overallRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9]+\.[0-9]+)`)

// TestUnitExposure rates deploy/systemd/sigil.service and sigild.service
// with `systemd-analyze security --offline=true` (the unit files alone,
// as systemd would run them) and fails above each one's limit: both
// through systemd-analyze's own --threshold (its exit status) and by the
// rating it prints.
func TestUnitExposure(t *testing.T) {
	need(t, "systemd-analyze")
	for unit, limit := range exposureLimits {
		path := filepath.Join("systemd", unit)
		// --threshold takes an integer out of 100: 2.0 is 20.
		cmd := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager",
			"--threshold="+strconv.Itoa(int(limit*10)), path)
		out, err := cmd.CombinedOutput()
		m := overallRE.FindSubmatch(out)
		if m == nil {
			t.Fatalf("%s: no overall exposure in systemd-analyze's output (%v):\n%s", unit, err, out)
		}
		got, perr := strconv.ParseFloat(string(m[1]), 64)
		if perr != nil {
			t.Fatal(perr)
		}
		t.Logf("%s: exposure %.1f (limit %.1f)", unit, got, limit)
		if got > limit || err != nil {
			t.Errorf("%s: systemd-analyze security rates it %.1f, above its limit %.1f (exit: %v):\n%s", unit, got, limit, err, out)
		}
	}
}
