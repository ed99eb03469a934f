package e2e

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestRestartDevice: sigild restarted reconnects with its stored identity
// and does not enroll again.
func TestRestartDevice(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	dir := t.TempDir()
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir})
	first := waitConnected(t, d)
	// sigild status, through the control socket while running...
	live, err := agent.CurrentStatus(d.Config)
	if err != nil || !live.Running || !live.Connected || live.DeviceID != first.DeviceID {
		t.Fatalf("live status %+v, %v", live, err)
	}
	d.Stop()
	// ...and from the state store when stopped.
	off, err := agent.CurrentStatus(d.Config)
	if err != nil || off.Running || off.Enrollment != "enrolled" || off.CertSerial != first.CertSerial {
		t.Fatalf("offline status %+v, %v", off, err)
	}
	requests := f.Enroll.Stats().Requests.Load()

	d2 := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir})
	second := waitConnected(t, d2)
	if second.DeviceID != first.DeviceID || second.CertSerial != first.CertSerial || !second.EnrolledAt.Equal(first.EnrolledAt) {
		t.Fatalf("identity changed across restart: %+v vs %+v", first, second)
	}
	if n := f.Enroll.Stats().Requests.Load(); n != requests {
		t.Fatalf("restart sent %d enrollment requests", n-requests)
	}
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRestartFleet: the fleet restarted on the same data directory keeps
// its CA and inventory, and devices reconnect on their own.
func TestRestartFleet(t *testing.T) {
	requireTools(t)
	dataDir := t.TempDir()
	cfg := server.Config{DataDir: dataDir, MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t))}
	f, err := harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	caBefore, _ := os.ReadFile(filepath.Join(dataDir, server.CACertFile))
	tokenBefore := f.AdminToken()
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{})
	st := waitConnected(t, d)
	f.Stop()
	if _, err := d.Wait(context.Background(), 10*time.Second, func(s agent.Status) bool { return !s.Connected }); err != nil {
		t.Fatal(err)
	}
	f, err = harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	again := waitConnected(t, d)
	if !again.ConnectedAt.After(st.ConnectedAt) || again.CertSerial != st.CertSerial {
		t.Fatalf("reconnect: %+v", again)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dataDir, server.CACertFile))
	if !bytes.Equal(caBefore, caAfter) || f.AdminToken() != tokenBefore {
		t.Fatal("CA or admin token changed across a restart")
	}
	dev, err := f.Inv.Device(t.Context(), st.DeviceID)
	if err != nil || dev.CertSerial != st.CertSerial || string(dev.State) != "active" {
		t.Fatalf("inventory after restart: %+v, %v", dev, err)
	}
}

