package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Firmware updates (docs/PROTOCOL.md, "Firmware updates"): the fleet
// announces a release on down "fw"; the update engine (device/update)
// checks it against the release trust set the device holds, downloads the
// image from update_server with the device's mTLS identity, installs it
// through the configured backend and reports each phase on up "fw". The
// engine runs for the daemon's whole life, connected or not: an update
// under way when the daemon stopped is finished (or rolled back) at the
// next start, and its final report is sent once a session is up.

// fwInboxSize bounds the firmware messages waiting for the worker.
const fwInboxSize = 8

// updateStallTimeout fails an image download whose connection stops
// making progress.
const updateStallTimeout = time.Minute

// errNoFirmwareLink is a report attempted while the device has no session.
var errNoFirmwareLink = errors.New("agent: no session with the fleet")

// firmwareState is the agent's part of firmware updates.
type firmwareState struct {
	inbox chan *wire.Envelope // firmware.announce and firmware.trust, for the worker

	mu      sync.Mutex
	engine  *update.Engine // nil when updates are off
	why     string         // why updates are off
	conn    publisher      // the current session, for reports
	device  string
	running string // version of the running image
}

// setFirmwareLink gives the firmware worker the session just connected.
func (a *Agent) setFirmwareLink(conn publisher, deviceID string) {
	a.fw.mu.Lock()
	a.fw.conn, a.fw.device = conn, deviceID
	a.fw.mu.Unlock()
}

// runningFirmware is the version the device runs: the booted slot's, as
// the update engine knows it, else the configured firmware.
func (a *Agent) runningFirmware() string {
	a.fw.mu.Lock()
	defer a.fw.mu.Unlock()
	if a.fw.running != "" {
		return a.fw.running
	}
	return a.cfg.Firmware
}

// queueFirmware hands a firmware message to the worker without blocking
// the session's reader.
func (a *Agent) queueFirmware(env *wire.Envelope) {
	select {
	case a.fw.inbox <- env:
	default:
		a.log.Warn("firmware messages arrive faster than they are handled; one dropped (the fleet repeats it at the next hello)", "type", env.Type)
	}
}

// startUpdates builds the update engine (unless update_backend is "-" or
// its backend cannot be opened: then announcements are answered with a
// failure) and runs it and the firmware worker until stop is called.
func (a *Agent) startUpdates(ctx context.Context) (stop func()) {
	if a.fw.inbox == nil {
		a.fw.inbox = make(chan *wire.Envelope, fwInboxSize)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	e, err := a.newUpdateEngine()
	switch {
	case err != nil:
		a.log.Error("firmware updates off: the update engine could not start", "err", err)
		a.fw.why = "firmware updates are not available on this device"
	case e == nil:
		a.fw.why = "firmware updates are turned off on this device"
	default:
		a.fw.engine = e
		if st, err := e.Status(ctx); err == nil {
			a.setRunning(st.Version)
		}
		wg.Go(func() {
			if err := e.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("update engine stopped", "err", err)
			}
		})
	}
	wg.Go(func() { a.firmwareLoop(ctx) })
	return func() {
		cancel()
		wg.Wait()
	}
}

func (a *Agent) setRunning(v string) {
	a.fw.mu.Lock()
	a.fw.running = v
	a.fw.mu.Unlock()
	if v == "" {
		v = a.cfg.Firmware
	}
	a.setStatus(func(s *Status) { s.Firmware = v })
}

// newUpdateEngine builds the engine from the configuration; nil, nil when
// updates are off.
func (a *Agent) newUpdateEngine() (*update.Engine, error) {
	backend, err := a.updateBackend()
	if backend == nil || err != nil {
		return nil, err
	}
	return update.New(update.Config{
		Store: a.st, Backend: backend, Verifier: update.VerifierFunc(a.verifyRelease), Counter: a.tpm,
		Dir: a.cfg.UpdateDir, Version: a.cfg.Firmware, Measurer: a.tpm,
		Reporter: update.ReporterFunc(a.reportUpdate), Fetcher: a.imageFetcher(),
		Log: a.log.With("component", "update"), Now: a.now,
	})
}

