package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

var tools = []string{"swtpm", "swtpm_setup", "swtpm_ioctl", "tpm2_readpublic", "tpm2_pcrextend", "tpm2_pcrread", "mosquitto_sub", "mosquitto_pub", "openssl"}

// requireTools fails (CI=true) or skips when an external client is missing.
func requireTools(t testing.TB) {
	t.Helper()
	var missing []string
	for _, b := range tools {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "missing " + strings.Join(missing, ", ") + " (run `make test` as root to install them)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// vendor is the "TPM manufacturer": one swtpm EK CA shared by the
// package's tests, created in TestMain.
var vendor *swtpm.CA

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sigil-e2e-vendor-")
	if err != nil {
		panic(err)
	}
	vendor, err = swtpm.NewCA(dir)
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// vendorCA returns the shared vendor CA. Its certificates exist once the
// first swtpm was set up with it.
func vendorCA(t testing.TB) *swtpm.CA {
	t.Helper()
	if _, err := vendor.RootCertPEM(); err != nil {
		newTPM(t) // the first setup creates the CA's certificates
	}
	return vendor
}

func logger(t testing.TB) *slog.Logger {
	if os.Getenv("SIGIL_E2E_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// ekCADir writes a CA's root and intermediate into a fresh directory, the
// way an operator installs a TPM vendor's CA certificates.
func ekCADir(t testing.TB, ca *swtpm.CA) string {
	t.Helper()
	dir := t.TempDir()
	for name, read := range map[string]func() ([]byte, error){"root.pem": ca.RootCertPEM, "intermediate.pem": ca.IntermediateCertPEM} {
		b, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// newTPM starts a fresh swtpm whose EK certificate the vendor CA signed.
func newTPM(t testing.TB) *swtpm.Instance {
	t.Helper()
	requireTools(t)
	return swtpmtest.New(t, vendor)
}

// startFleet runs a fleet in a temporary data directory.
func startFleet(t testing.TB, mutate func(*server.Config)) *harness.Fleet {
	t.Helper()
	requireTools(t)
	// Tests call the API from one address far faster than people do; the
	// limiter has its own tests (TestAPIRateLimit).
	cfg := server.Config{DataDir: t.TempDir(), APIRateLimit: -1}
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := harness.StartFleet(context.Background(), cfg, logger(t).With("side", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	return f
}

// startDevice runs sigild on the given TPM.
func startDevice(t testing.TB, f *harness.Fleet, inst *swtpm.Instance, dc harness.DeviceConfig) *harness.Device {
	t.Helper()
	if dc.Dir == "" {
		dc.Dir = t.TempDir()
	}
	if dc.TPM == "" {
		dc.TPM = inst.URI()
	}
	if dc.Model == "" {
		dc.Model = "gw-1"
	}
	if dc.Serial == "" {
		dc.Serial = "SN-" + filepath.Base(dc.Dir)
	}
	d, err := f.StartDevice(context.Background(), dc, logger(t).With("side", "device", "serial", dc.Serial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	return d
}

func waitConnected(t testing.TB, d *harness.Device) agent.Status {
	t.Helper()
	st, err := d.Wait(context.Background(), 30*time.Second, harness.Connected)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitReason waits until the device reports a refusal with the reason name.
func waitReason(t testing.TB, d *harness.Device, reason string) agent.Status {
	t.Helper()
	st, err := d.Wait(context.Background(), 30*time.Second, func(s agent.Status) bool {
		return strings.HasPrefix(s.LastReason, reason)
	})
	if err != nil {
		t.Fatalf("want refusal %q: %v", reason, err)
	}
	return st
}

// snapshot is the inventory's visible state, to prove a refusal changed
// nothing.
type snapshot struct {
	Devices []inventory.Device
}

func inventorySnapshot(t testing.TB, f *harness.Fleet) snapshot {
	t.Helper()
	devs, _, err := f.Inv.ListDevices(t.Context(), inventory.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range devs {
		devs[i].LastSeen = time.Time{} // moves with every connection and attestation
		devs[i].Connected = false
		devs[i].Attestation, devs[i].LastAttested = "", time.Time{}
	}
	return snapshot{Devices: devs}
}

func assertUnchanged(t testing.TB, f *harness.Fleet, before snapshot) {
	t.Helper()
	after := inventorySnapshot(t, f)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("inventory changed by a refused enrollment:\nbefore %+v\nafter  %+v", before, after)
	}
}

// softwareIdentity issues a fleet certificate for id over a software key and
// writes cert and key PEM files for the mosquitto clients.
func softwareIdentity(t testing.TB, f *harness.Fleet, id string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := f.CA.IssueDevice(id, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	writePEM(t, certFile, "CERTIFICATE", cert.Raw)
	writePEM(t, keyFile, "PRIVATE KEY", der)
	return certFile, keyFile
}

// issuedIdentity is softwareIdentity recorded in the inventory as a
// certificate the fleet issued to the device (beside its current one), for
// clients that cannot use the device's TPM key; the broker admits only
// certificates issued to the device.
func issuedIdentity(t testing.TB, f *harness.Fleet, id string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = softwareIdentity(t, f, id)
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Inv.Update(t.Context(), id, func(d *inventory.Device) error {
		d.Certs = append(d.Certificates(), inventory.Cert{Serial: hex.EncodeToString(cert.SerialNumber.Bytes()), NotAfter: cert.NotAfter})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func hostPort(t testing.TB, f *harness.Fleet) (string, string) {
	addr := f.MQTTAddr()
	i := strings.LastIndexByte(addr, ':')
	return addr[:i], addr[i+1:]
}

func run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

var _ = fmt.Sprint
