package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Resume carries the recorded update forward until it is finished, acting
// on the phase recorded last: an update stopped before the switch is
// finished, one stopped after it ends committed if the new slot runs and
// passes its health check, rolled back otherwise. While a reboot it asked
// for has not happened, it waits (Config.RebootTimeout) and asks again.
// When no update is in flight it measures the running image (see
// Config.Measurer). It returns early only for ctx, for errors of the
// store, the TPM or the backend's Booted, and for an anti-rollback counter
// it could not advance (ErrFloorNotAdvanced); calling it again carries on.
// Run calls it at start; call it directly only without Run.
func (e *Engine) Resume(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		u, err := e.cfg.Store.Update()
		if errors.Is(err, state.ErrNoUpdate) {
			return e.measureBooted(ctx)
		}
		if err != nil {
			return fmt.Errorf("update: resume: %w", err)
		}
		if u.Final {
			e.removeDownloads("") // a crash may have come before the clean-up
			return e.measureBooted(ctx)
		}
		if err := e.step(ctx, u); err != nil {
			return err
		}
	}
}

// step acts on u's phase once and records what follows.
func (e *Engine) step(ctx context.Context, u *state.Update) error {
	switch Phase(u.Phase) {
	case PhaseAnnounced:
		return e.announced(ctx, u)
	case PhaseDownloading:
		return e.downloading(ctx, u)
	case PhaseVerifying:
		return e.verifying(ctx, u)
	case PhaseInstalling:
		return e.installing(ctx, u)
	case PhaseSwitching:
		return e.switching(ctx, u)
	case PhaseRebooting:
		return e.rebooting(ctx, u)
	case PhaseHealth:
		return e.health(ctx, u)
	case PhaseCommitting:
		return e.committing(ctx, u)
	case PhaseAdvancingFloor:
		return e.advancingFloor(ctx, u)
	case PhaseRollingBack:
		return e.rollingBack(ctx, u)
	}
	// A record from a newer engine, or damaged: nothing was switched that
	// this engine knows of, so it ends the update.
	return e.fail(ctx, u, wire.ReasonFirmwareInstall, "unknown update phase "+u.Phase)
}

// transition records u in phase p (with the slots given), tells
// Config.Persisted, then reports it.
func (e *Engine) transition(ctx context.Context, u *state.Update, p Phase, slots ...state.Slot) error {
	if Phase(u.Phase) != p {
		u.Attempts = 0
	}
	u.Phase, u.Final, u.Changed = string(p), p.Final(), e.cfg.Now()
	if err := e.save(u, slots...); err != nil {
		return err
	}
	e.log.Info("update phase", "update", u.ID, "phase", p, "reason", u.Reason)
	if e.cfg.Persisted != nil {
		e.cfg.Persisted(p)
	}
	if u.Final {
		if err := e.sendFinal(ctx, u); err != nil {
			e.log.Warn("update: final report not sent yet", "update", u.ID, "err", err)
		}
		return nil
	}
	e.progress(ctx, u)
	return nil
}

// save records u if it is still the current update.
func (e *Engine) save(u *state.Update, slots ...state.Slot) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, err := e.cfg.Store.Update()
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if cur.ID != u.ID {
		return fmt.Errorf("update: %s replaced by %s while in flight", u.ID, cur.ID)
	}
	if err := e.cfg.Store.SaveUpdate(u, slots...); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return nil
}

// retry records a failed attempt of u's phase and waits before the next;
// it reports whether attempts remain.
func (e *Engine) retry(ctx context.Context, u *state.Update, cause error) (bool, error) {
	u.Attempts++
	e.log.Warn("update: attempt failed", "update", u.ID, "phase", u.Phase, "attempt", u.Attempts, "err", cause)
	if u.Attempts >= e.cfg.MaxAttempts {
		return false, nil
	}
	u.Changed = e.cfg.Now()
	if err := e.save(u); err != nil {
		return false, err
	}
	return true, sleep(ctx, e.backoff(u.Attempts))
}

