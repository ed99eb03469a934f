package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
)

// TestBrokerConfig runs `sigil broker-config` on a data directory with a
// fleet CA: a device broker's files are written (key and password file
// not world-readable, only the password's hash), the fleet's password is
// kept in the data directory; without a CA, or with a bad role, it fails
// with a clear error. test/e2e TestBrokerPool starts Mosquitto with them.
func TestBrokerConfig(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	data, out := filepath.Join(dir, "data"), filepath.Join(dir, "out")
	if _, stderr, code := runCLI(t, "", "broker-config", "--role", "device", "--name", "b1", "--data-dir", data, "--out", out); code != exitError || !strings.Contains(stderr, "no fleet CA") {
		t.Fatalf("without a CA: exit %d, stderr %q", code, stderr)
	}
	if _, err := ca.Open(ca.Config{Dir: filepath.Join(data, "ca"), TrustDomain: "sigil.local"}); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, "", "broker-config", "--role", "both", "--name", "b1", "--data-dir", data); code != exitUsage {
		t.Fatalf("bad role: exit %d, stderr %q", code, stderr)
	}
	stdout, stderr, code := runCLI(t, "", "broker-config", "--role", "device", "--name", "b1.example.com,10.0.0.7", "--data-dir", data,
		"--listen", ":8883", "--fleet-listen", "10.0.0.7:8884", "--dir", "/etc/mosquitto/sigil", "--out", out)
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, f := range []string{mqttpool.ConfFile, mqttpool.ACLFile, mqttpool.PasswordFile, mqttpool.CAFile, mqttpool.CertFile, mqttpool.KeyFile, mqttpool.CRLFile} {
		if !strings.Contains(stdout, filepath.Join(out, f)) {
			t.Errorf("%s not reported written: %q", f, stdout)
		}
	}
	conf := string(readFile(t, filepath.Join(out, mqttpool.ConfFile)))
	for _, want := range []string{"listener 8883\n", "listener 8884 10.0.0.7\n", "require_certificate true\n", "use_identity_as_username true\n",
		"use_username_as_clientid true\n", "crlfile /etc/mosquitto/sigil/crl.pem\n", "max_packet_size 1052672\n", "acl_file /etc/mosquitto/sigil/acl\n", "allow_anonymous false\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("mosquitto.conf lacks %q:\n%s", want, conf)
		}
	}
	secret, err := mqttpool.Secret(data)
	if err != nil {
		t.Fatal(err)
	}
	passwd := string(readFile(t, filepath.Join(out, mqttpool.PasswordFile)))
	if !strings.HasPrefix(passwd, mqttpool.Username+":$7$101$") || strings.Contains(passwd, secret) {
		t.Errorf("password file: %q", passwd)
	}
	for _, f := range []string{mqttpool.KeyFile, mqttpool.PasswordFile} {
		st, err := os.Stat(filepath.Join(out, f))
		if err != nil || st.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s: %v, mode %v: readable by anyone", f, err, st.Mode())
		}
	}
}
