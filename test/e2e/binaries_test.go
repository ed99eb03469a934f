package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// buildBinaries builds sigil and sigild as a user would.
func buildBinaries(t testing.TB) (sigil, sigild string) {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{"sigil", "sigild"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b), "github.com/sigil-iot/sigil/cmd/"+b).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", b, err, out)
		}
	}
	return filepath.Join(dir, "sigil"), filepath.Join(dir, "sigild")
}

func startProcess(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	logf, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", filepath.Base(name), b)
		}
	})
	return cmd
}

// TestBinaries runs the real programs: `sigil serve`, `sigild run` on an
// swtpm, `sigild status` and `sigil devices list`.
func TestBinaries(t *testing.T) {
	requireTools(t)
	sigil, sigild := buildBinaries(t)
	data := t.TempDir()
	mqtt, api := freeAddr(t), freeAddr(t)
	serveCfg := filepath.Join(t.TempDir(), "serve.json")
	b, _ := json.Marshal(map[string]any{"data_dir": data, "mqtt_addr": mqtt, "api_addr": api, "ek_ca_dir": ekCADir(t, vendorCA(t)), "hostnames": []string{"localhost", "127.0.0.1"}})
	os.WriteFile(serveCfg, b, 0o600)
	startProcess(t, sigil, "serve", "--config", serveCfg)
	caFile := filepath.Join(data, "ca", "ca.crt")
	waitFor(t, func() bool { _, err := os.Stat(filepath.Join(data, "admin.token")); return err == nil }, "sigil serve to write its admin token")

	inst := newTPM(t)
	devDir := t.TempDir()
	devCfg := filepath.Join(devDir, "sigild.json")
	b, _ = json.Marshal(map[string]any{
		"tpm": inst.URI(), "state": filepath.Join(devDir, "state.db"), "broker": mqtt, "server_name": "localhost",
		"fleet_ca": caFile, "model": "gw-1", "firmware": "1.2.3", "serial": "SN-BIN", "control": filepath.Join(devDir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "2s", "event_log": "-",
	})
	os.WriteFile(devCfg, b, 0o600)
	startProcess(t, sigild, "run", "--config", devCfg)

	var status string
	waitFor(t, func() bool {
		out, err := exec.Command(sigild, "status", "--config", devCfg).CombinedOutput()
		status = string(out)
		return err == nil // exit 0: enrolled and connected
	}, "sigild status to report enrolled and connected")
	for _, want := range []string{"daemon:       running", "enrollment:   enrolled", "connected:    true", "cert expiry:"} {
		if !strings.Contains(status, want) {
			t.Fatalf("sigild status lacks %q:\n%s", want, status)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sigil, "devices", "list", "--data-dir", data, "--server", "https://localhost"+api[strings.LastIndexByte(api, ':'):], "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("sigil devices list: %v\n%s", err, out)
	}
	var list struct {
		Devices []struct {
			ID, State, Serial, Firmware string
			Connected                   bool
		}
	}
	if err := json.Unmarshal(out, &list); err != nil || len(list.Devices) != 1 {
		t.Fatalf("devices: %v %s", err, out)
	}
	if d := list.Devices[0]; d.State != "active" || d.Serial != "SN-BIN" || d.Firmware != "1.2.3" || !d.Connected {
		t.Fatalf("device %+v", d)
	}
	// The device attested on connect; the CLI shows the verdict.
	base := "https://localhost" + api[strings.LastIndexByte(api, ':'):]
	waitFor(t, func() bool {
		out, err := exec.Command(sigil, "devices", "attestations", list.Devices[0].ID, "--data-dir", data, "--server", base).CombinedOutput()
		return err == nil && strings.Contains(string(out), "pass") && strings.Contains(string(out), "no_policy")
	}, "sigil devices attestations to show the device's first verdict")
	// A forced rotation through the CLI completes: the device renews.
	out, err = exec.Command(sigil, "rotations", "start", "--devices", list.Devices[0].ID, "--reason", "cli test", "--data-dir", data, "--server", base).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "rot_") {
		t.Fatalf("sigil rotations start: %v %s", err, out)
	}
	jobID := strings.Fields(string(out))[0]
	waitFor(t, func() bool {
		out, err := exec.Command(sigil, "rotations", "show", jobID, "--data-dir", data, "--server", base).CombinedOutput()
		return err == nil && strings.Contains(string(out), " done ") && strings.Contains(string(out), "renewed 1/1")
	}, "the CLI-started rotation to finish")
	// CA rotation through the CLI: the running sigild is re-issued by the
	// new generation and ends up trusting only its root.
	for _, step := range [][]string{{"ca", "prepare"}, {"ca", "activate", "--rate", "5"}} {
		out, err := exec.Command(sigil, append(step, "--data-dir", data, "--server", base)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), " G2 ") {
			t.Fatalf("sigil %v: %v %s", step, err, out)
		}
	}
	waitFor(t, func() bool {
		out, err := exec.Command(sigild, "status", "--config", devCfg).CombinedOutput()
		status = string(out)
		return err == nil && strings.Contains(status, "cert issuer:  Sigil fleet CA sigil.local G2")
	}, "sigild to be re-issued by CA generation 2")
	if out, err := exec.Command(sigil, "ca", "retire", "--data-dir", data, "--server", base).CombinedOutput(); err != nil || !strings.Contains(string(out), "retired G1") {
		t.Fatalf("sigil ca retire: %v %s", err, out)
	}
	waitFor(t, func() bool {
		out, err := exec.Command(sigild, "status", "--config", devCfg).CombinedOutput()
		status = string(out)
		return err == nil && strings.Contains(status, "trust roots:  Sigil fleet CA sigil.local G2\n")
	}, "sigild to drop the retired root")
	out, err = exec.Command(sigil, "ca", "status", "--data-dir", data, "--server", base).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "G1  retired") || !strings.Contains(string(out), "G2  active") {
		t.Fatalf("sigil ca status: %v %s", err, out)
	}
	// Operators through the CLI: a user with a generated password, shown
	// once; an API token scoped to viewer that reads but cannot write.
	if out, err := exec.Command(sigil, "users", "create", "olga", "--role", "operator", "--data-dir", data, "--server", base).CombinedOutput(); err != nil || !strings.Contains(string(out), "password (shown once): ") {
		t.Fatalf("sigil users create: %v %s", err, out)
	}
	if out, err := exec.Command(sigil, "users", "list", "--data-dir", data, "--server", base).CombinedOutput(); err != nil || !strings.Contains(string(out), "olga") || !strings.Contains(string(out), "operator") {
		t.Fatalf("sigil users list: %v %s", err, out)
	}
	out, err = exec.Command(sigil, "api-tokens", "create", "script", "--role", "viewer", "--data-dir", data, "--server", base).CombinedOutput()
	secret := strings.TrimSpace(string(out[bytes.LastIndex(out, []byte(": "))+2:]))
	if err != nil || !strings.HasPrefix(secret, "sga_") {
		t.Fatalf("sigil api-tokens create: %v %s", err, out)
	}
	if out, err := exec.Command(sigil, "devices", "list", "--token", secret, "--data-dir", data, "--server", base).CombinedOutput(); err != nil {
		t.Fatalf("viewer token read: %v %s", err, out)
	}
	cmd := exec.Command(sigil, "tokens", "create", "--model", "gw-1", "--token", secret, "--data-dir", data, "--server", base)
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 5 {
		t.Fatalf("viewer token wrote: exit %d %s", cmd.ProcessState.ExitCode(), out)
	}
	// A bad invocation is a usage error with a clear message.
	cmd = exec.Command(sigil, "devices", "show")
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "needs a device ID") {
		t.Fatalf("usage error: %d %s", cmd.ProcessState.ExitCode(), out)
	}
}

