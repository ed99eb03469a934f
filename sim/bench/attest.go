package bench

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// AttestOptions configures Attest.
type AttestOptions struct {
	// Devices is the number of simulated devices. Default 20.
	Devices int
	// Rounds is how many times every device is challenged for the
	// throughput figure. Default 10.
	Rounds int
	// Dir holds the TPM states, the fleet and the device state. Required.
	Dir string
	// Timeout bounds each wait: all devices connected, one round's
	// verdicts, one device's quarantine. Default 30s.
	Timeout time.Duration
	// Logger receives the fleet's and devices' logs; nil discards them.
	Logger *slog.Logger
}

// Dist summarizes durations.
type Dist struct {
	N                  int
	Min, P50, P99, Max time.Duration
}

func dist(d []time.Duration) Dist {
	if len(d) == 0 {
		return Dist{}
	}
	return Dist{N: len(d), Min: slices.Min(d), P50: percentile(d, 50), P99: percentile(d, 99), Max: slices.Max(d)}
}

// AttestResult is the outcome of Attest.
type AttestResult struct {
	Devices int
	// Setup is the time before any clock: swtpm manufacture, the fleet,
	// every device enrolled and connected with its on-connect attestation
	// recorded, and the reference policy learned from the first device.
	Setup time.Duration
	// Policy is the ID of the learned policy every verdict is judged by.
	Policy string

	// Rounds and Verdicts count the throughput figure: every connected
	// device challenged once per round, every verdict a pass under Policy.
	Rounds, Verdicts int
	// Wall is the sum over rounds of the time from the round's first
	// challenge to its last verdict recorded; PerSecond is Verdicts / Wall.
	Wall      time.Duration
	PerSecond float64
	// Latency is each verdict's time from the fleet sending the challenge
	// to the verdict recorded (attest.Service.OnVerdict).
	Latency     []time.Duration
	LatencyDist Dist

	// Quarantined counts the devices that failed after a PCR extend and
	// were quarantined, revoked, disconnected and alerted (checked in the
	// inventory afterwards).
	Quarantined int
	// Quarantine is each device's time from its failing evidence's arrival
	// to disconnected + certificate revoked + alert recorded
	// (attest.Service.OnQuarantine).
	Quarantine     []time.Duration
	QuarantineDist Dist
	// Disconnect is each device's time from the fleet sending the challenge
	// to the broker reporting the device no longer connected.
	Disconnect     []time.Duration
	DisconnectDist Dist
}

// verdictSink collects OnVerdict and OnQuarantine reports for the devices a
// phase waits on; reports for other devices are counted as strays.
type verdictSink struct {
	mu      sync.Mutex
	pending map[string]bool
	done    chan struct{} // closed when pending empties
	lat     map[string]time.Duration
	recs    map[string]attest.Record
	last    time.Time
	quar    []time.Duration
	strays  int
}

func (v *verdictSink) expect(ids []string) <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pending, v.done = map[string]bool{}, make(chan struct{})
	v.lat, v.recs, v.quar = map[string]time.Duration{}, map[string]attest.Record{}, nil
	for _, id := range ids {
		v.pending[id] = true
	}
	return v.done
}

func (v *verdictSink) verdict(id string, rec *attest.Record, latency time.Duration) {
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.pending[id] {
		v.strays++
		return
	}
	delete(v.pending, id)
	v.lat[id], v.recs[id], v.last = latency, *rec, now
	if len(v.pending) == 0 {
		close(v.done)
	}
}

func (v *verdictSink) quarantine(d time.Duration) {
	v.mu.Lock()
	v.quar = append(v.quar, d)
	v.mu.Unlock()
}

