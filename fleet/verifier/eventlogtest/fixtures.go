package eventlogtest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// Real event logs are read from the Go module cache (go-attestation ships
// them in attest/testdata); they are not copied into this repository.

// GoAttestation reads the file name of go-attestation's attest/testdata
// (go-attestation is a dependency in go.mod), failing t if it cannot.
func GoAttestation(t testing.TB, name string) []byte {
	t.Helper()
	return ModuleFile(t, "github.com/google/go-attestation", filepath.Join("attest/testdata", name))
}

// Ubuntu reads go-attestation's event log of an Ubuntu 21.04 shielded VM
// without Secure Boot, which replays to UbuntuPCRs.
func Ubuntu(t testing.TB) []byte {
	t.Helper()
	return GoAttestation(t, "ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
}

// UbuntuPCRs returns the PCR values (hex) of bank, SHA-1 or SHA-256, that
// Ubuntu's log replays to, as published in go-tpm-tools v0.4.10
// server/eventlog_test.go (Ubuntu2104NoSecureBootGCE).
func UbuntuPCRs(bank tpm2.TPMAlgID) map[int]string {
	if bank == tpm2.TPMAlgSHA1 {
		return map[int]string{
			0:  "0f2d3a2a1adaa479aeeca8f5df76aadc41b862ea",
			1:  "f5310dfcfcec5571cbf730064d526906c9cea2f0",
			2:  "b2a83b0ebf2f8374299a5b2bdfc31ea955ad7236",
			3:  "b2a83b0ebf2f8374299a5b2bdfc31ea955ad7236",
			4:  "e53d909941dcbc699b273fc4c0d817a41c6ab975",
			5:  "9e2af4bac1432830594b1ae90c68c52a20a9700e",
			6:  "b2a83b0ebf2f8374299a5b2bdfc31ea955ad7236",
			7:  "ede7204673f41ac2592b0d3b4cd429b43f39dc61",
			8:  "bda59abe1c7d18e0b85edfcb4381f10d4dcc88f7",
			9:  "39fd49224476f4d7eea26a53e264c9c33e47649c",
			14: "cd3734d2bdfcfba9e443ac02c03c812ffcceb255",
		}
	}
	return map[int]string{
		0:  "24af52a4f429b71a3184a6d64cddad17e54ea030e2aa6576bf3a5a3d8bd3328f",
		1:  "45ed8540f34db53220ef197e5fb8a3835b2095454349e445f397f13d91c509a5",
		2:  "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
		3:  "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
		4:  "ebc7ae25d0347868250995c9a8fff16bf79e048453262d0ef2756e213c76181c",
		5:  "47715f9f2c10769da6ee23be5633fd88e247caf162f4eeb0b6f8482ccfeadfb5",
		6:  "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
		7:  "0d8847bc5eca06452df10e2f214363845c7ac11d47525a5474e225e72ce25dfe",
		8:  "b9a324947de94ec2fd4b04483ecfcb37dfdd520a7c0ecf73c77bf2595549c84f",
		9:  "adb87be3efd96cc3a2f66b8aa7564f9727563ef494a95d571a3f38ff4afb25dd",
		14: "8351c65483c5419079e8c96758dd2130bee075d71fea226f68ec4eb5bfc71983",
	}
}

// ModuleFile reads file in module's directory in the module cache,
// downloading the module (a dependency in go.mod) when the cache does not
// hold it yet; it fails t if it cannot.
func ModuleFile(t testing.TB, module, file string) []byte {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		out, err = exec.Command("go", "mod", "download", "-json", module).Output()
		var m struct{ Dir string }
		if err != nil || json.Unmarshal(out, &m) != nil || m.Dir == "" {
			t.Fatalf("module %s not in the module cache: %v", module, err)
		}
		dir = m.Dir
	}
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