// fail ends u before the switch: nothing changed on the booted slot.
func (e *Engine) fail(ctx context.Context, u *state.Update, r wire.Reason, msg string) error {
	u.Reason, u.Message = r, msg
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	u.Running, u.Slot = e.versionOf(b.Slot), b.Slot
	if err := e.transition(ctx, u, PhaseFailed); err != nil {
		return err
	}
	e.removeDownloads("")
	return nil
}

// rolledBack ends u on the previous slot, booted again as b.
func (e *Engine) rolledBack(ctx context.Context, u *state.Update, b Boot, r wire.Reason, msg string) error {
	u.Reason, u.Message, u.Running, u.Slot = r, msg, e.versionOf(b.Slot), b.Slot
	if err := e.transition(ctx, u, PhaseRolledBack); err != nil {
		return err
	}
	e.removeDownloads("")
	return nil
}

func (e *Engine) announced(ctx context.Context, u *state.Update) error {
	e.progress(ctx, u)
	e.removeDownloads(u.ID)
	rel, err := e.cfg.Verifier.Verify(u.Manifest, u.Bundle)
	if err != nil {
		reason, msg := wire.ReasonFirmwareSignature, "release refused"
		if we, ok := errors.AsType[*wire.Error](err); ok {
			reason, msg = we.Reason, we.Message
		}
		e.log.Warn("update: release refused", "update", u.ID, "reason", reason, "err", err)
		return e.fail(ctx, u, reason, msg)
	}
	switch {
	case rel == nil || rel.Version == "" || rel.Name == "":
		return e.fail(ctx, u, wire.ReasonFirmwareSignature, "verified manifest names no release")
	case rel.Size <= 0 || len(rel.SHA256) != sha256.Size:
		return e.fail(ctx, u, wire.ReasonFirmwareDigest, "verified manifest has no image size or SHA-256 digest")
	}
	u.Release = &state.Release{Name: rel.Name, Version: rel.Version, SecurityVersion: rel.SecurityVersion,
		Size: rel.Size, SHA256: bytes.Clone(rel.SHA256)}
	if rel.BlockSize > 0 && len(rel.IndexSHA256) == sha256.Size {
		u.Release.BlockSize, u.Release.IndexSHA256 = rel.BlockSize, bytes.Clone(rel.IndexSHA256)
	}
	if refused, err := e.checkFloor(ctx, u); refused || err != nil {
		return err
	}
	if err := checkURL(u.URL); err != nil {
		return e.fail(ctx, u, wire.ReasonFirmwareDownload, err.Error())
	}
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	target := other(e.cfg.Backend.Slots(), b.Slot)
	if target == "" {
		return e.fail(ctx, u, wire.ReasonFirmwareInstall, "booted slot "+b.Slot+" is not one of the backend's")
	}
	u.From, u.Target = b.Slot, target
	return e.transition(ctx, u, PhaseDownloading)
}

// checkFloor refuses (ends u) a release below the anti-rollback floor or
// too far above it; refused says whether it did.
func (e *Engine) checkFloor(ctx context.Context, u *state.Update) (refused bool, err error) {
	floor, err := e.floor()
	if err != nil {
		return false, err
	}
	sv := u.Release.SecurityVersion
	if sv < floor {
		e.log.Warn("update: release below the anti-rollback counter", "update", u.ID, "security_version", sv, "counter", floor)
		return true, e.fail(ctx, u, wire.ReasonFirmwareRollback,
			fmt.Sprintf("security version %d is below the device's %d", sv, floor))
	}
	if sv-floor > e.cfg.MaxSecurityStep {
		return true, e.fail(ctx, u, wire.ReasonFirmwareInstall,
			fmt.Sprintf("security version %d is more than %d above the device's %d", sv, e.cfg.MaxSecurityStep, floor))
	}
	return false, nil
}

// floor is the anti-rollback floor: the higher of the counter and the
// floor recorded in the store (see committing). The counter is below the
// recorded floor only when an advance failed, or when its NV index was
// deleted (by a holder of the TPM's owner or platform authorization) and
// defined again; either way the recorded floor holds.
func (e *Engine) floor() (uint64, error) {
	counter, err := e.cfg.Counter.SecurityVersion()
	if err != nil {
		return 0, fmt.Errorf("update: read anti-rollback counter: %w", err)
	}
	recorded, err := e.cfg.Store.Floor()
	if err != nil {
		return 0, fmt.Errorf("update: %w", err)
	}
	if counter < recorded {
		e.log.Error("update: the anti-rollback counter is below the floor this device recorded (an advance failed, or its NV index was deleted); the recorded floor applies",
			"counter", counter, "recorded", recorded)
	}
	return max(counter, recorded), nil
}

