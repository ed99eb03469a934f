package swarm_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/memslots"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/swarm"
)

// poll checks cond every 50 ms until it holds, failing the test with
// cond's last account of what is missing after timeout.
func poll(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, missing := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in %v: %s", what, timeout, missing)
		}
		<-tick.C
	}
}

// releaseKey makes a release signing key and the fleet's trust set file
// over it (threshold 1), as the end-to-end firmware tests do.
func releaseKey(t *testing.T, dir string) (*sign.Signer, string) {
	t.Helper()
	path := filepath.Join(dir, "trust.json")
	return signtest.TrustFile(t, path), path
}

// TestSwarm runs a real fleet (sigil serve in-process: embedded broker,
// bbolt stores, the manufacturer CA of the software TPMs as its
// ek_ca_dir) and a swarm of simulated devices, and checks the bookkeeping
// a user relies on: every device active; every attestation the devices
// sent judged once; every telemetry point ingested once or counted
// dropped; a tampered device quarantined; a forced rotation of the whole
// fleet ending with every device on a new certificate; a firmware
// campaign committed on a group of devices.
func TestSwarm(t *testing.T) {
	const devices = 200
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	ekDir := filepath.Join(dir, "ekca")
	ca, err := softtpm.OpenCA(ekDir)
	if err != nil {
		t.Fatal(err)
	}
	signer, trustFile := releaseKey(t, dir)
	quiet := slog.New(slog.DiscardHandler)
	f, err := harness.StartFleet(ctx, server.Config{DataDir: filepath.Join(dir, "fleet"), EKCADir: ekDir, ReleaseTrust: trustFile}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	admin, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}

	// Half the devices enroll with a token that gives them their model;
	// the others by their EK certificate alone, and the operator assigns
	// their model once they are enrolled. Policies and releases are
	// chosen by the model the fleet assigned, never the one a device
	// claims.
	tokens := make([]string, devices)
	for i := 0; i < devices; i += 2 {
		tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{Model: swarm.DefaultModel, TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		tokens[i] = tok.Token
	}

	s, err := swarm.New(swarm.Config{
		Devices: devices, Broker: f.MQTTAddr(), ServerName: "localhost", FleetCA: f.CACertPath(),
		UpdateServer: f.UpdateServer(), TopicPrefix: f.Config.TopicPrefix, CA: ca, Dir: filepath.Join(dir, "devices"),
		Rate: 400, PerSource: 50, AttestInterval: 15 * time.Second, TelemetryInterval: 4 * time.Second,
		RetryMin: 200 * time.Millisecond, RetryMax: time.Minute, Token: func(i int) string { return tokens[i] },
	})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	devs := s.Devices()
	t0 := time.Now()

	// Every device enrolls from its EK certificate and holds an mTLS
	// session; the fleet holds each as active.
	poll(t, 60*time.Second, "every device active", func() (bool, string) {
		for _, d := range devs {
			o := d.Outcome()
			if o.Active.IsZero() || !o.Connected {
				return false, fmt.Sprintf("device %d: %+v", d.Index, o)
			}
			dev, err := f.Inv.Device(ctx, o.DeviceID)
			if err != nil || dev.State != inventory.StateActive || dev.CertSerial != o.CertSerial {
				return false, fmt.Sprintf("device %d in the inventory: %+v %v", d.Index, dev, err)
			}
		}
		return true, ""
	})
	t.Logf("%v: %d devices active", time.Since(t0).Round(time.Millisecond), devices)
	ids := make([]string, devices)
	for i, d := range devs {
		ids[i] = d.Outcome().DeviceID
	}
	for i := 1; i < devices; i += 2 {
		if err := admin.Do(ctx, http.MethodPatch, "/api/v1/devices/"+ids[i], map[string]string{"model": swarm.DefaultModel}, nil); err != nil {
			t.Fatalf("assigning device %d its model: %v", i, err)
		}
	}
	for i, id := range ids {
		if d, err := f.Inv.Device(ctx, id); err != nil || d.Model != swarm.DefaultModel {
			t.Fatalf("device %d has model %q (%v)", i, d.Model, err)
		}
	}

	// A policy learned from one device: they all run the same image.
	poll(t, 30*time.Second, "device 0 attested", func() (bool, string) {
		recs, err := f.Attest.History(t.Context(), ids[0], 1)
		return err == nil && len(recs) == 1 && recs[0].Result == wire.VerdictPass, fmt.Sprint(recs, err)
	})
	if _, err := admin.LearnPolicy(ctx, api.LearnRequest{DeviceID: ids[0], Name: "swarm golden", AnyFirmware: true}); err != nil {
		t.Fatal(err)
	}

	// A tampered device: a PCR its policy pins changes; its next
	// attestation fails and quarantines it, which closes its session.
	const tampered = 7
	td := devs[tampered]
	serial := td.Outcome().CertSerial
	if err := td.TPM().ExtendPCR(9, bytes.Repeat([]byte{0xee}, 32)); err != nil {
		t.Fatal(err)
	}
	if err := f.Attest.Challenge(ids[tampered]); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "the tampered device quarantined", func() (bool, string) {
		dev, err := f.Inv.Device(ctx, ids[tampered])
		o := td.Outcome()
		return err == nil && dev.State == inventory.StateQuarantined && dev.IsRevoked(serial) && o.Disconnects > 0 &&
				!o.LastDisconnect.IsZero() && strings.HasPrefix(o.Verdict, wire.VerdictFail),
			fmt.Sprintf("inventory %s (%v), outcome %+v", dev.State, err, o)
	})
	healthy := func(i int) bool { return i != tampered }
	t.Logf("%v: tampered device quarantined", time.Since(t0).Round(time.Millisecond))

	// A forced rotation of every active device: each renews on a fresh
	// passing attestation and reconnects with its new certificate.
	before := map[string]string{}
	for i, d := range devs {
		if healthy(i) {
			before[ids[i]] = d.Outcome().CertSerial
		}
	}
	job, err := f.Rotation.Start(rotation.Selector{All: true}, 10000, "swarm test", "test")
	if err != nil {
		t.Fatal(err)
	}
	if p := job.Progress(); p.Total != devices-1 {
		t.Fatalf("rotation job over %d devices, want the %d active ones", p.Total, devices-1)
	}
	// The device's new certificate is admitted and its previous one
	// revoked, and it is the one certificate issued since: a device asks
	// again only after a generous timeout, and the fleet answers a renewal
	// repeated for a key with the certificate it issued for it.
	duplicates := 0
	poll(t, 60*time.Second, "the rotation done", func() (bool, string) {
		j, err := f.Rotation.Job(job.ID)
		if err != nil || j.State != rotation.JobDone || j.Progress().Renewed != devices-1 {
			return false, fmt.Sprintf("job %+v %v", j, err)
		}
		duplicates = 0
		now := time.Now()
		for i, d := range devs {
			if !healthy(i) {
				continue
			}
			o := d.Outcome()
			dev, err := f.Inv.Device(ctx, ids[i])
			if err != nil || !o.Connected || o.CertSerial == before[ids[i]] || !dev.Admits(o.CertSerial, now) || !dev.IsRevoked(before[ids[i]]) {
				return false, fmt.Sprintf("device %d: agent on %s (connected %v), inventory on %s, previous %s revoked %v (%v)",
					i, o.CertSerial, o.Connected, dev.CertSerial, before[ids[i]], dev.IsRevoked(before[ids[i]]), err)
			}
			certs := dev.Certificates()
			if k := slices.IndexFunc(certs, func(c inventory.Cert) bool { return c.Serial == before[ids[i]] }); dev.CertSerial != o.CertSerial || k != len(certs)-2 {
				duplicates++
			}
		}
		return true, ""
	})
	if duplicates > 0 {
		t.Errorf("%d of %d devices were issued more than one certificate in the rotation", duplicates, devices-1)
	}
	t.Logf("%v: rotation of %d devices done", time.Since(t0).Round(time.Millisecond), devices-1)

	// A campaign of a 1 MiB release to a group of devices, in waves.
	image := bytes.Repeat([]byte("sim-gw firmware 2.0.0\n"), 1<<20/22)
	m := &manifest.Manifest{Name: "sim-os", Version: "2.0.0", SecurityVersion: 2, Models: []string{swarm.DefaultModel},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)}
	m.Measurements = &manifest.Measurements{PCRs: map[string]map[int]string{"sha256": {14: harness.ExpectedPCR14(m.SHA256)}}}
	raw, bundles, err := harness.SignRelease(m, signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateUser(ctx, api.UserRequest{Name: "rita", Role: auth.RoleReleaseApprover}); err != nil {
		t.Fatal(err)
	}
	token, _, err := f.Auth.CreateToken(t.Context(), "rita", "swarm test", auth.RoleReleaseApprover, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	approver := *admin
	approver.Token = token
	rel, err := admin.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := approver.ApproveRelease(ctx, rel.ID); err != nil {
		t.Fatal(err)
	}
	group := ids[20:32]
	c, err := admin.CreateCampaign(ctx, campaign.Definition{Name: "swarm 2.0.0", Release: rel.ID, Targets: campaign.Selector{DeviceIDs: group},
		Waves: campaign.Waves{Canary: 1, Growth: 2}, DeviceTimeout: config.Duration(40 * time.Second)}, "swarm test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CampaignAction(ctx, c.ID, "start", "swarm test", time.Time{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 60*time.Second, "the campaign completed", func() (bool, string) {
		cur, err := admin.Campaign(ctx, c.ID)
		return err == nil && cur.State == campaign.StateCompleted && cur.Counts.Committed == len(group), fmt.Sprintf("%+v %v", cur, err)
	})
	t.Logf("%v: campaign completed", time.Since(t0).Round(time.Millisecond))
	for i := 20; i < 32; i++ {
		st, img := devs[i].Slots().State(), devs[i].Slots().Image(memslots.SlotB)
		if st.Active != memslots.SlotB || st.Booted != memslots.SlotB || img == nil || img.SHA256 != m.SHA256 {
			t.Fatalf("device %d after the campaign: boots %+v, slot b holds %+v", i, st, img)
		}
	}
	poll(t, 30*time.Second, "the group reports 2.0.0", func() (bool, string) {
		for i := 20; i < 32; i++ {
			if o := devs[i].Outcome(); o.Firmware != "2.0.0" {
				return false, fmt.Sprintf("device %d runs %q", i, o.Firmware)
			}
			if d, err := f.Inv.Device(ctx, ids[i]); err != nil || d.Firmware != "2.0.0" {
				return false, fmt.Sprintf("device %d recorded on %q (%v)", i, d.Firmware, err)
			}
		}
		return true, ""
	})

	// The updated devices attest under the policy the fleet prepared from
	// the release's expected measurements (PCR 14 now holds the new
	// image's).
	for i := 20; i < 32; i++ {
		if err := f.Attest.Challenge(ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, 30*time.Second, "the updated devices attested on 2.0.0", func() (bool, string) {
		for i := 20; i < 32; i++ {
			recs, err := f.Attest.History(t.Context(), ids[i], 1)
			if err != nil || len(recs) != 1 || recs[0].Firmware != "2.0.0" || recs[0].Result != wire.VerdictPass || recs[0].PolicyID == "swarm-golden" {
				return false, fmt.Sprintf("device %d: %+v %v", i, recs, err)
			}
		}
		return true, ""
	})

	// Every attestation a healthy device sent (evidence, and the evidence
	// in each renewal) has exactly one verdict in the fleet's history, but
	// for those the fleet told the device it refused unjudged (a nonce
	// outlived or replaced while the fleet was busy).
	judged := map[int]bool{}
	poll(t, 30*time.Second, "every attestation judged", func() (bool, string) {
		for i, d := range devs {
			if !healthy(i) || judged[i] {
				continue
			}
			o := d.Outcome()
			sent := o.Sent[wire.TypeAttestEvidence] + o.Sent[wire.TypeRenewRequest]
			recs, err := f.Attest.History(t.Context(), ids[i], 1000)
			if err != nil || uint64(len(recs)) != sent-o.Unjudged {
				return false, fmt.Sprintf("device %d sent %d evidence (%d refused unjudged), the fleet judged %d (%v)", i, sent, o.Unjudged, len(recs), err)
			}
			for _, r := range recs {
				if r.Result != wire.VerdictPass {
					return false, fmt.Sprintf("device %d: verdict %+v", i, r)
				}
			}
			judged[i] = true
		}
		return true, ""
	})

	// Every telemetry point a healthy device appended to its outbox was
	// ingested once, or counted dropped: compared, for each device, at a
	// moment its outbox is empty (between two samples).
	var appended, ingested uint64
	accounted := map[int]bool{}
	poll(t, 30*time.Second, "every telemetry point accounted for", func() (bool, string) {
		for i, d := range devs {
			if !healthy(i) || accounted[i] {
				continue
			}
			// The fleet first: it cannot count a point before the
			// device appended it.
			fleet, err := f.Telemetry.Device(ids[i])
			if err != nil {
				return false, fmt.Sprintf("device %d: %v", i, err)
			}
			st, err := d.Outbox()
			if err != nil {
				return false, err.Error()
			}
			n := st.Next - 1
			got := fleet.Counts.Ingested + fleet.Counts.Dropped
			if got > n || fleet.Counts.Dropped > st.Dropped {
				t.Fatalf("device %d appended %d points (dropped %d), the fleet counts %d ingested and %d dropped",
					i, n, st.Dropped, fleet.Counts.Ingested, fleet.Counts.Dropped)
			}
			if st.Points != 0 || got != n || fleet.Counts.Dropped != st.Dropped {
				o := d.Outcome()
				return false, fmt.Sprintf("device %d (%s): %d appended, %d pending, fleet through %d; batches sent %d, acks received %d, disconnects %d, warnings %d (last %q), connected %v",
					i, ids[i], n, st.Points, got, o.Sent[wire.TypeTelemetryBatch], o.Received[wire.TypeTelemetryAck], o.Disconnects, o.Warnings, o.LastWarning, o.Connected)
			}
			accounted[i] = true
			appended += n
			ingested += fleet.Counts.Ingested
		}
		return true, ""
	})
	t.Logf("%v: attestations and telemetry accounted for", time.Since(t0).Round(time.Millisecond))
	if appended < 2*(devices-1) {
		t.Fatalf("only %d points appended", appended)
	}

	// No healthy device lost its session to anything but the rotation and
	// the campaign's reboots, which the device closes itself.
	for i, d := range devs {
		if o := d.Outcome(); healthy(i) && (o.Disconnects != 0 || o.Exited != nil) {
			t.Errorf("device %d: %d sessions lost, exited %v (last warning %q)", i, o.Disconnects, o.Exited, o.LastWarning)
		}
	}
	sum := swarm.Summarize(s.Outcomes())
	t.Logf("%d devices (time to active p50 %v, p99 %v), %d telemetry points ingested, %d rotated, %d updated",
		sum.Active, sum.TimeToActive.P50.Round(time.Millisecond), sum.TimeToActive.P99.Round(time.Millisecond), ingested, devices-1, len(group))
}

// TestAgentUsesInjectedDevice: an agent given a TPM and a state store
// uses them and opens neither Config.TPM nor Config.State (both name
// things that do not exist here): its keys are created in the given TPM
// and stored in the given store.
func TestAgentUsesInjectedDevice(t *testing.T) {
	ca, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	s, err := swarm.New(swarm.Config{Devices: 1, Broker: "127.0.0.1:1", FleetCA: "/nonexistent/ca.pem", CA: ca, Dir: t.TempDir(),
		RetryMin: time.Hour, RetryMax: time.Hour,
		Tweak: func(_ int, c *agent.Config) { c.TPM, c.State = "/nonexistent/tpm0", "/nonexistent/state.db" }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	d := s.Devices()[0]
	poll(t, 10*time.Second, "keys created", func() (bool, string) {
		o := d.Outcome()
		return o.Enrollment == "keys" && o.Warnings > 0, fmt.Sprintf("%+v", o)
	})
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	st := d.Outcome()
	if st.Exited != nil {
		t.Fatalf("agent exited with %v", st.Exited)
	}
	id, err := d.State().Store().Identity()
	if err != nil || len(id.TK.Private) == 0 {
		t.Fatalf("identity in the given store: %+v, %v", id, err)
	}
	if _, err := d.TPM().PublicKey(&tpm.KeyBlob{Public: id.TK.Public, Private: id.TK.Private}); err != nil {
		t.Fatalf("the stored transport key does not load in the given TPM: %v", err)
	}
}

// TestSourceAddresses: devices connect from the loopback addresses the
// swarm gives them, PerSource to an address, from 127.0.0.2 on.
func TestSourceAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	caFile := filepath.Join(t.TempDir(), "fleet-ca.pem")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	ca, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	// Not a broker: each device's enrollment fails here and is retried
	// after an hour; what counts is where it came from.
	s, err := swarm.New(swarm.Config{Devices: 5, PerSource: 2, Broker: ln.Addr().String(), FleetCA: caFile, CA: ca, Dir: t.TempDir(),
		RetryMin: time.Hour, RetryMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	seen := map[string]int{}
	for range 5 {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		seen[c.RemoteAddr().(*net.TCPAddr).IP.String()]++
		c.Close()
	}
	if want := map[string]int{"127.0.0.2": 2, "127.0.0.3": 2, "127.0.0.4": 1}; !maps.Equal(seen, want) {
		t.Fatalf("connections came from %v, want %v", seen, want)
	}
	for i, want := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.4"} {
		if got := s.Source(i).String(); got != want {
			t.Fatalf("Source(%d) = %s, want %s", i, got, want)
		}
	}
}

// TestFirstIndex: swarms that share a seed and take consecutive index
// ranges (the shards of one simulated fleet in several processes) make
// the devices one swarm of them all would: the same TPMs, serials and
// source addresses for the same indexes.
func TestFirstIndex(t *testing.T) {
	ca, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	seed := []byte("one fleet in shards")
	cfg := swarm.Config{Devices: 5, PerSource: 2, Broker: "127.0.0.1:1", FleetCA: "/nonexistent/ca.pem", CA: ca, Seed: seed, Dir: t.TempDir()}
	whole, err := swarm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Devices, cfg.FirstIndex = 2, 3
	shard, err := swarm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(shard.Devices()); n != 2 {
		t.Fatalf("the shard has %d devices", n)
	}
	for k, d := range shard.Devices() {
		i := 3 + k
		w := whole.Devices()[i]
		if d.Index != i || d.Serial != w.Serial || d.Serial != fmt.Sprintf("SIM-%06d", i) {
			t.Fatalf("shard device %d: index %d serial %s, want %d %s", k, d.Index, d.Serial, i, w.Serial)
		}
		ek, err := d.TPM().EK()
		if err != nil {
			t.Fatal(err)
		}
		wek, err := w.TPM().EK()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ek.Public, wek.Public) {
			t.Fatalf("device %d has another EK in the shard", i)
		}
		if !shard.Source(i).Equal(whole.Source(i)) {
			t.Fatalf("device %d connects from %s in the shard, %s in the whole", i, shard.Source(i), whole.Source(i))
		}
	}
	ek0, err := whole.Devices()[0].TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	ek3, err := shard.Devices()[0].TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ek0.Public, ek3.Public) {
		t.Fatal("device 0 and device 3 share an EK")
	}
	if _, err := swarm.New(swarm.Config{Devices: 1, FirstIndex: -1, CA: ca, Dir: t.TempDir()}); err == nil {
		t.Fatal("a negative FirstIndex was accepted")
	}
}
