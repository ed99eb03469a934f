package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/server"
)

// cosignVectors are firmware/verify's vectors made by the real cosign
// (scripts/cosign-vectors.sh): keys test-a and test-b, and rotation.json, a
// statement from {test-a} to {test-b} as `sigil firmware trust` prints it,
// signed as the file is by both keys.
const cosignVectors = "../../firmware/verify/testdata/cosign"

// TestReleaseTrustChangedInPlace runs `sigil serve` as an operator would:
// with release_trust set (and a release uploaded with `sigil firmware
// upload`, its cosign bundle in the old format first), then with the file
// replaced by a set of new keys (no signed rotation), which devices that
// hold the old set would never follow. The fleet refuses to start and says
// what to do; done as it says, with the cosign-signed rotation whose
// statement file ends in a newline, it starts.
func TestReleaseTrustChangedInPlace(t *testing.T) {
	sigil, _ := buildBinaries(t)
	dir, data := t.TempDir(), t.TempDir()
	vec := func(name string) string {
		p, err := filepath.Abs(filepath.Join(cosignVectors, name))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, sigil, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("sigil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	releaseTrust := filepath.Join(dir, "release-trust.json")
	run("firmware", "trust", "--sequence", "1", "--out", releaseTrust, vec("test-a.pub"))
	api := freeAddr(t)
	cfg := map[string]any{"data_dir": data, "mqtt_addr": freeAddr(t), "api_addr": api, "hostnames": []string{"localhost", "127.0.0.1"},
		"release_trust": releaseTrust}
	writeCfg := func() string {
		p := filepath.Join(dir, "serve.json")
		b, _ := json.Marshal(cfg)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := filepath.Join(data, "ca", "ca.crt")
	healthy := func() bool {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return false
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
		resp, err := hc.Get("https://" + api + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}

	// First start: the fleet serves {test-a} and records it.
	srv := startProcess(t, sigil, "serve", "--config", writeCfg())
	waitFor(t, healthy, "sigil serve to answer")

	// A release signed by test-a with cosign's old bundle format (sign-blob
	// --bundle without --new-bundle-format) is refused with a message that
	// names the expected format; the same release in the new format is
	// taken.
	upload := func(bundle string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, sigil, "firmware", "upload", "--manifest", vec("manifest.json"), "--bundle", vec(bundle),
			"--image", vec("image.bin"), "--server", "https://"+api, "--data-dir", data).CombinedOutput()
		return string(out), err
	}
	if out, err := upload("manifest.a.legacy-bundle.json"); err == nil || !strings.Contains(out, "--new-bundle-format") {
		t.Errorf("upload with an old-format cosign bundle: %v\n%s\nwant a refusal that names --new-bundle-format", err, out)
	}
	if out, err := upload("manifest.a.bundle.json"); err != nil {
		t.Errorf("upload with the cosign bundle of the new format: %v\n%s", err, out)
	}
	served := filepath.Join(data, server.FirmwareDir, firmware.ServedTrustFile)
	srv.Process.Signal(os.Interrupt)
	srv.Wait()

	// release_trust replaced in place by a set of new keys: refused at
	// start, with the reason and what to do.
	run("firmware", "trust", "--sequence", "2", "--out", releaseTrust, vec("test-b.pub"))
	// (A fleet that starts anyway is stopped after a while: the test fails.)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sigil, "serve", "--config", writeCfg()).CombinedOutput()
	if err == nil {
		t.Fatalf("sigil serve started with release_trust changed in place:\n%s", out)
	}
	for _, want := range []string{"without a signed rotation", served, "sigil firmware trust --sequence 2", "release_trust_rotations"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("sigil serve's refusal lacks %q:\n%s", want, out)
		}
	}

	// As the message says: the served set back as release_trust, and the
	// new keys through a signed rotation (cosign-signed, the statement
	// file ending in a newline).
	b, err := os.ReadFile(served)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(releaseTrust, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg["release_trust_rotations"] = []map[string]any{{"statement": vec("rotation.json"),
		"bundles": []string{vec("rotation.a.bundle.json"), vec("rotation.b.bundle.json")}}}
	startProcess(t, sigil, "serve", "--config", writeCfg())
	waitFor(t, healthy, "sigil serve to start with the signed rotation")
	stmt, _ := os.ReadFile(vec("rotation.json"))
	if got, _ := os.ReadFile(served); string(got)+"\n" != string(stmt) {
		t.Fatalf("recorded %s, want the rotated set %s", got, stmt)
	}
}
