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
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// DemoOptions configures Demo.
type DemoOptions struct {
	Dir      string // working directory; default a new temporary directory
	Devices  int    // default 3
	APIAddr  string // default 127.0.0.1:8443
	MQTTAddr string // default 127.0.0.1:8883
	Once     bool   // stop after the devices are active instead of serving until ctx ends
	// Tamper extends PCR 9 of the last device with tpm2_pcrextend after the
	// fleet learned its policy, and shows the quarantine that follows.
	Tamper bool
	Out    io.Writer
	Logger *slog.Logger
	// Sigil and Sigild are the paths of the sigil and sigild binaries the
	// commands the demo prints for people to try run; empty Sigil means
	// "sigil" (on PATH), empty Sigild that there is none (the demo then
	// prints no sigild command).
	Sigil, Sigild string
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
	fmt.Fprintf(o.Out, "sigil-sim demo: working directory %s\n", o.Dir)

	simulated := false
	insts, ekCADir, stopTPMs, err := demoTPMs(ctx, o)
	if err != nil {
		if o.SimulatorDevice == nil {
			return err
		}
		fmt.Fprintf(o.Out, "swtpm not found (%v): devices use the in-process TPM simulator and enroll with tokens\n", err)
		simulated, stopTPMs = true, func() {}
	}
	defer stopTPMs()

	releaseTrust, err := demoReleaseTrust(o.Dir)
	if err != nil {
		return err
	}
	siem, err := StartDemoSyslog()
	if err != nil {
		return err
	}
	defer siem.Close()
	fleet, err := StartFleet(ctx, server.Config{
		DataDir: filepath.Join(o.Dir, "fleet"), APIAddr: o.APIAddr, MQTTAddr: o.MQTTAddr, EKCADir: ekCADir, AlertSinks: siem.Sinks(),
		DeviceLifetime: config.Duration(DemoLifetime), ReleaseTrust: releaseTrust,
		// Every simulated device reports this host's listening ports, which
		// other programs open and close: the demo's new-port rule may fire
		// for many of them, and flood control would hold back the alert the
		// demo opens a port for. A demo fleet of three devices needs none.
		AlertFlood: server.AlertFlood{PerRule: -1, Fleet: -1},
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
	}
	for i, inst := range insts {
		d, err := fleet.StartDevice(ctx, DeviceConfig{
			TPM: inst.URI(), Dir: filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1)),
			Model: "demo-gateway", Firmware: "1.0.0", Serial: fmt.Sprintf("DEMO-%04d", i+1),
			Tweak: func(c *agent.Config) {
				c.AttestInterval, c.TelemetryInterval = agent.Duration(time.Minute), agent.Duration(DemoTelemetryInterval)
			},
		}, o.Logger.With("side", "device", "n", i+1))
		if err != nil {
			return err
		}
		devices = append(devices, d)
		// The device's configuration, for sigild's own commands.
		if err := writeAgentConfig(filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1), "sigild.json"), d.Config); err != nil {
			return err
		}
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
			return errors.New("sigil-sim demo: devices did not become active within 60s")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	// A device's model is the fleet's to assign (it decides which secrets
	// and policies reach the device): the administrator confirms the model
	// the devices that enrolled by their EK certificate claim.
	list, err := client.Devices(ctx, "")
	if err != nil {
		return err
	}
	for _, d := range list.Devices {
		if d.Model == "" && d.ClaimedModel != "" {
			if err := client.Do(ctx, "PATCH", "/api/v1/devices/"+d.ID, map[string]string{"model": d.ClaimedModel}, nil); err != nil {
				return fmt.Errorf("sigil-sim demo: assigning device %s its model: %w", d.ID, err)
			}
		}
	}
	if list, err = client.Devices(ctx, ""); err != nil {
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
	sh := demoShell{o: o, api: fleet.APIURL(), dataDir: fleet.Config.DataDir,
		curl: []string{"curl", "-sS", "--fail-with-body", "--cacert", fleet.CACertPath(), "-H", "Authorization: Bearer " + fleet.AdminToken()}}
	fmt.Fprintf(o.Out, "\nAPI token: %s\n  (stored in %s)\nTry:\n", fleet.AdminToken(), fleet.AdminTokenPath())
	sh.sigil("devices", "list")
	sh.try(append(sh.curl, fleet.APIURL()+"/api/v1/devices")...)
	fmt.Fprintf(o.Out, "\nConsole: %s/ — log in as %q with the password in %s\n  (the browser will ask to trust the fleet CA %s)\n",
		fleet.APIURL(), "admin", filepath.Join(fleet.Config.DataDir, server.AdminPasswordFile), fleet.CACertPath())

	if err := demoLifecycle(ctx, sh, client, list.Devices, simulated); err != nil {
		return err
	}
	if err := demoAttestation(ctx, sh, client, list.Devices, insts); err != nil {
		return err
	}
	if err := demoTelemetry(ctx, sh, client, list.Devices, siem); err != nil {
		return err
	}
	if err := demoFirmware(ctx, o, fleet, client, list.Devices); err != nil {
		return err
	}
	if o.Once {
		return nil
	}
	fmt.Fprintln(o.Out, "\nServing until interrupted (Ctrl-C).")
	<-ctx.Done()
	return nil
}

