package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// Waiting for a verdict: a device may have evidence in flight whenever a
// test changes something — a connect attestation, an earlier challenge's
// answer — quoted before a PCR was extended or the TPM rebooted, or judged
// before a policy existed. "The next verdict" can be that one. Tests wait
// instead for the verdict they mean, described by what the verdict record
// itself carries (the quoted PCR values, the TPM's reset count, the policy
// that judged it), and pass over the others.

// verdictMatch says whether a verdict is the one a test waits for.
type verdictMatch func(attest.Record) bool

// anyVerdict matches every verdict.
func anyVerdict(attest.Record) bool { return true }

// quotedPCR matches a verdict on evidence whose quote shows PCR pcr of
// bank at value want (hex, as extendPCR returns it).
func quotedPCR(bank string, pcr int, want string) verdictMatch {
	return func(r attest.Record) bool { return r.PCRs[bank][pcr] == want }
}

// quotedAfterReboot matches a verdict on evidence quoted in another boot of
// the TPM than the evidence of prev: its reset or restart counter differs
// (the counters in a quote are obfuscated per key, so only equality means
// anything to a test).
func quotedAfterReboot(prev attest.Record) verdictMatch {
	return func(r attest.Record) bool {
		return len(r.PCRs) > 0 && (r.ResetCount != prev.ResetCount || r.RestartCount != prev.RestartCount)
	}
}

// judgedBy matches a verdict on evidence judged by the policy with the ID.
func judgedBy(policyID string) verdictMatch {
	return func(r attest.Record) bool { return r.PolicyID == policyID }
}

// latestSeq returns the sequence number of the device's newest verdict (0
// when it has none): verdicts recorded later have a greater one.
func latestSeq(t testing.TB, c *api.Client, id string) uint64 {
	t.Helper()
	l, err := c.Attestations(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Attestations) == 0 {
		return 0
	}
	return l.Attestations[0].Seq
}

