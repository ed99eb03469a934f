package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
	"github.com/sigil-iot/sigil/sim/harness"
)

// kernelLog writes a TCG PC Client (crypto-agile) event log with one
// event: the kernel, measured into PCR 9. It returns the file and the
// event's SHA-256 digest.
func kernelLog(t testing.TB) (string, []byte) {
	t.Helper()
	log := eventlogtest.New()
	measured := []byte("the kernel")
	log.Add(9, 0x0D, []byte("/vmlinuz\x00"), measured) // PCR 9, EV_IPL
	path := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(path, log.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	d256 := sha256.Sum256(measured)
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