// TestKillDuringRenewal: sigild is killed with SIGKILL at many points of its
// renewal cycle (key created, nonce asked, request sent, certificate
// stored, switching); each time it comes back with a working identity.
func TestKillDuringRenewal(t *testing.T) {
	requireTools(t)
	_, sigild := buildBinaries(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.DeviceLifetime = config.Duration(4 * time.Second) }))
	inst := newTPM(t)
	devDir := t.TempDir()
	devCfg := filepath.Join(devDir, "sigild.json")
	b, _ := json.Marshal(map[string]any{
		"tpm": inst.URI(), "state": filepath.Join(devDir, "state.db"), "broker": f.MQTTAddr(), "server_name": "localhost",
		"fleet_ca": f.CACertPath(), "model": "gw-1", "serial": "SN-KILL", "control": filepath.Join(devDir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "1s", "event_log": "-", "renew_at": 0.3,
	})
	os.WriteFile(devCfg, b, 0o600)
	connected := func() bool { return exec.Command(sigild, "status", "--config", devCfg).Run() == nil }

	// The first start enrolls; renewals then come every ~1.2 s.
	cmd := exec.Command(sigild, "run", "--config", devCfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, connected, "sigild to enroll and connect")
	serials := map[string]bool{}
	for i := range 10 {
		// sleep: each kill lands at another point of the ~1.2 s renewal cycle (the moment varies; nothing is awaited)
		time.Sleep(time.Duration(150+i*137%1300) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		cmd = exec.Command(sigild, "run", "--config", devCfg)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, connected, "sigild to come back connected after SIGKILL")
		out, _ := exec.Command(sigild, "status", "--config", devCfg, "--json").Output()
		var st struct {
			DeviceID   string `json:"device_id"`
			CertSerial string `json:"cert_serial"`
		}
		json.Unmarshal(out, &st)
		serials[st.CertSerial] = true
		dev, err := f.Inv.Device(t.Context(), st.DeviceID)
		if err != nil || dev.State != "active" || dev.IsRevoked(st.CertSerial) {
			t.Fatalf("after kill %d: device %+v, %v", i, dev, err)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if len(serials) < 3 {
		t.Fatalf("only %d certificates over the run: renewals did not happen between kills", len(serials))
	}
}