// attestAfter challenges the device and waits for the oldest verdict
// recorded after seq (take it with latestSeq before changing anything)
// that match describes, passing over verdicts on evidence already in
// flight.
func attestAfter(t testing.TB, c *api.Client, id string, seq uint64, what string, match verdictMatch) attest.Record {
	t.Helper()
	if err := c.Attest(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	return waitVerdict(t, c, id, seq, what, match)
}

// waitVerdict waits for the oldest verdict recorded after seq that match
// describes.
func waitVerdict(t testing.TB, c *api.Client, id string, seq uint64, what string, match verdictMatch) attest.Record {
	t.Helper()
	var got attest.Record
	waitFor(t, func() bool {
		l, err := c.Attestations(context.Background(), id)
		if err != nil {
			return false
		}
		for _, r := range slices.Backward(l.Attestations) { // newest first: oldest first here
			if r.Seq > seq && match(r) {
				got = r
				return true
			}
		}
		return false
	}, what)
	return got
}

// firstVerdict waits for the device's first verdict (its connect
// attestation's).
func firstVerdict(t testing.TB, c *api.Client, id string) attest.Record {
	t.Helper()
	return waitVerdict(t, c, id, 0, "a first attestation verdict", anyVerdict)
}

// extendPCR extends PCR pcr of bank on the device's swtpm with
// tpm2_pcrextend (an independent client) and returns the PCR's new value
// as tpm2_pcrread reads it (hex): the value evidence quoted after the
// change shows.
func extendPCR(t testing.TB, inst *swtpm.Instance, bank string, pcr int, digest string) string {
	t.Helper()
	mustRun(t, "tpm2_pcrextend", "-T", inst.TCTI(), fmt.Sprintf("%d:%s=%s", pcr, bank, digest))
	return hex.EncodeToString(swtpmtest.ReadPCR(t, inst, bank, pcr))
}

func readIdentity(t testing.TB, dir string) *state.Identity {
	t.Helper()
	s, err := state.Open(filepath.Join(dir, "state.db"), state.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id, err := s.Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// dialAs connects with a device's stored certificate and TPM key.
func dialAs(t testing.TB, f *harness.Fleet, uri string, id *state.Identity) (*link.Conn, error) {
	tp, err := tpm.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	signer, err := tp.Signer(&tpm.KeyBlob{Public: id.TK.Public, Private: id.TK.Private})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.CA.Certificate())
	return link.Dial(context.Background(), link.Config{Broker: f.MQTTAddr(), ClientID: id.DeviceID, Timeout: 5 * time.Second,
		TLS: &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{{Certificate: [][]byte{id.Cert}, PrivateKey: signer}}}})
}

// TestAttestationTamperQuarantine: a device passes against a policy learned
// from it; tpm2_pcrextend (an independent client) changes a PCR on its
// swtpm; the next attestation fails and explains which PCR; the device is
// quarantined, disconnected, its certificate refused; it re-enrolls into a
// session limited to attestation; an orderly reboot restores its PCRs and
// an operator releases it with a justification.
func TestAttestationTamperQuarantine(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	dir := t.TempDir()
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	c, _ := f.Client()
	ctx := context.Background()

	// The device attests on connect; with no policy yet the quote alone is judged.
	first := firstVerdict(t, c, id)
	if first.Result != "pass" || first.Reason != "no_policy" {
		t.Fatalf("first verdict %+v", first)
	}
	assign(t, c, id, "gw-1", "") // the policy is for the model the fleet assigned
	pol, err := c.LearnPolicy(ctx, api.LearnRequest{DeviceID: id, Name: "gw-1 golden"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pol.PCRs["sha256"]) != 11 || pol.Model != "gw-1" {
		t.Fatalf("learned policy %+v", pol)
	}
	if v := attestAfter(t, c, id, first.Seq, "a verdict under the learned policy", judgedBy(pol.ID)); v.Result != "pass" {
		t.Fatalf("verdict under the learned policy %+v", v)
	}
	before, _ := f.Inv.Device(t.Context(), id)

	sessionBefore := d.Status().ConnectedAt
	seq := latestSeq(t, c, id)
	tampered := quotedPCR("sha256", 9, extendPCR(t, inst, "sha256", 9, strings.Repeat("ab", 32)))
	v := attestAfter(t, c, id, seq, "a verdict on evidence quoting the extended PCR 9", tampered)
	// The broker closed its session at once: the agent saw it drop.
	waitFor(t, func() bool { s := d.Status(); return !s.Connected || s.ConnectedAt.After(sessionBefore) }, "the quarantined device's session to be closed")
	if v.Result != "fail" || v.Reason != "policy_violation" || v.Action != "quarantined" || len(v.Failures) != 1 || v.Failures[0].PCR != 9 {
		t.Fatalf("verdict after tampering %+v", v)
	}
	if !strings.Contains(v.Failures[0].Message, "PCR 9") {
		t.Fatalf("explanation does not name the PCR: %q", v.Failures[0].Message)
	}
	dev, _ := f.Inv.Device(t.Context(), id)
	if dev.State != inventory.StateQuarantined || !dev.IsRevoked(before.CertSerial) {
		t.Fatalf("after failure: state %s revoked %v", dev.State, dev.Revoked)
	}
	evs, _ := f.Inv.Events(t.Context(), id, 20)
	kinds := []string{}
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if !slices.Contains(kinds, "quarantined") || !slices.Contains(kinds, "alert") {
		t.Fatalf("events %v", kinds)
	}

	// Its old certificate is refused from now on.
	d.Stop()
	old := readIdentity(t, dir)
	if conn, err := dialAs(t, f, inst.URI(), old); err == nil {
		conn.Close()
		t.Fatal("broker accepted the revoked certificate")
	} else if !strings.Contains(strings.ToLower(err.Error()), "not authori") && !strings.Contains(strings.ToLower(err.Error()), "bad user name") {
		t.Fatalf("refusal was not an authorization refusal: %v", err)
	}

	// sigild comes back: refused, it re-enrolls from its EK and gets a
	// session limited to attestation; still tampered, it stays quarantined.
	seq = latestSeq(t, c, id)
	d2 := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	st, err := d2.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != before.CertSerial })
	if err != nil {
		t.Fatal(err)
	}
	if dev, _ := f.Inv.Device(t.Context(), id); dev.State != inventory.StateQuarantined || dev.CertSerial != st.CertSerial {
		t.Fatalf("after re-enrollment: %+v", dev)
	}
	if v := attestAfter(t, c, id, seq, "a verdict on the re-enrolled device's tampered evidence", tampered); v.Result != "fail" {
		t.Fatalf("still tampered, verdict %+v", v)
	}
	st = waitConnected(t, d2)

	// An orderly reboot resets the PCRs; the reset counter shows it.
	seq = latestSeq(t, c, id)
	if err := inst.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	v = attestAfter(t, c, id, seq, "a verdict on evidence quoted after the reboot", quotedAfterReboot(first))
	if v.Result != "pass" || !v.Rebooted || v.ResetCount <= first.ResetCount {
		t.Fatalf("after reboot %+v", v)
	}
	if dev, _ := f.Inv.Device(t.Context(), id); dev.State != inventory.StateQuarantined {
		t.Fatal("released without an operator although the policy does not auto-release")
	}
	if _, err := c.Release(ctx, id, ""); err == nil {
		t.Fatal("release without justification accepted")
	}
	if _, err := c.Release(ctx, id, "PCR 9 tampering was a test; TPM rebooted and verified"); err != nil {
		t.Fatal(err)
	}
	if dev, _ := f.Inv.Device(t.Context(), id); dev.State != inventory.StateActive {
		t.Fatalf("after release: %s", dev.State)
	}
	waitFor(t, func() bool { s := d2.Status(); return s.Connected && s.ConnectedAt.After(st.ConnectedAt) }, "the released device to reconnect with full access")
}

