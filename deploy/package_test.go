package deploy

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The versions the test packages: the first install, then an upgrade.
const (
	oldVersion = "1.0.0"
	newVersion = "1.0.1"
)

// deb is one package the test builds: its name, Debian architecture and
// the ELF machine of its program.
type deb struct {
	name, arch string
	machine    elf.Machine
}

func (d deb) file(dist, version string) string {
	return filepath.Join(dist, fmt.Sprintf("%s_%s-1_%s.deb", d.name, version, d.arch))
}

// debs are the packages make package builds (issue 19).
var debs = []deb{
	{"sigild", "amd64", elf.EM_X86_64},
	{"sigild", "arm64", elf.EM_AARCH64},
	{"sigild", "armhf", elf.EM_ARM},
	{"sigil", "amd64", elf.EM_X86_64},
	{"sigil", "arm64", elf.EM_AARCH64},
}

// entry is a file or directory of a package's data archive.
type entry struct {
	mode         os.FileMode // permission bits
	dir          bool
	owner, group string
}

// contents are what each package must hold, with modes and owners; any
// other file fails the test (directories only where listed).
var contents = map[string]map[string]entry{
	"sigild": {
		"/usr/bin/sigild":                                {mode: 0o755, owner: "root", group: "root"},
		"/lib/systemd/system/sigild.service":             {mode: 0o644, owner: "root", group: "root"},
		"/lib/systemd/system/sigild-sshd-reload.path":    {mode: 0o644, owner: "root", group: "root"},
		"/lib/systemd/system/sigild-sshd-reload.service": {mode: 0o644, owner: "root", group: "root"},
		"/etc/sigild":                               {mode: 0o755, dir: true, owner: "root", group: "root"},
		"/etc/sigild/config.json":                   {mode: 0o644, owner: "root", group: "root"},
		"/usr/share/doc/sigild/copyright":           {mode: 0o644, owner: "root", group: "root"},
		"/usr/share/doc/sigild/changelog.Debian.gz": {mode: 0o644},
		"/usr/share/man/man1/sigild.1.gz":           {mode: 0o644, owner: "root", group: "root"},
		"/usr/share/lintian/overrides/sigild":       {mode: 0o644, owner: "root", group: "root"},
	},
	"sigil": {
		"/usr/bin/sigil":                                      {mode: 0o755, owner: "root", group: "root"},
		"/lib/systemd/system/sigil.service":                   {mode: 0o644, owner: "root", group: "root"},
		"/lib/systemd/system/sigil-mosquitto@.service":        {mode: 0o644, owner: "root", group: "root"},
		"/lib/systemd/system/sigil-broker-sync@.service":      {mode: 0o644, owner: "root", group: "root"},
		"/lib/systemd/system/sigil-mosquitto-reload@.path":    {mode: 0o644, owner: "root", group: "root"},
		"/lib/systemd/system/sigil-mosquitto-reload@.service": {mode: 0o644, owner: "root", group: "root"},
		"/etc/sigil":                               {mode: 0o755, dir: true, owner: "root", group: "root"},
		"/etc/sigil/ek-ca":                         {mode: 0o755, dir: true, owner: "root", group: "root"},
		"/etc/sigil/claim-ca":                      {mode: 0o755, dir: true, owner: "root", group: "root"},
		"/etc/sigil/serve.json":                    {mode: 0o644, owner: "root", group: "root"},
		"/etc/default/sigil-broker-sync":           {mode: 0o644, owner: "root", group: "root"},
		"/usr/share/doc/sigil/copyright":           {mode: 0o644, owner: "root", group: "root"},
		"/usr/share/doc/sigil/changelog.Debian.gz": {mode: 0o644},
		"/usr/share/man/man1/sigil.1.gz":           {mode: 0o644, owner: "root", group: "root"},
		"/usr/share/lintian/overrides/sigil":       {mode: 0o644, owner: "root", group: "root"},
	},
}

// conffiles are each package's configuration files (dpkg keeps an
// administrator's changes across upgrades and removal).
var conffiles = map[string][]string{
	"sigild": {"/etc/sigild/config.json"},
	"sigil":  {"/etc/default/sigil-broker-sync", "/etc/sigil/serve.json"},
}

