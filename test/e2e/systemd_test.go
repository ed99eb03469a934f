package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/wait"
)

// unitFile is sigild's shipped systemd unit; exampleConfig the example
// configuration it is documented with.
const (
	unitFile      = "../../deploy/systemd/sigild.service"
	exampleConfig = "../../deploy/sigild.example.json"
)

// unit is the [Service] section of a systemd unit: each setting with its
// values, in order (a setting given twice keeps both).
type unit map[string][]string

// parseUnit reads the [Service] section of a unit file.
func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok || strings.HasSuffix(line, "\\") {
				t.Fatalf("%s: cannot read %q", path, line)
			}
			u[strings.TrimSpace(k)] = append(u[strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// last is the value of a setting given once or more (the last wins), ""
// when not set.
func (u unit) last(k string) string {
	if v := u[k]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// list is the space-separated values of a list setting, all occurrences.
func (u unit) list(k string) []string {
	var out []string
	for _, v := range u[k] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// unitSettings says, for every [Service] setting the sandbox below knows,
// whether it reproduces it or why it need not (it does not decide which
// paths sigild may write). A setting not listed fails the test: whoever
// adds it to the unit teaches the sandbox what it means.
var unitSettings = map[string]string{
	"ExecStart":               "reproduced",
	"ExecReload":              "what systemctl reload runs (SIGHUP to the broker): the test does not reload",
	"EnvironmentFile":         "read by systemd before the start: the test substitutes its variables in ExecStart",
	"ProtectSystem":           "reproduced",
	"ProtectHome":             "reproduced",
	"PrivateTmp":              "reproduced",
	"ReadWritePaths":          "reproduced",
	"ReadOnlyPaths":           "reproduced",
	"InaccessiblePaths":       "reproduced",
	"StateDirectory":          "reproduced",
	"StateDirectoryMode":      "reproduced",
	"RuntimeDirectory":        "reproduced",
	"RuntimeDirectoryMode":    "reproduced",
	"CapabilityBoundingSet":   "reproduced",
	"NoNewPrivileges":         "reproduced",
	"Restart":                 "how systemd restarts it: the test fails on the first exit instead",
	"RestartSec":              "how systemd restarts it",
	"DeviceAllow":             "device cgroup; the test's TPM is a swtpm over TCP",
	"DevicePolicy":            "device cgroup; the test's TPM is a swtpm over TCP",
	"RestrictAddressFamilies": "seccomp on socket families; sigild uses only AF_INET, AF_INET6 and AF_UNIX",
	"SystemCallArchitectures": "seccomp on foreign system call ABIs",
	"User":                    "reproduced (a user the test adds to the sandbox's /etc/passwd)",
	"Group":                   "reproduced",
	"SupplementaryGroups":     "reproduced",
	"AmbientCapabilities":     "reproduced (empty: setpriv clears the inheritable set, so no ambient capability)",
	"UMask":                   "reproduced",
	"ExecStartPre":            "runs as root outside the sandbox (+) and may fail (-): it copies the firmware's event log, which the test's swtpm has none of",
	"SystemCallFilter":        "seccomp: sigild makes no call of @privileged (docs/DEPLOY.md)",
	"SystemCallErrorNumber":   "seccomp",
	"ProtectKernelTunables":   "read-only /proc/sys and /sys: ProtectSystem=strict here makes them no more writable than sigild needs (it only reads them)",
	"ProtectKernelModules":    "no module loading (needs a capability sigild does not have)",
	"ProtectKernelLogs":       "no kernel log access (sigild reads none)",
	"ProtectControlGroups":    "read-only cgroup file system (sigild reads none)",
	"ProtectClock":            "no clock setting (needs a capability sigild does not have)",
	"ProtectHostname":         "no hostname changes (sigild makes none)",
	"RestrictNamespaces":      "seccomp on namespace creation (sigild creates none)",
	"RestrictRealtime":        "seccomp on realtime scheduling (sigild uses none)",
	"RestrictSUIDSGID":        "seccomp on setuid/setgid files (sigild makes none)",
	"LockPersonality":         "seccomp on personality(2)",
	"MemoryDenyWriteExecute":  "seccomp on writable and executable mappings (Go makes none)",
	"RemoveIPC":               "System V IPC cleanup at stop",
	"KeyringMode":             "kernel keyring of the service (sigild uses none)",
	"PrivateMounts":           "the sandbox is a private mount namespace already",
	"PrivateDevices":          "reproduced",
	"ProtectProc":             "reproduced",
	"ProcSubset":              "reproduced",
	"PrivateUsers":            "a user namespace mapping only the service's user and root: the test runs it as that user directly",
	"LimitNOFILE":             "the open-file limit (this machine caps every process at 20,000)",
}

// sandbox is the file system view a systemd service gets from its unit,
// reproduced with a mount namespace: an overlay of / (so nothing of the
// host changes), API file systems bound in, the unit's writable paths
// bound writable, everything else read-only, then chroot and the unit's
// capability and privilege settings (setpriv).
type sandbox struct {
	upper  string            // the overlay's upper layer: what the test stages in the root
	script string            // the shell script that builds the namespace and execs the service
	dirs   map[string]string // StateDirectory and RuntimeDirectory paths -> the test's directories behind them
	argv   []string          // ExecStart
	uid    int               // User= and Group=: the ids the test gave them in the sandbox (0: root)
	gid    int
}

// sandboxID is the user and group id the sandbox gives the unit's User=
// and Group= (absent from this machine's /etc/passwd and /etc/group).
const sandboxID = 64991

// requireSandbox fails the test (skips it outside CI) where a unit's
// sandbox cannot be built: without util-linux's unshare, setpriv, chroot
// and mount, or without root.
func requireSandbox(t *testing.T) {
	t.Helper()
	for _, b := range []string{"unshare", "setpriv", "chroot", "mount"} {
		requireBinary(t, b, "util-linux")
	}
	if os.Geteuid() != 0 {
		msg := "the sandbox needs root (mount namespaces, overlayfs, chroot)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// newSandbox reproduces u's sandbox in dir.
func newSandbox(t *testing.T, u unit, dir string) *sandbox {
	t.Helper()
	for k := range u {
		if _, ok := unitSettings[k]; !ok {
			t.Fatalf("the unit sets %s, which this test does not reproduce: add it to unitSettings", k)
		}
	}
	sb := &sandbox{upper: filepath.Join(dir, "upper"), dirs: map[string]string{}}
	root, work := filepath.Join(dir, "root"), filepath.Join(dir, "work")
	for _, d := range []string{sb.upper, root, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// User= and Group=: the package creates the user; the test adds it to
	// the sandbox's copies of /etc/passwd and /etc/group.
	if user := u.last("User"); user != "" {
		if u.last("Group") != user {
			t.Fatalf("User=%s with Group=%s: the sandbox reproduces a user with its own group only", user, u.last("Group"))
		}
		sb.uid, sb.gid = sandboxID, sandboxID
		for _, f := range []struct{ path, line string }{
			{"/etc/passwd", fmt.Sprintf("%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n", user, sandboxID, sandboxID)},
			{"/etc/group", fmt.Sprintf("%s:x:%d:\n", user, sandboxID)},
		} {
			b, err := os.ReadFile(f.path)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), ":"+strconv.Itoa(sandboxID)+":") {
				t.Fatalf("%s already has id %d", f.path, sandboxID)
			}
			p := filepath.Join(sb.upper, f.path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, append(b, f.line...), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	var s strings.Builder
	sh := func(format string, args ...any) { fmt.Fprintf(&s, format+"\n", args...) }
	q := func(p string) string { return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'" }
	r := func(p string) string { return q(filepath.Join(root, p)) }
	sh("set -eu")
	sh("mount -t overlay sigil-sandbox -o lowerdir=/,upperdir=%s,workdir=%s %s", q(sb.upper), q(work), q(root))
	sh("mount --rbind /sys %s", r("/sys"))
	// ProtectProc= and ProcSubset=: a proc of its own with hidepid= and
	// subset=, as systemd mounts it; else the host's.
	var procOpts []string
	switch v := u.last("ProtectProc"); v {
	case "", "default":
	case "invisible", "noaccess", "ptraceable":
		procOpts = append(procOpts, "hidepid="+v)
	default:
		t.Fatalf("ProtectProc=%s is not reproduced", v)
	}
	switch v := u.last("ProcSubset"); v {
	case "", "all":
	case "pid":
		procOpts = append(procOpts, "subset=pid")
	default:
		t.Fatalf("ProcSubset=%s is not reproduced", v)
	}
	if len(procOpts) > 0 {
		sh("mount -t proc -o %s proc %s", strings.Join(procOpts, ","), r("/proc"))
	} else {
		sh("mount --rbind /proc %s", r("/proc"))
	}
	// PrivateDevices=: a /dev of its own with the pseudo devices only.
	if isTrue(u.last("PrivateDevices")) {
		sh("mount -t tmpfs -o mode=0755,nosuid tmpfs %s", r("/dev"))
		for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
			sh("touch %s && mount --bind /dev/%s %s", r("/dev/"+d), d, r("/dev/"+d))
		}
		sh("mkdir %s %s && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs %s", r("/dev/shm"), r("/dev/pts"), r("/dev/shm"))
	} else {
		sh("mount --rbind /dev %s", r("/dev"))
	}

	// Writable: StateDirectory= and RuntimeDirectory= (directories systemd
	// creates and hands over), ReadWritePaths= (existing paths).
	for _, d := range []struct{ setting, base, mode string }{
		{"StateDirectory", "/var/lib", u.last("StateDirectoryMode")},
		{"RuntimeDirectory", "/run", u.last("RuntimeDirectoryMode")},
	} {
		for _, name := range u.list(d.setting) {
			p := filepath.Join(d.base, name)
			host := filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(p, "/"), "/", "_"))
			if err := os.Mkdir(host, 0o755); err != nil {
				t.Fatal(err)
			}
			if d.mode != "" {
				sh("chmod %s %s", d.mode, q(host))
			}
			// systemd hands the directory to the unit's user.
			sh("chown %d:%d %s", sb.uid, sb.gid, q(host))
			sb.dirs[p] = host
			sh("mkdir -p %s", r(p))
			sh("mount --bind %s %s", q(host), r(p))
		}
	}
	for _, p := range u.list("ReadWritePaths") {
		optional := strings.HasPrefix(p, "-")
		p = strings.TrimLeft(p, "-+")
		if optional {
			sh("if [ -e %s ]; then mount --bind %s %s; fi", r(p), r(p), r(p))
		} else {
			sh("mount --bind %s %s", r(p), r(p))
		}
	}

	// PrivateTmp=: fresh /tmp and /var/tmp.
	if isTrue(u.last("PrivateTmp")) {
		sh("mount -t tmpfs -o mode=1777 tmpfs %s", r("/tmp"))
		sh("mount -t tmpfs -o mode=1777 tmpfs %s", r("/var/tmp"))
	}
	// ProtectHome=: /home, /root and /run/user empty and inaccessible, or
	// read-only.
	switch v := u.last("ProtectHome"); {
	case v == "" || v == "no" || v == "false":
	case isTrue(v):
		for _, h := range []string{"/home", "/root", "/run/user"} {
			sh("if [ -d %s ]; then mount -t tmpfs -o ro,mode=000 tmpfs %s; fi", r(h), r(h))
		}
	case v == "read-only":
		for _, h := range []string{"/home", "/root", "/run/user"} {
			sh("if [ -d %s ]; then mount --bind %s %s && mount -o remount,bind,ro %s; fi", r(h), r(h), r(h), r(h))
		}
	default:
		t.Fatalf("ProtectHome=%s is not reproduced", v)
	}
	for _, p := range u.list("ReadOnlyPaths") {
		p = strings.TrimLeft(p, "-+")
		sh("if [ -e %s ]; then mount --bind %s %s && mount -o remount,bind,ro %s; fi", r(p), r(p), r(p), r(p))
	}
	for _, p := range u.list("InaccessiblePaths") {
		p = strings.TrimLeft(p, "-+")
		sh("if [ -d %s ]; then mount -t tmpfs -o ro,mode=000 tmpfs %s; fi", r(p), r(p))
	}
	// ProtectSystem=strict: the whole hierarchy read-only but the API file
	// systems and the writable paths above (separate mounts, untouched).
	switch v := u.last("ProtectSystem"); v {
	case "strict":
		sh("mount -o remount,bind,ro %s", q(root))
	default:
		t.Fatalf("ProtectSystem=%q is not reproduced (only strict is)", v)
	}

	// CapabilityBoundingSet= (empty: no capabilities, even as root) and
	// NoNewPrivileges=.
	setpriv := []string{"setpriv"}
	if isTrue(u.last("NoNewPrivileges")) {
		setpriv = append(setpriv, "--no-new-privs")
	}
	switch caps, ok := u["CapabilityBoundingSet"]; {
	case !ok:
	case u.last("CapabilityBoundingSet") == "":
		setpriv = append(setpriv, "--bounding-set", "-all", "--inh-caps", "-all")
	default:
		t.Fatalf("CapabilityBoundingSet=%v is not reproduced (only an empty set is)", caps)
	}
	if v := u.last("AmbientCapabilities"); v != "" {
		t.Fatalf("AmbientCapabilities=%s is not reproduced (only an empty set is)", v)
	}
	// User=, Group= and SupplementaryGroups= (names the chroot's
	// /etc/passwd and /etc/group resolve).
	if user := u.last("User"); user != "" {
		setpriv = append(setpriv, "--reuid", user, "--regid", user)
		if groups := u.list("SupplementaryGroups"); len(groups) > 0 {
			setpriv = append(setpriv, "--groups", strings.Join(groups, ","))
		} else {
			setpriv = append(setpriv, "--clear-groups")
		}
	} else if len(u.list("SupplementaryGroups")) > 0 {
		t.Fatal("SupplementaryGroups= without User= is not reproduced")
	}
	if m := u.last("UMask"); m != "" {
		sh("umask %s", m)
	}

	sb.argv = strings.Fields(u.last("ExecStart"))
	if len(sb.argv) == 0 || !filepath.IsAbs(sb.argv[0]) {
		t.Fatalf("ExecStart=%q: want an absolute program path without prefixes", u.last("ExecStart"))
	}
	line := []string{"exec", "chroot", q(root)}
	line = append(line, setpriv...)
	for _, a := range sb.argv {
		line = append(line, q(a))
	}
	sh("%s", strings.Join(line, " "))
	sb.script = s.String()
	return sb
}

func isTrue(v string) bool { return v == "true" || v == "yes" || v == "on" || v == "1" }

// stage writes a file into the sandbox's root (its overlay's upper layer)
// before it starts, as an administrator installs it.
func (sb *sandbox) stage(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(sb.upper, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

// forService makes a staged file the administrator's and readable by the
// unit's group only (root:GROUP 0640), as the package sets the
// configuration (dpkg-statoverride) and as docs/DEPLOY.md tells the
// administrator to set the token.
func (sb *sandbox) forService(t *testing.T, path string) {
	t.Helper()
	p := filepath.Join(sb.upper, path)
	if err := os.Chown(p, 0, sb.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
}

// hostPath is where the test finds a file the service wrote at path: in
// the directory behind its StateDirectory or RuntimeDirectory.
func (sb *sandbox) hostPath(t *testing.T, path string) string {
	t.Helper()
	for p, host := range sb.dirs {
		if rel, err := filepath.Rel(p, path); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(host, rel)
		}
	}
	t.Fatalf("%s is in none of the service's own directories %v", path, sb.dirs)
	return ""
}

// sandboxRun is a daemon started by a sandbox's script (run), its output
// in a log file; stopped once the test has seen it exit.
type sandboxRun struct {
	cmd     *exec.Cmd
	exited  chan error
	logPath string
	stopped bool
}

// run writes the sandbox's script into dir and starts it in a new mount
// namespace (the script execs chroot, setpriv and then the daemon, all in
// this one process), its output in dir/logName; the daemon is stopped
// when the test ends.
func (sb *sandbox) run(t *testing.T, dir, logName string) *sandboxRun {
	t.Helper()
	script := filepath.Join(dir, "sandbox.sh")
	if err := os.WriteFile(script, []byte(sb.script), 0o700); err != nil {
		t.Fatal(err)
	}
	r := &sandboxRun{exited: make(chan error, 1), logPath: filepath.Join(dir, logName)}
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	r.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "/bin/sh", script)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(r.stop)
	return r
}

// stop interrupts the daemon, killing it after 10 s, unless it was seen
// to exit.
func (r *sandboxRun) stop() {
	if r.stopped {
		return
	}
	r.stopped = true
	r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
}

// log is what the daemon wrote so far.
func (r *sandboxRun) log() string { b, _ := os.ReadFile(r.logPath); return string(b) }

// written lists the files written in the sandbox's upper layer (the
// staged ones and whatever the daemon wrote outside its own mounts).
func (sb *sandbox) written() []string {
	var written []string
	filepath.WalkDir(sb.upper, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			written = append(written, strings.TrimPrefix(p, sb.upper))
		}
		return nil
	})
	return written
}

// TestSystemdUnitSandbox runs the real sigild under the sandbox of the
// shipped systemd unit (deploy/systemd/sigild.service: ProtectSystem=strict
// and the rest, reproduced with a mount namespace because systemd is not
// PID 1 here) with the shipped example configuration, against a real fleet
// and swtpm. sigild must stay up with its SSH features on and write the
// host certificates for both the configured host key (ssh_host_keys) and
// the TPM-born one (ssh_tpm_host_key) where sshd is told to read them.
func TestSystemdUnitSandbox(t *testing.T) {
	requireTools(t)
	requireSandbox(t)
	requireBinary(t, "ssh-keygen", "openssh-client")
	u := parseUnit(t, unitFile)
	raw, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	stringAt := func(k string) string {
		s, ok := cfg[k].(string)
		if !ok || !filepath.IsAbs(s) {
			t.Fatalf("example config: %s = %v, want an absolute path", k, cfg[k])
		}
		return s
	}
	var hostKeys []string
	for _, k := range cfg["ssh_host_keys"].([]any) {
		hostKeys = append(hostKeys, k.(string))
	}
	tpmKey := stringAt("ssh_tpm_host_key")
	if len(hostKeys) != 1 {
		t.Fatalf("example config: ssh_host_keys %v, want one key", hostKeys)
	}

	dir := t.TempDir()
	sb := newSandbox(t, u, dir)
	f := startFleet(t, nil)
	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.CreateToken(context.Background(), cfg["model"].(string), "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	inst := newTPM(t)

	// The administrator's files, at the example's paths: the program, the
	// configuration (with this machine's TPM, broker and quick retries),
	// the fleet CA, the token, and an OpenSSH host key made by ssh-keygen.
	sigild := filepath.Join(dir, "sigild")
	if out, err := exec.Command("go", "build", "-o", sigild, "github.com/sigil-iot/sigil/cmd/sigild").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(sigild)
	if err != nil {
		t.Fatal(err)
	}
	sb.stage(t, sb.argv[0], bin, 0o755)
	for k, v := range map[string]any{"tpm": inst.URI(), "broker": f.MQTTAddr(), "server_name": "localhost",
		"retry_min": "200ms", "retry_max": "2s"} {
		cfg[k] = v
	}
	cfgJSON, _ := json.Marshal(cfg)
	configPath := ""
	for i, a := range sb.argv {
		if a == "--config" && i+1 < len(sb.argv) {
			configPath = sb.argv[i+1]
		}
	}
	if configPath == "" {
		t.Fatalf("ExecStart %v names no --config", sb.argv)
	}
	sb.stage(t, configPath, cfgJSON, 0o600)
	sb.forService(t, configPath)
	sb.stage(t, stringAt("fleet_ca"), caPEM, 0o644)
	sb.stage(t, stringAt("token_file"), []byte(tok.Token+"\n"), 0o600)
	sb.forService(t, stringAt("token_file"))
	keyDir := filepath.Join(dir, "keygen")
	if err := os.Mkdir(keyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	priv := filepath.Join(keyDir, "host_key")
	mustRun(t, "ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", priv)
	for src, dst := range map[string]string{priv: strings.TrimSuffix(hostKeys[0], ".pub"), priv + ".pub": hostKeys[0]} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		// As ssh-keygen -A leaves them: the private key root's alone, the
		// public one readable by all (sigild reads only that).
		mode := os.FileMode(0o600)
		if strings.HasSuffix(dst, ".pub") {
			mode = 0o644
		}
		sb.stage(t, dst, b, mode)
	}

	d := sb.run(t, dir, "sigild.log")
	sigildLog := d.log

	// The certificates go where the documentation tells sshd to read them.
	certOf := func(pub string) string {
		name := filepath.Base(strings.TrimSuffix(pub, ".pub")) + "-cert.pub"
		certDir, _ := cfg["ssh_cert_dir"].(string)
		if certDir == "" {
			certDir = filepath.Join(filepath.Dir(stringAt("state")), "ssh") // the documented default
		}
		return filepath.Join(certDir, name)
	}
	want := map[string]string{certOf(hostKeys[0]): hostKeys[0], certOf(tpmKey): tpmKey}
	// A safety net, not a timing assertion.
	if !wait.Poll(90*time.Second, func() bool {
		select {
		case err := <-d.exited:
			d.stopped = true
			t.Fatalf("sigild exited under the unit's sandbox: %v\n%s", err, sigildLog())
		default:
		}
		if l := sigildLog(); strings.Contains(l, "writing the host certificate failed") {
			t.Fatalf("sigild could not write a host certificate under the unit's sandbox:\n%s", l)
		}
		for cert := range want {
			if fi, err := os.Stat(sb.hostPath(t, cert)); err != nil || fi.Size() == 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("no host certificates at %v after 90 s:\n%s", want, sigildLog())
	}

	for cert, pub := range want {
		hc := sb.hostPath(t, cert)
		// Written by the unit's user (User=), not root.
		if fi, err := os.Stat(hc); err != nil {
			t.Fatal(err)
		} else if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != sb.uid {
			t.Errorf("%s is owned by %v, want the unit's user (%d)", cert, fi.Sys(), sb.uid)
		}
		out := mustRun(t, "ssh-keygen", "-L", "-f", hc)
		if !strings.Contains(out, "host certificate") {
			t.Fatalf("%s is not a host certificate:\n%s", cert, out)
		}
		pubFile := filepath.Join(sb.upper, pub) // the administrator's key
		if pub == tpmKey {
			pubFile = sb.hostPath(t, pub) // the one sigild wrote
		}
		if !strings.Contains(out, fingerprint(t, pubFile)) {
			t.Fatalf("%s does not certify %s:\n%s", cert, pub, out)
		}
	}
	agentSocket, _ := cfg["ssh_agent_socket"].(string)
	if agentSocket == "" {
		agentSocket = "/run/sigild/ssh-agent.sock" // the documented default
	}
	if fi, err := os.Stat(sb.hostPath(t, agentSocket)); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("ssh-agent socket: %v, %v", fi, err)
	}
	select {
	case err := <-d.exited:
		d.stopped = true
		t.Fatalf("sigild exited: %v\n%s", err, sigildLog())
	default:
	}
	// Nothing was written outside the service's own directories: the
	// upper layer holds only what the test staged.
	written := sb.written()
	staged := []string{sb.argv[0], configPath, stringAt("fleet_ca"), stringAt("token_file"), hostKeys[0], strings.TrimSuffix(hostKeys[0], ".pub"), "/etc/passwd", "/etc/group"}
	for _, w := range written {
		if !slices.Contains(staged, w) {
			t.Errorf("%s written outside the service's directories", w)
		}
	}
}