// updateBackend opens the configured slot backend; nil, nil when updates
// are off.
func (a *Agent) updateBackend() (update.Backend, error) {
	if a.opts.backend != nil {
		return a.opts.backend, nil
	}
	b := a.cfg.UpdateBackend
	switch {
	case b == "-":
		return nil, nil
	case strings.HasPrefix(b, "file:"):
		fc := update.FileConfig{Dir: strings.TrimPrefix(b, "file:")}
		if prog := a.cfg.UpdateHealth; prog != "" {
			fc.Health = func(ctx context.Context, slot, image string) error {
				return runHealth(ctx, prog, slot, image)
			}
		}
		return update.NewFile(fc)
	case strings.HasPrefix(b, "hook:"):
		return update.NewHook(update.HookConfig{Path: strings.TrimPrefix(b, "hook:"), SlotDevices: a.cfg.UpdateSlotDevices})
	}
	return nil, fmt.Errorf("agent: update_backend %q is neither file:DIR nor hook:PATH", b)
}

// runHealth runs the file backend's health program as PROG SLOT IMAGE;
// exit status 0 is healthy. It starts the program in its own process
// group with os.StartProcess rather than os/exec (about 14 KB of code in
// sigild), and kills the group when ctx ends or after two minutes.
func runHealth(ctx context.Context, prog, slot, image string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("agent: health check: %w", err)
	}
	p, err := os.StartProcess(prog, []string{prog, slot, image}, &os.ProcAttr{Env: os.Environ(), Files: []*os.File{nil, w, w},
		Sys: &syscall.SysProcAttr{Setpgid: true}})
	w.Close()
	if err != nil {
		r.Close()
		return fmt.Errorf("agent: health check: %w", err)
	}
	stop := context.AfterFunc(ctx, func() {
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL) // its process group: the program and its children
		_ = r.Close()
	})
	defer stop()
	out := make([]byte, 200)
	n, _ := io.ReadFull(r, out)
	_, _ = io.Copy(io.Discard, r) // until the program (and its children) close the pipe
	r.Close()
	st, err := p.Wait()
	if err == nil && !st.Success() {
		err = errors.New(st.String())
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("agent: health check %s: %w: %s", filepath.Base(prog), err, strings.TrimSpace(string(out[:n])))
	}
	return nil
}

// verifyRelease is the engine's Verifier: the manifest must be signed by
// the threshold of the release trust set the device holds, not expired by
// the device's clock, built for the device's model, and not below the TPM
// anti-rollback counter.
func (a *Agent) verifyRelease(raw, packed []byte) (*update.Release, error) {
	var bundles [][]byte
	if err := wire.Unmarshal(packed, &bundles); err != nil {
		return nil, wire.Refuse(wire.ReasonFirmwareSignature, "malformed signature bundles", fmt.Errorf("agent: %w", err))
	}
	trust, err := a.releaseTrust()
	if err != nil {
		return nil, wire.Refuse(wire.ReasonFirmwareSignature, "the device holds no release trust set", err)
	}
	v, err := verify.Release(raw, bundles, trust, a.now(), a.cfg.Model)
	if err != nil {
		return nil, err
	}
	// The anti-rollback floor (the TPM counter) is the engine's check,
	// made right after this one.
	m := v.Manifest
	rel := &update.Release{Name: m.Name, Version: m.Version, SecurityVersion: m.SecurityVersion,
		Size: m.Size, SHA256: bytes.Clone(m.SHA256[:])}
	if m.Blocks != nil {
		rel.BlockSize, rel.IndexSHA256 = m.Blocks.BlockSize, bytes.Clone(m.Blocks.SHA256[:])
	}
	return rel, nil
}

// releaseTrust returns the release trust set the device holds.
func (a *Agent) releaseTrust() (*verify.TrustSet, error) {
	b, err := a.st.ReleaseTrust()
	if err != nil {
		return nil, err
	}
	return verify.ParseTrustSet(b)
}