// TestPackages builds the packages with `make package` (reusing the cross
// builds when they are up to date), lints them, checks their contents, and
// installs each into a throwaway root: an overlay of this Debian system
// whose changes land in a temporary directory, where the real dpkg runs
// the real maintainer scripts (adduser, dpkg-statoverride). There it
// checks the users, modes and conffiles, verifies the installed units, and
// upgrades, removes, purges and reinstalls without losing state.
func TestPackages(t *testing.T) {
	need(t, "make", "lintian", "dpkg-deb", "dpkg")
	dist := t.TempDir()
	build := func(version string, args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "DEB_VERSION="+version)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	build(oldVersion, "make", "-C", "..", "--no-print-directory", "package", "DIST="+dist)
	build(newVersion, "../scripts/package.sh", dist, "sigild", "amd64", "sigil", "amd64")
	var files []string
	for _, d := range debs {
		files = append(files, d.file(dist, oldVersion))
	}

	t.Run("lintian", func(t *testing.T) {
		// Errors and warnings fail; informational tags and the overrides
		// (deploy/package/*.lintian-overrides) are listed.
		out, err := exec.Command("lintian", append([]string{"--fail-on", "error,warning", "-I"}, files...)...).CombinedOutput()
		t.Logf("lintian:\n%s", out)
		if err != nil {
			t.Errorf("lintian: %v", err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
				t.Errorf("lintian: %s", l)
			}
		}
	})

	t.Run("contents", func(t *testing.T) {
		for _, d := range debs {
			checkContents(t, d, d.file(dist, oldVersion))
		}
	})

	t.Run("install", func(t *testing.T) {
		needRoot(t)
		need(t, "unshare", "chroot", "mount", "systemd-analyze")
		for _, d := range debs {
			r := newThrowaway(t, dist)
			if d.arch != "amd64" {
				r.sh(t, "dpkg --add-architecture "+d.arch)
			}
			r.sh(t, "dpkg -i /mnt/"+filepath.Base(d.file(dist, oldVersion)))
			checkInstalled(t, r, d.name)
		}
	})

	t.Run("upgrade-remove-purge", func(t *testing.T) {
		needRoot(t)
		need(t, "unshare", "chroot", "mount")
		checkLifecycle(t, newThrowaway(t, dist), dist)
	})
}

// checkContents reads a package's control data and files with dpkg-deb.
func checkContents(t *testing.T, d deb, file string) {
	t.Helper()
	field := func(name string) string {
		out, err := exec.Command("dpkg-deb", "--field", file, name).Output()
		if err != nil {
			t.Fatalf("dpkg-deb --field %s %s: %v", file, name, err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := field("Package"); got != d.name {
		t.Errorf("%s: Package %q", file, got)
	}
	if got := field("Architecture"); got != d.arch {
		t.Errorf("%s: Architecture %q, want %q", file, got, d.arch)
	}
	if got := field("Version"); got != oldVersion+"-1" {
		t.Errorf("%s: Version %q", file, got)
	}
	if deps := field("Depends"); !strings.Contains(deps, "adduser") {
		t.Errorf("%s: Depends %q lacks adduser (the maintainer scripts call it)", file, deps)
	}

	ctl := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "--control", file, ctl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --control: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if got := strings.Fields(string(raw)); !slices.Equal(sorted(got), conffiles[d.name]) {
		t.Errorf("%s: conffiles %v, want %v", file, got, conffiles[d.name])
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if fi, err := os.Stat(filepath.Join(ctl, s)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: maintainer script %s: %v, %v", file, s, fi, err)
		}
	}

	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", file)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", file, err)
	}
	want := contents[d.name]
	seen := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "."), "/")
		w, ok := want[name]
		if !ok {
			if h.Typeflag != tar.TypeDir {
				t.Errorf("%s: unexpected %s", file, name)
			}
			continue
		}
		seen[name] = true
		if dir := h.Typeflag == tar.TypeDir; dir != w.dir {
			t.Errorf("%s: %s: directory %v, want %v", file, name, dir, w.dir)
		}
		if m := os.FileMode(h.Mode).Perm(); m != w.mode {
			t.Errorf("%s: %s: mode %o, want %o", file, name, m, w.mode)
		}
		// Owners by name (dpkg resolves names first) and by number.
		if w.owner != "" && (h.Uname != w.owner || h.Uid != 0) {
			t.Errorf("%s: %s: owner %s (%d), want %s", file, name, h.Uname, h.Uid, w.owner)
		}
		if w.group != "" && (h.Gname != w.group || h.Gid != 0) {
			t.Errorf("%s: %s: group %s (%d), want %s", file, name, h.Gname, h.Gid, w.group)
		}
		if name == "/usr/bin/"+d.name {
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			checkProgram(t, d, body)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s: %s missing", file, name)
		}
	}
}