func (e *Engine) downloading(ctx context.Context, u *state.Update) error {
	err := e.download(ctx, u)
	if err == nil {
		return e.transition(ctx, u, PhaseVerifying)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, errTooLarge) {
		return e.fail(ctx, u, wire.ReasonFirmwareDigest, "image larger than the manifest says")
	}
	more, rerr := e.retry(ctx, u, err)
	if rerr != nil || more {
		return rerr
	}
	return e.fail(ctx, u, wire.ReasonFirmwareDownload, fmt.Sprintf("download failed %d times", u.Attempts))
}

func (e *Engine) verifying(ctx context.Context, u *state.Update) error {
	f, err := os.Open(e.partPath(u.ID))
	if errors.Is(err, os.ErrNotExist) {
		// Lost (a cleaned directory): download again.
		return e.transition(ctx, u, PhaseDownloading)
	}
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("update: hash image: %w", err)
	}
	if n != u.Release.Size || !bytes.Equal(h.Sum(nil), u.Release.SHA256) {
		e.log.Warn("update: image does not match the manifest", "update", u.ID, "size", n, "want", u.Release.Size)
		return e.fail(ctx, u, wire.ReasonFirmwareDigest, "image size or SHA-256 does not match the manifest")
	}
	if refused, err := e.checkFloor(ctx, u); refused || err != nil {
		return err
	}
	// The target slot is about to be overwritten: until the install
	// completes it holds no known image.
	return e.transition(ctx, u, PhaseInstalling, state.Slot{Name: u.Target})
}