// adoptReleaseTrust takes the fleet's release trust, from an enrollment
// result or a firmware.trust message (from says which): the fleet's
// current set and the signed rotations that lead to it.
//
// A device without a set takes the fleet's as it is: trust on first
// enrollment, the one time it has nothing to check it against (it came
// over the bootstrap session to the fleet the device verified with
// fleet_ca, or over its mTLS session). A device that holds a set never
// takes the fleet's as it is, whatever its sequence number: it applies the
// rotations above its own sequence, in order, each verified by
// verify.Rotate (signed by the current threshold of the keys it holds and
// the new threshold of the new keys, and numbered exactly one above), and
// stops at the first that does not verify. So whoever answers an
// enrollment cannot choose the keys that sign firmware, and no sequence
// number can block later rotations.
func (a *Agent) adoptReleaseTrust(trust []byte, rotations []wire.TrustRotation, from string) {
	cur, err := a.releaseTrust()
	if errors.Is(err, state.ErrNoReleaseTrust) {
		a.firstReleaseTrust(trust, from)
		return
	}
	if err != nil {
		a.log.Error("release trust set unreadable; keeping it", "from", from, "err", err)
		return
	}
	start := cur
	for i, r := range rotations {
		next, err := verify.Rotate(cur, r.Statement, r.Bundles)
		if errors.Is(err, verify.ErrStale) {
			continue
		}
		if err != nil {
			a.log.Warn("release trust rotation refused", "from", from, "rotation", i, "sequence", cur.Sequence(), "err", err)
			break
		}
		cur = next
	}
	if cur != start {
		raw, err := cur.Marshal()
		if err == nil {
			err = a.st.SaveReleaseTrust(raw)
		}
		if err != nil {
			a.log.Error("rotated release trust set not stored", "from", from, "err", err)
			return
		}
		a.log.Info("release trust set rotated", "from", from, "sequence_from", start.Sequence(), "sequence", cur.Sequence(),
			"threshold", cur.Threshold(), "keys", len(cur.KeyIDs()))
	}
	if len(trust) == 0 {
		return
	}
	if held, err := cur.Marshal(); err == nil && !bytes.Equal(held, trust) {
		a.log.Warn("the fleet's release trust set is not reached by the rotations it sent; keeping the device's",
			"from", from, "sequence", cur.Sequence())
	}
}

// firstReleaseTrust stores the fleet's set on a device that holds none.
func (a *Agent) firstReleaseTrust(raw []byte, from string) {
	if len(raw) == 0 {
		return
	}
	next, err := verify.ParseTrustSet(raw)
	if err != nil {
		a.log.Warn("the fleet's release trust set is unusable; the device holds none", "from", from, "err", err)
		return
	}
	if err := a.st.SaveReleaseTrust(raw); err != nil {
		a.log.Error("release trust set not stored", "from", from, "err", err)
		return
	}
	a.log.Info("release trust set stored (first one)", "from", from, "sequence", next.Sequence(), "threshold", next.Threshold(),
		"keys", len(next.KeyIDs()))
}

// applyTrust takes a firmware.trust message (see adoptReleaseTrust).
func (a *Agent) applyTrust(ft *wire.FirmwareTrust) {
	a.adoptReleaseTrust(ft.Trust, ft.Rotations, "firmware.trust")
}

// firmwareLoop handles firmware messages until ctx ends.
func (a *Agent) firmwareLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case env := <-a.fw.inbox:
			switch env.Type {
			case wire.TypeFirmwareTrust:
				var ft wire.FirmwareTrust
				if err := wire.DecodeBody(env, wire.TypeFirmwareTrust, &ft); err != nil {
					a.log.Warn("dropping malformed release trust", "err", err)
					continue
				}
				a.applyTrust(&ft)
			case wire.TypeFirmwareAnnounce:
				var fa wire.FirmwareAnnounce
				if err := wire.DecodeBody(env, wire.TypeFirmwareAnnounce, &fa); err != nil {
					a.log.Warn("dropping malformed firmware announcement", "err", err)
					continue
				}
				a.announce(ctx, &fa)
			}
		}
	}
}

// announce hands an announcement to the engine. One it cannot take (no
// engine, another update in progress) is reported failed at once, so the
// campaign counts the device instead of waiting for its timeout.
func (a *Agent) announce(ctx context.Context, fa *wire.FirmwareAnnounce) {
	e, why := a.fw.engine, a.fw.why
	if e != nil {
		err := e.Announce(update.Announcement{ID: fa.Update, Manifest: fa.Manifest, Bundle: packBundles(fa.Bundles),
			URL: "https://" + a.cfg.UpdateServer + fa.Path})
		if err == nil {
			a.log.Info("firmware update announced", "update", fa.Update, "campaign", fa.Campaign)
			return
		}
		why = "another firmware update is in progress"
		if !errors.Is(err, update.ErrBusy) {
			why = "announcement refused"
		}
		a.log.Warn("firmware announcement not taken", "update", fa.Update, "err", err)
	}
	r := update.Report{ID: fa.Update, Phase: update.PhaseFailed, Final: true, Reason: wire.ReasonFirmwareInstall,
		Message: why, Running: a.runningFirmware(), Time: a.now()}
	if err := a.reportUpdate(ctx, r); err != nil {
		a.log.Warn("firmware refusal not reported", "update", fa.Update, "err", err)
	}
}

