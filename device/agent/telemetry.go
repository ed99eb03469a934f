package agent

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/telemetry"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Telemetry defaults.
const (
	// DefaultTelemetryInterval is the sampling interval when
	// Config.TelemetryInterval is zero.
	DefaultTelemetryInterval = time.Minute
	// defaultAuthLog is counted for failed logins when it exists and
	// Config.TelemetryAuthLog is empty.
	defaultAuthLog = "/var/log/auth.log"
)

// errNoSession fails a telemetry publish while the device has no mTLS
// session; the sender backs off until the next connect.
var errNoSession = errors.New("agent: no session to the fleet")

// agentTelemetry is the device's telemetry: a sampler appending points to
// the durable outbox in the state store, and a sender publishing the
// outbox on the current mTLS session (telemetry.go; device/telemetry).
type agentTelemetry struct {
	sender   *telemetry.Sender
	session  atomic.Pointer[telemetrySession]
	sessions atomic.Uint64 // sessions opened since start
	started  time.Time
}

// telemetrySession is the connection the sender publishes on.
type telemetrySession struct {
	conn  publisher
	topic string
}

// startTelemetry starts the sampler and the sender, unless telemetry is
// disabled (a negative interval); the returned function stops them and
// waits. The outbox lives in the state store, so points taken while
// disconnected, and across restarts, are sent once a session is up.
func (a *Agent) startTelemetry(ctx context.Context) (stop func()) {
	if a.cfg.TelemetryInterval < 0 {
		return func() {}
	}
	interval := time.Duration(a.cfg.TelemetryInterval)
	outbox := a.st.Outbox(state.OutboxOptions{MaxPoints: a.cfg.TelemetryOutboxPoints, MaxBytes: a.cfg.TelemetryOutboxBytes, Rand: a.rand})
	t := &a.tel
	t.started = a.now()
	log := a.log.With("component", "telemetry")
	sender, err := telemetry.NewSender(telemetry.SenderConfig{
		Outbox: outbox, Publisher: telemetry.PublisherFunc(t.publish),
		// An ack takes milliseconds; one lost with its session is
		// resent after this.
		AckTimeout: min(telemetry.DefaultAckTimeout, max(5*time.Second, 2*interval)),
		MinBackoff: time.Duration(a.cfg.RetryMin), MaxBackoff: time.Duration(a.cfg.RetryMax),
		Now: a.now, Logger: log,
	})
	if err != nil {
		a.log.Error("telemetry disabled", "err", err)
		return func() {}
	}
	t.sender = sender
	sources := []telemetry.Source{telemetry.SourceFunc(a.agentSource), sender.Source()}
	if path := a.authLog(); path != "" {
		sources = append(sources, &telemetry.AuthLog{Path: path})
	}
	col, err := telemetry.NewCollector(telemetry.Config{System: a.opts.system, Sources: sources, Now: a.now, Logger: log})
	if err == nil {
		var sampler *telemetry.Sampler
		sampler, err = telemetry.NewSampler(telemetry.SamplerConfig{Collect: col.Collect, Outbox: outbox, Interval: interval, Appended: sender.Kick, Logger: log})
		if err == nil {
			ctx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Go(func() { _ = sampler.Run(ctx) })
			wg.Go(func() { _ = sender.Run(ctx) })
			return func() { cancel(); wg.Wait() }
		}
	}
	a.log.Error("telemetry disabled", "err", err)
	return func() {}
}

// authLog is the log file whose failed logins are counted, or "".
func (a *Agent) authLog() string {
	switch a.cfg.TelemetryAuthLog {
	case "-":
		return ""
	case "":
		if _, err := os.Stat(defaultAuthLog); err != nil {
			return ""
		}
		return defaultAuthLog
	}
	return a.cfg.TelemetryAuthLog
}

// setTelemetrySession tells the sender about the session it publishes on
// (nil when it ended); a new session ends the sender's backoff.
func (a *Agent) setTelemetrySession(conn publisher, deviceID string) {
	t := &a.tel
	if conn == nil {
		t.session.Store(nil)
		return
	}
	t.sessions.Add(1)
	t.session.Store(&telemetrySession{conn: conn, topic: a.topics.DeviceUp(deviceID, wire.KindTelemetry)})
	if t.sender != nil {
		t.sender.Retry()
	}
}

// publish sends a batch on the current session with QoS 1.
func (t *agentTelemetry) publish(ctx context.Context, payload []byte) error {
	s := t.session.Load()
	if s == nil {
		return errNoSession
	}
	return s.conn.Publish(ctx, s.topic, payload)
}

// telemetryAck hands the fleet's telemetry.ack to the sender.
func (a *Agent) telemetryAck(env *wire.Envelope) {
	if a.tel.sender == nil {
		return
	}
	if err := a.tel.sender.HandleAck(env); err != nil {
		a.log.Warn("dropping malformed telemetry ack", "err", err)
	}
}

// agentSource adds what only the daemon knows to each point:
//
//	tpm.ok                  1 when the TPM answers a PCR read, else 0
//	cert.expiry_seconds     seconds until the mTLS certificate expires
//	sigild.connected        1 while a session to the fleet is up
//	sigild.sessions         sessions opened since the daemon started
//	sigild.uptime_seconds   seconds since the daemon started
//	update.state (info)     the firmware update's phase, when one was ever started
func (a *Agent) agentSource(_ context.Context, p *wire.TelemetryPoint) error {
	ok := 0.0
	if _, err := a.tpm.ReadPCRs(wire.PCRSelection{Hash: uint16(tpm.PCRBank), PCRs: []int{0}}); err == nil {
		ok = 1
	}
	p.SetMetric("tpm.ok", ok)
	now := a.now()
	st := a.Status()
	if !st.CertExpiry.IsZero() {
		p.SetMetric("cert.expiry_seconds", st.CertExpiry.Sub(now).Seconds())
	}
	connected := 0.0
	if a.tel.session.Load() != nil {
		connected = 1
	}
	p.SetMetric("sigild.connected", connected)
	p.SetMetric("sigild.sessions", float64(a.tel.sessions.Load()))
	p.SetMetric("sigild.uptime_seconds", now.Sub(a.tel.started).Seconds())
	if u, err := a.st.Update(); err == nil && u.Phase != "" {
		p.SetInfo("update.state", u.Phase)
	}
	return nil
}