// Attest measures attestation end to end over MQTT. Set-up, untimed: one
// swtpm per device (EK certificates from a private vendor CA), an
// in-process fleet, every sigild agent enrolled and connected over
// TPM-backed mTLS, each one's on-connect attestation recorded, and a
// reference policy learned through the API from the first device (fresh
// swtpms have identical PCRs, so it fits all of them).
//
// Throughput: each round, the fleet challenges every device
// (Server.Attest.Challenge); each device quotes in its swtpm and publishes
// evidence; the fleet verifies the quote, judges it against the policy and
// records the verdict. A verdict's latency runs from its challenge being
// sent to it being recorded.
//
// Quarantine: PCR 9 of every swtpm is extended (untimed), then one device
// at a time is challenged. Its evidence fails the policy; the fleet revokes
// its certificate, disconnects it and raises an alert. Two times are kept:
// the fleet's own, from the failing evidence's arrival to all of that done
// (OnQuarantine), and the user-visible one, from the challenge to the
// broker reporting the device disconnected. Each device's agent is stopped
// once measured, so its re-enrollment does not load the next measurement.
func Attest(ctx context.Context, o AttestOptions) (*AttestResult, error) {
	if o.Devices == 0 {
		o.Devices = 20
	}
	if o.Rounds == 0 {
		o.Rounds = 10
	}
	if o.Devices < 1 || o.Rounds < 1 {
		return nil, errors.New("bench: attest: devices and rounds must be at least 1")
	}
	if o.Dir == "" {
		return nil, errors.New("bench: attest: no working directory")
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	setupStart := time.Now()
	sink := &verdictSink{}
	st, err := connectedFleet(ctx, o.Dir, o.Devices, o.Timeout, o.Logger, func(f *harness.Fleet) {
		f.Attest.OnVerdict(sink.verdict)
		f.Attest.OnQuarantine(sink.quarantine)
	})
	if err != nil {
		return nil, err
	}
	defer st.close()
	tpms, fleet, devices, ids := st.tpms, st.fleet, st.devices, st.ids
	client, err := fleet.Client()
	if err != nil {
		return nil, err
	}
	pol, err := client.LearnPolicy(ctx, api.LearnRequest{DeviceID: ids[0], Name: "bench golden"})
	if err != nil {
		return nil, fmt.Errorf("bench: attest: learn policy: %w", err)
	}
	res := &AttestResult{Devices: o.Devices, Policy: pol.ID, Setup: time.Since(setupStart)}

	// Throughput and verdict latency.
	for range o.Rounds {
		done := sink.expect(ids)
		t0 := time.Now()
		for _, id := range ids {
			if err := fleet.Attest.Challenge(id); err != nil {
				return nil, fmt.Errorf("bench: attest: challenge: %w", err)
			}
		}
		if err := wait(ctx, done, o.Timeout, "a round of verdicts"); err != nil {
			return nil, err
		}
		sink.mu.Lock()
		res.Wall += sink.last.Sub(t0)
		for _, id := range ids {
			r := sink.recs[id]
			if r.Result != wire.VerdictPass || r.PolicyID != pol.ID {
				sink.mu.Unlock()
				return nil, fmt.Errorf("bench: attest: device %s: verdict %s (%s: %s), want a pass under policy %s", id, r.Result, r.Reason, r.Message, pol.ID)
			}
			res.Latency = append(res.Latency, sink.lat[id])
		}
		sink.mu.Unlock()
		res.Rounds++
		res.Verdicts += len(ids)
	}
	res.PerSecond = float64(res.Verdicts) / res.Wall.Seconds()
	res.LatencyDist = dist(res.Latency)

	// Quarantine latency.
	serials := map[string]string{}
	for _, id := range ids {
		dev, err := fleet.Inv.Device(ctx, id)
		if err != nil {
			return nil, err
		}
		serials[id] = dev.CertSerial
	}
	for _, inst := range tpms {
		if err := extendPCR(ctx, inst, 9); err != nil {
			return nil, err
		}
	}
	for i, id := range ids {
		done := sink.expect([]string{id})
		t0 := time.Now()
		if err := fleet.Attest.Challenge(id); err != nil {
			return nil, fmt.Errorf("bench: attest: challenge: %w", err)
		}
		gone, err := waitDisconnected(ctx, fleet, id, o.Timeout)
		if err != nil {
			return nil, err
		}
		res.Disconnect = append(res.Disconnect, gone.Sub(t0))
		if err := wait(ctx, done, o.Timeout, "a quarantine verdict"); err != nil {
			return nil, err
		}
		sink.mu.Lock()
		r, q := sink.recs[id], slices.Clone(sink.quar)
		sink.mu.Unlock()
		if r.Result != wire.VerdictFail || r.Action != "quarantined" || len(q) != 1 {
			return nil, fmt.Errorf("bench: attest: device %s after a PCR extend: verdict %s (%s), action %q, %d quarantines reported", id, r.Result, r.Reason, r.Action, len(q))
		}
		res.Quarantine = append(res.Quarantine, q[0])
		devices[i].Stop()
	}
	res.QuarantineDist, res.DisconnectDist = dist(res.Quarantine), dist(res.Disconnect)
	for _, id := range ids {
		ok, err := quarantined(fleet, id, serials[id])
		if err != nil {
			return nil, err
		}
		if ok {
			res.Quarantined++
		}
	}
	if res.Quarantined != len(ids) {
		return nil, fmt.Errorf("bench: attest: %d of %d devices quarantined, revoked and alerted", res.Quarantined, len(ids))
	}
	return res, nil
}

// quarantined reports whether the inventory shows the device quarantined,
// its old certificate serial revoked, and a quarantine alert recorded.
func quarantined(f *harness.Fleet, id, serial string) (bool, error) {
	dev, err := f.Inv.Device(context.TODO(), id)
	if err != nil {
		return false, err
	}
	evs, err := f.Inv.Events(context.TODO(), id, 50)
	if err != nil {
		return false, err
	}
	alerted := slices.ContainsFunc(evs, func(e inventory.Event) bool { return e.Kind == "alert" })
	return dev.State == inventory.StateQuarantined && dev.IsRevoked(serial) && alerted, nil
}

func wait(ctx context.Context, done <-chan struct{}, timeout time.Duration, what string) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("bench: attest: no %s after %v", what, timeout)
	}
}

