package e2e

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/internal/wait"
)

// syncUnitFile is the pool's CRL sync unit, a template.
const syncUnitFile = "../../deploy/systemd/sigil-broker-sync@.service"

// TestSystemdBrokerSyncUnitSandbox runs the real `sigil broker-sync`
// under the sandbox of the shipped unit (deploy/systemd/sigil-broker-sync@.service,
// instance sy1: its own user, not root; ProtectSystem=strict with only
// the broker's directory writable; no capabilities), its environment file's
// variables set to a real fleet's URL and a broker-sync token file
// (root:GROUP 0640), once (--once). The broker's directory is set up as
// docs/BROKERS.md says: root:sigil-broker-sync 1775, crl.pem the sync's,
// the rest root's. The sync must replace crl.pem with the fleet's CRL,
// as its user, and write nothing else; and the same user, in the same
// sandbox, must fail to replace a file of root's there (the sticky bit).
func TestSystemdBrokerSyncUnitSandbox(t *testing.T) {
	requireSandbox(t)
	sigil, _ := buildBinaries(t)
	f := startFleet(t, nil)
	tok, _, err := f.Auth.CreateToken(t.Context(), auth.BootstrapAdmin, "sync", auth.RoleBrokerSync, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	const confDir, tokenPath, conf = "/etc/mosquitto/sigil-sy1", "/etc/sigil/broker-sync.token", "mosquitto.conf"

	// The instance sy1, its environment file's variables substituted (as
	// systemd does), its ExecStart= as exec makes it.
	unit := func(dir string, exec func(string) string) *sandbox {
		raw, err := os.ReadFile(syncUnitFile)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(raw), "%i", "sy1")
		s = strings.ReplaceAll(s, "${SIGIL_FLEET}", "https://localhost"+f.APIURL()[strings.LastIndexByte(f.APIURL(), ':'):])
		s = strings.ReplaceAll(s, `"${SIGIL_TOKEN_FILE}"`, tokenPath)
		lines := strings.Split(s, "\n")
		for i, l := range lines {
			if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
				lines[i] = "ExecStart=" + exec(v)
			}
		}
		s = strings.Join(lines, "\n")
		path := filepath.Join(dir, "sigil-broker-sync@sy1.service")
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		u := parseUnit(t, path)
		if !slices.Contains(u.list("ReadWritePaths"), confDir) {
			t.Fatalf("the unit may not write %s: ReadWritePaths=%v", confDir, u.list("ReadWritePaths"))
		}
		sb := newSandbox(t, u, dir)
		// The administrator's files.
		sb.stage(t, "/usr/bin/sigil", readFile(t, sigil), 0o755)
		sb.stage(t, tokenPath, []byte(tok+"\n"), 0o600)
		sb.forService(t, tokenPath)
		sb.stage(t, confDir+"/"+mqttpool.CAFile, caPEM, 0o644)
		sb.stage(t, confDir+"/"+conf, []byte("# root's\n"), 0o644)
		sb.stage(t, confDir+"/"+mqttpool.CRLFile, []byte("an old CRL\n"), 0o644)
		for p, own := range map[string][2]int{confDir + "/" + mqttpool.CRLFile: {sb.uid, sb.gid}, confDir: {0, sb.gid}} {
			if err := os.Chown(filepath.Join(sb.upper, p), own[0], own[1]); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(filepath.Join(sb.upper, confDir), 0o775|os.ModeSticky); err != nil {
			t.Fatal(err)
		}
		return sb
	}

	dir := t.TempDir()
	sb := unit(dir, func(v string) string { return v + " --once" })
	run := sb.run(t, dir, "sync.log")
	err = wait.Recv(t, run.exited, "sigil broker-sync --once")
	run.stopped = true // seen to exit
	if err != nil {
		t.Fatalf("sigil broker-sync under the unit's sandbox: %v\n%s", err, run.log())
	}
	if !strings.Contains(run.log(), "CRL updated") {
		t.Fatalf("sigil broker-sync did not update the CRL:\n%s", run.log())
	}
	crl := filepath.Join(sb.upper, confDir, mqttpool.CRLFile)
	b := readFile(t, crl)
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "X509 CRL" {
		t.Fatalf("crl.pem after the sync: %q", b)
	}
	fi, err := os.Stat(crl)
	if err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != sb.uid || fi.Mode().Perm() != 0o644 {
		t.Fatalf("crl.pem: %v %v: want the sync's, 0644", fi.Mode(), err)
	}
	for _, w := range sb.written() {
		if !strings.HasPrefix(w, confDir+"/") && !slices.Contains([]string{"/etc/passwd", "/etc/group", "/usr/bin/sigil", tokenPath}, w) {
			t.Errorf("%s written outside the broker's directory", w)
		}
		if strings.HasPrefix(w, confDir+"/.") {
			t.Errorf("%s left behind", w)
		}
	}

	// The sync's user cannot replace root's files in that directory.
	dir2 := t.TempDir()
	sb2 := unit(dir2, func(string) string {
		return "/bin/mv -f " + confDir + "/" + mqttpool.CRLFile + " " + confDir + "/" + conf
	})
	mv := sb2.run(t, dir2, "mv.log")
	err = wait.Recv(t, mv.exited, "mv")
	mv.stopped = true // seen to exit
	if err == nil {
		t.Fatalf("the sync's user replaced root's %s:\n%s", conf, mv.log())
	}
	if !strings.Contains(mv.log(), "not permitted") {
		t.Fatalf("mv failed for another reason than the sticky bit:\n%s", mv.log())
	}
	if got := readFile(t, filepath.Join(sb2.upper, confDir, conf)); string(got) != "# root's\n" {
		t.Fatalf("%s is now %q", conf, got)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