func (e *Engine) installing(ctx context.Context, u *state.Update) error {
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if b.Slot == u.Target {
		return e.fail(ctx, u, wire.ReasonFirmwareInstall, "the target slot is the running one")
	}
	err = e.cfg.Backend.Install(ctx, u.Target, e.partPath(u.ID))
	if err == nil {
		rel := u.Release
		return e.transition(ctx, u, PhaseSwitching, state.Slot{Name: u.Target, Version: rel.Version,
			SHA256: rel.SHA256, SecurityVersion: rel.SecurityVersion})
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	more, rerr := e.retry(ctx, u, err)
	if rerr != nil || more {
		return rerr
	}
	return e.fail(ctx, u, wire.ReasonFirmwareInstall, "writing the inactive slot failed")
}

func (e *Engine) switching(ctx context.Context, u *state.Update) error {
	err := e.cfg.Backend.Switch(ctx, u.Target)
	if err == nil {
		b, err := e.cfg.Backend.Booted(ctx)
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		u.BootID = b.ID
		return e.transition(ctx, u, PhaseRebooting)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	more, rerr := e.retry(ctx, u, err)
	if rerr != nil || more {
		return rerr
	}
	if err := e.cfg.Backend.Rollback(ctx, u.From); err != nil {
		return fmt.Errorf("update: undo switch: %w", err)
	}
	return e.fail(ctx, u, wire.ReasonFirmwareInstall, "switching to the new slot failed")
}

func (e *Engine) rebooting(ctx context.Context, u *state.Update) error {
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	switch {
	case b.ID != u.BootID && b.Slot == u.Target:
		u.BootID = b.ID
		return e.transition(ctx, u, PhaseHealth)
	case b.ID != u.BootID:
		return e.rolledBack(ctx, u, b, wire.ReasonFirmwareHealth,
			"the new slot did not come up; the boot loader fell back to slot "+b.Slot)
	}
	// Not rebooted yet.
	if u.Attempts >= e.cfg.MaxAttempts {
		if err := e.cfg.Backend.Rollback(ctx, u.From); err != nil {
			return fmt.Errorf("update: undo switch: %w", err)
		}
		return e.fail(ctx, u, wire.ReasonFirmwareInstall, "the device did not reboot into the new slot")
	}
	return e.reboot(ctx, u)
}

// reboot records an attempt, asks the backend to reboot and, if the device
// is still in the same boot afterwards, waits for the reboot.
func (e *Engine) reboot(ctx context.Context, u *state.Update) error {
	u.Attempts++
	u.Changed = e.cfg.Now()
	if err := e.save(u); err != nil {
		return err
	}
	e.log.Info("update: rebooting", "update", u.ID, "phase", u.Phase)
	if err := e.cfg.Backend.Reboot(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.log.Warn("update: reboot failed", "update", u.ID, "err", err)
		return sleep(ctx, e.backoff(u.Attempts))
	}
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if b.ID == u.BootID {
		// A real board is going down: wait for it, and ask again later.
		if err := sleep(ctx, e.cfg.RebootTimeout); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) health(ctx context.Context, u *state.Update) error {
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if b.Slot != u.Target {
		return e.rolledBack(ctx, u, b, wire.ReasonFirmwareHealth,
			"the device restarted before the new slot was confirmed; the boot loader fell back to slot "+b.Slot)
	}
	if err := e.cfg.Backend.Health(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.log.Warn("update: health check failed; rolling back", "update", u.ID, "err", err)
		u.Reason, u.Message, u.BootID = wire.ReasonFirmwareHealth, "health check failed", b.ID
		return e.transition(ctx, u, PhaseRollingBack)
	}
	return e.transition(ctx, u, PhaseCommitting)
}

func (e *Engine) committing(ctx context.Context, u *state.Update) error {
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if b.Slot != u.Target {
		return e.rolledBack(ctx, u, b, wire.ReasonFirmwareHealth,
			"the device restarted before the new slot was committed; the boot loader fell back to slot "+b.Slot)
	}
	if err := e.cfg.Backend.Commit(ctx, u.Target); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		more, rerr := e.retry(ctx, u, err)
		if rerr != nil || more {
			return rerr
		}
		u.Reason, u.Message, u.BootID = wire.ReasonFirmwareInstall, "committing the new slot failed", b.ID
		return e.transition(ctx, u, PhaseRollingBack)
	}
	// The new slot is permanent. Raise the floor only now: a rollback
	// before this point must still find the old release acceptable. The
	// store's floor first, so that it holds while the counter lags.
	if err := e.cfg.Store.RaiseFloor(u.Release.SecurityVersion); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return e.transition(ctx, u, PhaseAdvancingFloor)
}

// advancingFloor raises the anti-rollback counter to the release's
// security version and commits u only once the counter reads at least
// that. A failure is recorded and reported to the fleet (the message says
// so) and retried; after MaxAttempts in a row Resume returns
// ErrFloorNotAdvanced and the next Resume tries again. The update is never
// given up: the release runs, and the floor stays recorded in the store
// meanwhile.
func (e *Engine) advancingFloor(ctx context.Context, u *state.Update) error {
	rel := u.Release
	if err := e.advanceCounter(rel.SecurityVersion); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		u.Attempts++
		u.Changed = e.cfg.Now()
		u.Message = fmt.Sprintf("anti-rollback counter not advanced to security version %d (attempt %d); the update is not committed until it is",
			rel.SecurityVersion, u.Attempts)
		if err := e.save(u); err != nil {
			return err
		}
		e.log.Error("update: anti-rollback counter not advanced; retrying", "update", u.ID,
			"security_version", rel.SecurityVersion, "attempt", u.Attempts, "err", err)
		e.progress(ctx, u)
		if u.Attempts < e.cfg.MaxAttempts {
			return sleep(ctx, e.backoff(u.Attempts))
		}
		return fmt.Errorf("%w to %d for %s (attempt %d): %w", ErrFloorNotAdvanced, rel.SecurityVersion, u.ID, u.Attempts, err)
	}
	var notes []string
	if err := e.measure(ctx, rel.SHA256); err != nil {
		e.log.Error("update: measurement failed", "update", u.ID, "err", err)
		notes = append(notes, "image not measured into the PCR")
	}
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	u.Reason, u.Running, u.Slot = wire.ReasonOK, e.versionOf(b.Slot), b.Slot
	u.Message = strings.Join(notes, "; ")
	if err := e.transition(ctx, u, PhaseCommitted); err != nil {
		return err
	}
	e.removeDownloads("")
	return nil
}

// advanceCounter raises the anti-rollback counter to at least sv and reads
// it back.
func (e *Engine) advanceCounter(sv uint64) error {
	if _, err := e.cfg.Counter.AdvanceSecurityVersion(sv); err != nil {
		return err
	}
	v, err := e.cfg.Counter.SecurityVersion()
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if v < sv {
		return fmt.Errorf("counter reads %d after advancing to %d", v, sv)
	}
	e.log.Info("update: anti-rollback counter", "value", v)
	return nil
}

func (e *Engine) rollingBack(ctx context.Context, u *state.Update) error {
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if b.ID != u.BootID && b.Slot == u.From {
		return e.rolledBack(ctx, u, b, u.Reason, u.Message)
	}
	if u.Attempts >= e.cfg.MaxAttempts {
		// The previous slot does not come back: say what runs.
		u.Message += "; rollback did not take effect"
		u.Running, u.Slot = e.versionOf(b.Slot), b.Slot
		return e.transition(ctx, u, PhaseFailed)
	}
	if b.ID != u.BootID {
		u.BootID = b.ID // the new slot booted again; roll back from this boot
	}
	if err := e.cfg.Backend.Rollback(ctx, u.From); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		more, rerr := e.retry(ctx, u, err)
		if rerr != nil || more {
			return rerr
		}
		u.Message += "; rollback failed"
		u.Running, u.Slot = e.versionOf(b.Slot), b.Slot
		return e.transition(ctx, u, PhaseFailed)
	}
	return e.reboot(ctx, u)
}