// TestRebootTPM: an orderly TPM reboot (TPM2_Shutdown, power cycle,
// TPM2_Startup) flushes everything loaded; the device still signs its next
// handshake with its stored key blob.
func TestRebootTPM(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	d := startDevice(t, f, inst, harness.DeviceConfig{})
	st := waitConnected(t, d)
	if err := inst.Reboot(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.Broker.Disconnect(st.DeviceID) // force a new TLS handshake
	if _, err := d.Wait(context.Background(), 20*time.Second, func(s agent.Status) bool {
		return s.Connected && s.ConnectedAt.After(st.ConnectedAt)
	}); err != nil {
		t.Fatal(err)
	}
}

// TestDemo runs `sigil-sim demo --once` in-process: three devices active.
func TestDemo(t *testing.T) {
	requireTools(t)
	var out bytes.Buffer
	err := harness.Demo(context.Background(), harness.DemoOptions{Dir: t.TempDir(), Once: true, Tamper: true, APIAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Out: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"3 devices active and connected", "Console: https://", "forced rotation of", "acknowledged by 3/3 devices", "learned from device", "attestation: pass", "tpm2_pcrextend -T swtpm:host=127.0.0.1", "action: quarantined; state now quarantined"} {
		if !bytes.Contains(out.Bytes(), []byte(want)) {
			t.Fatalf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	t.Logf("\n%s", out.String())
}

// TestRestartFleetOnPostgres: a fleet whose inventory lives in PostgreSQL
// (database_url; a real server started for the test) enrolls a swtpm
// device, keeps it across a restart (the device reconnects with the
// certificate it holds), and writes no inventory file in its data
// directory: the device, its revocation and the CRL are in the database.
// So do the audit log (its chain verifies after the restart), the
// operators (the admin token made at first start still works), the
// attestation history, the policies and the approvals, the rotation
// jobs, the secrets and their deliveries, the telemetry cursors, the
// alerts and governance.
func TestRestartFleetOnPostgres(t *testing.T) {
	requireTools(t)
	pg := pgtest.Start(t)
	dataDir := t.TempDir()
	cfg := server.Config{DataDir: dataDir, DatabaseURL: pg.NewDatabase(t), MQTTAddr: freeAddr(t), APIAddr: freeAddr(t), EKCADir: ekCADir(t, vendorCA(t))}
	f, err := harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{})
	st := waitConnected(t, d)
	f.Stop()
	if _, err := d.Wait(context.Background(), 10*time.Second, func(s agent.Status) bool { return !s.Connected }); err != nil {
		t.Fatal(err)
	}
	f, err = harness.StartFleet(context.Background(), cfg, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	again := waitConnected(t, d)
	if !again.ConnectedAt.After(st.ConnectedAt) || again.CertSerial != st.CertSerial {
		t.Fatalf("reconnect: %+v", again)
	}
	dev, err := f.Inv.Device(t.Context(), st.DeviceID)
	if err != nil || dev.CertSerial != st.CertSerial || dev.State != inventory.StateActive {
		t.Fatalf("inventory after restart: %+v, %v", dev, err)
	}
	for _, file := range []string{server.InventoryFile, audit.File, server.OperatorsFile, server.HistoryFile, server.PolicyFile, server.ApprovalsFile,
		server.JobsFile, secrets.DBFile, secrets.DeliveriesFile, server.TelemetryFile, server.AlertsFile, server.GovernanceFile} {
		if _, err := os.Stat(filepath.Join(dataDir, file)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s in the data directory (%v): the store is not in PostgreSQL", file, err)
		}
	}
	if rep, err := f.Audit.VerifyStore(t.Context(), nil); err != nil || rep.Entries == 0 {
		t.Fatalf("audit log after restart: %+v, %v", rep, err)
	}
	token, err := os.ReadFile(filepath.Join(dataDir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequestWithContext(t.Context(), "GET", "/api/v1/devices", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	if p, err := f.Auth.Authenticate(req); err != nil || p.User != auth.BootstrapAdmin {
		t.Fatalf("admin token after restart: %+v, %v", p, err)
	}
	_, revoked, err := f.Inv.RevokeDevice(t.Context(), st.DeviceID, inventory.ReasonKeyCompromise)
	if err != nil || !slices.Contains(revoked, st.CertSerial) {
		t.Fatalf("revoke: %v, %v", revoked, err)
	}
	conn, err := pgx.Connect(t.Context(), cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var devices, crl, entries, users int
	if err := conn.QueryRow(t.Context(), "SELECT (SELECT count(*) FROM inventory_devices WHERE id = $1), (SELECT count(*) FROM inventory_revocations WHERE serial = $2), (SELECT count(*) FROM audit_kv WHERE bucket = 'entries'), (SELECT count(*) FROM auth_kv WHERE bucket = 'users')",
		st.DeviceID, st.CertSerial).Scan(&devices, &crl, &entries, &users); err != nil || devices != 1 || crl != 1 || entries == 0 || users != 1 {
		t.Fatalf("in the database: %d device rows, %d CRL rows, %d audit entries, %d users, %v; want 1, 1, some and 1", devices, crl, entries, users, err)
	}
}
