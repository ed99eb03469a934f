// Package mosquittotest starts real Mosquitto brokers configured as
// members of Sigil's broker pool (mqttpool.Member), for tests.
package mosquittotest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/internal/wait"
)

// DynsecPlugin returns the path of Mosquitto's dynamic security plugin;
// missing, it fails the test under CI=true and skips it otherwise.
func DynsecPlugin(t testing.TB) string {
	t.Helper()
	for _, g := range []string{"/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so"} {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return m[0]
		}
	}
	testenv.Unavailable(t, fmt.Errorf("mosquitto_dynamic_security.so not found (install the mosquitto package)"))
	return ""
}

// Broker is a running Mosquitto.
type Broker struct {
	// Addr is the device (or bootstrap) listener; FleetAddr the fleet's.
	Addr, FleetAddr string
	// Dir holds its files.
	Dir      string
	role     string
	stateDir string
	files    map[string][]byte

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    strings.Builder
}

// FreePort returns a loopback port free now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start writes m's files (in a fresh directory; Listen and FleetListen,
// when empty, on free loopback ports) and starts mosquitto with
// them; it is killed when the test ends. A missing mosquitto fails the
// test under CI=true and skips it otherwise.
func Start(t testing.TB, m mqttpool.Member) *Broker {
	t.Helper()
	testenv.RequireBinaries(t, "mosquitto")
	// Mosquitto started as root drops to its own user, which must read
	// the files: t.TempDir's parent is private, so make our own.
	dir, err := os.MkdirTemp("", "mosquittotest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m.Dir = dir
	if m.Listen == "" {
		m.Listen = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	}
	if m.FleetListen == "" {
		m.FleetListen = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	}
	if m.DynsecPlugin != "" {
		// The plugin rewrites its state: a directory the mosquitto
		// user may write to.
		m.StateDir = filepath.Join(dir, "state")
		if err := os.Mkdir(m.StateDir, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(m.StateDir, 0o777); err != nil { // whatever the umask
			t.Fatal(err)
		}
	}
	files, _, err := m.Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		where := dir
		if name == mqttpool.DynsecFile {
			where = m.StateDir
		}
		// Readable (the plugin's state writable) by the mosquitto user,
		// whatever owns them here.
		if err := writeShared(filepath.Join(where, name), b); err != nil {
			t.Fatal(err)
		}
	}
	b := &Broker{Addr: m.Listen, FleetAddr: m.FleetListen, Dir: dir, role: m.Role, stateDir: m.StateDir, files: files}
	b.start(t)
	t.Cleanup(func() {
		b.kill()
		if t.Failed() {
			t.Logf("mosquitto (%s) output:\n%s", m.Role, b.output())
		}
	})
	return b
}

// start runs mosquitto on the broker's files and waits until it says it
// runs, which it logs once its listeners are open. It does not probe them
// with a connection: a connection that ends before its TLS handshake made
// Mosquitto 2.0.11 count a bounded listener's connections wrong
// (TestBootstrapBrokerBounds then saw a fourth client accepted past
// max_connections 3).
func (b *Broker) start(t testing.TB) {
	t.Helper()
	const running = " running\n" // "mosquitto version 2.0.11 running"
	before := strings.Count(b.output(), running)
	cmd := exec.Command("mosquitto", "-c", filepath.Join(b.Dir, mqttpool.ConfFile))
	cmd.Stdout, cmd.Stderr = writer(b.write), writer(b.write)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.mu.Lock()
	b.cmd, b.exited = cmd, exited
	b.mu.Unlock()
	wait.Until(t, func() error {
		select {
		case <-exited:
			t.Fatalf("mosquitto exited:\n%s", b.output())
		default:
		}
		if strings.Count(b.output(), running) > before {
			return nil
		}
		return fmt.Errorf("mosquitto has not said it runs on %s and %s", b.Addr, b.FleetAddr)
	})
}

// kill stops the broker's process and waits for it.
func (b *Broker) kill() {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.mu.Unlock()
	_ = cmd.Process.Kill()
	<-exited
}

// Restart kills the broker (its clients' connections drop) and starts it
// again on the same files and ports.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.kill()
	b.start(t)
}

// Stop kills the broker (its clients' connections drop), which stays
// down until Resume: a broker that misses what the fleet sends meanwhile.
func (b *Broker) Stop() { b.kill() }

// Resume starts a stopped broker again on the same files, ports and
// plugin state.
func (b *Broker) Resume(t testing.TB) {
	t.Helper()
	b.start(t)
}

// ResetState restarts the broker with the dynamic security plugin's
// state as Start wrote it: a broker that lost its state, or a new one.
func (b *Broker) ResetState(t testing.TB) {
	t.Helper()
	b.kill()
	if d, ok := b.files[mqttpool.DynsecFile]; ok {
		if err := writeShared(filepath.Join(b.stateDir, mqttpool.DynsecFile), d); err != nil {
			t.Fatal(err)
		}
	}
	b.start(t)
}

// writeShared writes a file the mosquitto user may read and write
// whatever the umask: the plugin rewrites its state in place (it refuses
// to save a file it may not write, and then loses its changes at a
// restart).
func writeShared(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o666); err != nil {
		return err
	}
	return os.Chmod(path, 0o666)
}

func (b *Broker) write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.Write(p)
}

func (b *Broker) output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.String()
}

// Pid is the broker's process ID.
func (b *Broker) Pid() int { b.mu.Lock(); defer b.mu.Unlock(); return b.cmd.Process.Pid }

// Reload has the broker reread its CRL and ACL file (SIGHUP).
func (b *Broker) Reload() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd.Process.Signal(syscall.SIGHUP)
}

type writer func([]byte) (int, error)

func (f writer) Write(b []byte) (int, error) { return f(b) }
