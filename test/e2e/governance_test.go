package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// governedFleet is a fleet that trusts the vendor's EK CA, with the
// governance settings set by mutate.
func governedFleet(t *testing.T, mutate func(*server.Config)) (*harness.Fleet, *api.Client) {
	t.Helper()
	caDir := ekCADir(t, vendorCA(t))
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = caDir
		if mutate != nil {
			mutate(c)
		}
	})
	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

// quietDevice runs a device without an event log and without telemetry,
// so that nothing but what a test changes moves its risk score.
func quietDevice(t *testing.T, f *harness.Fleet, inst *swtpm.Instance, dir, serial string) *harness.Device {
	t.Helper()
	return startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Serial: serial, Tweak: func(c *agentConfig) {
		c.EventLog = "-"
		c.TelemetryInterval = -1
	}})
}

func sweepNow(t *testing.T, c *api.Client) *api.SweepReport {
	t.Helper()
	rep, err := c.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func riskOf(t *testing.T, c *api.Client, id string) *governance.Risk {
	t.Helper()
	r, err := c.Risk(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// eventKinds lists a device's lifecycle event kinds, newest first.
func eventKinds(t *testing.T, c *api.Client, id string) []string {
	t.Helper()
	d, err := c.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range d.Events {
		out = append(out, e.Kind)
	}
	return out
}

// openAlert reports whether the alert engine holds an open alert of the
// rule for the device.
func openAlert(t *testing.T, f *harness.Fleet, id, rule string) bool {
	t.Helper()
	open, _, err := f.Alerts.Alerts(alert.Query{DeviceID: id, RuleID: rule, Open: true})
	if err != nil {
		t.Fatal(err)
	}
	return len(open) > 0
}

func waitDisconnected(t *testing.T, f *harness.Fleet, id string) {
	t.Helper()
	waitFor(t, func() bool {
		d, err := f.Inv.Device(t.Context(), id)
		return err == nil && !f.Broker.Connected(id) && !d.Connected
	}, "the device to be disconnected")
}

// TestGovernanceDormant: a device stopped for longer than dormant_after
// while its certificate is valid is flagged dormant, its finding recorded
// and alerted; with dormant_revoke its certificate is revoked, the broker
// refuses it when the device returns and the device proves itself again
// from its EK. A dormant device seen again is no longer dormant.
func TestGovernanceDormant(t *testing.T) {
	for _, revoke := range []bool{false, true} {
		name := "flag only"
		if revoke {
			name = "revoke by policy"
		}
		t.Run(name, func(t *testing.T) {
			f, c := governedFleet(t, func(cfg *server.Config) {
				cfg.DormantAfter = config.Duration(time.Second)
				cfg.DormantRevoke = revoke
			})
			inst, dir := newTPM(t), t.TempDir()
			d := quietDevice(t, f, inst, dir, "SN-DORMANT")
			st := waitConnected(t, d)
			id, serial := st.DeviceID, st.CertSerial
			if rep := sweepNow(t, c); rep.Devices != 1 || rep.Dormant != 0 {
				t.Fatalf("sweep of a connected device: %+v", rep)
			}

			d.Stop()
			waitDisconnected(t, f, id)
			waitFor(t, func() bool { return sweepNow(t, c).Dormant == 1 }, "the stopped device to be judged dormant")
			l, err := c.Dormant(context.Background(), "", 0)
			if err != nil || len(l.Devices) != 1 || l.Devices[0].DeviceID != id || l.Devices[0].LastSeen.IsZero() {
				t.Fatalf("dormant list %+v %v", l, err)
			}
			dev, _ := f.Inv.Device(t.Context(), id)
			if !dev.HasFlag(governance.FlagDormant) || !slices.Contains(eventKinds(t, c, id), governance.KindDormant) {
				t.Fatalf("dormant device: flags %v, events %v", dev.Flags, eventKinds(t, c, id))
			}
			if !openAlert(t, f, id, alert.EventDormant) {
				t.Fatal("no open dormant alert in the alert engine")
			}
			if _, ok := riskOf(t, c, id).Factor(governance.FactorDormant); !ok {
				t.Fatal("dormancy is not a risk factor")
			}
			if revoke {
				if l.Devices[0].RevokedSerial != serial || !dev.IsRevoked(serial) {
					t.Fatalf("certificate %s not revoked: status %+v, revoked %v", serial, l.Devices[0], dev.Revoked)
				}
				if !slices.Contains(eventKinds(t, c, id), governance.KindDormantRevoked) {
					t.Fatalf("no dormant-revoked event: %v", eventKinds(t, c, id))
				}
			} else if dev.IsRevoked(serial) {
				t.Fatal("certificate revoked without the policy")
			}

			// The device returns.
			back := quietDevice(t, f, inst, dir, "SN-DORMANT")
			st = waitConnected(t, back)
			if revoke && st.CertSerial == serial {
				t.Fatalf("device connected again with its revoked certificate %s", serial)
			}
			if !revoke && st.CertSerial != serial {
				t.Fatalf("device changed certificate (%s -> %s) without a revocation", serial, st.CertSerial)
			}
			if rep := sweepNow(t, c); rep.Dormant != 0 {
				t.Fatalf("returned device still dormant: %+v", rep)
			}
			dev, _ = f.Inv.Device(t.Context(), id)
			if dev.HasFlag(governance.FlagDormant) || !slices.Contains(eventKinds(t, c, id), governance.KindDormant+"-resolved") {
				t.Fatalf("returned device: flags %v, events %v", dev.Flags, eventKinds(t, c, id))
			}
		})
	}
}

// TestGovernanceOrphanAndRisk: a device whose owner departs is orphaned
// and flagged, and owned again when the owner is back; its risk score
// rises with each factor an operator would worry about — an orphaned
// owner, silence, a failed attestation — and falls back when the factor
// clears.
func TestGovernanceOrphanAndRisk(t *testing.T) {
	f, c := governedFleet(t, func(cfg *server.Config) { cfg.SilentAfter = config.Duration(time.Second) })
	ctx := context.Background()
	inst, dir := newTPM(t), t.TempDir()
	d := quietDevice(t, f, inst, dir, "SN-RISK")
	id := waitConnected(t, d).DeviceID
	first := firstVerdict(t, c, id)
	pol, err := c.LearnPolicy(ctx, api.LearnRequest{DeviceID: id, Name: "golden"})
	if err != nil {
		t.Fatal(err)
	}
	if v := attestAfter(t, c, id, first.Seq, "a verdict under the learned policy", judgedBy(pol.ID)); v.Result != "pass" {
		t.Fatalf("verdict under the learned policy: %+v", v)
	}
	if _, err := c.AssignOwner(ctx, id, "alice", "line 3"); err == nil {
		t.Fatal("assigned an owner nobody registered")
	}
	if _, err := c.PutOwner(ctx, "alice", api.OwnerRequest{Name: "Alice", Contact: "alice@example.com"}); err != nil {
		t.Fatal(err)
	}
	own, err := c.AssignOwner(ctx, id, "alice", "line 3 PLC gateway")
	if err != nil || own.Status == nil || own.Status.Orphaned {
		t.Fatalf("assign: %+v %v", own, err)
	}
	base := riskOf(t, c, id)
	for _, name := range []string{governance.FactorOrphaned, governance.FactorSilent, governance.FactorAttestationFailing, governance.FactorPurposeMissing} {
		if _, ok := base.Factor(name); ok {
			t.Fatalf("healthy, owned device has factor %s: %+v", name, base)
		}
	}
	moved := func(before *governance.Risk, factor string) *governance.Risk {
		t.Helper()
		after := riskOf(t, c, id)
		fac, ok := after.Factor(factor)
		if !ok || after.Score <= before.Score || fac.Points <= 0 {
			t.Fatalf("factor %s: score %d -> %d, factors %+v", factor, before.Score, after.Score, after.Factors)
		}
		t.Logf("%s: risk %d -> %d (%s)", factor, before.Score, after.Score, fac.Evidence)
		return after
	}
	cleared := func(factor string) *governance.Risk {
		t.Helper()
		r := riskOf(t, c, id)
		if _, ok := r.Factor(factor); ok {
			t.Fatalf("factor %s did not clear: %+v", factor, r.Factors)
		}
		return r
	}

	// An orphaned owner.
	{
		if _, err := c.SetOwnerStatus(ctx, "alice", "departed"); err != nil {
			t.Fatal(err)
		}
		if rep := sweepNow(t, c); rep.Orphaned != 1 {
			t.Fatalf("sweep after the owner left: %+v", rep)
		}
		l, err := c.Orphans(ctx, "", 0)
		if err != nil || len(l.Devices) != 1 || l.Devices[0].OrphanReason != `owner "alice" is departed` {
			t.Fatalf("orphans %+v %v", l, err)
		}
		dev, _ := f.Inv.Device(ctx, id)
		if !dev.HasFlag(governance.FlagOrphaned) || !slices.Contains(eventKinds(t, c, id), governance.KindOrphaned) {
			t.Fatalf("orphaned device: flags %v events %v", dev.Flags, eventKinds(t, c, id))
		}
		moved(base, governance.FactorOrphaned)
		if _, err := c.SetOwnerStatus(ctx, "alice", "active"); err != nil {
			t.Fatal(err)
		}
		if rep := sweepNow(t, c); rep.Orphaned != 0 {
			t.Fatalf("sweep after the owner returned: %+v", rep)
		}
		dev, _ = f.Inv.Device(ctx, id)
		if dev.HasFlag(governance.FlagOrphaned) || !slices.Contains(eventKinds(t, c, id), governance.KindOrphaned+"-resolved") {
			t.Fatalf("owned again: flags %v events %v", dev.Flags, eventKinds(t, c, id))
		}
		cleared(governance.FactorOrphaned)
	}

	// Silence.
	{
		before := riskOf(t, c, id)
		d.Stop()
		waitDisconnected(t, f, id)
		waitFor(t, func() bool { _, ok := riskOf(t, c, id).Factor(governance.FactorSilent); return ok }, "silence to count")
		moved(before, governance.FactorSilent)
		d = quietDevice(t, f, inst, dir, "SN-RISK")
		waitConnected(t, d)
		cleared(governance.FactorSilent)
	}

	// A failed attestation.
	{
		before := riskOf(t, c, id)
		// The device just reconnected: its connect attestation may be in
		// flight, quoted before the change.
		seq := latestSeq(t, c, id)
		tampered := extendPCR(t, inst, "sha256", 9, strings.Repeat("ab", 32))
		if v := attestAfter(t, c, id, seq, "a verdict on evidence quoting the extended PCR 9", quotedPCR("sha256", 9, tampered)); v.Result != "fail" {
			t.Fatalf("verdict after tampering: %+v", v)
		}
		after := moved(before, governance.FactorAttestationFailing)
		if _, ok := after.Factor(governance.FactorAttestationFailures); !ok {
			t.Fatalf("failure history is not a factor: %+v", after.Factors)
		}
	}

	// The fleet view sorts by the stored scores.
	sweepNow(t, c)
	rl, err := c.RiskRanking(ctx, "", 10)
	if err != nil || len(rl.Risks) != 1 || rl.Risks[0].DeviceID != id || rl.Risks[0].Score == 0 {
		t.Fatalf("ranking %+v %v", rl, err)
	}
}

// cloneClient connects to the broker at addr from 127.0.0.2 with a
// device's certificate and its TPM-resident key: the same credential used
// from another machine.
func cloneClient(t *testing.T, f *harness.Fleet, addr string, cert []byte, key crypto.Signer, id string) (paho.Client, <-chan struct{}, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(f.CA.Certificate())
	lost := make(chan struct{})
	opts := paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{{Certificate: [][]byte{cert}, PrivateKey: key}}}).
		SetDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}).
		SetAutoReconnect(false).SetProtocolVersion(4).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, nil, err
	}
	return cl, lost, nil
}

