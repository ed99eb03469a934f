package signtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/internal/testenv"
)

// CosignVersion is the cosign release `make test-deps` builds (the
// Makefile's COSIGN_VERSION; scripts/cosign.sh).
const CosignVersion = "v2.6.5"

// Cosign returns the path of the real cosign CLI: $COSIGN, else cosign on
// PATH, else the copy scripts/cosign.sh built in the user's cache directory
// (sigil-tools/cosign-VERSION/cosign). Without one it skips t, or fails it
// under CI=true.
func Cosign(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("COSIGN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("signtest: $COSIGN: %v", err)
		}
		return p
	}
	if p, err := exec.LookPath("cosign"); err == nil {
		return p
	}
	if dir, err := os.UserCacheDir(); err == nil {
		p := filepath.Join(dir, "sigil-tools", "cosign-"+CosignVersion, "cosign")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Unavailable(t, errors.New("cosign "+CosignVersion+" not installed (make test-deps builds it: scripts/cosign.sh)"))
	return ""
}

// TrustedRoot writes an empty sigstore trusted root (no transparency log,
// no timestamp authority) to trusted-root.json in dir and returns its path:
// what `cosign verify-blob --trusted-root` needs to check a bundle offline
// with a public key.
func TrustedRoot(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "trusted-root.json")
	if err := os.WriteFile(path, []byte(`{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// CosignSignBlob has the real cosign (at the path cosign) sign the file
// blob with the key keyURI (a file or a key service's NAME://REF), writing a
// new-format bundle to the file bundle, offline: no transparency log, no
// signing configuration.
func CosignSignBlob(t testing.TB, cosign, keyURI, blob, bundle string) {
	t.Helper()
	out, err := exec.Command(cosign, "sign-blob", "--yes", "--key", keyURI, "--new-bundle-format", "--bundle", bundle,
		"--tlog-upload=false", "--use-signing-config=false", blob).CombinedOutput()
	if err != nil {
		t.Fatalf("signtest: cosign sign-blob --key %s: %v\n%s", keyURI, err, out)
	}
}

// KMSPlugin builds the test key service (./kmsplugin, a sigstore KMS
// plugin) as sigstore-kms-NAME in a temporary directory put first on PATH,
// and returns NAME: the key URI NAME://PATH names a key the plugin creates
// and keeps in the file PATH. It sets PATH with t.Setenv, so t and its
// parents must not be parallel.
func KMSPlugin(t testing.TB, name string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "sigstore-kms-"+name),
		"github.com/sigil-iot/sigil/firmware/sign/signtest/kmsplugin").CombinedOutput()
	if err != nil {
		t.Fatalf("signtest: build the KMS plugin: %v\n%s", err, out)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return name
}

// KMSSignatures returns how many signatures the test key service made with
// the key in keyFile (it logs one line per signature beside the key).
func KMSSignatures(t testing.TB, keyFile string) int {
	t.Helper()
	b, err := os.ReadFile(keyFile + ".log")
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "signed\n")
}