// checkProgram checks that a package carries the program the cross build
// made for its architecture: the same bytes as bin/<name>-linux-<arch>,
// an ELF for the right machine, statically linked.
func checkProgram(t *testing.T, d deb, body []byte) {
	t.Helper()
	goarch := map[string]string{"amd64": "amd64", "arm64": "arm64", "armhf": "armv7"}[d.arch]
	built, err := os.ReadFile(filepath.Join("..", "bin", d.name+"-linux-"+goarch))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, built) {
		t.Errorf("%s %s: /usr/bin/%s is not the cross build's bin/%s-linux-%s", d.name, d.arch, d.name, d.name, goarch)
	}
	f, err := elf.NewFile(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", d.name, d.arch, err)
	}
	if f.Machine != d.machine {
		t.Errorf("%s %s: ELF machine %v, want %v", d.name, d.arch, f.Machine, d.machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s %s: dynamically linked (%v)", d.name, d.arch, p.Type)
		}
	}
}

// checkInstalled checks a freshly installed package in a throwaway root.
func checkInstalled(t *testing.T, r *throwaway, name string) {
	t.Helper()
	user := name
	home := "/var/lib/" + name
	pw := strings.Split(strings.TrimSpace(r.sh(t, "getent passwd "+user)), ":")
	if len(pw) != 7 || pw[5] != home || pw[6] != "/usr/sbin/nologin" {
		t.Errorf("%s: user %v, want home %s and shell /usr/sbin/nologin", name, pw, home)
	}
	if uid, err := strconv.Atoi(strings.TrimSpace(r.sh(t, "id -u "+user))); err != nil || uid == 0 || uid >= 1000 {
		t.Errorf("%s: uid %d (%v) is not a system user's", name, uid, err)
	}
	if r.exists(t, home) {
		t.Errorf("%s: the package made %s (systemd's StateDirectory= makes it)", name, home)
	}
	groups := strings.Fields(r.sh(t, "id -nG "+user))
	if name == "sigild" && !slices.Contains(groups, "tss") {
		t.Errorf("sigild is in %v, not in tss (the group of /dev/tpmrm0)", groups)
	}
	if name == "sigil" && len(groups) != 1 {
		t.Errorf("sigil is in %v: want only its own group", groups)
	}
	if name == "sigil" {
		// The broker pool's units' users: system users, each in its own
		// group only.
		for user, home := range map[string]string{"sigil-mosquitto": "/var/lib/sigil-mosquitto", "sigil-broker-sync": "/nonexistent"} {
			pw := strings.Split(strings.TrimSpace(r.sh(t, "getent passwd "+user)), ":")
			if len(pw) != 7 || pw[5] != home || pw[6] != "/usr/sbin/nologin" {
				t.Errorf("%s: user %v, want home %s and shell /usr/sbin/nologin", user, pw, home)
			}
			if uid, err := strconv.Atoi(strings.TrimSpace(r.sh(t, "id -u "+user))); err != nil || uid == 0 || uid >= 1000 {
				t.Errorf("%s: uid %d (%v) is not a system user's", user, uid, err)
			}
			if g := strings.Fields(r.sh(t, "id -nG "+user)); len(g) != 1 || g[0] != user {
				t.Errorf("%s is in %v: want only its own group", user, g)
			}
		}
	}
	config := map[string]string{"sigild": "/etc/sigild/config.json", "sigil": "/etc/sigil/serve.json"}[name]
	if got := strings.TrimSpace(r.sh(t, "stat -c '%U %G %a' "+config)); got != "root "+name+" 640" {
		t.Errorf("%s: %s is %q, want root %s 640", name, config, got, name)
	}
	if got := strings.TrimSpace(r.sh(t, "stat -c '%U %G %a' /usr/bin/"+name)); got != "root root 755" {
		t.Errorf("%s: /usr/bin/%s is %q", name, name, got)
	}
	var got []string
	for _, l := range strings.Split(r.sh(t, "dpkg-query -W -f='${Conffiles}' "+name), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			got = append(got, f[0])
		}
	}
	if !slices.Equal(sorted(got), conffiles[name]) {
		t.Errorf("%s: dpkg's conffiles %v, want %v", name, got, conffiles[name])
	}

	// The installed units verify (systemd-analyze prints nothing for a
	// sound unit; the broken one proves it reads them).
	units := map[string][]string{
		"sigild": {"sigild.service", "sigild-sshd-reload.path", "sigild-sshd-reload.service"},
		"sigil": {"sigil.service", "sigil-mosquitto@pool1.service", "sigil-broker-sync@pool1.service",
			"sigil-mosquitto-reload@pool1.path", "sigil-mosquitto-reload@pool1.service"},
	}[name]
	if out := r.sh(t, "cd /lib/systemd/system && systemd-analyze verify "+strings.Join(units, " ")+" 2>&1"); strings.TrimSpace(out) != "" {
		t.Errorf("%s: systemd-analyze verify %v:\n%s", name, units, out)
	}
	broken := "printf '[Service]\\nExecStart=/usr/bin/" + name + "\\nProtectSystm=strict\\n' >/lib/systemd/system/sigil-broken.service && " +
		"cd /lib/systemd/system && systemd-analyze verify sigil-broken.service 2>&1; rm /lib/systemd/system/sigil-broken.service"
	if out := r.sh(t, broken); !strings.Contains(out, "ProtectSystm") {
		t.Errorf("systemd-analyze verify did not flag an unknown setting:\n%s", out)
	}
}

