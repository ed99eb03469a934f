package fleetbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/swarm"
)

// A shard is a child process (the same sigil-sim, re-executed with a
// hidden subcommand) that runs a range of the simulated devices in a
// swarm, so that no process holds more connections than its open-file cap
// allows. The parent commands it over the child's standard input and reads
// its answers on the child's standard output, one JSON object a line: the
// first line the parent writes is the ShardConfig; then each request
// carries an ID and gets exactly one reply with that ID, in order. The
// child answers "ready" (ID 0) once its devices are made and started; it
// stops its devices and exits on a "stop" request or when its standard
// input closes.

// ShardConfig is what a shard runs: devices FirstIndex to
// FirstIndex+Devices-1 of the fleet Seed makes.
type ShardConfig struct {
	FirstIndex int    `json:"first_index"`
	Devices    int    `json:"devices"`
	Seed       []byte `json:"seed"`
	// Broker, ServerName, FleetCA, UpdateServer and TopicPrefix are
	// swarm.Config's.
	Broker       string `json:"broker"`
	ServerName   string `json:"server_name"`
	FleetCA      string `json:"fleet_ca"`
	UpdateServer string `json:"update_server"`
	TopicPrefix  string `json:"topic_prefix,omitempty"`
	// BootstrapBroker is the broker the devices enroll through ("": the
	// device broker's bootstrap listener), a pool's bootstrap broker.
	BootstrapBroker string `json:"bootstrap_broker,omitempty"`
	// EKCADir is the simulated manufacturer's CA directory
	// (softtpm.OpenCA), which the fleet trusts as an ek_ca_dir.
	EKCADir string `json:"ek_ca_dir"`
	// Dir holds the devices' download directories.
	Dir string `json:"dir"`
	// Rate is the devices started per second (0: all at once), PerSource
	// the devices per loopback source address.
	Rate      float64 `json:"rate"`
	PerSource int     `json:"per_source"`
	// AttestInterval, TelemetryInterval, RetryMin and RetryMax are the
	// agents' schedules (0: the agent's default).
	AttestInterval    Duration `json:"attest_interval"`
	TelemetryInterval Duration `json:"telemetry_interval"`
	RetryMin          Duration `json:"retry_min"`
	RetryMax          Duration `json:"retry_max"`
}

// Duration is a time.Duration that reads and writes as "1m30s" in JSON.
type Duration time.Duration

// MarshalText writes d as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads what time.ParseDuration accepts.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("fleetbench: duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// Shard operations.
const (
	opReady   = "ready"   // the child's first line: devices made and started
	opSummary = "summary" // counts over the shard's devices
	opIDs     = "ids"     // device IDs by index
	opMark    = "mark"    // remember each device's state now, for "since"
	opSince   = "since"   // counts against the mark
	opTamper  = "tamper"  // extend a PCR of one device's TPM
	opDevice  = "device"  // one device's outcome
	opStop    = "stop"    // stop the devices; a final summary
)

// shardRequest is one request to a shard.
type shardRequest struct {
	ID    int64  `json:"id"`
	Op    string `json:"op"`
	Index int    `json:"index,omitempty"` // tamper, device: the device's fleet-wide index
	// Times asks a summary for every active device's time to active.
	Times bool `json:"times,omitempty"`
	// Outbox asks a summary for the devices' telemetry outbox totals.
	Outbox bool `json:"outbox,omitempty"`
}

// shardReply is a shard's answer; the field its request asked for is set.
type shardReply struct {
	ID      int64         `json:"id"`
	Op      string        `json:"op"`
	Error   string        `json:"error,omitempty"`
	At      time.Time     `json:"at"`
	Summary *ShardSummary `json:"summary,omitempty"`
	IDs     []string      `json:"ids,omitempty"`
	Since   *SinceCounts  `json:"since,omitempty"`
	Device  *DeviceState  `json:"device,omitempty"`
}

