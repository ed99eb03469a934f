package e2e

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/sim/harness"
)

// kernelLog writes a TCG PC Client (crypto-agile) event log with one
// event: the kernel, measured into PCR 9. It returns the file and the
// event's SHA-256 digest.
func kernelLog(t testing.TB) (string, []byte) {
	t.Helper()
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, struct {
		Class                      uint32
		Minor, Major, Errata, Uint uint8
		N                          uint32
		A1, S1, A2, S2             uint16
		Vendor                     uint8
	}{0, 0, 2, 0, 2, 2, uint16(tpm2.TPMAlgSHA1), 20, uint16(tpm2.TPMAlgSHA256), 32, 0})
	var log bytes.Buffer
	binary.Write(&log, binary.LittleEndian, struct {
		PCR, Type uint32
		Digest    [20]byte
		Size      uint32
	}{0, 3, [20]byte{}, uint32(spec.Len())}) // EV_NO_ACTION: the Spec ID event
	log.Write(spec.Bytes())
	measured := []byte("the kernel")
	d1, d256 := sha1.Sum(measured), sha256.Sum256(measured)
	binary.Write(&log, binary.LittleEndian, []uint32{9, 0x0D, 2}) // PCR 9, EV_IPL, two digests
	binary.Write(&log, binary.LittleEndian, uint16(tpm2.TPMAlgSHA1))
	log.Write(d1[:])
	binary.Write(&log, binary.LittleEndian, uint16(tpm2.TPMAlgSHA256))
	log.Write(d256[:])
	data := []byte("/vmlinuz\x00")
	binary.Write(&log, binary.LittleEndian, uint32(len(data)))
	log.Write(data)
	path := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(path, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, d256[:]
}

// TestFirstQuoteEventRules (issue 11, item 8): a reference policy with
// event-log rules judges the first quote too, on real swtpm devices
// running sigild. The fleet asks for the event log in the challenge; a
// device whose log replays to its quote and whose kernel the policy allows
// enrolls; one that sends no log, or a log its TPM did not measure, is
// refused instead of passing unjudged.
func TestFirstQuoteEventRules(t *testing.T) {
	f := startFleet(t, nil)
	c, _ := f.Client()
	ctx := context.Background()
	logFile, kernel := kernelLog(t)
	if _, err := c.PutPolicy(ctx, &policy.Policy{ID: "gw-boot", Name: "gw-1 boot chain", Model: "gw-1",
		Events: &policy.EventRules{AllowedDigests: map[int][]string{9: {hex.EncodeToString(kernel)}}}}); err != nil {
		t.Fatal(err)
	}
	token := func() string {
		tok, err := c.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{Model: "gw-1"}) // the policy's model
		if err != nil {
			t.Fatal(err)
		}
		return tok.Token
	}

	// Measured as its log says: enrolls.
	good := newTPM(t)
	mustRun(t, "tpm2_pcrextend", "-T", good.TCTI(), "9:sha256="+hex.EncodeToString(kernel))
	d := startDevice(t, f, good, harness.DeviceConfig{Token: token(), Tweak: func(c *agentConfig) { c.EventLog = logFile }})
	id := waitConnected(t, d).DeviceID
	if dev, err := c.Device(ctx, id); err != nil || dev.Model != "gw-1" {
		t.Fatalf("enrolled device %+v %v", dev, err)
	}

	// No event log: the policy's event rules fail.
	noLog := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: token(), Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	waitReason(t, noLog, "policy_violation")

	// A log that its TPM did not measure: it does not replay to the quote.
	forged := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: token(), Tweak: func(c *agentConfig) { c.EventLog = logFile }})
	waitReason(t, forged, "eventlog_invalid")
}