// DemoLifetime is the device certificate lifetime in the demo: short, so
// that renewals (at 2/3 of it, with a fresh attestation and a new TPM key)
// are visible while it serves.
const DemoLifetime = 2 * time.Minute

// demoLifecycle shows the credential lifecycle: a forced rotation of the
// first device (new TPM key, fresh attestation, new certificate, old one
// revoked), and a secret generated by the fleet, sealed to each device's
// EK and imported into its TPM, on a rotation schedule.
func demoLifecycle(ctx context.Context, sh demoShell, client *api.Client, devs []api.Device, simulated bool) error {
	o := sh.o
	first := devs[0]
	job, err := client.StartRotation(ctx, api.RotationRequest{Selector: rotation.Selector{DeviceIDs: []string{first.ID}}, Rate: 10, Reason: "demo"})
	if err != nil {
		return err
	}
	var renewed *api.DeviceDetail
	if err := poll(ctx, 30*time.Second, func() bool {
		d, err := client.Device(ctx, first.ID)
		if err == nil && d.CertSerial != first.CertSerial && d.Connected {
			renewed = d
			return true
		}
		return false
	}); err != nil {
		return fmt.Errorf("sigil-sim demo: forced rotation %s did not complete: %w", job.ID, err)
	}
	fmt.Fprintf(o.Out, "\nCertificate rotation (lifetime %s, renewed at 2/3 with a fresh attestation and a new TPM key):\n  forced rotation of %s: serial %s -> %s, expires %s; the old certificate is revoked\n",
		DemoLifetime, first.ID, short(first.CertSerial), short(renewed.CertSerial), renewed.CertExpiry.Format(time.TimeOnly))

	rot := &secrets.Rotation{Every: config.Duration(time.Minute), Grace: config.Duration(30 * time.Second)}
	var info secrets.Info
	if err := client.Do(ctx, "PUT", "/api/v1/secrets/demo-api-key", api.SecretRequest{Target: secrets.Target{Model: first.Model}, Rotation: rot}, &info); err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, func() bool {
		l, err := client.Secrets(ctx)
		return err == nil && len(l.Secrets) == 1 && l.Secrets[0].Delivery.Acked >= len(devs)
	}); err != nil {
		return fmt.Errorf("sigil-sim demo: secret not acknowledged by every device: %w", err)
	}
	fmt.Fprintf(o.Out, "Secret demo-api-key v%d generated by the fleet, sealed to each device's EK, imported into its TPM: acknowledged by %d/%d devices; rotates every %s (previous version valid %s more).\n",
		info.Version, len(devs), len(devs), time.Duration(rot.Every), time.Duration(rot.Grace))
	device := filepath.Join(o.Dir, "device-1", "sigild.json")
	switch {
	case o.Sigild == "":
		fmt.Fprintln(o.Out, "  On a device, sigild secret get unseals it through the TPM (build sigild, e.g. make build, to try it here).")
	case simulated:
		fmt.Fprintln(o.Out, "  On a device (its secrets; opening one needs its TPM, which the in-process simulator keeps inside the device's process):")
		sh.try(o.Sigild, "secret", "list", "--config", device)
	default:
		fmt.Fprintln(o.Out, "  On a device, unsealed through its TPM:")
		sh.try(o.Sigild, "secret", "get", "demo-api-key", "--config", device)
	}
	return nil
}

// demoShell prints the commands the demo offers to try, each on its own
// line after "  $ " and quoted for a POSIX shell, to paste while the demo
// serves. Every such line is a command that works then: the end-to-end
// test runs each one (test/e2e, TestDemoCommands).
type demoShell struct {
	o       DemoOptions
	api     string   // the API's base URL
	dataDir string   // the fleet's data directory: the admin token and CA
	curl    []string // curl with the CA and the admin token
}

// try prints a command.
func (sh demoShell) try(args ...string) {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	fmt.Fprintf(sh.o.Out, "  $ %s\n", strings.Join(q, " "))
}

// sigil prints a sigil command with the flags that find this fleet.
func (sh demoShell) sigil(args ...string) {
	bin := sh.o.Sigil
	if bin == "" {
		bin = "sigil"
	}
	sh.try(append(append([]string{bin}, args...), "--server", sh.api, "--data-dir", sh.dataDir)...)
}

