package main

import (
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/firmware/blockindex"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// TestFirmwareKMS: a release key that never touches Sigil's disk. The test
// key service (a sigstore KMS plugin on PATH, keeping its key in its own
// file) creates the key (`firmware keygen --key NAME://REF`); `firmware
// manifest` writes the manifest unsigned; `firmware sign --key NAME://REF`
// signs it through the service; firmware/verify and the real cosign accept
// the bundle, and cosign's own sign-blob through the same service makes a
// bundle firmware/verify accepts. A scheme without a plugin is refused with
// the plugin's name.
func TestFirmwareKMS(t *testing.T) {
	cosign := signtest.Cosign(t)
	scheme := signtest.KMSPlugin(t, "sigiltest")
	dir := t.TempDir()
	t.Chdir(dir)
	must := func(want *regexp.Regexp, args ...string) string {
		t.Helper()
		stdout, stderr, code := runCLI(t, "", args...)
		if code != exitOK || stderr != "" || !want.MatchString(stdout) {
			t.Fatalf("sigil %s: exit %d, stdout %q (want %s), stderr %q", strings.Join(args, " "), code, stdout, want, stderr)
		}
		return stdout
	}
	keyFile := filepath.Join(dir, "service", "release.key")
	if err := os.Mkdir(filepath.Dir(keyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	uri := scheme + "://" + keyFile
	must(regexp.MustCompile(`^release key \S+\n  private: `+regexp.QuoteMeta(uri)+` \(in the key service\)\n  public:  release.pub\n$`),
		"firmware", "keygen", "--key", uri, "--pub", "release.pub")
	must(regexp.MustCompile(`^trust set trust.json: sequence 1, 1 of 1 keys must sign\n$`), "firmware", "trust", "--out", "trust.json", "release.pub")
	if err := os.WriteFile("gw-os.img", testImage, 0o644); err != nil {
		t.Fatal(err)
	}
	must(regexp.MustCompile(`^manifest m.json: gw-os 2.0.0, security version 2, 1200 bytes, sha256 [0-9a-f]{64}\n$`),
		"firmware", "manifest", "--image", "gw-os.img", "--name", "gw-os", "--version", "2.0.0", "--security-version", "2", "--models", "gw-1", "--out", "m.json")
	if l, _ := filepath.Glob("m.json.*"); len(l) != 0 || signtest.KMSSignatures(t, keyFile) != 0 {
		t.Fatalf("firmware manifest signed something: %v", l)
	}
	must(regexp.MustCompile(`^bundle kms.bundle \(key \S+\)\n$`), "firmware", "sign", "--key", uri, "--manifest", "m.json", "--bundle", "kms.bundle")
	if n := signtest.KMSSignatures(t, keyFile); n != 1 {
		t.Fatalf("the key service made %d signatures, want 1", n)
	}
	trust, err := verify.ParseTrustSet(readFile(t, "trust.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Manifest(readFile(t, "m.json"), [][]byte{readFile(t, "kms.bundle")}, trust); err != nil {
		t.Fatalf("the manifest signed through the key service does not verify: %v", err)
	}

	// The real cosign verifies the bundle, and signs the same manifest
	// through the same key service.
	if out, err := exec.Command(cosign, "verify-blob", "--key", "release.pub", "--bundle", "kms.bundle", "--new-bundle-format",
		"--insecure-ignore-tlog=true", "--trusted-root", signtest.TrustedRoot(t, dir), "m.json").CombinedOutput(); err != nil {
		t.Fatalf("cosign verify-blob refused the bundle: %v\n%s", err, out)
	}
	signtest.CosignSignBlob(t, cosign, uri, "m.json", "cosign.bundle")
	if _, err := verify.Manifest(readFile(t, "m.json"), [][]byte{readFile(t, "cosign.bundle")}, trust); err != nil {
		t.Fatalf("cosign's bundle over the unsigned manifest does not verify: %v", err)
	}

	// A key service that is not installed is named.
	_, stderr, code := runCLI(t, "", "firmware", "sign", "--key", "sigilnosuchkms://k", "--manifest", "m.json")
	if code == exitOK || !strings.Contains(stderr, "sigstore-kms-sigilnosuchkms") {
		t.Errorf("sign with a missing key service: exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = runCLI(t, "", "firmware", "manifest", "--name", "gw-os")
	if code != exitUsage || !strings.Contains(stderr, "needs --image") {
		t.Errorf("firmware manifest without --image: exit %d, stderr %q", code, stderr)
	}
}

// TestFirmwareManifestSBOM: `firmware manifest --sbom` binds the SBOM file
// (CycloneDX or SPDX JSON) by its digest and format into the canonical
// manifest; a file that is neither is refused and no manifest written.
func TestFirmwareManifestSBOM(t *testing.T) {
	t.Chdir(t.TempDir())
	sbom := []byte(`{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":"zlib","version":"1.3.1","purl":"pkg:generic/zlib@1.3.1"}]}`)
	spdx := []byte(`{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","packages":[{"SPDXID":"SPDXRef-z","name":"zlib","versionInfo":"1.3.1",` +
		`"externalRefs":[{"referenceCategory":"PACKAGE-MANAGER","referenceType":"purl","referenceLocator":"pkg:generic/zlib@1.3.1"}]}]}`)
	for name, b := range map[string][]byte{"gw-os.img": testImage, "sbom.json": sbom, "spdx.json": spdx, "other.json": []byte(`{"hello":1}`)} {
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"firmware", "manifest", "--image", "gw-os.img", "--name", "gw-os", "--version", "2.0.0", "--security-version", "2", "--models", "gw-1"}
	if _, stderr, code := runCLI(t, "", append(args, "--sbom", "sbom.json", "--out", "m.json")...); code != exitOK {
		t.Fatalf("firmware manifest --sbom: exit %d, %s", code, stderr)
	}
	m, err := manifest.Parse(readFile(t, "m.json"))
	if err != nil {
		t.Fatal(err)
	}
	if m.SBOM == nil || m.SBOM.Format != manifest.SBOMCycloneDX || m.SBOM.SHA256 != sha256.Sum256(sbom) {
		t.Fatalf("manifest SBOM %+v, want CycloneDX with the file's digest", m.SBOM)
	}
	if _, stderr, code := runCLI(t, "", append(args, "--sbom", "spdx.json", "--out", "spdx-m.json")...); code != exitOK {
		t.Fatalf("firmware manifest --sbom SPDX: exit %d, %s", code, stderr)
	}
	if m, err := manifest.Parse(readFile(t, "spdx-m.json")); err != nil || m.SBOM == nil || m.SBOM.Format != manifest.SBOMSPDX || m.SBOM.SHA256 != sha256.Sum256(spdx) {
		t.Fatalf("manifest with an SPDX SBOM: %v %+v", err, m)
	}
	if _, stderr, code := runCLI(t, "", append(args, "--sbom", "other.json", "--out", "bad.json")...); code == exitOK || !strings.Contains(stderr, "neither CycloneDX nor SPDX") {
		t.Fatalf("a file that is no SBOM as --sbom: exit %d, %q", code, stderr)
	}
	if _, err := os.Stat("bad.json"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused SBOM left a manifest: %v", err)
	}
}

// TestFirmwareManifestBlockIndex: `firmware manifest --block-index SIZE`
// writes the image's block-hash index beside it and binds it by digest and
// block size; a block size that is not a power of two is refused.
func TestFirmwareManifestBlockIndex(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("gw-os.img", testImage, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"firmware", "manifest", "--image", "gw-os.img", "--name", "gw-os", "--version", "2.0.0", "--security-version", "2", "--models", "gw-1"}
	if _, stderr, code := runCLI(t, "", append(args, "--block-index", "4096", "--out", "m.json")...); code != exitOK {
		t.Fatalf("firmware manifest --block-index: exit %d, %s", code, stderr)
	}
	m, err := manifest.Parse(readFile(t, "m.json"))
	if err != nil {
		t.Fatal(err)
	}
	index := readFile(t, "gw-os.img"+blockindex.Suffix)
	if m.Blocks == nil || m.Blocks.BlockSize != 4096 || m.Blocks.SHA256 != sha256.Sum256(index) {
		t.Fatalf("manifest blocks %+v, want 4096-byte blocks and the index file's digest", m.Blocks)
	}
	if _, err := blockindex.Parse(index, 4096, m.Size); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, "", append(args, "--block-index", "5000", "--out", "bad.json")...); code == exitOK || !strings.Contains(stderr, "power of two") {
		t.Fatalf("--block-index 5000: exit %d, %q", code, stderr)
	}
}