// TestAttestationStale: a stopped sigild stops answering; the fleet flags
// the device stale and raises an alert.
func TestAttestationStale(t *testing.T) {
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		c.AttestInterval = agent.Duration(500 * time.Millisecond)
		c.StaleAfter = 2
	})
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) {
		c.AttestInterval = agent.Duration(200 * time.Millisecond)
		c.EventLog = "-"
	}})
	id := waitConnected(t, d).DeviceID
	// Attesting on schedule, the device is not stale: not after it kept
	// attesting for longer than the fleet's stale window (2 intervals of
	// 500 ms, swept every 125 ms).
	var first time.Time
	waitFor(t, func() bool {
		dev, _ := f.Inv.Device(t.Context(), id)
		if first.IsZero() {
			first = dev.LastAttested
			return false
		}
		return dev.LastAttested.Sub(first) >= 1500*time.Millisecond
	}, "the device to attest for 1.5 s")
	if dev, _ := f.Inv.Device(t.Context(), id); dev.HasFlag(attest.FlagStale) || dev.Attestation != "pass" {
		t.Fatalf("live device: %+v", dev)
	}
	d.Stop()
	waitFor(t, func() bool {
		dev, _ := f.Inv.Device(t.Context(), id)
		evs, _ := f.Inv.Events(t.Context(), id, 10)
		return dev.HasFlag(attest.FlagStale) &&
			slices.ContainsFunc(evs, func(e inventory.Event) bool { return e.Kind == "alert" && strings.HasPrefix(e.Detail, "stale") })
	}, "the stopped device to be flagged stale with an alert")
}

// TestAttestationTwoBanks: a TPM with SHA-1 and SHA-256 banks quotes both
// over one nonce; the fleet verifies each and learns both.
func TestAttestationTwoBanks(t *testing.T) {
	requireTools(t)
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		c.AttestBanks = []string{"sha256", "sha1"}
	})
	inst, err := swtpm.Start(context.Background(), swtpm.Options{StateDir: t.TempDir(), CA: vendor, PCRBanks: "sha1,sha256"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })
	d := startDevice(t, f, inst, harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	c, _ := f.Client()
	if v := firstVerdict(t, c, id); v.Result != "pass" || len(v.PCRs["sha1"]) != 11 || len(v.PCRs["sha256"]) != 11 {
		t.Fatalf("verdict %+v", v)
	}
	pol, err := c.LearnPolicy(context.Background(), api.LearnRequest{DeviceID: id, Name: "two banks"})
	if err != nil || len(pol.PCRs["sha1"]) != 11 {
		t.Fatalf("policy %+v %v", pol, err)
	}
	seq := latestSeq(t, c, id)
	changed := extendPCR(t, inst, "sha1", 7, strings.Repeat("cd", 20))
	v := attestAfter(t, c, id, seq, "a verdict on evidence quoting the extended sha1 PCR 7", quotedPCR("sha1", 7, changed))
	if v.Result != "fail" || len(v.Failures) != 1 || v.Failures[0].Bank != "sha1" || v.Failures[0].PCR != 7 {
		t.Fatalf("verdict after a sha1-only change %+v", v)
	}
}