// checkLifecycle installs both amd64 packages, gives them state and an
// administrator's edits, then upgrades, removes, purges and reinstalls:
// the state, the edits and the users survive every step (purge removes
// only the package's own conffiles and the permissions it set).
func checkLifecycle(t *testing.T, r *throwaway, dist string) {
	t.Helper()
	base := func(name, version string) string { return "/mnt/" + name + "_" + version + "-1_amd64.deb" }
	r.sh(t, "dpkg -i "+base("sigild", oldVersion)+" "+base("sigil", oldVersion))
	uids := r.sh(t, "id -u sigild; id -u sigil")

	// What the daemons and the administrator leave: state the daemons
	// wrote, an edited configuration, files of the administrator's own.
	r.sh(t, `set -e
install -d -o sigild -g sigild -m 0750 /var/lib/sigild
echo device-identity >/var/lib/sigild/state.db && chown sigild:sigild /var/lib/sigild/state.db && chmod 600 /var/lib/sigild/state.db
install -d -o sigil -g sigil -m 0700 /var/lib/sigil /var/lib/sigil/ca
echo fleet-ca-key >/var/lib/sigil/ca/ca.key && chown sigil:sigil /var/lib/sigil/ca/ca.key
sed -i 's/fleet.example.com/fleet.test/' /etc/sigild/config.json /etc/sigil/serve.json
echo token >/etc/sigild/enrollment.token
echo ca >/etc/sigil/ek-ca/maker.pem`)
	state := `cat /var/lib/sigild/state.db /var/lib/sigil/ca/ca.key; stat -c '%U %G %a %n' /var/lib/sigild/state.db /var/lib/sigil/ca/ca.key /var/lib/sigild /var/lib/sigil; cat /etc/sigild/enrollment.token /etc/sigil/ek-ca/maker.pem`
	wantState := r.sh(t, state)
	edited := func(step string) {
		t.Helper()
		for _, f := range []string{"/etc/sigild/config.json", "/etc/sigil/serve.json"} {
			if out := r.sh(t, "cat "+f); !strings.Contains(out, "fleet.test") {
				t.Errorf("%s: the administrator's edit of %s is lost:\n%s", step, f, out)
			}
		}
	}
	kept := func(step string) {
		t.Helper()
		if got := r.sh(t, state); got != wantState {
			t.Errorf("%s: state changed:\n%s\nwant:\n%s", step, got, wantState)
		}
		if got := r.sh(t, "id -u sigild; id -u sigil"); got != uids {
			t.Errorf("%s: users %q, want %q", step, got, uids)
		}
	}

	// Upgrade: the old prerm and postrm, the new postinst (configure with
	// the old version).
	r.sh(t, "dpkg -i --force-confold "+base("sigild", newVersion)+" "+base("sigil", newVersion))
	if v := r.sh(t, "dpkg-query -W -f='${Version}' sigild"); v != newVersion+"-1" {
		t.Fatalf("upgrade: sigild is at %q", v)
	}
	kept("upgrade")
	edited("upgrade")
	if got := strings.TrimSpace(r.sh(t, "stat -c '%U %G %a' /etc/sigild/config.json")); got != "root sigild 640" {
		t.Errorf("upgrade: config.json is %q", got)
	}

	// Remove: the programs go, everything else stays.
	r.sh(t, "dpkg -r sigild sigil")
	for _, f := range []string{"/usr/bin/sigild", "/usr/bin/sigil", "/lib/systemd/system/sigild.service"} {
		if r.exists(t, f) {
			t.Errorf("remove: %s left", f)
		}
	}
	kept("remove")
	edited("remove")

	// Purge: the conffiles and the permission overrides go; the state,
	// the administrator's own files and the users stay, and it says so.
	out := r.sh(t, "dpkg -P sigild sigil 2>&1")
	for _, msg := range []string{"kept /var/lib/sigild", "kept /var/lib/sigil "} {
		if !strings.Contains(out, msg) {
			t.Errorf("purge does not say %q:\n%s", msg, out)
		}
	}
	for _, f := range []string{"/etc/sigild/config.json", "/etc/sigil/serve.json", "/etc/default/sigil-broker-sync"} {
		if r.exists(t, f) {
			t.Errorf("purge: conffile %s left", f)
		}
	}
	if o := r.sh(t, "dpkg-statoverride --list"); strings.Contains(o, "/etc/sigil") {
		t.Errorf("purge: statoverrides left:\n%s", o)
	}
	kept("purge")

	// A reinstall finds its user and the device's state again.
	r.sh(t, "dpkg -i "+base("sigild", newVersion)+" "+base("sigil", newVersion))
	kept("reinstall")
}