// ShardSummary adds a shard's devices up (swarm.Summarize).
type ShardSummary struct {
	Devices   int `json:"devices"`
	Started   int `json:"started"`
	Active    int `json:"active"`
	Connected int `json:"connected"`
	Exited    int `json:"exited"`
	// FirstStart and LastActive bound the devices' coming up.
	FirstStart time.Time `json:"first_start,omitzero"`
	LastActive time.Time `json:"last_active,omitzero"`
	// Sent and Received are the messages by wire type.
	Sent     map[string]uint64 `json:"sent"`
	Received map[string]uint64 `json:"received"`
	// Unacknowledged are the publishes without PUBACK, by wire type
	// (swarm.Outcome.Unacknowledged).
	Unacknowledged map[string]uint64 `json:"unacknowledged,omitempty"`
	// TelemetryPoints, Unjudged, Dials, Disconnects and Warnings are
	// summed over the devices (swarm.Outcome).
	TelemetryPoints uint64 `json:"telemetry_points"`
	Unjudged        uint64 `json:"unjudged"`
	Dials           uint64 `json:"dials"`
	Disconnects     uint64 `json:"disconnects"`
	Warnings        uint64 `json:"warnings"`
	// LastWarnings are a few of the devices' last warnings, for a report
	// that explains what went wrong.
	LastWarnings []string `json:"last_warnings,omitempty"`
	// TimesToActive are the active devices' times from start to their
	// first mTLS session, in milliseconds (with Times).
	TimesToActive []float64 `json:"times_to_active_ms,omitempty"`
	// Outbox is the telemetry outboxes' bookkeeping (with Outbox).
	Outbox *OutboxTotals `json:"outbox,omitempty"`
}

// OutboxTotals are the devices' telemetry outboxes added up.
type OutboxTotals struct {
	// Appended is every point appended; Acked those the fleet
	// acknowledged; Dropped those the outbox dropped at its bound; Pending
	// those held.
	Appended uint64 `json:"appended"`
	Acked    uint64 `json:"acked"`
	Dropped  uint64 `json:"dropped"`
	Pending  uint64 `json:"pending"`
}

// SinceCounts are a shard's devices against the last mark.
type SinceCounts struct {
	Mark time.Time `json:"mark"`
	// Connected counts the devices connected now; NewCert those connected
	// on a certificate other than the one they held at the mark;
	// Reconnected those whose session began after the mark; Verdict those
	// that received an attestation verdict since; Reattested those
	// reconnected with a verdict since.
	Connected   int `json:"connected"`
	NewCert     int `json:"new_cert"`
	Reconnected int `json:"reconnected"`
	Verdict     int `json:"verdict"`
	Reattested  int `json:"reattested"`
	// Exited counts the agents that gave up (their Run returned an error).
	Exited int `json:"exited"`
	// Firmware counts the devices by the firmware version they run.
	Firmware map[string]int `json:"firmware"`
}

// DeviceState is one device's outcome as JSON.
type DeviceState struct {
	Index          int       `json:"index"`
	DeviceID       string    `json:"device_id"`
	Connected      bool      `json:"connected"`
	CertSerial     string    `json:"cert_serial"`
	Verdict        string    `json:"verdict"`
	Disconnects    uint64    `json:"disconnects"`
	LastDisconnect time.Time `json:"last_disconnect,omitzero"`
}

// mark is a device's state at the last mark.
type mark struct {
	serial   string
	verdicts uint64
}

