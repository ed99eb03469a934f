package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// deliveryTap records every secret.deliver the fleet publishes, by device,
// through an inline subscription on the fleet's broker.
type deliveryTap struct {
	mu  sync.Mutex
	got map[string][]*wire.SecretDeliver
}

func tapDeliveries(t testing.TB, f *harness.Fleet) *deliveryTap {
	t.Helper()
	tap := &deliveryTap{got: map[string][]*wire.SecretDeliver{}}
	topics := wire.Topics{Prefix: wire.DefaultPrefix}
	err := f.Broker.Subscribe(topics.Filter(wire.SegDevice, "+", wire.Down), func(_ broker.Identity, topic string, payload []byte) {
		tp, err := topics.Parse(topic)
		if err != nil {
			return
		}
		env, err := wire.Decode(payload)
		if err != nil || env.Type != wire.TypeSecretDeliver {
			return
		}
		var d wire.SecretDeliver
		if wire.DecodeBody(env, wire.TypeSecretDeliver, &d) != nil {
			return
		}
		tap.mu.Lock()
		tap.got[tp.ID] = append(tap.got[tp.ID], &d)
		tap.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	return tap
}

func (tap *deliveryTap) to(deviceID string) []*wire.SecretDeliver {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return append([]*wire.SecretDeliver(nil), tap.got[deviceID]...)
}

// waitAcked waits until the device acknowledged version of name.
func waitAcked(t testing.TB, c *api.Client, id, name string, version int) api.DeviceSecret {
	t.Helper()
	var got api.DeviceSecret
	waitFor(t, func() bool {
		l, err := c.DeviceSecrets(context.Background(), id)
		if err != nil {
			return false
		}
		for _, s := range l.Secrets {
			if s.Name == name && s.Acked >= version {
				got = s
				return true
			}
		}
		return false
	}, "the device to acknowledge "+name)
	return got
}

// TestSecrets: sealed secrets end to end on real swtpm devices. A secret
// for device A is delivered, imported into A's TPM, acknowledged, and
// unsealed by `sigild secret get` (in-process and the real binary, through
// the running daemon's control socket and from the state store); a new
// version rotates it; a PCR-bound secret stops opening after
// tpm2_pcrextend and opens again after an orderly reboot; the message
// delivered to A cannot be imported by B's TPM, and the fleet never sends
// it to B; no listing shows a value.
func TestSecrets(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	tap := tapDeliveries(t, f)
	instA, instB := newTPM(t), newTPM(t)
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	dirA := t.TempDir()
	devA := startDevice(t, f, instA, harness.DeviceConfig{Dir: dirA, Tweak: noLog})
	devB := startDevice(t, f, instB, harness.DeviceConfig{Tweak: noLog})
	idA, idB := waitConnected(t, devA).DeviceID, waitConnected(t, devB).DeviceID
	c, _ := f.Client()
	ctx := context.Background()

	v1, v2 := []byte("correct horse battery staple"), []byte("Tr0ub4dor&3 \x00\xff binary ok")
	info, err := c.PutSecret(ctx, "db-password", v1, secrets.Target{Device: idA}, false)
	if err != nil || info.Version != 1 || info.Name != "db-password" {
		t.Fatalf("put: %+v %v", info, err)
	}
	waitAcked(t, c, idA, "db-password", 1)
	// Each delivery and acknowledgement is recorded on the device's trail.
	waitFor(t, func() bool {
		evs, _ := f.Inv.Events(ctx, idA, 50)
		kinds := map[string]bool{}
		for _, e := range evs {
			kinds[e.Kind] = kinds[e.Kind] || strings.Contains(e.Detail, "db-password version 1")
		}
		return kinds["secret-delivered"] && kinds["secret-acknowledged"]
	}, "the delivery and its acknowledgement to be recorded")
	got, err := agent.Unseal(devA.Config, "db-password", 0)
	if err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("unseal v1 through the daemon: %q %v", got, err)
	}

	// Rotation: a new version replaces the stored blob.
	if info, err = c.PutSecret(ctx, "db-password", v2, secrets.Target{Device: idA}, false); err != nil || info.Version != 2 {
		t.Fatalf("put v2: %+v %v", info, err)
	}
	waitAcked(t, c, idA, "db-password", 2)
	if got, err = agent.Unseal(devA.Config, "db-password", 0); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("unseal v2: %q %v", got, err)
	}
	if l, err := agent.Secrets(devA.Config); err != nil || len(l) != 1 || l[0].Version != 2 || l[0].PCRBound {
		t.Fatalf("device list %+v %v", l, err)
	}

	// The fleet never sent A's secret to B; B's TPM refuses A's message.
	if n := len(tap.to(idB)); n != 0 {
		t.Fatalf("the fleet sent %d deliveries to device B", n)
	}
	toA := tap.to(idA)
	if len(toA) < 2 {
		t.Fatalf("tap saw %d deliveries to A", len(toA))
	}
	tpmB, err := tpm.Open(instB.URI())
	if err != nil {
		t.Fatal(err)
	}
	last := toA[len(toA)-1]
	blob, err := tpmB.ImportSecret(last.Public, last.Duplicate, last.Seed, last.PCRs)
	if err == nil {
		v, uerr := tpmB.Unseal(blob)
		tpmB.Close()
		t.Fatalf("device B's TPM imported A's secret (unseal: %q %v)", v, uerr)
	}
	tpmB.Close()
	// The TPM refused it (on swtpm's libtpms the failed seed decryption
	// reports TPM_RC_FAILURE; B's TPM keeps working, see disk-key below).
	var rc tpm2.TPMRC
	if !errors.As(err, &rc) {
		t.Fatalf("import on B failed outside the TPM: %v", err)
	}
	if l, err := c.DeviceSecrets(ctx, idB); err != nil || len(l.Secrets) != 0 {
		t.Fatalf("B's secrets %+v %v", l, err)
	}

	// PCR-bound: sealed to A's attested PCR values.
	firstVerdict(t, c, idA)
	disk := []byte("luks volume key 0123456789abcdef")
	assign(t, c, idA, "gw-1", "") // a model target reaches the devices the fleet gave that model
	assign(t, c, idB, "gw-1", "")
	if _, err := c.PutSecret(ctx, "disk-key", disk, secrets.Target{Model: "gw-1"}, true); err != nil {
		t.Fatal(err)
	}
	ds := waitAcked(t, c, idA, "disk-key", 1)
	if !ds.PCRBound || ds.Error != "" {
		t.Fatalf("delivery state %+v", ds)
	}
	waitAcked(t, c, idB, "disk-key", 1) // the model target reaches B too, wrapped to B's own EK
	if got, err = agent.Unseal(devB.Config, "disk-key", 0); err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("unseal on B: %q %v", got, err)
	}
	if got, err = agent.Unseal(devA.Config, "disk-key", 0); err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("unseal PCR-bound: %q %v", got, err)
	}
	mustRun(t, "tpm2_pcrextend", "-T", instA.TCTI(), "9:sha256="+strings.Repeat("ab", 32))
	if got, err = agent.Unseal(devA.Config, "disk-key", 0); err == nil {
		t.Fatalf("PCR-bound secret opened after PCR 9 changed: %q", got)
	}
	if !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("unseal after PCR 9 changed: %v, want a policy failure", err)
	}
	if got, err = agent.Unseal(devA.Config, "db-password", 0); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("an unbound secret must still open: %q %v", got, err)
	}
	if err := instA.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err = agent.Unseal(devA.Config, "disk-key", 0); err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("unseal after an orderly reboot: %q %v", got, err)
	}

	// Listings never show values.
	var raw json.RawMessage
	if err := c.Do(ctx, "GET", "/api/v1/secrets", nil, &raw); err != nil {
		t.Fatal(err)
	}
	var devRaw json.RawMessage
	if err := c.Do(ctx, "GET", "/api/v1/devices/"+idA+"/secrets", nil, &devRaw); err != nil {
		t.Fatal(err)
	}
	for _, v := range [][]byte{v1, v2, disk} {
		for _, body := range []json.RawMessage{raw, devRaw} {
			if bytes.Contains(body, v[:8]) || bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString(v)[:12])) {
				t.Fatalf("a listing shows a value: %s", body)
			}
		}
	}
	list, err := c.Secrets(ctx)
	if err != nil || len(list.Secrets) != 2 {
		t.Fatalf("list %+v %v", list, err)
	}
	for _, s := range list.Secrets {
		if want := map[string]int{"db-password": 1, "disk-key": 2}[s.Name]; s.Delivery.Acked != want {
			t.Fatalf("%s delivery %+v, want %d acked", s.Name, s.Delivery, want)
		}
	}

	// The real binary, through the running daemon and from the state store.
	sigild := buildSigild(t)
	cfgPath := filepath.Join(t.TempDir(), "sigild.json")
	b, _ := json.Marshal(map[string]any{"tpm": instA.URI(), "state": devA.Config.State, "control": devA.Config.Control,
		"broker": devA.Config.Broker, "model": "gw-1"})
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	getSecret := func(name string) ([]byte, error) {
		cmd := exec.Command(sigild, "secret", "get", name, "--config", cfgPath)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, errors.New(err.Error() + ": " + stderr.String())
		}
		return out, nil
	}
	if out, err := getSecret("db-password"); err != nil || !bytes.Equal(out, v2) {
		t.Fatalf("sigild secret get (daemon running): %q %v", out, err)
	}
	out, err := exec.Command(sigild, "secret", "list", "--config", cfgPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "disk-key") || bytes.Contains(out, v2[:8]) {
		t.Fatalf("sigild secret list: %s %v", out, err)
	}
	err = exec.Command(sigild, "secret", "get", "no-such-secret", "--config", cfgPath).Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Fatalf("missing secret: %v", err)
	}
	devA.Stop()
	if out, err := getSecret("disk-key"); err != nil || !bytes.Equal(out, disk) {
		t.Fatalf("sigild secret get (daemon stopped): %q %v", out, err)
	}
	if _, err := agent.SecretBlob(devA.Config, "nope", 0); !errors.Is(err, state.ErrNoSecret) {
		t.Fatalf("missing secret from the store: %v", err)
	}
}