// measureBooted measures the image of the booted slot, if the engine
// installed it (its digest is known), once per process.
func (e *Engine) measureBooted(ctx context.Context) error {
	e.mu.Lock()
	done := e.bootMeasured
	e.mu.Unlock()
	if e.cfg.Measurer == nil || done {
		return nil
	}
	b, err := e.cfg.Backend.Booted(ctx)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	s, err := e.cfg.Store.Slot(b.Slot)
	switch {
	case errors.Is(err, state.ErrNoSlot) || (err == nil && len(s.SHA256) == 0):
	case err != nil:
		return fmt.Errorf("update: %w", err)
	default:
		if err := e.measure(ctx, s.SHA256); err != nil {
			return err
		}
	}
	e.mu.Lock()
	e.bootMeasured = true
	e.mu.Unlock()
	return nil
}

// measure extends digest into the PCR unless this TPM boot already has it
// there. It records the PCR's value before and the value expected after,
// then extends: if the PCR reads the recorded value after, the extension
// happened (before or after a crash); any other value is a new TPM boot
// (or a foreign extension) and is extended again.
func (e *Engine) measure(ctx context.Context, digest []byte) error {
	if e.cfg.Measurer == nil {
		return nil
	}
	sel := wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{e.cfg.PCR}}
	vals, err := e.cfg.Measurer.ReadPCRs(sel)
	if err != nil {
		return fmt.Errorf("update: read PCR %d: %w", e.cfg.PCR, err)
	}
	if len(vals) != 1 || len(vals[0]) != sha256.Size {
		return fmt.Errorf("update: read PCR %d: no SHA-256 value", e.cfg.PCR)
	}
	now := vals[0]
	m, err := e.cfg.Store.Measurement()
	if err != nil && !errors.Is(err, state.ErrNoMeasurement) {
		return fmt.Errorf("update: %w", err)
	}
	if m != nil && m.PCR == e.cfg.PCR && bytes.Equal(m.Digest, digest) && bytes.Equal(m.After, now) {
		return nil
	}
	after := sha256.Sum256(append(bytes.Clone(now), digest...))
	if err := e.cfg.Store.SaveMeasurement(&state.Measurement{PCR: e.cfg.PCR, Digest: bytes.Clone(digest),
		After: after[:]}); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if err := e.cfg.Measurer.ExtendPCR(e.cfg.PCR, digest); err != nil {
		return fmt.Errorf("update: extend PCR %d: %w", e.cfg.PCR, err)
	}
	e.log.Info("update: image measured", "pcr", e.cfg.PCR)
	return nil
}
