package update

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Phase is a state of an update. The engine records each phase before it
// acts on it.
type Phase string

// Phases, in the order an update moves through them.
const (
	PhaseAnnounced   Phase = "announced"   // manifest received; to be verified
	PhaseDownloading Phase = "downloading" // manifest verified; fetching the image
	PhaseVerifying   Phase = "verifying"   // image downloaded; checking size and digest
	PhaseInstalling  Phase = "installing"  // writing the inactive slot
	PhaseSwitching   Phase = "switching"   // making the new slot boot next, once
	PhaseRebooting   Phase = "rebooting"   // restarting into the new slot
	PhaseHealth      Phase = "health"      // running the new slot's health check
	PhaseCommitting  Phase = "committing"  // making the new slot permanent
	// PhaseAdvancingFloor: the new slot is permanent; the anti-rollback
	// counter is being raised to the release's security version. The
	// update stays here, retried and reported, until the counter holds it.
	PhaseAdvancingFloor Phase = "advancing_floor"
	PhaseCommitted      Phase = "committed"    // final: the new image runs, the counter holds its security version
	PhaseRollingBack    Phase = "rolling_back" // going back to the previous slot
	PhaseRolledBack     Phase = "rolled_back"  // final: the previous image runs again
	PhaseFailed         Phase = "failed"       // final: refused or failed; see the reason
)

// Final reports whether p ends an update.
func (p Phase) Final() bool {
	return p == PhaseCommitted || p == PhaseRolledBack || p == PhaseFailed
}

// Defaults of Config.
const (
	DefaultPCR             = 14
	DefaultMaxAttempts     = 5
	DefaultRetryDelay      = 5 * time.Second
	DefaultRebootTimeout   = 5 * time.Minute
	DefaultDownloadTimeout = 30 * time.Minute
	// DefaultMaxSecurityStep matches device/tpm.MaxCounterAdvance, the
	// largest step the TPM counter is advanced by at once.
	DefaultMaxSecurityStep = 1 << 16
	// MaxAnnouncement bounds the manifest and the bundle of an
	// announcement, each.
	MaxAnnouncement = 256 << 10
)

// Errors.
var (
	// ErrBusy is returned by Announce while another update is in flight.
	ErrBusy = errors.New("update: another update is in progress")
	// ErrFloorNotAdvanced is wrapped by Resume's error when the
	// anti-rollback counter could not be raised to a committed release's
	// security version after MaxAttempts tries in a row: the update stays
	// in advancing_floor, and every later Resume (Run's retries) tries
	// again.
	ErrFloorNotAdvanced = errors.New("update: anti-rollback counter not advanced")
)

// Release is what a verified manifest says about an image.
type Release struct {
	Name            string
	Version         string
	SecurityVersion uint64 // anti-rollback: refused when below the TPM counter
	Size            int64  // bytes; the download is bounded by it
	SHA256          []byte // digest of the image, 32 bytes
	// BlockSize and IndexSHA256 bind the image's block-hash index
	// (manifest.Blocks); zero and nil when the release has none. With
	// them the engine tries an adaptive download first.
	BlockSize   int64
	IndexSHA256 []byte
}

// Verifier checks an announced manifest and its signature bundle (the
// trusted keys and their threshold, expiry, hardware model) and returns
// the release they describe. A refusal should be a *wire.Error whose reason
// says why (ReasonFirmwareSignature, ReasonFirmwareExpired,
// ReasonFirmwareModel); any other error is reported as
// ReasonFirmwareSignature.
type Verifier interface {
	Verify(manifest, bundle []byte) (*Release, error)
}

// VerifierFunc adapts a function to Verifier.
type VerifierFunc func(manifest, bundle []byte) (*Release, error)

// Verify calls f.
func (f VerifierFunc) Verify(manifest, bundle []byte) (*Release, error) { return f(manifest, bundle) }

// Counter is the anti-rollback counter. *device/tpm.TPM implements it with
// an NV counter.
type Counter interface {
	// SecurityVersion returns the lowest security version accepted. It
	// fails rather than report a value it cannot vouch for (device/tpm: an
	// NV index with attributes other than its own).
	SecurityVersion() (uint64, error)
	// AdvanceSecurityVersion raises it to at least to; it never lowers it.
	AdvanceSecurityVersion(to uint64) (uint64, error)
}

// Measurer extends the installed image's digest into a PCR so attestation
// sees the firmware. *device/tpm.TPM implements it.
type Measurer interface {
	ExtendPCR(pcr int, digest []byte) error
	ReadPCRs(sel wire.PCRSelection) ([][]byte, error)
}