// waitConnected polls until every agent is enrolled and connected and
// returns their device IDs.
func waitConnected(ctx context.Context, devices []*harness.Device, timeout time.Duration) ([]string, error) {
	ids := make([]string, len(devices))
	left := len(devices)
	err := poll(ctx, timeout, 5*time.Millisecond, func() (bool, error) {
		for i, d := range devices {
			if st := d.Status(); ids[i] == "" && harness.Connected(st) {
				ids[i] = st.DeviceID
				left--
			}
		}
		return left == 0, nil
	}, func() error {
		return fmt.Errorf("bench: attest: %d of %d devices not connected after %v", left, len(devices), timeout)
	})
	return ids, err
}

// waitRecorded polls the history until every device has a verdict.
func waitRecorded(ctx context.Context, f *harness.Fleet, ids []string, timeout time.Duration) error {
	return poll(ctx, timeout, 10*time.Millisecond, func() (bool, error) {
		for _, id := range ids {
			recs, err := f.Attest.History(ctx, id, 1)
			if err != nil {
				return false, err
			}
			if len(recs) == 0 {
				return false, nil
			}
		}
		return true, nil
	}, func() error {
		return fmt.Errorf("bench: attest: on-connect attestations not all recorded after %v", timeout)
	})
}

// waitDisconnected polls the broker every 200µs and returns when it first
// reported the device gone.
func waitDisconnected(ctx context.Context, f *harness.Fleet, id string, timeout time.Duration) (time.Time, error) {
	var at time.Time
	err := poll(ctx, timeout, 200*time.Microsecond, func() (bool, error) {
		if f.Broker.Connected(id) {
			return false, nil
		}
		at = time.Now()
		return true, nil
	}, func() error {
		return fmt.Errorf("bench: attest: device %s still connected %v after its failing challenge", id, timeout)
	})
	return at, err
}

func poll(ctx context.Context, timeout, every time.Duration, cond func() (bool, error), timedOut func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return timedOut()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// extendPCR extends a sha256 PCR of a swtpm with a fixed digest, over its
// own TCP connection (swtpm serves one at a time; the agent connects per
// operation), as tampering with the boot chain would.
func extendPCR(ctx context.Context, inst *swtpm.Instance, pcr int) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", inst.Port()))
	if err != nil {
		return fmt.Errorf("bench: attest: extend PCR: %w", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return fmt.Errorf("bench: attest: extend PCR: %w", err)
	}
	digest := sha256.Sum256([]byte("sigil bench: tampered boot component"))
	_, err = tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:]}}},
	}.Execute(rawTPM{conn})
	if err != nil {
		return fmt.Errorf("bench: attest: extend PCR %d: %w", pcr, err)
	}
	return nil
}

// rawTPM sends TPM commands over a swtpm TCP connection: the response is a
// 10-byte header, then the rest of the size it announces.
type rawTPM struct{ conn net.Conn }

