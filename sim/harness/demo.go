package harness

import (
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
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// DemoOptions configures Demo.
type DemoOptions struct {
	Dir      string // working directory; default a new temporary directory
	Devices  int    // default 3
	APIAddr  string // default 127.0.0.1:8443
	MQTTAddr string // default 127.0.0.1:8883
	Once     bool   // stop after the devices are active instead of serving until ctx ends
	Out      io.Writer
	Logger   *slog.Logger
	// SimulatorDevice, when swtpm is not installed, returns the command
	// that runs one device with the in-process TPM simulator from the
	// given sigild configuration file (one simulator per process). Nil
	// means swtpm is required.
	SimulatorDevice func(configPath string) *exec.Cmd
}

// Demo runs the main job on embedded defaults: a fleet with its embedded
// broker, CA and inventory, and simulated devices with their own TPMs that
// enroll by their EK certificates. It prints the API URL and the admin token.
func Demo(ctx context.Context, o DemoOptions) error {
	if o.Devices == 0 {
		o.Devices = 3
	}
	if o.APIAddr == "" {
		o.APIAddr = "127.0.0.1:8443"
	}
	if o.MQTTAddr == "" {
		o.MQTTAddr = "127.0.0.1:8883"
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "sigil-demo-")
		if err != nil {
			return err
		}
		o.Dir = d
	}
	start := time.Now()
	fmt.Fprintf(o.Out, "sigil demo: working directory %s\n", o.Dir)

	simulated := false
	tpms, ekCADir, stopTPMs, err := demoTPMs(ctx, o)
	if err != nil {
		if o.SimulatorDevice == nil {
			return err
		}
		fmt.Fprintf(o.Out, "swtpm not found (%v): devices use the in-process TPM simulator and enroll with tokens\n", err)
		simulated, stopTPMs = true, func() {}
	}
	defer stopTPMs()

	fleet, err := StartFleet(ctx, server.Config{
		DataDir: filepath.Join(o.Dir, "fleet"), APIAddr: o.APIAddr, MQTTAddr: o.MQTTAddr, EKCADir: ekCADir,
	}, o.Logger.With("side", "fleet"))
	if err != nil {
		return err
	}
	defer fleet.Stop()
	fmt.Fprintf(o.Out, "fleet: API %s, MQTT %s (embedded broker), CA %s\n", fleet.APIURL(), fleet.MQTTAddr(), fleet.CACertPath())

	var devices []*Device
	defer func() {
		for _, d := range devices {
			d.Stop()
		}
	}()
	if simulated {
		stop, err := startSimulatedDevices(ctx, fleet, o)
		if err != nil {
			return err
		}
		defer stop()
		tpms = nil
	}
	for i, uri := range tpms {
		d, err := fleet.StartDevice(ctx, DeviceConfig{
			TPM: uri, Dir: filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1)),
			Model: "demo-gateway", Firmware: "1.0.0", Serial: fmt.Sprintf("DEMO-%04d", i+1),
		}, o.Logger.With("side", "device", "n", i+1))
		if err != nil {
			return err
		}
		devices = append(devices, d)
	}
	client, err := fleet.Client()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := client.Devices(ctx, "active")
		if err == nil && len(list.Devices) >= o.Devices {
			connected := 0
			for _, d := range list.Devices {
				if d.Connected {
					connected++
				}
			}
			if connected >= o.Devices {
				break
			}
		}
		if time.Now().After(deadline) {
			return errors.New("sigil demo: devices did not become active within 60s")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	list, err := client.Devices(ctx, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "\n%d devices active and connected over TPM-backed mTLS after %.1fs (GET %s/api/v1/devices):\n\n",
		len(list.Devices), time.Since(start).Seconds(), fleet.APIURL())
	tw := tabwriter.NewWriter(o.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE ID\tSTATE\tMODEL\tSERIAL\tTRUST PATH\tCERT EXPIRY\tCONNECTED")
	for _, d := range list.Devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", d.ID, d.State, d.Model, d.Serial, d.TrustPath, d.CertExpiry.Format(time.RFC3339), d.Connected)
	}
	tw.Flush()
	fmt.Fprintf(o.Out, "\nAPI token: %s\n  (stored in %s)\nTry:\n  curl --cacert %s -H 'Authorization: Bearer %s' %s/api/v1/devices\n",
		fleet.AdminToken(), fleet.AdminTokenPath(), fleet.CACertPath(), fleet.AdminToken(), fleet.APIURL())
	if o.Once {
		return nil
	}
	fmt.Fprintln(o.Out, "\nServing until interrupted (Ctrl-C).")
	<-ctx.Done()
	return nil
}

