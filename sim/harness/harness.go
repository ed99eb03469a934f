// Package harness runs a fleet and simulated devices in one process: the
// demo, the end-to-end tests and the benchmarks use it. Devices are real
// sigild agents talking to real TPMs (swtpm processes, or the in-process
// simulator) over the fleet's real MQTT broker on loopback.
package harness

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/server"
)

// Fleet is a running fleet manager.
type Fleet struct {
	*server.Server
	Config server.Config
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// StartFleet starts sigil serve in-process and waits until it is ready.
// Empty listener addresses default to 127.0.0.1 with a free port.
func StartFleet(ctx context.Context, cfg server.Config, log *slog.Logger) (*Fleet, error) {
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = "127.0.0.1:0"
	}
	if cfg.APIAddr == "" {
		cfg.APIAddr = "127.0.0.1:0"
	}
	if len(cfg.Hostnames) == 0 {
		cfg.Hostnames = []string{"localhost", "127.0.0.1"}
	}
	srv, err := server.New(cfg, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &Fleet{Server: srv, Config: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { f.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		return f, nil
	case err := <-f.done:
		cancel()
		return nil, fmt.Errorf("harness: fleet stopped before ready: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		return nil, errors.New("harness: fleet not ready after 30s")
	}
}

// Stop stops the fleet and waits for it; it may be called more than once.
func (f *Fleet) Stop() error {
	f.once.Do(func() {
		f.cancel()
		f.err = <-f.done
	})
	return f.err
}

// Client returns an API client with the admin token.
func (f *Fleet) Client() (*api.Client, error) {
	pemBytes, err := os.ReadFile(f.CACertPath())
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	return api.NewClient(f.APIURL(), f.AdminToken(), roots), nil
}

// DeviceConfig describes one simulated device.
type DeviceConfig struct {
	TPM      string // swtpm://… or sim://
	Dir      string // state directory
	Model    string
	Firmware string
	Serial   string
	Token    string
	// Tweak, when set, edits the agent configuration before start.
	Tweak func(*agent.Config)
}

// Device is a running sigild agent.
type Device struct {
	*agent.Agent
	Config agent.Config
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// AgentConfig returns the agent configuration for a device of this fleet.
func (f *Fleet) AgentConfig(dc DeviceConfig) agent.Config {
	cfg := agent.Config{
		TPM: dc.TPM, State: filepath.Join(dc.Dir, "state.db"), Broker: f.MQTTAddr(), ServerName: "localhost",
		FleetCA: f.CACertPath(), Model: dc.Model, Firmware: dc.Firmware, Serial: dc.Serial, Token: dc.Token,
		RetryMin: agent.Duration(200 * time.Millisecond), RetryMax: agent.Duration(5 * time.Second),
		PendingRetry: agent.Duration(5 * time.Second), Control: filepath.Join(dc.Dir, "sigild.sock"),
		TopicPrefix: f.Config.TopicPrefix, UpdateServer: f.UpdateServer(),
	}
	if dc.Tweak != nil {
		dc.Tweak(&cfg)
	}
	return cfg
}

// StartDevice starts an agent for the device; opts are the agent's (a
// software TPM: agent.WithTPM).
func (f *Fleet) StartDevice(ctx context.Context, dc DeviceConfig, log *slog.Logger, opts ...agent.Option) (*Device, error) {
	return StartAgent(ctx, f.AgentConfig(dc), log, opts...)
}

// StartAgent starts an agent with a full configuration.
func StartAgent(ctx context.Context, cfg agent.Config, log *slog.Logger, opts ...agent.Option) (*Device, error) {
	a, err := agent.New(cfg, log, opts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	d := &Device{Agent: a, Config: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- a.Run(ctx) }()
	return d, nil
}

// Stop stops the agent and waits for it; it may be called more than once.
func (d *Device) Stop() error {
	d.once.Do(func() {
		d.cancel()
		d.err = <-d.done
	})
	return d.err
}

// Done reports the agent's exit.
func (d *Device) Done() <-chan error { return d.done }

// Wait polls the agent's status until cond holds.
func (d *Device) Wait(ctx context.Context, timeout time.Duration, cond func(agent.Status) bool) (agent.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st := d.Status()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("harness: device condition not met in %v (status %+v)", timeout, st)
		case err := <-d.done:
			d.done <- err
			return d.Status(), fmt.Errorf("harness: agent exited: %v", err)
		case <-tick.C:
		}
	}
}

// Connected is a Wait condition: enrolled and connected over mTLS.
func Connected(s agent.Status) bool { return s.Enrollment == "enrolled" && s.Connected }