// TestGovernanceCertificateClone: a second client with the device's
// certificate and key (loaded into the same TPM) connects from another
// address while the device runs; the two keep taking the session from
// each other; governance records a certificate clone incident naming both
// hosts, alerts, and quarantines the device (its certificate held).
func TestGovernanceCertificateClone(t *testing.T) {
	f, c := governedFleet(t, nil)
	ctx := context.Background()
	inst, dir := newTPM(t), t.TempDir()
	d := quietDevice(t, f, inst, dir, "SN-CLONED")
	st := waitConnected(t, d)
	id, serial := st.DeviceID, st.CertSerial
	// Read the device's credential from its state store (the daemon holds
	// the store open, so stop it for the read), then start it again.
	d.Stop()
	ident := readIdentity(t, dir)
	d = quietDevice(t, f, inst, dir, "SN-CLONED")
	waitConnected(t, d)

	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	signer, err := tp.Signer(&tpm.KeyBlob{Public: ident.TK.Public, Private: ident.TK.Private})
	if err != nil {
		t.Fatal(err)
	}
	incident := func() *governance.Clone {
		l, err := c.Clones(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		for i := range l.Clones {
			if l.Clones[i].DeviceID == id && l.Clones[i].Kind == governance.CloneCertificate {
				return &l.Clones[i]
			}
		}
		return nil
	}
	connects := 0
	if !wait.Poll(40*time.Second, func() bool {
		if incident() != nil {
			return true
		}
		cl, lost, err := cloneClient(t, f, f.MQTTAddr(), ident.Cert, signer, id)
		if err != nil {
			return false // refused: try again
		}
		connects++
		// The device takes its session back; then the clone tries again.
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
		}
		cl.Disconnect(0)
		return incident() != nil
	}) {
		t.Fatalf("no clone incident after %d connections of the clone", connects)
	}
	inc := incident()
	t.Logf("incident after %d clone connections: %s", connects, inc.Evidence)
	if inc.Serial != serial || !slices.Contains(inc.Hosts, "127.0.0.1") || !slices.Contains(inc.Hosts, "127.0.0.2") {
		t.Fatalf("incident %+v, want serial %s from 127.0.0.1 and 127.0.0.2", inc, serial)
	}
	waitFor(t, func() bool { x := incident(); return x != nil && x.Quarantined }, "the clone to be quarantined")
	dev, _ := f.Inv.Device(ctx, id)
	if dev.State != inventory.StateQuarantined || !dev.IsRevoked(serial) {
		t.Fatalf("cloned device: state %s, revoked %v", dev.State, dev.Revoked)
	}
	if !slices.Contains(eventKinds(t, c, id), governance.KindClone) {
		t.Fatalf("no clone event: %v", eventKinds(t, c, id))
	}
	if !openAlert(t, f, id, alert.EventCloneSuspect) {
		t.Fatal("no open clone alert in the alert engine")
	}
	if r := riskOf(t, c, id); r.Score < 40 {
		t.Fatalf("risk of a cloned device %d: %+v", r.Score, r.Factors)
	}
	// The held certificate no longer gets the clone in.
	if cl, _, err := cloneClient(t, f, f.MQTTAddr(), ident.Cert, signer, id); err == nil {
		cl.Disconnect(0)
		t.Fatal("the clone connected with the held certificate")
	}
	if err := c.ResolveClone(ctx, id, "certificate", "lab test"); err != nil {
		t.Fatal(err)
	}
	if incident() != nil {
		t.Fatal("resolved incident still open")
	}
}