// demoTPMs starts one swtpm per device with a private EK CA, and returns
// their URIs and a directory holding the EK CA certificates for the fleet.
func demoTPMs(ctx context.Context, o DemoOptions) ([]string, string, func(), error) {
	if err := swtpm.Available(); err != nil {
		return nil, "", nil, fmt.Errorf("sigil demo needs swtpm (apt-get install swtpm swtpm-tools, or run `make test` once as root): %w", err)
	}
	ca, err := swtpm.NewCA(filepath.Join(o.Dir, "tpm-vendor-ca"))
	if err != nil {
		return nil, "", nil, err
	}
	insts := make([]*swtpm.Instance, o.Devices)
	errs := make([]error, o.Devices)
	var wg sync.WaitGroup
	for i := range insts {
		wg.Go(func() {
			insts[i], errs[i] = swtpm.Start(ctx, swtpm.Options{StateDir: filepath.Join(o.Dir, fmt.Sprintf("tpm-%d", i+1)), CA: ca, Logger: o.Logger})
		})
	}
	wg.Wait()
	stop := func() {
		for _, in := range insts {
			if in != nil {
				in.Stop()
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		stop()
		return nil, "", nil, err
	}
	trustDir := filepath.Join(o.Dir, "ek-ca")
	if err := os.MkdirAll(trustDir, 0o755); err != nil {
		stop()
		return nil, "", nil, err
	}
	for name, read := range map[string]func() ([]byte, error){"root.pem": ca.RootCertPEM, "intermediate.pem": ca.IntermediateCertPEM} {
		b, err := read()
		if err == nil {
			err = os.WriteFile(filepath.Join(trustDir, name), b, 0o644)
		}
		if err != nil {
			stop()
			return nil, "", nil, err
		}
	}
	uris := make([]string, len(insts))
	for i, in := range insts {
		uris[i] = in.URI()
	}
	return uris, trustDir, stop, nil
}

// startSimulatedDevices runs each device as its own process with the
// in-process simulator (it holds one TPM per process), enrolling by token.
func startSimulatedDevices(ctx context.Context, fleet *Fleet, o DemoOptions) (func(), error) {
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = c.Process.Signal(os.Interrupt)
			_ = c.Wait()
		}
	}
	for i := range o.Devices {
		tok, _, err := fleet.Inv.CreateToken("demo-gateway", "demo", time.Hour)
		if err != nil {
			stop()
			return nil, err
		}
		dir := filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1))
		cfg := fleet.AgentConfig(DeviceConfig{TPM: "sim://", Dir: dir, Model: "demo-gateway", Firmware: "1.0.0", Serial: fmt.Sprintf("DEMO-%04d", i+1), Token: tok})
		cfg.EventLog = "-"
		b, err := json.MarshalIndent(cfg, "", "  ")
		if err == nil {
			err = os.MkdirAll(dir, 0o700)
		}
		path := filepath.Join(dir, "sigild.json")
		if err == nil {
			err = os.WriteFile(path, b, 0o600)
		}
		if err != nil {
			stop()
			return nil, err
		}
		c := o.SimulatorDevice(path)
		if err := c.Start(); err != nil {
			stop()
			return nil, err
		}
		cmds = append(cmds, c)
	}
	return stop, nil
}