// Fetcher downloads an image, or the rest of one (see device/fetch for
// the meaning of the request and response fields). *fetch.Client
// implements it.
type Fetcher interface {
	Get(ctx context.Context, req fetch.Request) (*fetch.Response, error)
}

// FetcherFunc adapts a function to Fetcher.
type FetcherFunc func(ctx context.Context, req fetch.Request) (*fetch.Response, error)

// Get calls f.
func (f FetcherFunc) Get(ctx context.Context, req fetch.Request) (*fetch.Response, error) {
	return f(ctx, req)
}

// Report is one step of an update as the fleet sees it.
type Report struct {
	ID      string
	Phase   Phase
	Final   bool
	Reason  wire.Reason // why it failed or rolled back; ReasonOK otherwise
	Message string      // public detail
	Name    string      // release name, once verified
	Version string      // the version being installed
	// Running is the version the device runs now: after a rollback or a
	// fallback by the boot loader, the previous one.
	Running string
	Slot    string // slot the device runs from
	Time    time.Time
	// Fetched is the bytes the device downloaded for the update so far
	// (image ranges and block index), against Size, the image's: an
	// adaptive update fetches a fraction. The device's own count.
	Fetched int64
	Size    int64
}

// Reporter sends reports to the fleet. Report returns nil once the fleet
// has the report (for MQTT: the broker acknowledged a QoS 1 publish). A
// progress report that fails is dropped; a final report is kept in the
// state store and sent again, also after a restart, until Report returns
// nil. Report should not block for long.
type Reporter interface {
	Report(ctx context.Context, r Report) error
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(ctx context.Context, r Report) error

// Report calls f.
func (f ReporterFunc) Report(ctx context.Context, r Report) error { return f(ctx, r) }

// Announcement is the fleet's offer of an update.
type Announcement struct {
	ID       string // the fleet's ID for this update (a wire ID)
	Manifest []byte // as signed
	Bundle   []byte // signature bundle(s) over Manifest
	URL      string // https URL of the image
}

// Config configures an Engine.
type Config struct {
	Store    *state.Store // required: where the engine records its phases
	Backend  Backend      // required: the slots
	Verifier Verifier     // required: manifest and signature checks
	Counter  Counter      // required: the anti-rollback counter
	// Dir holds the downloaded image (required). A partial download is
	// kept there across restarts and resumed.
	Dir string
	// Version is the version of the image in a slot the engine has no
	// record of (the factory image).
	Version string
	// Measurer, if set, has the image digest of the running slot
	// extended into PCR once per TPM boot: after commit, and at start-up.
	// nil measures nothing.
	Measurer Measurer
	// PCR is the SHA-256 PCR measurements go to; 0 means DefaultPCR (14):
	// not resettable without a TPM reset, and not extended by U-Boot or
	// the Linux kernel. Nothing else may extend it after boot (on UEFI
	// machines with shim, which measures MOK lists into 14, pick another).
	PCR int
	// Reporter receives the reports; nil discards them.
	Reporter Reporter
	// Fetcher downloads images: a *fetch.Client whose TLS config holds
	// the device's mTLS identity and the fleet's trust. nil means
	// fetch.New with an empty config: the system's roots and no client
	// certificate (a fleet that requires mTLS refuses it).
	Fetcher Fetcher
	// Log receives the engine's logs; nil discards them.
	Log *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// MaxAttempts bounds the attempts of a download, an install, a switch,
	// a reboot and a rollback; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// RetryDelay is the wait before the second attempt, doubled for each
	// one after (at most 64 times); 0 means DefaultRetryDelay.
	RetryDelay time.Duration
	// RebootTimeout is how long the engine waits for a reboot it asked
	// for before asking again; 0 means DefaultRebootTimeout.
	RebootTimeout time.Duration
	// DownloadTimeout bounds one download attempt; 0 means
	// DefaultDownloadTimeout.
	DownloadTimeout time.Duration
	// MaxSecurityStep is the largest amount a release may raise the
	// security version by; 0 means DefaultMaxSecurityStep.
	MaxSecurityStep uint64
	// Persisted, if set, is called after each phase is recorded and
	// before it is acted on. Tests use it to kill the process at a chosen
	// phase.
	Persisted func(Phase)
	// AdaptiveStep, if set, is called after each durable step of an
	// adaptive download (StepIndex, StepLocal, StepRange, StepAssembled).
	// Tests use it to kill the process there.
	AdaptiveStep func(step string)
}

// Engine runs firmware updates on the device, one at a time.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}
	mu   sync.Mutex // serializes reading and replacing the current record
	// bootMeasured is set once this process has measured the booted
	// image, so that later Resume calls do not read the PCR again. Guarded
	// by mu.
	bootMeasured bool
}