// TestGovernanceEKClone: a second machine presenting an enrolled device's
// EK under another serial is refused as a clone, and governance quarantines
// the enrolled device at once with an EK clone incident.
func TestGovernanceEKClone(t *testing.T) {
	f, c := governedFleet(t, nil)
	ctx := context.Background()
	inst := newTPM(t)
	a := quietDevice(t, f, inst, t.TempDir(), "SN-ORIGINAL")
	idA := waitConnected(t, a).DeviceID
	b := quietDevice(t, f, inst, t.TempDir(), "SN-COPY")
	waitReason(t, b, "clone")
	var inc *governance.Clone
	waitFor(t, func() bool {
		l, err := c.Clones(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		for i := range l.Clones {
			if l.Clones[i].DeviceID == idA && l.Clones[i].Kind == governance.CloneEK {
				inc = &l.Clones[i]
			}
		}
		return inc != nil && inc.Quarantined
	}, "an EK clone incident with the device quarantined")
	if !strings.Contains(inc.Evidence, "SN-COPY") {
		t.Fatalf("evidence does not name the other serial: %q", inc.Evidence)
	}
	dev, _ := f.Inv.Device(ctx, idA)
	if dev.State != inventory.StateQuarantined || !dev.HasFlag(governance.FlagCloneSuspect) {
		t.Fatalf("original device: state %s flags %v", dev.State, dev.Flags)
	}
	if !openAlert(t, f, idA, alert.EventCloneSuspect) {
		t.Fatal("no open clone alert")
	}
	if _, ok := riskOf(t, c, idA).Factor(governance.FactorClone); !ok {
		t.Fatal("clone is not a risk factor")
	}
	// Resolving the incident clears the enrollment's flag.
	if err := c.ResolveClone(ctx, idA, "ek", "checked"); err != nil {
		t.Fatal(err)
	}
	dev, _ = f.Inv.Device(ctx, idA)
	if dev.HasFlag(governance.FlagCloneSuspect) {
		t.Fatalf("flag kept after resolution: %v", dev.Flags)
	}
}

// rogueIdentity writes a certificate and key from a CA the fleet does not
// know.
func rogueIdentity(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "rogue-gw"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "rogue.pem"), filepath.Join(dir, "rogue.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	return certFile, keyFile
}

// triageEntry waits for the triage entry with key.
func triageEntry(t *testing.T, c *api.Client, key string) governance.Shadow {
	t.Helper()
	var got governance.Shadow
	waitFor(t, func() bool {
		l, err := c.Triage(context.Background(), false, "", "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range l.Entries {
			if s.Key == key {
				got = s
				return true
			}
		}
		return false
	}, "triage entry "+key)
	return got
}

// bootstrapFrom connects a bootstrap client with an enrollment token from
// a given local address.
func bootstrapFrom(f *harness.Fleet, local net.IP, clientID, token string) error {
	roots := x509.NewCertPool()
	roots.AddCert(f.CA.Certificate())
	opts := paho.NewClientOptions().AddBroker("tls://" + f.MQTTAddr()).SetClientID(clientID).
		SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: "localhost"}).
		SetDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: 5 * time.Second}).
		SetUsername("token").SetPassword(token).
		SetAutoReconnect(false).SetProtocolVersion(4).SetConnectTimeout(5 * time.Second)
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	cl.Disconnect(0)
	return nil
}