// TestSecretsPCRBoundNeedsSHA256: with the sha256 bank not quoted
// the fleet cannot bind to PCRs, so it refuses and records why; the device
// never receives the secret.
func TestSecretsPCRBoundNeedsSHA256(t *testing.T) {
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		c.AttestBanks = []string{"sha1"}
	})
	tap := tapDeliveries(t, f)
	requireTools(t)
	inst, err := swtpm.Start(context.Background(), swtpm.Options{StateDir: t.TempDir(), CA: vendor, PCRBanks: "sha1,sha256"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })
	d := startDevice(t, f, inst, harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	c := c0(t, f)
	firstVerdict(t, c, id) // it attests (sha1), still nothing to bind to
	if _, err := c.PutSecret(context.Background(), "bound", []byte("x"), secrets.Target{Device: id}, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		l, err := c.DeviceSecrets(context.Background(), id)
		return err == nil && len(l.Secrets) == 1 && strings.Contains(l.Secrets[0].Error, "sha256")
	}, "the refusal to be recorded")
	if n := len(tap.to(id)); n != 0 {
		t.Fatalf("%d deliveries sent", n)
	}
}

func c0(t testing.TB, f *harness.Fleet) *api.Client {
	t.Helper()
	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// buildSigild builds the device daemon as a user would.
func buildSigild(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "sigild")
	if b, err := exec.Command("go", "build", "-o", out, "github.com/sigil-iot/sigil/cmd/sigild").CombinedOutput(); err != nil {
		t.Fatalf("go build sigild: %v\n%s", err, b)
	}
	return out
}

