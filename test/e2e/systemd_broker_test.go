package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/internal/wait"
)

// brokerUnitFile is the pool's Mosquitto unit, a template.
const brokerUnitFile = "../../deploy/systemd/sigil-mosquitto@.service"

// TestSystemdBrokerUnitSandbox runs the real Mosquitto under the sandbox
// of the shipped unit (deploy/systemd/sigil-mosquitto@.service, instance
// sb1: its own user, ProtectSystem=strict, no capabilities, umask 0077;
// reproduced as in TestSystemdUnitSandbox) with the configuration `sigil
// broker-config` writes (a device broker with the dynamic security
// plugin, its listeners on free loopback ports), the key and password
// file root:GROUP 0640 as docs/BROKERS.md says. Mosquitto must start,
// serve TLS with the fleet CA's certificate for it, take the fleet's
// password and a command on the plugin's control topic (mosquitto_pub),
// write the plugin's new state into its StateDirectory, and write nothing
// else.
func TestSystemdBrokerUnitSandbox(t *testing.T) {
	requireSandbox(t)
	requireBinary(t, "mosquitto", "mosquitto")
	pub := requireBinary(t, "mosquitto_pub", "mosquitto-clients")
	plugin := "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
	if matches, _ := filepath.Glob("/usr/lib/*/mosquitto_dynamic_security.so"); len(matches) > 0 {
		plugin = matches[0]
	} else {
		requireBinary(t, plugin, "mosquitto")
	}
	dir := t.TempDir()
	// The instance sb1 of the template, as systemd expands it.
	raw, err := os.ReadFile(brokerUnitFile)
	if err != nil {
		t.Fatal(err)
	}
	instance := filepath.Join(dir, "sigil-mosquitto@sb1.service")
	if err := os.WriteFile(instance, []byte(strings.ReplaceAll(string(raw), "%i", "sb1")), 0o644); err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, instance)
	confDir, stateDir := "/etc/mosquitto/sigil-sb1", "/var/lib/"+u.last("StateDirectory")
	if !slices.Contains(u.list("ReadOnlyPaths"), confDir) {
		t.Fatalf("the unit does not read %s: ReadOnlyPaths=%v", confDir, u.list("ReadOnlyPaths"))
	}

	// The configuration, as `sigil broker-config --dir confDir
	// --state-dir stateDir` writes it from the fleet's data directory.
	dataDir := filepath.Join(dir, "fleet")
	c, err := ca.Open(ca.Config{Dir: filepath.Join(dataDir, "ca"), TrustDomain: "broker.example"})
	if err != nil {
		t.Fatal(err)
	}
	listen, fleetListen := freeAddr(t), freeAddr(t)
	m := mqttpool.Member{Role: mqttpool.RoleDevice, Dir: confDir, Listen: listen, FleetListen: fleetListen,
		MaxQueued: mqttpool.DefaultQueued, DynsecPlugin: plugin, StateDir: stateDir}
	out := filepath.Join(dir, "out")
	if _, err := mqttpool.WriteConfig(c, dataDir, m, []string{"localhost"}, nil, out); err != nil {
		t.Fatal(err)
	}
	secret, err := mqttpool.Secret(dataDir)
	if err != nil {
		t.Fatal(err)
	}

	sb := newSandbox(t, u, dir)
	if want := []string{"/usr/sbin/mosquitto", "-c", confDir + "/" + mqttpool.ConfFile}; !slices.Equal(sb.argv, want) {
		t.Fatalf("ExecStart %v, want %v", sb.argv, want)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	staged := []string{"/etc/passwd", "/etc/group"}
	hostState := sb.dirs[stateDir]
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(out, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := e.Info()
		if e.Name() == mqttpool.DynsecFile {
			// The administrator copies the plugin's first state into the
			// unit's StateDirectory, the unit's user's.
			p := filepath.Join(hostState, e.Name())
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, sb.uid, sb.gid); err != nil {
				t.Fatal(err)
			}
			continue
		}
		p := confDir + "/" + e.Name()
		sb.stage(t, p, b, fi.Mode().Perm())
		if e.Name() == mqttpool.KeyFile || e.Name() == mqttpool.PasswordFile {
			sb.forService(t, p)
		}
		staged = append(staged, p)
	}
	if _, err := os.Stat(filepath.Join(hostState, mqttpool.DynsecFile)); err != nil {
		t.Fatalf("broker-config wrote no %s: %v", mqttpool.DynsecFile, err)
	}

	broker := sb.run(t, dir, "mosquitto.log")
	exited := func() {
		select {
		case err := <-broker.exited:
			broker.stopped = true
			t.Fatalf("mosquitto exited under the unit's sandbox: %v\n%s", err, broker.log())
		default:
		}
	}
	// TLS on the devices' listener with the certificate the fleet CA
	// issued it: Mosquitto read its key.
	pool := x509.NewCertPool()
	pool.AddCert(c.Certificate())
	// A safety net, not a timing assertion.
	if !wait.Poll(60*time.Second, func() bool {
		exited()
		conn, err := tls.Dial("tcp", listen, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}) {
		t.Fatalf("mosquitto did not serve TLS on %s:\n%s", listen, broker.log())
	}
	// The fleet's password on its listener, and a command to the dynamic
	// security plugin, which saves its state.
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, c.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(fleetListen, ":")
	cmd := exec.Command(pub, "-h", "localhost", "-p", port, "--cafile", caFile, "-u", mqttpool.Username, "-P", secret,
		"-q", "1", "-t", "$CONTROL/dynamic-security/v1", "-m", `{"commands":[{"command":"createRole","rolename":"sandbox-check"}]}`)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub to the fleet's listener: %v\n%s\n%s", err, b, broker.log())
	}
	if !wait.Poll(60*time.Second, func() bool {
		exited()
		b, _ := os.ReadFile(filepath.Join(hostState, mqttpool.DynsecFile))
		return strings.Contains(string(b), "sandbox-check")
	}) {
		t.Fatalf("the plugin did not save its state in %s:\n%s", stateDir, broker.log())
	}
	exited()
	for _, w := range sb.written() {
		if !slices.Contains(staged, w) {
			t.Errorf("%s written outside the broker's state directory", w)
		}
	}
}