func (r rawTPM) Send(cmd []byte) ([]byte, error) {
	if _, err := r.conn.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(r.conn, hdr); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > 1<<16 {
		return nil, fmt.Errorf("bad TPM response size %d", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(r.conn, rsp[10:]); err != nil {
		return nil, err
	}
	return rsp, nil
}

// Print writes the result as two small tables.
func (r *AttestResult) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	l := r.LatencyDist
	fmt.Fprintf(tw, "devices\trounds\tverdicts\tattestations/s\tmin\tp50 verdict\tp99 verdict\tmax\tsetup (not timed)\n")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%s\t%s\t%s\t%s\t%.1f s\n", r.Devices, r.Rounds, r.Verdicts, r.PerSecond, msf(l.Min), msf(l.P50), msf(l.P99), msf(l.Max), r.Setup.Seconds())
	tw.Flush()
	fmt.Fprintf(w, "(verdict = fleet challenge sent until the verdict is recorded; all %d passed under learned policy %s)\n\n", r.Verdicts, r.Policy)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "quarantine\tn\tmin\tp50\tp99\tmax\tgoal p99\n")
	q, d := r.QuarantineDist, r.DisconnectDist
	fmt.Fprintf(tw, "failing evidence arrived -> revoked, disconnected, alerted\t%d\t%s\t%s\t%s\t%s\t<= 1 s: %s\n", q.N, msf(q.Min), msf(q.P50), msf(q.P99), msf(q.Max), met(q.P99 <= time.Second))
	fmt.Fprintf(tw, "challenge sent -> broker reports device disconnected\t%d\t%s\t%s\t%s\t%s\t\n", d.N, msf(d.Min), msf(d.P50), msf(d.P99), msf(d.Max))
	tw.Flush()
	fmt.Fprintf(w, "(PCR 9 extended on every swtpm, devices challenged one at a time; %d/%d quarantined with the old serial revoked and an alert in the inventory)\n", r.Quarantined, r.Devices)
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// msf prints milliseconds with one decimal: attestation times are short.
func msf(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// benchFleet is a fleet with swtpm devices that enrolled, connected and
// attested once, ready for a measurement.
type benchFleet struct {
	tpms    []*swtpm.Instance
	fleet   *harness.Fleet
	devices []*harness.Device
	ids     []string
	close   func()
}

// connectedFleet sets up n devices; before, when set, runs on the fleet
// before any device starts (to attach hooks).
func connectedFleet(ctx context.Context, dir string, n int, timeout time.Duration, log *slog.Logger, before func(*harness.Fleet)) (*benchFleet, error) {
	tpms, ekCADir, stopTPMs, err := startTPMs(ctx, dir, n, log)
	if err != nil {
		return nil, err
	}
	fleet, err := harness.StartFleet(ctx, server.Config{DataDir: filepath.Join(dir, "fleet"), EKCADir: ekCADir}, log.With("side", "fleet"))
	if err != nil {
		stopTPMs()
		return nil, err
	}
	b := &benchFleet{tpms: tpms, fleet: fleet, devices: make([]*harness.Device, n)}
	b.close = func() {
		for _, d := range b.devices {
			if d != nil {
				d.Stop()
			}
		}
		fleet.Stop()
		stopTPMs()
	}
	if before != nil {
		before(fleet)
	}
	for i, inst := range tpms {
		b.devices[i], err = fleet.StartDevice(ctx, harness.DeviceConfig{
			TPM: inst.URI(), Dir: filepath.Join(dir, fmt.Sprintf("device-%d", i+1)),
			Model: "bench-gw", Firmware: "1.0.0", Serial: fmt.Sprintf("BENCH-%04d", i+1),
			// No measured-boot log: swtpm has none, and the host's must not
			// be sent with the swtpm's quotes.
			Tweak: func(c *agent.Config) { c.EventLog = "-" },
		}, log.With("side", "device", "n", i+1))
		if err != nil {
			b.close()
			return nil, err
		}
	}
	if b.ids, err = waitConnected(ctx, b.devices, timeout); err != nil {
		b.close()
		return nil, err
	}
	// Every device attests on connect; wait until each has a verdict so
	// that none is in flight when the clock starts.
	if err := waitRecorded(ctx, fleet, b.ids, timeout); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}