// throwaway is a root file system for installing packages: an overlay of
// this system's / whose upper layer is a temporary directory, mounted in
// a private mount namespace for each command and entered with chroot.
// The host's files never change; the dpkg database, /etc/passwd and the
// rest change in the upper layer and persist between commands.
type throwaway struct {
	setup string // the shell lines that mount it; "$1" is the command
}

func newThrowaway(t *testing.T, debs string) *throwaway {
	t.Helper()
	dir := t.TempDir()
	upper, work, root := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	q := func(p string) string { return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'" }
	var s strings.Builder
	fmt.Fprintf(&s, "set -eu\n")
	fmt.Fprintf(&s, "mount -t overlay sigil-throwaway -o lowerdir=/,upperdir=%s,workdir=%s %s\n", q(upper), q(work), q(root))
	fmt.Fprintf(&s, "mount --rbind /dev %s/dev\n", q(root))
	fmt.Fprintf(&s, "mount -t proc proc %s/proc\n", q(root))
	fmt.Fprintf(&s, "mount --bind %s %s/mnt\n", q(debs), q(root))
	// No systemd runs in the root (no /run/systemd/system): the
	// maintainer scripts take their path without it, as in a chroot or
	// an image build.
	fmt.Fprintf(&s, "mount -t tmpfs tmpfs %s/run\n", q(root))
	fmt.Fprintf(&s, "exec chroot %s /bin/sh -c \"$1\"\n", q(root))
	r := &throwaway{setup: s.String()}
	// man-db's trigger would rebuild the manual index for each install.
	r.sh(t, "rm -f /var/lib/man-db/auto-update")
	return r
}

// sh runs a shell command in the root and returns its standard output;
// a failure fails the test.
func (r *throwaway) sh(t *testing.T, command string) string {
	t.Helper()
	out, err := r.run(command)
	if err != nil {
		t.Fatalf("in the throwaway root: %s: %v\n%s", command, err, out)
	}
	return out
}

func (r *throwaway) run(command string) (string, error) {
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", r.setup, "sh", command)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// exists reports whether path exists in the root.
func (r *throwaway) exists(t *testing.T, path string) bool {
	t.Helper()
	return strings.TrimSpace(r.sh(t, "if [ -e "+path+" ]; then echo yes; fi")) == "yes"
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