// TestSecretRotationSchedule: a secret generated and rotated by the fleet
// on a schedule reaches the device version after version; the replaced
// version stays openable on the device during its grace period and not
// after; the API shows each version's state and never a value.
func TestSecretRotationSchedule(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	id := waitConnected(t, d).DeviceID
	c, _ := f.Client()
	ctx := context.Background()

	// A generated first value; every 3 s a new one; the old one valid 4 s more.
	rot := &secrets.Rotation{Every: config.Duration(3 * time.Second), Grace: config.Duration(4 * time.Second), Length: 24, Encoding: "hex"}
	var info secrets.Info
	if err := c.Do(ctx, "PUT", "/api/v1/secrets/svc-token", api.SecretRequest{Target: secrets.Target{Device: id}, Rotation: rot}, &info); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, c, id, "svc-token", 1)
	v1, err := agent.Unseal(d.Config, "svc-token", 0)
	if err != nil || len(v1) != 48 {
		t.Fatalf("generated v1: %d bytes, %v", len(v1), err)
	}
	// The scheduler rotates on its own; then the schedule is stopped so
	// that what follows sees a fixed set of versions.
	waitAcked(t, c, id, "svc-token", 2)
	if err := c.SetSecretRotation(ctx, "svc-token", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		l, _ := c.Secrets(ctx)
		ds, _ := c.DeviceSecrets(ctx, id)
		return len(l.Secrets) == 1 && len(ds.Secrets) == 1 && ds.Secrets[0].Acked == l.Secrets[0].Version
	}, "the device to hold the latest version")
	held, err := agent.Secrets(d.Config)
	if err != nil || len(held) != 1 || held[0].Version < 2 || held[0].Previous != held[0].Version-1 {
		t.Fatalf("device holds %+v %v", held, err)
	}
	cur, err := agent.Unseal(d.Config, "svc-token", 0)
	if err != nil || bytes.Equal(cur, v1) || len(cur) != 48 {
		t.Fatalf("current version after the scheduled rotation: %v", err)
	}
	// The replaced version is still there for consumers that have not
	// switched yet.
	prev, err := agent.Unseal(d.Config, "svc-token", held[0].Previous)
	if err != nil || len(prev) != 48 || bytes.Equal(prev, cur) || (held[0].Previous == 1 && !bytes.Equal(prev, v1)) {
		t.Fatalf("previous version during its grace period: %v", err)
	}
	l, err := c.Secrets(ctx)
	if err != nil || len(l.Secrets) != 1 {
		t.Fatalf("list %+v %v", l, err)
	}
	h := l.Secrets[0].History
	if len(h) < 2 || h[len(h)-2].State != secrets.VersionGrace || h[len(h)-1].State != secrets.VersionCurrent {
		t.Fatalf("version history %+v", h)
	}
	raw, _ := json.Marshal(l)
	if bytes.Contains(raw, cur) || bytes.Contains(raw, prev) {
		t.Fatal("the listing shows a value")
	}
	// Once the grace period ran out, the replaced version no longer opens.
	// sleep: past the end of the grace period, on the device's real clock (what is tested)
	time.Sleep(time.Until(held[0].PreviousUntil) + 300*time.Millisecond)
	if _, err := agent.Unseal(d.Config, "svc-token", held[0].Previous); !errors.Is(err, state.ErrNoSecret) {
		t.Fatalf("the replaced version opened after its grace period: %v", err)
	}
	if got, err := agent.Unseal(d.Config, "svc-token", 0); err != nil || !bytes.Equal(got, cur) {
		t.Fatalf("current version: %v", err)
	}
	// An explicit rotation now, and a 409 for a secret without a schedule.
	if _, err := c.RotateSecret(ctx, "svc-token"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("rotate without schedule: %v", err)
	}
}