// Shard runs a shard: it reads its ShardConfig and requests from in and
// writes its replies to out until a stop request, the end of in, or ctx.
func Shard(ctx context.Context, in io.Reader, out io.Writer, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dec := json.NewDecoder(bufio.NewReader(in))
	var cfg ShardConfig
	if err := dec.Decode(&cfg); err != nil {
		return fmt.Errorf("fleetbench: shard configuration: %w", err)
	}
	ca, err := softtpm.OpenCA(cfg.EKCADir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	s, err := swarm.New(swarm.Config{
		Devices: cfg.Devices, FirstIndex: cfg.FirstIndex, Seed: cfg.Seed,
		Broker: cfg.Broker, ServerName: cfg.ServerName, FleetCA: cfg.FleetCA, UpdateServer: cfg.UpdateServer, TopicPrefix: cfg.TopicPrefix,
		CA: ca, Dir: cfg.Dir, Rate: cfg.Rate, PerSource: cfg.PerSource,
		AttestInterval: time.Duration(cfg.AttestInterval), TelemetryInterval: time.Duration(cfg.TelemetryInterval),
		RetryMin: time.Duration(cfg.RetryMin), RetryMax: time.Duration(cfg.RetryMax), Logger: log,
		Tweak: func(_ int, c *agent.Config) { c.LogLevel, c.BootstrapBroker = "error", cfg.BootstrapBroker },
	})
	if err != nil {
		return err
	}
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	enc := json.NewEncoder(out)
	if err := enc.Encode(shardReply{ID: 0, Op: opReady, At: time.Now()}); err != nil {
		return err
	}
	sh := &shard{swarm: s, marks: make([]mark, cfg.Devices)}
	reqs := make(chan shardRequest)
	go func() {
		defer close(reqs)
		for {
			var r shardRequest
			if err := dec.Decode(&r); err != nil {
				return // the parent went away: stop
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var r shardRequest
		var ok bool
		select {
		case r, ok = <-reqs:
		case <-ctx.Done():
		}
		if !ok || r.Op == opStop {
			cancel()
			<-ran
			if ok {
				sum := sh.summary(true, true)
				return enc.Encode(shardReply{ID: r.ID, Op: opStop, At: time.Now(), Summary: &sum})
			}
			return nil
		}
		if err := enc.Encode(sh.handle(r)); err != nil {
			cancel()
			<-ran
			return err
		}
	}
}

// shard is a running shard's devices and marks.
type shard struct {
	swarm   *swarm.Swarm
	mu      sync.Mutex
	marks   []mark
	markAt  time.Time
	tampers int
}

func (sh *shard) handle(r shardRequest) shardReply {
	rep := shardReply{ID: r.ID, Op: r.Op, At: time.Now()}
	switch r.Op {
	case opSummary:
		sum := sh.summary(r.Times, r.Outbox)
		rep.Summary = &sum
	case opIDs:
		for _, d := range sh.swarm.Devices() {
			rep.IDs = append(rep.IDs, d.Outcome().DeviceID)
		}
	case opMark:
		sh.mark()
	case opSince:
		rep.Since = sh.since()
	case opTamper, opDevice:
		d := sh.device(r.Index)
		if d == nil {
			rep.Error = fmt.Sprintf("no device %d in this shard", r.Index)
			break
		}
		if r.Op == opTamper {
			sh.tampers++
			digest := make([]byte, 32)
			copy(digest, fmt.Sprintf("tampered %d/%d", r.Index, sh.tampers))
			if err := d.TPM().ExtendPCR(9, digest); err != nil {
				rep.Error = err.Error()
				break
			}
			rep.At = time.Now()
		}
		o := d.Outcome()
		rep.Device = &DeviceState{Index: o.Index, DeviceID: o.DeviceID, Connected: o.Connected, CertSerial: o.CertSerial,
			Verdict: o.Verdict, Disconnects: o.Disconnects, LastDisconnect: o.LastDisconnect}
	default:
		rep.Error = fmt.Sprintf("unknown operation %q", r.Op)
	}
	return rep
}

func (sh *shard) device(index int) *swarm.Device {
	devs := sh.swarm.Devices()
	if len(devs) == 0 {
		return nil
	}
	i := index - devs[0].Index
	if i < 0 || i >= len(devs) {
		return nil
	}
	return devs[i]
}

// maxWarnings is how many devices' last warnings a summary carries.
const maxWarnings = 5

func (sh *shard) summary(times, outbox bool) ShardSummary {
	outcomes := sh.swarm.Outcomes()
	s := swarm.Summarize(outcomes)
	out := ShardSummary{Devices: s.Devices, Started: s.Started, Active: s.Active, Connected: s.Connected, Exited: s.Exited,
		Sent: s.Sent, Received: s.Received, Unacknowledged: s.Unacknowledged, TelemetryPoints: s.TelemetryPoints, Unjudged: s.Unjudged, Dials: s.Dials,
		Disconnects: s.Disconnects, Warnings: s.Warnings}
	for _, o := range outcomes {
		if !o.Started.IsZero() && (out.FirstStart.IsZero() || o.Started.Before(out.FirstStart)) {
			out.FirstStart = o.Started
		}
		if o.Active.After(out.LastActive) {
			out.LastActive = o.Active
		}
		if times && !o.Active.IsZero() {
			out.TimesToActive = append(out.TimesToActive, float64(o.TimeToActive)/float64(time.Millisecond))
		}
		if o.LastWarning != "" && len(out.LastWarnings) < maxWarnings {
			out.LastWarnings = append(out.LastWarnings, fmt.Sprintf("device %d: %s", o.Index, o.LastWarning))
		}
	}
	if outbox {
		var t OutboxTotals
		for _, d := range sh.swarm.Devices() {
			st, err := d.Outbox()
			if err != nil || st.Next == 0 {
				continue
			}
			t.Appended += st.Next - 1
			t.Acked += st.Acked
			t.Dropped += st.Dropped
			t.Pending += uint64(st.Points)
		}
		out.Outbox = &t
	}
	return out
}

func (sh *shard) mark() {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.markAt = time.Now()
	for i, d := range sh.swarm.Devices() {
		o := d.Outcome()
		sh.marks[i] = mark{serial: o.CertSerial, verdicts: o.Received[wire.TypeAttestVerdict]}
	}
}

func (sh *shard) since() *SinceCounts {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := &SinceCounts{Mark: sh.markAt, Firmware: map[string]int{}}
	for i, d := range sh.swarm.Devices() {
		o := d.Outcome()
		st := d.Status()
		m := sh.marks[i]
		if o.Exited != nil {
			c.Exited++
		}
		c.Firmware[o.Firmware]++
		verdict := o.Received[wire.TypeAttestVerdict] > m.verdicts
		if verdict {
			c.Verdict++
		}
		if !o.Connected {
			continue
		}
		c.Connected++
		if o.CertSerial != m.serial {
			c.NewCert++
		}
		if st.ConnectedAt.After(sh.markAt) {
			c.Reconnected++
			if verdict {
				c.Reattested++
			}
		}
	}
	return c
}

// shardProc is the parent's handle on a shard child.
type shardProc struct {
	cfg   ShardConfig
	cmd   *exec.Cmd
	in    io.WriteCloser
	dec   *json.Decoder
	mu    sync.Mutex
	next  int64
	ready time.Time
	done  chan struct{} // closed when the child exited
}

// startShard starts a shard child from cmd and sends it cfg; its stderr
// goes to logPath.
func startShard(cmd *exec.Cmd, cfg ShardConfig, logPath string) (*shardProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: shard log: %w", err)
	}
	cmd.Stderr = logf
	in, err := cmd.StdinPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("fleetbench: start shard: %w", err)
	}
	p := &shardProc{cfg: cfg, cmd: cmd, in: in, dec: json.NewDecoder(bufio.NewReader(out)), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	if err := json.NewEncoder(in).Encode(cfg); err != nil {
		p.kill()
		return nil, fmt.Errorf("fleetbench: shard configuration: %w", err)
	}
	var rep shardReply
	if err := p.dec.Decode(&rep); err != nil || rep.Op != opReady {
		p.kill()
		return nil, fmt.Errorf("fleetbench: shard %d-%d did not start (%v; see %s)", cfg.FirstIndex, cfg.FirstIndex+cfg.Devices-1, err, logPath)
	}
	p.ready = rep.At
	return p, nil
}

// call sends a request and waits for its reply.
func (p *shardProc) call(r shardRequest) (*shardReply, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	r.ID = p.next
	if err := json.NewEncoder(p.in).Encode(r); err != nil {
		return nil, fmt.Errorf("fleetbench: shard %d: %w", p.cfg.FirstIndex, err)
	}
	var rep shardReply
	if err := p.dec.Decode(&rep); err != nil {
		return nil, fmt.Errorf("fleetbench: shard %d: %w", p.cfg.FirstIndex, err)
	}
	if rep.ID != r.ID {
		return nil, fmt.Errorf("fleetbench: shard %d answered request %d with %d", p.cfg.FirstIndex, r.ID, rep.ID)
	}
	if rep.Error != "" {
		return nil, fmt.Errorf("fleetbench: shard %d: %s", p.cfg.FirstIndex, rep.Error)
	}
	return &rep, nil
}

// holds reports whether the device of fleet-wide index i is this shard's.
func (p *shardProc) holds(i int) bool {
	return i >= p.cfg.FirstIndex && i < p.cfg.FirstIndex+p.cfg.Devices
}

// stop asks the shard to stop its devices and returns its final summary;
// a shard that does not stop within timeout is killed.
func (p *shardProc) stop(timeout time.Duration) (*ShardSummary, error) {
	type result struct {
		rep *shardReply
		err error
	}
	got := make(chan result, 1)
	go func() {
		rep, err := p.call(shardRequest{Op: opStop})
		got <- result{rep, err}
	}()
	select {
	case r := <-got:
		p.in.Close()
		select {
		case <-p.done:
		case <-time.After(timeout):
			p.kill()
		}
		if r.err != nil {
			return nil, r.err
		}
		return r.rep.Summary, nil
	case <-time.After(timeout):
		p.kill()
		return nil, errors.New("fleetbench: a shard did not stop in time")
	}
}

func (p *shardProc) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
	}
	p.in.Close()
	<-p.done
}

// shardDir is the working directory of the shard starting at first.
func shardDir(work string, first int) string {
	return filepath.Join(work, "devices", fmt.Sprintf("shard-%06d", first))
}
