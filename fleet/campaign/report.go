package campaign

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// DeviceReport is a device's report of its progress in a campaign. The
// device ID must come from the device's authenticated identity, never from
// the payload.
type DeviceReport struct {
	DeviceID string
	Campaign string
	// Step is one of announced, downloading, verifying, installing,
	// switching, health, committed, failed or rolled_back.
	Step Step
	// Reason says why the device failed or rolled back (wire reason codes
	// 70–77); it is ignored for other steps. A rollback without a reason
	// is recorded as wire.ReasonFirmwareHealth.
	Reason wire.Reason
	// RunningVersion is the version the device runs now (after any
	// fallback); "" leaves the recorded one.
	RunningVersion string
	// At is the device's own time of the report; recorded, not trusted.
	At time.Time
	// ClaimedFetched is the bytes the device says it downloaded for the
	// update so far (adaptive updates fetch a fraction of the image); 0
	// leaves the recorded count. Recorded as the device's claim.
	ClaimedFetched int64
}

func (r *DeviceReport) validate() error {
	var errs []error
	if !wire.ValidID(r.DeviceID) {
		errs = append(errs, fmt.Errorf("device ID %q", clip(r.DeviceID)))
	}
	if !wire.ValidID(r.Campaign) {
		errs = append(errs, fmt.Errorf("campaign ID %q", clip(r.Campaign)))
	}
	if !r.Step.reportable() {
		errs = append(errs, fmt.Errorf("step %q", clip(string(r.Step))))
	}
	if r.ClaimedFetched < 0 {
		errs = append(errs, errors.New("negative bytes fetched"))
	}
	if len(r.RunningVersion) > maxVersion || !printable(r.RunningVersion) {
		errs = append(errs, fmt.Errorf("running version %q", clip(r.RunningVersion)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidReport, err)
	}
	return nil
}

// pendingReport is a report waiting for its transaction.
type pendingReport struct {
	r       DeviceReport
	applied bool
	err     error
	written bool              // under Manager.rmu
	done    func(bool, error) // Submit's callback, or nil
}

// maxReportBatch bounds the reports written in one transaction.
const maxReportBatch = 4096

// MaxQueuedReports bounds the reports Submit holds before they are
// written.
const MaxQueuedReports = 100_000

// ErrBusy is given to Submit's callback when MaxQueuedReports reports
// are already waiting; the device should report again later.
var ErrBusy = errors.New("campaign: too many reports waiting to be written")

// Report records a device's report and reports whether it changed
// anything. Reports are idempotent: a repeated report, one for a step the
// device already passed, or any report after the device finished is
// ignored (false, nil) — except that a device that timed out or waits to
// be announced again may still say how it finished. A report for a device
// never announced is ignored too. Errors: ErrInvalidReport, ErrNotFound
// (unknown campaign), ErrNotTarget (the device is not in the campaign), or
// a storage error.
//
// Report returns once the report is on disk. Reports from concurrent
// callers share one transaction (group commit), so many devices reporting
// at once cost few disk syncs; a caller that cannot be concurrent uses
// Submit. A report that finishes a wave may open the next one or trip the
// failure action at once; the next engine step announces.
func (m *Manager) Report(r DeviceReport) (bool, error) {
	if err := r.validate(); err != nil {
		return false, err
	}
	me := &pendingReport{r: r}
	m.rmu.Lock()
	defer m.rmu.Unlock()
	m.reports = append(m.reports, me)
	for m.flushing && !me.written {
		m.rdone.Wait() // the caller writing now writes this report too
	}
	if !me.written {
		m.drain()
	}
	return me.applied, me.err
}

// Submit queues a report and returns at once; the reports queued meanwhile
// are written together by Run (or by a Report call). done, if not nil, is
// called with what Report would return once the report is written, on the
// goroutine that wrote it: it must not block or call Report (it may, say,
// acknowledge the report to the device, or Submit). Reports submitted from
// one goroutine are applied in order.
func (m *Manager) Submit(r DeviceReport, done func(applied bool, err error)) {
	if err := r.validate(); err != nil {
		if done != nil {
			done(false, err)
		}
		return
	}
	m.rmu.Lock()
	if len(m.reports) >= MaxQueuedReports {
		m.rmu.Unlock()
		if done != nil {
			done(false, ErrBusy)
		}
		return
	}
	m.reports = append(m.reports, &pendingReport{r: r, done: done})
	m.rmu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// flush writes the queued reports unless another caller is writing them
// (which then writes these too).
func (m *Manager) flush() {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	if !m.flushing {
		m.drain()
	}
}

// drain writes queued reports until none is left. It is called with rmu
// held and no other writer, and returns with rmu held.
func (m *Manager) drain() {
	m.flushing = true
	for len(m.reports) > 0 {
		n := min(len(m.reports), maxReportBatch)
		batch := m.reports[:n:n]
		m.reports = m.reports[n:]
		m.rmu.Unlock()
		m.writeReports(batch)
		m.rmu.Lock()
	}
	m.flushing = false
	m.rdone.Broadcast()
}

// writeReports applies a batch in one transaction and wakes its callers.
func (m *Manager) writeReports(batch []*pendingReport) {
	local := m.cfg.Now().UTC()
	var events []event
	err := m.store.db.Update(context.Background(), func(tx kv.Tx) error {
		events = events[:0]
		now, err := m.store.clock(tx, local)
		if err != nil {
			return err
		}
		open := map[string]*txc{}
		var order []*txc
		for _, p := range batch {
			p.applied, p.err = false, nil
			t, ok := open[p.r.Campaign]
			if !ok {
				var err error
				t, err = m.openTx(tx, p.r.Campaign)
				if errors.Is(err, ErrNotFound) {
					p.err = err
					continue
				}
				if err != nil {
					return err
				}
				open[p.r.Campaign] = t
				order = append(order, t)
			}
			applied, err := t.apply(&p.r, now)
			if errors.Is(err, ErrNotTarget) {
				p.err = err
				continue
			}
			if err != nil {
				return err
			}
			p.applied = applied
		}
		for _, t := range order {
			if err := t.settle(now); err != nil {
				return err
			}
			if err := t.flush(tx); err != nil {
				return err
			}
			events = append(events, t.events...)
		}
		return nil
	})
	m.rmu.Lock()
	for _, p := range batch {
		if err != nil {
			p.applied, p.err = false, fmt.Errorf("campaign: recording report: %w", err)
		}
		p.written = true
	}
	m.rdone.Broadcast()
	m.rmu.Unlock()
	if err == nil {
		m.emit(events)
	}
	for _, p := range batch {
		if p.done != nil {
			p.done(p.applied, p.err)
		}
	}
}

// apply records one report in the campaign's transaction.
func (t *txc) apply(r *DeviceReport, now time.Time) (bool, error) {
	d, err := t.dev(r.DeviceID)
	if err != nil {
		return false, err
	}
	if d == nil {
		return false, fmt.Errorf("%w: %s in %s", ErrNotTarget, r.DeviceID, t.id)
	}
	to := r.Step
	switch {
	case d.Step == StepPending || d.Step == StepTimedOut:
		// Only how an earlier announcement finished is news here.
		if !to.Finished() || d.Attempts == 0 {
			return false, nil
		}
		if d.InRetry {
			if err := t.retry.Delete(timeKey(d.Retry, r.DeviceID)); err != nil {
				return false, err
			}
			d.InRetry, d.Retry = false, 0
		}
		d.Late = true
	case d.Step.Finished() || to.rank() <= d.Step.rank():
		return false, nil
	}
	if d.Step.InFlight() && to.Finished() {
		if err := t.deadlines.Delete(timeKey(d.Deadline, r.DeviceID)); err != nil {
			return false, err
		}
		d.Deadline = 0
	}
	if err := t.move(d, to); err != nil {
		return false, err
	}
	switch to {
	case StepFailed:
		d.Reason = r.Reason
	case StepRolledBack:
		d.Reason = r.Reason
		if d.Reason == wire.ReasonOK {
			d.Reason = wire.ReasonFirmwareHealth
		}
	default:
		d.Reason = wire.ReasonOK
	}
	if r.RunningVersion != "" {
		d.Version = r.RunningVersion
	}
	if r.ClaimedFetched > 0 {
		t.h.Fetched += r.ClaimedFetched - d.Fetched
		d.Fetched = r.ClaimedFetched
	}
	d.Reported, d.Updated, d.Unreachable = r.At.UTC(), now, time.Time{}
	return true, t.putDev(r.DeviceID, d)
}