// packBundles carries an announcement's bundles through the engine's one
// bundle field; verifyRelease unpacks them.
func packBundles(bundles [][]byte) []byte {
	b, err := wire.Marshal(bundles)
	if err != nil {
		return nil
	}
	return b
}

// reportUpdate is the engine's Reporter: it publishes firmware.report on
// the current session (QoS 1: nil once the broker has it). After a final
// report it says hello again, so that the fleet records the version that
// runs now.
func (a *Agent) reportUpdate(ctx context.Context, r update.Report) error {
	a.fw.mu.Lock()
	conn, dev := a.fw.conn, a.fw.device
	a.fw.mu.Unlock()
	if r.Final {
		a.setRunning(r.Running)
	}
	if conn == nil {
		return errNoFirmwareLink
	}
	msg := r.Message
	if len(msg) > 512 {
		msg = msg[:512]
	}
	b, err := wire.Encode(wire.TypeFirmwareReport, nil, a.now(), &wire.FirmwareReport{
		Update: r.ID, Campaign: r.ID, Phase: string(r.Phase), Final: r.Final, Reason: r.Reason, Message: msg,
		Version: r.Version, Running: r.Running, Slot: r.Slot, Fetched: r.Fetched,
	})
	if err != nil {
		return err
	}
	if err := conn.Publish(ctx, a.topics.DeviceUp(dev, wire.KindFirmware), b); err != nil {
		return err
	}
	if r.Final {
		a.sayHello(ctx, conn, dev)
	}
	return nil
}

// sayHello publishes a hello on conn; a failure is logged (the next
// connection says hello anyway).
func (a *Agent) sayHello(ctx context.Context, conn publisher, deviceID string) {
	hello, err := wire.Encode(wire.TypeHello, nil, a.now(), &wire.Hello{Model: a.cfg.Model, Firmware: a.runningFirmware(), Agent: Version})
	if err == nil {
		err = conn.Publish(ctx, a.topics.DeviceUp(deviceID, "hello"), hello)
	}
	if err != nil {
		a.log.Debug("hello after a firmware update not sent", "err", err)
	}
}

// downloadTLS is the TLS configuration of image downloads: the fleet's
// roots and the device's current TPM-backed certificate, both read from
// the state store at each connection (renewals and CA rotations change
// them).
func (a *Agent) downloadTLS() (*tls.Config, error) {
	id, err := a.st.Identity()
	if err != nil {
		return nil, err
	}
	if id.Status != state.StatusEnrolled {
		return nil, errors.New("agent: not enrolled")
	}
	return a.clientTLS(current(id))
}

// setUpdateDefaults fills the update settings left empty (after State and
// Broker have their defaults).
func (c *Config) setUpdateDefaults() {
	dir := filepath.Dir(c.State)
	if c.UpdateBackend == "" {
		c.UpdateBackend = "file:" + filepath.Join(dir, "slots")
	}
	if c.UpdateDir == "" {
		c.UpdateDir = filepath.Join(dir, "update")
	}
	if c.UpdateServer == "" {
		if h, _, err := net.SplitHostPort(c.Broker); err == nil {
			c.UpdateServer = net.JoinHostPort(h, "8443")
		}
	}
}

func (c *Config) validateUpdate() error {
	b := c.UpdateBackend
	if b != "-" && !(len(b) > 5 && (b[:5] == "file:" || b[:5] == "hook:")) {
		return errors.New("update_backend: want file:DIR, hook:PATH or -")
	}
	if _, _, err := net.SplitHostPort(c.UpdateServer); b != "-" && err != nil {
		return errors.New("update_server: want HOST:PORT")
	}
	return nil
}

// imageFetcher downloads images with the device's current identity: each
// request builds its TLS configuration from the state store (downloadTLS).
func (a *Agent) imageFetcher() update.Fetcher {
	return fetcherFunc(func(ctx context.Context, req fetch.Request) (*fetch.Response, error) {
		tlsCfg, err := a.downloadTLS()
		if err != nil {
			return nil, err
		}
		return fetch.New(fetch.Config{TLS: tlsCfg, Dial: a.opts.dial, StallTimeout: updateStallTimeout, UserAgent: "sigild/" + Version}).Get(ctx, req)
	})
}

// fetcherFunc adapts a function to update.Fetcher.
type fetcherFunc func(ctx context.Context, req fetch.Request) (*fetch.Response, error)

func (f fetcherFunc) Get(ctx context.Context, req fetch.Request) (*fetch.Response, error) {
	return f(ctx, req)
}