// TestGovernanceShadowDevices: identities the fleet does not know — a
// client without a credential (mosquitto_pub), a certificate from another
// CA, a fleet certificate naming no enrolled device, a TPM whose EK no
// path trusts — land in the triage list. Blocking an entry keeps its
// client ID out even with a valid enrollment token; blocking an address
// keeps everything from it out; enrolling an unknown EK lets that device
// enroll.
func TestGovernanceShadowDevices(t *testing.T) {
	f, c := governedFleet(t, func(cfg *server.Config) { cfg.BootstrapCredential = true })
	ctx := context.Background()
	enrollTopic := func(id string) string { return "sigil/v1/enroll/" + id + "/up/hello" }

	if out, err := publish(t, f, enrollTopic("intruder-7"), "-i", "intruder-7"); err == nil {
		t.Fatalf("client without credential connected: %s", out)
	}
	intruder := triageEntry(t, c, "unknown-client/client:intruder-7")
	if intruder.Kind != governance.AttemptUnknownClient || !slices.Contains(intruder.Remotes, "127.0.0.1") || !strings.Contains(intruder.Reason, "token") {
		t.Fatalf("intruder entry %+v", intruder)
	}

	rogueCert, rogueKey := rogueIdentity(t)
	if out, err := publish(t, f, enrollTopic("rogue"), "-i", "rogue", "--cert", rogueCert, "--key", rogueKey); err == nil {
		t.Fatalf("foreign certificate connected: %s", out)
	}
	waitFor(t, func() bool {
		l, err := c.Triage(ctx, true, string(governance.AttemptForeignCert), "", 100)
		return err == nil && len(l.Entries) == 1 && l.Entries[0].Cert != nil && strings.Contains(l.Entries[0].Cert.Subject, "CN=rogue-gw")
	}, "a triage entry for the foreign certificate")

	const ghost = "0badc0de0badc0de0badc0de0badc0de"
	ghostCert, ghostKey := softwareIdentity(t, f, ghost)
	if out, err := publish(t, f, "sigil/v1/dev/"+ghost+"/up/hello", "-i", ghost, "--cert", ghostCert, "--key", ghostKey); err == nil {
		t.Fatalf("certificate of an unknown device connected: %s", out)
	}
	if e := triageEntry(t, c, "unknown-device/client:"+ghost); e.Cert == nil || e.Kind != governance.AttemptUnknownDevice {
		t.Fatalf("unknown-device entry %+v", e)
	}

	tok, err := c.CreateToken(ctx, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	withToken := []string{"-u", "token", "-P", tok.Token}
	if out, err := publish(t, f, enrollTopic("e-legit"), append([]string{"-i", "e-legit"}, withToken...)...); err != nil {
		t.Fatalf("valid token refused before any block: %v %s", err, out)
	}
	if _, err := c.Decide(ctx, intruder.Key, "block", "not one of ours"); err != nil {
		t.Fatal(err)
	}
	if out, err := publish(t, f, enrollTopic("intruder-7"), append([]string{"-i", "intruder-7"}, withToken...)...); err == nil {
		t.Fatalf("blocked client ID connected with a valid token: %s", out)
	}
	waitFor(t, func() bool {
		e, err := c.TriageEntry(ctx, intruder.Key)
		return err == nil && e.Count > intruder.Count && e.Decision == governance.DecisionBlock
	}, "the blocked client's new attempt to be counted")
	if out, err := publish(t, f, enrollTopic("e-legit"), append([]string{"-i", "e-legit"}, withToken...)...); err != nil {
		t.Fatalf("the token stopped working for others: %v %s", err, out)
	}

	// An address block keeps every client from that address out.
	if err := bootstrapFrom(f, net.IPv4(127, 0, 0, 3), "e-from-3", tok.Token); err != nil {
		t.Fatalf("before the address block: %v", err)
	}
	if err := c.Block(ctx, "address", "127.0.0.3", "lab subnet"); err != nil {
		t.Fatal(err)
	}
	if err := bootstrapFrom(f, net.IPv4(127, 0, 0, 3), "e-from-3", tok.Token); err == nil {
		t.Fatal("client from a blocked address connected")
	}
	if err := bootstrapFrom(f, net.IPv4(127, 0, 0, 1), "e-from-1", tok.Token); err != nil {
		t.Fatalf("client from another address: %v", err)
	}
	if err := c.Unblock(ctx, "address", "127.0.0.3"); err != nil {
		t.Fatal(err)
	}
	if err := bootstrapFrom(f, net.IPv4(127, 0, 0, 3), "e-from-3", tok.Token); err != nil {
		t.Fatalf("after the address block was removed: %v", err)
	}
}

// TestGovernanceTriageEnrollsUnknownEK: a fleet that trusts no EK by
// itself refuses a device; its EK lands in the triage list; an operator's
// enroll decision lets it enroll (trust path "triage").
func TestGovernanceTriageEnrollsUnknownEK(t *testing.T) {
	f := startFleet(t, nil)
	c, _ := f.Client()
	ctx := context.Background()
	d := quietDevice(t, f, newTPM(t), t.TempDir(), "SN-STRANGER")
	waitReason(t, d, "unknown_ek")
	var entry governance.Shadow
	waitFor(t, func() bool {
		l, err := c.Triage(ctx, true, string(governance.AttemptUnknownEK), "", 100)
		if err != nil || len(l.Entries) != 1 {
			return false
		}
		entry = l.Entries[0]
		return true
	}, "a triage entry for the unknown EK")
	if len(entry.EKFingerprint) != 64 || entry.Key != "unknown-ek/ek:"+entry.EKFingerprint {
		t.Fatalf("entry %+v", entry)
	}
	if _, err := c.Decide(ctx, entry.Key, "enroll", "new line 4 gateway"); err != nil {
		t.Fatal(err)
	}
	st := waitConnected(t, d)
	dev, err := f.Inv.Device(ctx, st.DeviceID)
	if err != nil || dev.TrustPath != "triage" || dev.EKFingerprint != entry.EKFingerprint {
		t.Fatalf("enrolled %+v %v", dev, err)
	}
}
