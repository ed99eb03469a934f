package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/wait"
)

// The fleet's shipped unit and example configuration.
const (
	fleetUnitFile      = "../../deploy/systemd/sigil.service"
	fleetExampleConfig = "../../deploy/serve.example.json"
)

// TestSystemdFleetUnitSandbox runs the real `sigil serve` under the
// sandbox of the shipped unit (deploy/systemd/sigil.service: its own user,
// ProtectSystem=strict, no capabilities, umask 0077; reproduced as in
// TestSystemdUnitSandbox) with the shipped example configuration (its
// listeners moved to free loopback ports). The fleet must start, answer an
// API call with the administrator token it wrote, keep its data directory
// its user's alone, and write nothing outside it.
func TestSystemdFleetUnitSandbox(t *testing.T) {
	requireSandbox(t)
	u := parseUnit(t, fleetUnitFile)
	raw, err := os.ReadFile(fleetExampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	dataDir, _ := cfg["data_dir"].(string)
	if dataDir != "/var/lib/"+u.last("StateDirectory") {
		t.Fatalf("example data_dir %q is not the unit's StateDirectory=%s", dataDir, u.last("StateDirectory"))
	}
	hostnames, _ := cfg["hostnames"].([]any)
	if len(hostnames) == 0 {
		t.Fatal("example config: no hostnames")
	}
	dirAt := func(k string) string {
		s, ok := cfg[k].(string)
		if !ok || !filepath.IsAbs(s) {
			t.Fatalf("example config: %s = %v, want an absolute path", k, cfg[k])
		}
		return s
	}

	dir := t.TempDir()
	sb := newSandbox(t, u, dir)
	sigil := filepath.Join(dir, "sigil")
	if out, err := exec.Command("go", "build", "-o", sigil, "github.com/sigil-iot/sigil/cmd/sigil").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(sigil)
	if err != nil {
		t.Fatal(err)
	}
	sb.stage(t, sb.argv[0], bin, 0o755)

	// The administrator's files: the configuration (root:sigil 0640, as
	// the package sets it), the TPM makers' CAs and a claim CA.
	apiAddr := freeAddr(t)
	cfg["api_addr"], cfg["mqtt_addr"] = apiAddr, freeAddr(t)
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
	ca := vendorCA(t)
	for name, read := range map[string]func() ([]byte, error){"root.pem": ca.RootCertPEM, "intermediate.pem": ca.IntermediateCertPEM} {
		b, err := read()
		if err != nil {
			t.Fatal(err)
		}
		sb.stage(t, filepath.Join(dirAt("ek_ca_dir"), name), b, 0o644)
	}
	sb.stage(t, filepath.Join(dirAt("claim_ca_dir"), "claim-ca.pem"), claimCAPEM(t), 0o644)
	staged := []string{sb.argv[0], configPath, "/etc/passwd", "/etc/group",
		filepath.Join(dirAt("ek_ca_dir"), "root.pem"), filepath.Join(dirAt("ek_ca_dir"), "intermediate.pem"),
		filepath.Join(dirAt("claim_ca_dir"), "claim-ca.pem")}

	fleet := sb.run(t, dir, "sigil.log")
	fleetLog := fleet.log

	// The fleet answers an API call with the token it wrote, over TLS
	// from the CA it made, both in its data directory.
	tokenPath, caPath := sb.hostPath(t, dataDir+"/admin.token"), sb.hostPath(t, dataDir+"/ca/ca.crt")
	status := 0
	// A safety net, not a timing assertion.
	if !wait.Poll(90*time.Second, func() bool {
		select {
		case err := <-fleet.exited:
			fleet.stopped = true
			t.Fatalf("sigil serve exited under the unit's sandbox: %v\n%s", err, fleetLog())
		default:
		}
		tok, err1 := os.ReadFile(tokenPath)
		caPEM, err2 := os.ReadFile(caPath)
		if err1 != nil || err2 != nil {
			return false
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return false
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: hostnames[0].(string)}}}
		req, _ := http.NewRequest("GET", "https://"+apiAddr+"/api/v1/devices", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := c.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		status = resp.StatusCode
		return true
	}) {
		t.Fatalf("the fleet did not answer on %s after 90 s:\n%s", apiAddr, fleetLog())
	}
	if status != http.StatusOK {
		t.Fatalf("GET /api/v1/devices: %d\n%s", status, fleetLog())
	}

	// The data directory and everything in it are the unit's user's;
	// nobody else may enter it (StateDirectoryMode=0700) or read a file
	// but a certificate (UMask=0077; the fleet makes its certificates
	// 0644 itself).
	host := sb.hostPath(t, dataDir)
	if fi, err := os.Stat(host); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, %v: want mode 0700", dataDir, fi, err)
	}
	filepath.WalkDir(host, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Error(err)
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != sb.uid {
			t.Errorf("%s is owned by %d, want the unit's user (%d)", p, st.Uid, sb.uid)
		}
		if fi.Mode().Perm()&0o077 != 0 && !strings.HasSuffix(p, ".crt") && p != host {
			t.Errorf("%s has mode %v: readable beyond the unit's user", p, fi.Mode().Perm())
		}
		return nil
	})
	select {
	case err := <-fleet.exited:
		fleet.stopped = true
		t.Fatalf("sigil serve exited: %v\n%s", err, fleetLog())
	default:
	}
	written := sb.written()
	for _, w := range written {
		if !slices.Contains(staged, w) {
			t.Errorf("%s written outside the fleet's data directory", w)
		}
	}
}

// claimCAPEM is a self-signed claim CA certificate (the example
// configuration's claim_ca_dir must hold one).
func claimCAPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "claim CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