// shellQuote quotes s for a POSIX shell unless it needs no quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// writeAgentConfig writes a device's sigild configuration file.
func writeAgentConfig(path string, cfg agent.Config) error {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func short(serial string) string {
	if len(serial) > 12 {
		return serial[:12] + "…"
	}
	return serial
}

// poll calls ok every 100 ms until it is true, ctx ends or the timeout.
func poll(ctx context.Context, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// demoAttestation learns the fleet's reference policy from the first device,
// shows every device passing it, and explains (or, with Tamper, performs)
// the tamper scenario on the last one.
func demoAttestation(ctx context.Context, sh demoShell, client *api.Client, devs []api.Device, insts []*swtpm.Instance) error {
	o := sh.o
	golden := devs[0].ID
	if _, err := waitVerdict(ctx, client, golden, 0, "pass"); err != nil {
		return err
	}
	pol, err := client.LearnPolicy(ctx, api.LearnRequest{DeviceID: golden, Name: "demo-gateway golden", AnyFirmware: true})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "\nReference policy %q (version %d) learned from device %s: %d PCRs expected.\n", pol.ID, pol.Version, golden, len(pol.PCRs["sha256"]))
	for _, d := range devs {
		rec, err := challengeAndWait(ctx, client, d.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "  %s attestation: %s (%s)\n", d.ID, rec.Result, rec.Message)
	}
	if len(insts) == 0 {
		return nil
	}
	// Devices are listed by ID; the serial names the TPM of the victim.
	victim, tcti := devs[len(devs)-1].ID, ""
	for i := range insts {
		if fmt.Sprintf("DEMO-%04d", i+1) == devs[len(devs)-1].Serial {
			tcti = insts[i].TCTI()
		}
	}
	extend := []string{"-T", tcti, "9:sha256=" + strings.Repeat("5a", 32)}
	if _, err := exec.LookPath("tpm2_pcrextend"); err != nil {
		fmt.Fprintf(o.Out, "\nTamper scenario: install tpm2-tools to change device %s's PCR 9 and see the fleet quarantine it.\n", victim)
		if o.Tamper {
			return fmt.Errorf("sigil-sim demo --tamper needs tpm2_pcrextend (tpm2-tools): %w", err)
		}
		return nil
	}
	fmt.Fprintf(o.Out, "\nTamper scenario — change device %s's kernel command-line measurement (PCR 9) and attest it:\n", victim)
	sh.try(append([]string{"tpm2_pcrextend"}, extend...)...)
	sh.try(append(sh.curl, "-X", "POST", sh.api+"/api/v1/devices/"+victim+"/attest")...)
	sh.try(append(sh.curl, sh.api+"/api/v1/devices/"+victim+"/attestations")...)
	fmt.Fprintln(o.Out, "(or wait up to a minute for its scheduled attestation). The fleet quarantines it: certificate revoked, session closed.")
	if !o.Tamper {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "tpm2_pcrextend", extend...).CombinedOutput(); err != nil {
		return fmt.Errorf("tpm2_pcrextend: %v: %s", err, out)
	}
	rec, err := challengeAndWait(ctx, client, victim)
	if err != nil {
		return err
	}
	dev, err := client.Device(ctx, victim)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "\nTampered: %s attestation %s (%s); action: %s; state now %s.\n", victim, rec.Result, rec.Message, rec.Action, dev.State)
	return nil
}

func challengeAndWait(ctx context.Context, client *api.Client, id string) (*attest.Record, error) {
	before, err := client.Attestations(ctx, id)
	if err != nil {
		return nil, err
	}
	var seq uint64
	if len(before.Attestations) > 0 {
		seq = before.Attestations[0].Seq
	}
	if err := client.Attest(ctx, id); err != nil {
		return nil, err
	}
	return waitVerdict(ctx, client, id, seq, "")
}

// waitVerdict waits for a verdict newer than seq (with the given result, if
// not empty).
func waitVerdict(ctx context.Context, client *api.Client, id string, seq uint64, result string) (*attest.Record, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		l, err := client.Attestations(ctx, id)
		if err == nil && len(l.Attestations) > 0 && l.Attestations[0].Seq > seq && (result == "" || l.Attestations[0].Result == result) {
			return &l.Attestations[0], nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("sigil-sim demo: no attestation verdict from %s within 30s", id)
}

// demoTPMs starts one swtpm per device with a private EK CA, and returns
// them and a directory holding the EK CA certificates for the fleet.
func demoTPMs(ctx context.Context, o DemoOptions) ([]*swtpm.Instance, string, func(), error) {
	if err := swtpm.Available(); err != nil {
		return nil, "", nil, fmt.Errorf("sigil-sim demo needs swtpm (apt-get install swtpm swtpm-tools, or run `make test` once as root): %w", err)
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
	return insts, trustDir, stop, nil
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
		tok, _, err := fleet.Inv.CreateToken(ctx, inventory.Grant{Model: "demo-gateway"}, "demo", time.Hour)
		if err != nil {
			stop()
			return nil, err
		}
		dir := filepath.Join(o.Dir, fmt.Sprintf("device-%d", i+1))
		cfg := fleet.AgentConfig(DeviceConfig{TPM: "sim://", Dir: dir, Model: "demo-gateway", Firmware: "1.0.0", Serial: fmt.Sprintf("DEMO-%04d", i+1), Token: tok})
		cfg.EventLog = "-"
		cfg.TelemetryInterval = agent.Duration(DemoTelemetryInterval)
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