// New checks cfg and returns an engine. Call Run to work.
func New(cfg Config) (*Engine, error) {
	var errs []error
	if cfg.Store == nil {
		errs = append(errs, errors.New("update: Config.Store is required"))
	}
	if cfg.Backend == nil {
		errs = append(errs, errors.New("update: Config.Backend is required"))
	}
	if cfg.Verifier == nil {
		errs = append(errs, errors.New("update: Config.Verifier is required"))
	}
	if cfg.Counter == nil {
		errs = append(errs, errors.New("update: Config.Counter is required"))
	}
	if cfg.Dir == "" {
		errs = append(errs, errors.New("update: Config.Dir is required"))
	}
	if cfg.PCR < 0 || cfg.PCR > 23 {
		errs = append(errs, fmt.Errorf("update: Config.PCR %d out of range", cfg.PCR))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	if cfg.PCR == 0 {
		cfg.PCR = DefaultPCR
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Fetcher == nil {
		cfg.Fetcher = fetch.New(fetch.Config{})
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.RebootTimeout <= 0 {
		cfg.RebootTimeout = DefaultRebootTimeout
	}
	if cfg.DownloadTimeout <= 0 {
		cfg.DownloadTimeout = DefaultDownloadTimeout
	}
	if cfg.MaxSecurityStep == 0 {
		cfg.MaxSecurityStep = DefaultMaxSecurityStep
	}
	return &Engine{cfg: cfg, log: cfg.Log, wake: make(chan struct{}, 1)}, nil
}

// Announce records an update the fleet offers; Run carries it out. An
// announcement of the update in flight (QoS 1 delivers twice) is a no-op,
// and one of an update already finished has its final report sent again.
// While another update is in flight, Announce returns ErrBusy.
func (e *Engine) Announce(a Announcement) error {
	switch {
	case !wire.ValidID(a.ID):
		return errors.New("update: announcement: invalid ID")
	case len(a.Manifest) == 0 || len(a.Manifest) > MaxAnnouncement:
		return errors.New("update: announcement: manifest missing or too large")
	case len(a.Bundle) > MaxAnnouncement:
		return errors.New("update: announcement: bundle too large")
	case a.URL == "":
		return errors.New("update: announcement: no URL")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.cfg.Store.Update()
	if err != nil && !errors.Is(err, state.ErrNoUpdate) {
		return fmt.Errorf("update: announce: %w", err)
	}
	if cur != nil && cur.ID == a.ID {
		if cur.Final {
			// The fleet asks again: it may have lost the final report.
			if err := e.cfg.Store.SaveUpdate(cur); err != nil {
				return fmt.Errorf("update: announce: %w", err)
			}
		}
		e.poke()
		return nil
	}
	if cur != nil && !cur.Final {
		return fmt.Errorf("%w (%s is %s)", ErrBusy, cur.ID, cur.Phase)
	}
	now := e.cfg.Now()
	u := &state.Update{ID: a.ID, Phase: string(PhaseAnnounced), URL: a.URL,
		Manifest: a.Manifest, Bundle: a.Bundle, Started: now, Changed: now}
	if err := e.cfg.Store.SaveUpdate(u); err != nil {
		return fmt.Errorf("update: announce: %w", err)
	}
	e.log.Info("update announced", "update", a.ID)
	if e.cfg.Persisted != nil {
		e.cfg.Persisted(PhaseAnnounced)
	}
	e.poke()
	return nil
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run finishes or rolls back whatever was in flight (Resume), sends final
// reports the fleet has not acknowledged, then carries out announced
// updates until ctx is done. It returns ctx's error.
func (e *Engine) Run(ctx context.Context) error {
	fails := 0
	for {
		err := e.Resume(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			e.log.Error("update: resume failed; retrying", "err", err)
		}
		pending, rerr := e.flushReports(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if rerr != nil {
			e.log.Warn("update: final report not sent; retrying", "err", rerr)
		}
		var (
			retry <-chan time.Time
			timer *time.Timer
		)
		if err != nil || pending {
			fails++
			timer = time.NewTimer(e.backoff(fails))
			retry = timer.C
		} else {
			fails = 0
		}
		select {
		case <-ctx.Done():
		case <-e.wake:
		case <-retry:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// flushReports sends the final reports not yet acknowledged; pending says
// whether some remain.
func (e *Engine) flushReports(ctx context.Context) (pending bool, err error) {
	queue, err := e.cfg.Store.UnreportedUpdates()
	if err != nil {
		return true, err
	}
	for i := range queue {
		if err := e.sendFinal(ctx, &queue[i]); err != nil {
			return true, err
		}
	}
	return false, nil
}

// sendFinal sends a final report and, once the fleet has it, takes it off
// the queue.
func (e *Engine) sendFinal(ctx context.Context, u *state.Update) error {
	if e.cfg.Reporter != nil {
		if err := e.cfg.Reporter.Report(ctx, e.report(u, "")); err != nil {
			return fmt.Errorf("update: report %s: %w", u.ID, err)
		}
	}
	return e.cfg.Store.UpdateReported(u.ID)
}

// report builds the report of u. slot is the booted slot, "" for the one
// recorded.
func (e *Engine) report(u *state.Update, slot string) Report {
	if slot == "" {
		slot = u.Slot
	}
	r := Report{ID: u.ID, Phase: Phase(u.Phase), Final: u.Final, Reason: u.Reason,
		Message: u.Message, Running: u.Running, Slot: slot, Time: u.Changed, Fetched: u.Fetched}
	if u.Release != nil {
		r.Name, r.Version, r.Size = u.Release.Name, u.Release.Version, u.Release.Size
	}
	return r
}

// progress sends a progress report; failures are logged and dropped.
func (e *Engine) progress(ctx context.Context, u *state.Update) {
	if e.cfg.Reporter == nil {
		return
	}
	r := e.report(u, "")
	if b, err := e.cfg.Backend.Booted(ctx); err == nil {
		r.Slot = b.Slot
		r.Running = e.versionOf(b.Slot)
	}
	if err := e.cfg.Reporter.Report(ctx, r); err != nil {
		e.log.Debug("update: progress report dropped", "update", u.ID, "phase", u.Phase, "err", err)
	}
}

// Status is what the device runs and the update it is on, if any.
type Status struct {
	Slot    string        // booted slot
	Version string        // version of the image in it
	Update  *state.Update // the current or last update; nil if none
}

// Status returns the booted slot, the version running from it and the
// current (or last) update.
func (e *Engine) Status(ctx context.Context) (*Status, error) {
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return nil, fmt.Errorf("update: status: %w", err)
	}
	s := &Status{Slot: b.Slot, Version: e.versionOf(b.Slot)}
	u, err := e.cfg.Store.Update()
	if err != nil && !errors.Is(err, state.ErrNoUpdate) {
		return nil, fmt.Errorf("update: status: %w", err)
	}
	s.Update = u
	return s, nil
}

// versionOf returns the version of the image in slot: as recorded when it
// was installed, or Config.Version for a slot never installed by the
// engine. A slot recorded as being written has no version ("").
func (e *Engine) versionOf(slot string) string {
	s, err := e.cfg.Store.Slot(slot)
	if errors.Is(err, state.ErrNoSlot) {
		return e.cfg.Version
	}
	if err != nil {
		return ""
	}
	return s.Version
}

// backoff is the wait before attempt n+1 (n >= 1).
func (e *Engine) backoff(n int) time.Duration {
	return e.cfg.RetryDelay << min(max(n-1, 0), 6)
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// partPath is where the image of update id is downloaded to.
func (e *Engine) partPath(id string) string { return filepath.Join(e.cfg.Dir, id+".part") }

// removeDownloads deletes downloaded images, and their validators, except
// those of keep.
func (e *Engine) removeDownloads(keep string) {
	files, _ := filepath.Glob(filepath.Join(e.cfg.Dir, "*.part"))
	validators, _ := filepath.Glob(filepath.Join(e.cfg.Dir, "*.validator"))
	adaptive, _ := filepath.Glob(filepath.Join(e.cfg.Dir, "*.adaptive"))
	indexes, _ := filepath.Glob(filepath.Join(e.cfg.Dir, "*.index"))
	for _, f := range append(append(append(files, validators...), adaptive...), indexes...) {
		if keep != "" && (f == e.partPath(keep) || f == e.validatorPath(keep) || f == e.adaptivePath(keep) ||
			f == filepath.Join(e.cfg.Dir, keep+".index")) {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			e.log.Warn("update: cannot remove a downloaded image", "file", f, "err", err)
		}
	}
}

// checkURL accepts only https URLs with a host.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("image URL does not parse")
	}
	if u.Scheme != "https" || u.Host == "" {
		return errors.New("image URL is not an https URL")
	}
	return nil
}
