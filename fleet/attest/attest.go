// Package attest is the fleet's continuous attestation service: it issues
// single-use nonces, verifies the evidence devices return (quote, event log,
// counters), judges it against reference policies, keeps each device's
// verdict history and acts on failures — quarantine revokes every
// certificate the device holds and disconnects it at once. It also says
// whether a device's attestation is current enough for credentials to go
// out (Current).
//
// Evidence is checked in this order, each step on the verified output of the
// one before: the device's state accepts it (pending and decommissioned
// devices' evidence is dropped unjudged); envelope; the nonce it names is
// taken (issued by the fleet to this device, for this purpose — plain
// attestation or renewal —, single use, unexpired: a cheap gate, so
// unsolicited evidence costs no signature check); every quote (AK signature, magic and type, the
// quote's nonce equals that nonce, PCR selection as asked, PCR digest);
// event-log replay against the quoted PCRs when a log is present; the
// reference policy policy.Choose gives for the device's model and group
// (the inventory's) and the firmware it reports: fail closed when the model
// has policies but none for the reported firmware, and a failure takes the
// strictest action of the policies any firmware claim could select; the
// reset/restart counters against the history (going backwards fails).
// Devices without an event log are judged by PCR values alone.
package attest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Flags set on inventory devices.
const (
	FlagStale = "stale"
)

// Policies decides how a device is judged (fleet/policy.Store).
type Policies interface {
	Choose(ctx context.Context, model, firmware, group string) (policy.Choice, error)
}

// Alert is a security event for operators (routed to sinks by the alerting
// subsystem; logged and recorded as a lifecycle event here).
type Alert struct {
	Time     time.Time
	DeviceID string
	Kind     string // "attestation-failed", "quarantined", "stale", "released", "counter-rollback"
	Severity string // "critical", "warning", "info"
	Summary  string
	// Attrs are more attributes of the event, such as the one a rule keys
	// its alerts by ("advisory" for a vulnerability exposure); nil: none.
	Attrs map[string]string
}

// Inventory is what the attestation service reads and changes of the
// device inventory: verdicts, quarantine and release. *inventory.Store
// implements it (bbolt or PostgreSQL).
type Inventory interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	Update(ctx context.Context, id string, fn func(*inventory.Device) error) error
	UpdateAll(ctx context.Context, changes []inventory.Change) []error
	AddEvent(ctx context.Context, e inventory.Event) error
	Quarantine(ctx context.Context, id string, c inventory.Cause) (*inventory.Device, []string, error)
	Release(ctx context.Context, id string) (*inventory.Device, error)
	AutoRelease(ctx context.Context, id, policy string) (*inventory.Device, error)
}

var _ Inventory = (*inventory.Store)(nil)

// Config configures the service.
type Config struct {
	Inventory Inventory
	History   *History
	Policies  Policies
	// Send publishes a message to a device's down topic of kind.
	Send func(deviceID, kind string, payload []byte) error
	// Disconnect closes every session of a device now.
	Disconnect func(deviceID string)
	// Alert receives alerts; nil logs them only.
	Alert func(Alert)
	// Verdict, if set, receives every verdict once it is recorded in the
	// history and acted on — the moment OnVerdict's callback gets it — so
	// that the fleet's alerting and metrics see each one. It runs on a
	// worker, must not block for long and must not modify rec. Nil: none.
	Verdict func(deviceID string, rec *Record)
	// Selections are the PCR banks and indexes quoted. Default sha256 PCRs
	// 0-9 and 14 (firmware, boot loader, kernel, command line, shim/MOK).
	Selections []wire.PCRSelection
	// EventLog asks devices for their measured-boot log. Default true.
	EventLog *bool
	// NonceTTL bounds challenge to evidence. Default 2m.
	NonceTTL time.Duration
	// Interval is the devices' expected scheduled attestation interval;
	// StaleAfter missed intervals (or unanswered challenges) mark a device
	// stale. Defaults 10m and 3.
	Interval   time.Duration
	StaleAfter int
	// VerdictMaxAge bounds the age of the passing verdict that lets
	// credentials go out (Current). Default StaleAfter × Interval (30m
	// with the defaults): the age at which a device is flagged stale.
	VerdictMaxAge time.Duration
	// Workers is how many goroutines judge evidence, each with its own
	// queue; a device's evidence always goes to the same one. Default 16 ×
	// GOMAXPROCS: a judgment waits for its verdict's writes (CommitDelay,
	// then the commit), which the judgments of other workers share, so
	// many more workers than CPUs keep the CPUs busy.
	Workers int
	// CommitDelay is how long a verdict waits for others to share its
	// writes, when verdicts come closer together than that: the verdicts
	// judged within it are then recorded in one inventory transaction and
	// one history transaction, one fsync each, where each verdict took
	// one of each. A verdict that follows the one before by more than
	// CommitDelay (a quiet fleet) is written at once. The device and the
	// Verdict and OnVerdict callbacks get a waiting verdict that much
	// later; a quarantine is not delayed. Default 10ms (bbolt's batch
	// delay, which the telemetry cursors use too); negative: every
	// verdict is written at once.
	CommitDelay time.Duration
	// CommitBatch bounds how many verdicts one commit carries: a full
	// batch is written without waiting out CommitDelay. Default 256.
	CommitBatch int
	// QueueWait bounds how long Submit waits for room in a full queue
	// before it drops the evidence (counted in Stats). Default 5s.
	QueueWait time.Duration
	// State holds what spans several messages of a device — nonces,
	// unanswered challenges, sessions and their verdicts — where every
	// replica sharing it sees it (OpenStatePostgres). Nil: in this
	// process's memory.
	State State
	// Leases runs the stale sweep and the nonces' expiry under the lease
	// LeaseSweep, so that replicas sharing State run them once (lease.Holder).
	// Nil: they run here, as in one process.
	Leases Leases
	Now    func() time.Time
	Rand   io.Reader
	Logger *slog.Logger
}

// Leases runs work under named leases (fleet/storage/lease: Holder):
// fn's context ends when the lease is lost.
type Leases interface {
	Hold(ctx context.Context, name string, fn func(context.Context) error) error
}

// LeaseSweep is the lease under which Run sweeps for stale devices and
// expires nonces.
const LeaseSweep = "attest_sweep"

// queueTotal is how much evidence the shards' queues hold together, each
// at least minQueue.
const (
	queueTotal = 8192
	minQueue   = 64
)

// Service runs attestation.
type Service struct {
	cfg Config
	log *slog.Logger
	// shards: one queue and worker per shard; a device's evidence always
	// goes to the same one, so its verdicts are judged one at a time, in
	// order (counters, quarantine).
	shards []chan job
	// queued and dropped count the evidence Submit queued and dropped;
	// sweeps the stale sweeps run here.
	queued, dropped, sweeps atomic.Uint64
	// rec gathers verdicts for their writes (CommitDelay).
	rec recorder
	// state holds what spans messages (Config.State).
	state State

	mu        sync.Mutex
	onQuar    func(time.Duration)
	onVerdict func(deviceID string, rec *Record, latency time.Duration)
}

type job struct {
	deviceID string
	purpose  string // the nonce's expected purpose
	env      *wire.Envelope
	raw      []byte
	at       time.Time
}

// New returns a service; Run starts its workers and the stale sweep.
func New(cfg Config) (*Service, error) {
	if cfg.Inventory == nil || cfg.History == nil || cfg.Send == nil || cfg.Disconnect == nil {
		return nil, errors.New("attest: Inventory, History, Send and Disconnect are required")
	}
	if len(cfg.Selections) == 0 {
		cfg.Selections = []wire.PCRSelection{wire.DefaultSelection()}
	}
	if cfg.EventLog == nil {
		t := true
		cfg.EventLog = &t
	}
	if cfg.NonceTTL == 0 {
		cfg.NonceTTL = 2 * time.Minute
	}
	if cfg.Interval == 0 {
		cfg.Interval = 10 * time.Minute
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 3
	}
	if cfg.VerdictMaxAge <= 0 {
		cfg.VerdictMaxAge = time.Duration(cfg.StaleAfter) * cfg.Interval
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16 * runtime.GOMAXPROCS(0)
	}
	if cfg.CommitDelay == 0 {
		cfg.CommitDelay = 10 * time.Millisecond
	}
	if cfg.CommitBatch <= 0 {
		cfg.CommitBatch = 256
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.State == nil {
		cfg.State = newMemState(cfg.Now)
	}
	shards := make([]chan job, cfg.Workers)
	for i := range shards {
		shards[i] = make(chan job, max(queueTotal/cfg.Workers, minQueue))
	}
	return &Service{cfg: cfg, log: cfg.Logger, shards: shards, state: cfg.State}, nil
}

// OnQuarantine registers a callback receiving the time from the failing
// evidence's arrival to the device being disconnected, revoked and alerted
// (for benchmarks). It may be called at any time; nil removes the callback.
// The callback runs on a worker and must not block.
func (s *Service) OnQuarantine(f func(time.Duration)) {
	s.mu.Lock()
	s.onQuar = f
	s.mu.Unlock()
}

// OnVerdict registers a callback receiving every verdict once it is
// recorded in the history (and acted on: a quarantine is complete), with
// the time from the fleet sending the challenge that the evidence answers
// to that moment (for benchmarks). Evidence refused for its nonce is not
// recorded and not reported. It may be called at any time; nil removes the
// callback. The callback runs on a worker, must not block and must not
// modify rec.
func (s *Service) OnVerdict(f func(deviceID string, rec *Record, latency time.Duration)) {
	s.mu.Lock()
	s.onVerdict = f
	s.mu.Unlock()
}

// Run processes evidence and sweeps for stale devices until ctx ends. The
// sweep runs under the lease LeaseSweep (Config.Leases).
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, q := range s.shards {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-q:
					s.evidence(j)
				}
			}
		})
	}
	var err error
	if s.cfg.Leases == nil {
		err = s.sweepLoop(ctx)
	} else {
		err = s.cfg.Leases.Hold(ctx, LeaseSweep, s.sweepLoop)
	}
	wg.Wait()
	return err
}

// sweepLoop expires nonces and sweeps for stale devices every quarter
// interval (at most 30s) until ctx ends.
func (s *Service) sweepLoop(ctx context.Context) error {
	period := min(s.cfg.Interval/4, 30*time.Second)
	tick := time.NewTicker(max(period, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := s.state.Expire(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("expiring nonces failed", "err", err)
			}
			if err := s.sweepStale(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("stale sweep failed", "err", err)
			}
		}
	}
}

// Challenge sends a fresh nonce to the device.
func (s *Service) Challenge(deviceID string) error { return s.challenge(deviceID, "") }

// challenge sends a nonce for purpose ("" or wire.PurposeRenew).
func (s *Service) challenge(deviceID, purpose string) error {
	n := make([]byte, 32)
	if _, err := io.ReadFull(s.cfg.Rand, n); err != nil {
		return err
	}
	now := s.cfg.Now()
	ch := &wire.AttestChallenge{Nonce: n, Selections: s.cfg.Selections, Expires: now.Add(s.cfg.NonceTTL).UnixMilli(), EventLog: *s.cfg.EventLog, Purpose: purpose}
	b, err := wire.Encode(wire.TypeAttestChallenge, nil, now, ch)
	if err != nil {
		return err
	}
	if err := s.state.Issue(context.TODO(), &Nonce{Value: n, DeviceID: deviceID, Purpose: purpose, Issued: now, Selections: s.cfg.Selections}, s.cfg.NonceTTL); err != nil {
		return fmt.Errorf("attest: challenge: %w", err)
	}
	return s.cfg.Send(deviceID, "attest", b)
}

// Submit queues a message from an authenticated device (attest.request or
// attest.evidence); deviceID comes from its certificate. Evidence that
// finds its queue full waits up to Config.QueueWait for room, then is
// dropped and counted (Stats).
func (s *Service) Submit(deviceID string, env *wire.Envelope, raw []byte) {
	switch env.Type {
	case wire.TypeAttestRequest:
		var r wire.AttestRequest
		if err := wire.DecodeBody(env, wire.TypeAttestRequest, &r); err != nil {
			s.log.Warn("malformed attestation request", "device_id", deviceID, "err", err)
			return
		}
		purpose := ""
		if r.Reason == wire.PurposeRenew {
			purpose = wire.PurposeRenew
		}
		if err := s.challenge(deviceID, purpose); err != nil {
			s.log.Warn("challenge failed", "device_id", deviceID, "err", err)
		}
	case wire.TypeAttestEvidence:
		q, j := s.shard(deviceID), job{deviceID: deviceID, env: env, raw: raw, at: s.cfg.Now()}
		select {
		case q <- j:
			s.queued.Add(1)
			return
		default:
		}
		// Full: wait for room, holding the device's PUBACK (Submit runs on
		// its connection's goroutine) rather than drop what the broker is
		// about to acknowledge; drop only past QueueWait.
		t := time.NewTimer(s.cfg.QueueWait)
		defer t.Stop()
		select {
		case q <- j:
			s.queued.Add(1)
		case <-t.C:
			s.dropped.Add(1)
			s.log.Warn("attestation queue full; evidence dropped (the device retries on schedule)", "device_id", deviceID)
		}
	}
}

// Stats are the service's counters.
type Stats struct {
	// EvidenceQueued counts the evidence Submit queued for judging;
	// EvidenceDropped the evidence it dropped, its queue full for longer
	// than Config.QueueWait.
	EvidenceQueued, EvidenceDropped uint64
	// StaleSweeps counts the stale sweeps this service ran (under the
	// lease LeaseSweep, when replicas share it, only its holder sweeps).
	StaleSweeps uint64
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	return Stats{EvidenceQueued: s.queued.Load(), EvidenceDropped: s.dropped.Load(), StaleSweeps: s.sweeps.Load()}
}

func (s *Service) shard(deviceID string) chan job {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return s.shards[int(h.Sum32())%len(s.shards)]
}

// takeNonce consumes a nonce issued to deviceID for purpose ("" for a plain
// attestation, wire.PurposeRenew for a renewal). A nonce presented for
// another purpose than it was issued for is consumed and refused.
func (s *Service) takeNonce(deviceID string, n []byte, purpose string) (Nonce, error) {
	iss, err := s.state.Take(context.TODO(), deviceID, n)
	if err != nil {
		return Nonce{}, err
	}
	if iss.Purpose != purpose {
		return Nonce{}, wire.Refuse(wire.ReasonNonceInvalid, "nonce issued for another purpose", nil)
	}
	return iss, nil
}

// Verify runs every check on one evidence message and returns the record
// of the verdict; it changes nothing. A nil error with Result "fail" is a
// verified failure; an error is evidence that could not be trusted at all.
func (s *Service) Verify(dev *inventory.Device, env *wire.Envelope, raw []byte) *Record {
	rec, _ := s.verify(dev, env, raw, "")
	return rec
}

// verify is Verify for a nonce issued for purpose; it also returns when
// the fleet issued the evidence's nonce (zero when the nonce was refused
// or never read).
func (s *Service) verify(dev *inventory.Device, env *wire.Envelope, raw []byte, purpose string) (*Record, time.Time) {
	sum := sha256.Sum256(raw)
	rec := &Record{Time: s.cfg.Now().UTC(), DeviceID: dev.ID, EvidenceDigest: hex.EncodeToString(sum[:]), Result: wire.VerdictFail}
	var iss Nonce
	fail := func(err error) (*Record, time.Time) {
		var we *wire.Error
		if errors.As(err, &we) {
			rec.Code, rec.Reason, rec.Message = we.Reason, we.Reason.String(), we.Message
		} else {
			rec.Code, rec.Reason, rec.Message = wire.ReasonInternal, wire.ReasonInternal.String(), "internal error"
			s.log.Error("attestation check failed internally", "device_id", dev.ID, "err", err)
		}
		return rec, iss.Issued
	}
	var ev wire.AttestEvidence
	if err := wire.DecodeBody(env, wire.TypeAttestEvidence, &ev); err != nil {
		return fail(wire.Refuse(wire.ReasonBadRequest, "malformed evidence", err))
	}
	rec.Firmware = ev.Firmware
	var err error
	iss, err = s.takeNonce(dev.ID, ev.Nonce, purpose)
	if err != nil {
		return fail(err)
	}
	if ev.Error != "" {
		rec.DeviceError = true
		return fail(wire.Refuse(wire.ReasonQuoteInvalid, "the device could not quote: "+ev.Error, nil))
	}
	ak, err := verifier.VerifyAK(dev.AKPublic)
	if err != nil {
		return fail(err)
	}
	if len(ev.Quotes) != len(iss.Selections) {
		return fail(wire.Refuse(wire.ReasonQuoteInvalid, fmt.Sprintf("%d quotes for %d requested banks", len(ev.Quotes), len(iss.Selections)), nil))
	}
	pcrs := map[string]map[int][]byte{}
	var quotes []*verifier.VerifiedQuote
	for i, sel := range iss.Selections {
		vq, err := verifier.VerifyQuote(ak, ev.Nonce, sel, &ev.Quotes[i])
		if err != nil {
			return fail(err)
		}
		quotes = append(quotes, vq)
		pcrs[verifier.BankName(vq.Hash)] = vq.PCRs
	}
	rec.PCRs = hexPCRs(pcrs)
	rec.ResetCount, rec.RestartCount, rec.Clock = quotes[0].Clock.ResetCount, quotes[0].Clock.RestartCount, quotes[0].Clock.Clock
	var log *verifier.EventLog
	if len(ev.EventLog) > 0 {
		rec.EventLog = true
		if log, err = verifier.VerifyEventLog(ev.EventLog, quotes...); err != nil {
			return fail(err)
		}
		rec.Events = len(log.Events)
	}
	// Last, as the issue orders it: the counters against the history.
	counters := func() error {
		last, ok, err := s.cfg.History.lastCounters(context.Background(), dev.ID)
		if err != nil || !ok || last.Clock == 0 {
			return err
		}
		if rec.ResetCount < last.ResetCount || (rec.ResetCount == last.ResetCount && rec.RestartCount < last.RestartCount) {
			return wire.Refuse(wire.ReasonCounterRollback, fmt.Sprintf(
				"TPM reset/restart counters went backwards (%d/%d after %d/%d): the TPM was cleared or the evidence is replayed from another TPM state",
				rec.ResetCount, rec.RestartCount, last.ResetCount, last.RestartCount), nil)
		}
		rec.Rebooted = rec.ResetCount != last.ResetCount || rec.RestartCount != last.RestartCount
		return nil
	}
	firmware := ev.Firmware
	if firmware == "" {
		firmware = dev.Firmware
	}
	var choice policy.Choice
	if s.cfg.Policies != nil {
		if choice, err = s.cfg.Policies.Choose(context.Background(), dev.Model, firmware, dev.Group); err != nil {
			return fail(err)
		}
	}
	pol := choice.Policy
	// A failure acts as the strictest policy the device could be judged
	// by whatever firmware it claims: the claim is not proof.
	rec.PolicyAction = choice.Action
	if pol == nil {
		// Fail closed when the model has policies but none for what the
		// device reports: its firmware claim is not proof, and must not
		// buy it a pass.
		if choice.FailClosed() {
			rec.Code, rec.Reason = wire.ReasonNoPolicy, wire.ReasonNoPolicy.String()
			rec.Message = fmt.Sprintf("no reference policy of model %s matches firmware %q (group %q): the device reports an unexpected firmware", dev.Model, firmware, dev.Group)
			return rec, iss.Issued
		}
		if err := counters(); err != nil {
			return fail(err)
		}
		rec.Result, rec.Code, rec.Reason, rec.Message = wire.VerdictPass, wire.ReasonNoPolicy, wire.ReasonNoPolicy.String(), "evidence verified; no reference policy applies to this model and firmware"
		return rec, iss.Issued
	}
	v := pol.Evaluate(policy.NewEvidence(dev.Model, firmware, log, quotes...))
	rec.PolicyID, rec.PolicyVersion, rec.Failures = v.PolicyID, v.PolicyVersion, v.Failures
	rec.AutoRelease = pol.AutoRelease
	if !v.Pass {
		rec.Code, rec.Reason = wire.ReasonPolicyViolation, wire.ReasonPolicyViolation.String()
		rec.Message = summarize(v.Failures)
		_ = counters() // still note a reboot; the policy failure is the verdict
		return rec, iss.Issued
	}
	if err := counters(); err != nil {
		return fail(err)
	}
	rec.Result, rec.Code, rec.Reason, rec.Message = wire.VerdictPass, wire.ReasonOK, wire.ReasonOK.String(), "evidence verified and matches policy "+pol.Name
	return rec, iss.Issued
}

func summarize(fs []policy.Failure) string {
	if len(fs) == 0 {
		return "policy violated"
	}
	msg := fs[0].Message
	if len(fs) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(fs)-1)
	}
	return msg
}

func hexPCRs(in map[string]map[int][]byte) map[string]map[int]string {
	out := map[string]map[int]string{}
	for bank, m := range in {
		out[bank] = map[int]string{}
		for i, v := range m {
			out[bank][i] = hex.EncodeToString(v)
		}
	}
	return out
}

// evidence verifies, records and acts.
func (s *Service) evidence(j job) *Record {
	dev, err := s.cfg.Inventory.Device(context.TODO(), j.deviceID)
	if err != nil {
		s.log.Warn("evidence from a device not in the inventory", "device_id", j.deviceID, "err", err)
		return nil
	}
	if !dev.State.Accepts("attest") {
		// Pending and decommissioned devices are not attested: dropped
		// unjudged (a session that outlived a decommissioning must not
		// move the device anywhere).
		s.log.Warn("evidence from a device whose state does not accept it; dropped", "device_id", dev.ID, "state", dev.State)
		return nil
	}
	rec, challenged := s.verify(dev, j.env, j.raw, j.purpose)
	if rec.Code == wire.ReasonNonceInvalid || rec.Code == wire.ReasonBadRequest || challenged.IsZero() {
		// Not fresh evidence bound to a nonce the fleet issued (malformed,
		// replayed or stale), or a nonce the state could not look up:
		// answer, never act on it — it can neither release nor condemn
		// the device.
		s.log.Warn("attestation evidence refused", "device_id", dev.ID, "reason", rec.Reason, "message", rec.Message)
		s.verdict(dev.ID, rec)
		return rec
	}
	if !rec.DeviceError {
		if err := s.state.Answered(context.TODO(), dev.ID, j.at, rec.Result == wire.VerdictPass, challenged, rec.Time); err != nil {
			s.log.Error("recording the device's answer failed", "device_id", dev.ID, "err", err)
		}
	}

	// Act on the policy that was evaluated (not one selected again).
	pass := rec.Result == wire.VerdictPass
	switch {
	case rec.DeviceError:
		// The TPM could not quote: reported and alerted, not a verdict on
		// the device's state; the device retries on its schedule.
		rec.Action = "alert"
		s.alert(Alert{DeviceID: dev.ID, Kind: "attestation-error", Severity: "warning", Summary: rec.Message})
	case !pass && dev.State == inventory.StateQuarantined:
		// Already limited to proving itself: record, no new revocation.
	case !pass && rec.PolicyAction != policy.ActionAlert:
		err := s.quarantine(dev, rec, j.at)
		if !errors.Is(err, inventory.ErrTransition) && !errors.Is(err, inventory.ErrNotFound) {
			rec.Action = "quarantined" // restricted, or disconnected while the inventory failed
		}
	case !pass:
		rec.Action = "alert"
		s.alert(Alert{DeviceID: dev.ID, Kind: "attestation-failed", Severity: "critical", Summary: rec.Message})
	case dev.State == inventory.StateQuarantined && rec.AutoRelease:
		// Only a quarantine this policy's own failing verdict made.
		switch err := s.release(dev.ID, true, rec.PolicyID, "system", "passing attestation under policy "+rec.PolicyID+" (auto-release)"); {
		case err == nil:
			rec.Action = "released"
		case errors.Is(err, inventory.ErrOtherCause), errors.Is(err, ErrNotQuarantined):
			s.log.Info("auto-release declined: the quarantine has another cause", "device_id", dev.ID, "policy", rec.PolicyID, "err", err)
		default:
			s.log.Error("auto-release failed", "device_id", dev.ID, "err", err)
		}
	}
	invErr, histErr := s.record(rec)
	if invErr != nil {
		s.log.Error("inventory update failed", "device_id", dev.ID, "err", invErr)
	}
	if histErr != nil {
		s.log.Error("recording verdict failed", "device_id", dev.ID, "err", histErr)
	} else {
		s.mu.Lock()
		hook := s.onVerdict
		s.mu.Unlock()
		if hook != nil {
			hook(dev.ID, rec, s.cfg.Now().Sub(challenged))
		}
		if s.cfg.Verdict != nil {
			s.cfg.Verdict(dev.ID, rec)
		}
	}
	s.log.Info("attestation verdict", "device_id", dev.ID, "result", rec.Result, "reason", rec.Reason, "policy", rec.PolicyID, "action", rec.Action)
	s.verdict(dev.ID, rec)
	return rec
}

// recorder gathers the verdicts that workers (and Judge) judge within
// Config.CommitDelay of each other, to write them together.
type recorder struct {
	mu      sync.Mutex
	pending []*verdictWrite
	last    time.Time // when the newest verdict came (monotonic)
}

// verdictWrite is one verdict's writes: the inventory's summary of it and
// its history record, and how they went.
type verdictWrite struct {
	rec             *Record
	invErr, histErr error
	done            chan struct{}
}

// attested is the inventory change a verdict makes.
func attested(rec *Record) inventory.Change {
	return inventory.Change{ID: rec.DeviceID, Fn: func(d *inventory.Device) error {
		d.Attestation = rec.Result
		d.LastAttested = rec.Time
		if rec.Result == wire.VerdictPass {
			d.Flags = removeFlag(d.Flags, FlagStale)
		}
		if rec.Firmware != "" {
			d.Firmware = rec.Firmware
		}
		return nil
	}}
}

// record writes a verdict — the inventory's summary of it, then its
// history record (which sets rec.Seq) — with the verdicts judged within
// Config.CommitDelay, and returns each write's error.
func (s *Service) record(rec *Record) (invErr, histErr error) {
	r := &s.rec
	r.mu.Lock()
	now := time.Now()
	alone := s.cfg.CommitDelay < 0 || len(r.pending) == 0 && now.Sub(r.last) >= s.cfg.CommitDelay
	r.last = now
	if alone {
		// No verdict came within the delay: none is likely to join this
		// one, which would wait for nothing. (Writes that happen to
		// overlap still share their commits: groupcommit.)
		r.mu.Unlock()
		c := attested(rec)
		return s.cfg.Inventory.Update(context.TODO(), c.ID, c.Fn), s.cfg.History.Add(context.Background(), rec)
	}
	w := &verdictWrite{rec: rec, done: make(chan struct{})}
	r.pending = append(r.pending, w)
	switch n := len(r.pending); {
	case n >= s.cfg.CommitBatch:
		r.mu.Unlock()
		s.flush()
	case n == 1:
		// The first of a batch: write it, and whatever joined it, once
		// the delay is over (a full batch may have gone before).
		time.AfterFunc(s.cfg.CommitDelay, s.flush)
		r.mu.Unlock()
	default:
		r.mu.Unlock()
	}
	<-w.done
	return w.invErr, w.histErr
}

// flush writes the pending verdicts, one inventory transaction and one
// history transaction side by side, and tells each how it went.
func (s *Service) flush() {
	r := &s.rec
	r.mu.Lock()
	batch := r.pending
	r.pending = nil
	r.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	changes := make([]inventory.Change, len(batch))
	recs := make([]*Record, len(batch))
	for i, w := range batch {
		changes[i], recs[i] = attested(w.rec), w.rec
	}
	var invErrs []error
	var wg sync.WaitGroup
	wg.Go(func() { invErrs = s.cfg.Inventory.UpdateAll(context.TODO(), changes) })
	histErrs := s.cfg.History.AddAll(context.Background(), recs)
	wg.Wait()
	for i, w := range batch {
		w.invErr, w.histErr = invErrs[i], histErrs[i]
		close(w.done)
	}
}

// Judge verifies evidence carried inside a renewal request, records and
// acts on the verdict exactly as for plain evidence — a failure
// quarantines per policy — and returns the record. It consumes the
// evidence's nonce, which must have been issued for a renewal.
func (s *Service) Judge(deviceID string, ev *wire.AttestEvidence) (*Record, error) {
	body, err := wire.Marshal(ev)
	if err != nil {
		return nil, err
	}
	env := &wire.Envelope{V: wire.Version, Type: wire.TypeAttestEvidence, ID: wire.NewMessageID(), Time: s.cfg.Now().UnixMilli(), Body: body}
	rec := s.evidence(job{deviceID: deviceID, purpose: wire.PurposeRenew, env: env, raw: body, at: s.cfg.Now()})
	if rec == nil {
		return nil, errors.New("attest: device unknown")
	}
	return rec, nil
}

func (s *Service) verdict(deviceID string, rec *Record) {
	b, err := wire.Encode(wire.TypeAttestVerdict, nil, s.cfg.Now(), &wire.AttestVerdict{Result: rec.Result, Reason: rec.Code, Message: truncate(rec.Message, 256)})
	if err == nil {
		_ = s.cfg.Send(deviceID, "verdict", b)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// quarantine restricts dev for a failing verdict: every certificate it
// holds revoked, disconnected now, recorded and alerted. The broker refuses
// those serials afterwards; the device can re-enroll from its EK and then
// reach only its attestation topics. It returns the inventory's refusal
// (a device no longer active) or failure.
func (s *Service) quarantine(dev *inventory.Device, rec *Record, arrived time.Time) error {
	cause := inventory.Cause{Source: inventory.CauseAttestation, Policy: rec.PolicyID, Reason: rec.Reason + ": " + rec.Message}
	err := s.restrict(dev.ID, cause, "attestation failed ("+rec.Reason+"): "+rec.Message, "attestation failed: "+rec.Message)
	s.mu.Lock()
	hook := s.onQuar
	s.mu.Unlock()
	if hook != nil && err == nil {
		hook(s.cfg.Now().Sub(arrived))
	}
	return err
}

// ErrNotActive is returned by Quarantine for a device that is neither
// active nor already quarantined (pending or decommissioned).
var ErrNotActive = errors.New("attest: device is not active")

// Quarantine restricts a device exactly as a failed attestation does — its
// state becomes quarantined (it may then only prove itself), every
// certificate it holds is revoked and its sessions are closed — for an
// alert rule's action (cause inventory.CauseAlert, which no auto-release
// lifts). The reason is recorded in the device's lifecycle events and sent
// as a "quarantined" Alert. A device already quarantined only gains the
// cause, without a new alert; an operator's Release ends the quarantine.
func (s *Service) Quarantine(deviceID, reason string) error {
	dev, err := s.cfg.Inventory.Device(context.TODO(), deviceID)
	if err != nil {
		return fmt.Errorf("attest: quarantine %s: %w", deviceID, err)
	}
	cause := inventory.Cause{Source: inventory.CauseAlert, Reason: reason, Time: s.cfg.Now()}
	switch dev.State {
	case inventory.StateQuarantined:
		if _, _, err := s.cfg.Inventory.Quarantine(context.TODO(), deviceID, cause); err != nil {
			return fmt.Errorf("attest: quarantine %s: %w", deviceID, err)
		}
		return nil
	case inventory.StateActive:
	default:
		return fmt.Errorf("%w: %s is %s", ErrNotActive, deviceID, dev.State)
	}
	s.log.Warn("quarantining device", "device_id", deviceID, "reason", reason)
	if err := s.restrict(deviceID, cause, reason, reason); err != nil {
		if errors.Is(err, inventory.ErrTransition) {
			return fmt.Errorf("%w: %s: %w", ErrNotActive, deviceID, err)
		}
		return fmt.Errorf("attest: quarantine %s: %w", deviceID, err)
	}
	return nil
}

// restrict quarantines device id for cause: state, every certificate
// revoked (one inventory transaction), disconnection, lifecycle event and
// alert. A device the lifecycle does not let be quarantined (pending,
// decommissioned meanwhile) is left as it is and its *TransitionError
// returned. Another inventory failure is retried, and the device is
// disconnected anyway (fail closed); the error that remained is returned.
func (s *Service) restrict(id string, cause inventory.Cause, detail, summary string) error {
	cause.Time = s.cfg.Now()
	var err error
	var revoked []string
	for attempt := range 3 {
		_, revoked, err = s.cfg.Inventory.Quarantine(context.TODO(), id, cause)
		if err == nil || errors.Is(err, inventory.ErrTransition) || errors.Is(err, inventory.ErrNotFound) {
			break
		}
		s.log.Error("quarantine: inventory update failed", "device_id", id, "attempt", attempt+1, "err", err)
		time.Sleep(50 * time.Millisecond)
	}
	if errors.Is(err, inventory.ErrTransition) || errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("quarantine refused by the lifecycle", "device_id", id, "err", err)
		return err
	}
	s.cfg.Disconnect(id)
	_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: s.cfg.Now(), DeviceID: id, Kind: "quarantined",
		Detail: detail + "; certificates revoked: " + strings.Join(revoked, ", ")})
	s.alert(Alert{DeviceID: id, Kind: "quarantined", Severity: "critical", Summary: summary})
	return err
}

func (s *Service) alert(a Alert) {
	if a.Time.IsZero() {
		a.Time = s.cfg.Now()
	}
	s.log.Warn("alert", "kind", a.Kind, "severity", a.Severity, "device_id", a.DeviceID, "summary", a.Summary)
	_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: a.Time, DeviceID: a.DeviceID, Kind: "alert", Detail: a.Kind + ": " + a.Summary})
	if s.cfg.Alert != nil {
		s.cfg.Alert(a)
	}
}

// ErrNotQuarantined is returned by Release for a device that is not
// quarantined.
var ErrNotQuarantined = errors.New("attest: device is not quarantined")

// ErrJustification is returned by Release without a justification.
var ErrJustification = errors.New("attest: a justification is required")

// Release lets an operator return a quarantined device to active, whatever
// quarantined it. Its revoked certificates stay revoked; the device
// re-enrolls from its EK.
func (s *Service) Release(deviceID, by, justification string) error {
	if len(justification) < 3 {
		return ErrJustification
	}
	return s.release(deviceID, false, "", by, justification)
}

// release returns a quarantined device to active: for an operator, or
// (auto) for a passing verdict under an auto-release policy, which lifts
// only a quarantine that policy's own failing verdicts made
// (inventory.ErrOtherCause otherwise).
func (s *Service) release(deviceID string, auto bool, policy, by, justification string) error {
	var err error
	if auto {
		_, err = s.cfg.Inventory.AutoRelease(context.TODO(), deviceID, policy)
	} else {
		_, err = s.cfg.Inventory.Release(context.TODO(), deviceID)
	}
	if errors.Is(err, inventory.ErrNotQuarantined) {
		return ErrNotQuarantined
	}
	if err != nil {
		return err
	}
	_ = s.cfg.Inventory.AddEvent(context.TODO(), inventory.Event{Time: s.cfg.Now(), DeviceID: deviceID, Kind: "released", Detail: "released by " + by + ": " + justification})
	s.alert(Alert{DeviceID: deviceID, Kind: "released", Severity: "info", Summary: "released from quarantine by " + by + ": " + justification})
	// Its session, if any, was restricted to attestation: make it reconnect
	// with full access.
	s.cfg.Disconnect(deviceID)
	return nil
}

// ErrNoCurrentVerdict is returned by Current when a device's attestation
// is not current enough for credentials to go out.
var ErrNoCurrentVerdict = errors.New("attest: no current passing attestation")

// SessionStarted tells the service that the broker admitted a connection
// of deviceID at t. Verdicts on nonces issued before t do not count for
// Current: each session proves itself anew. The fleet calls it for every
// admitted connection before that connection can publish.
//
// With a shared State, the session starts at the database's time of the
// call instead of t, the clock the nonces' issue times come from too.
func (s *Service) SessionStarted(deviceID string, t time.Time) {
	if err := s.state.SessionStarted(context.TODO(), deviceID, t); err != nil {
		// Fail closed: the earlier session's pass may still count until
		// the next verdict, which the device is asked for at once.
		s.log.Error("starting the device's session failed", "device_id", deviceID, "err", err)
	}
}

// Hello starts the device's session at its hello, for transports that
// learn of a connection only from the device's first message on it (a
// broker pool), and challenges the device at once. There the hello may be
// handled after the evidence the device sent next (its messages are
// spread over the replicas), and the pass judged on that evidence then
// counts no more (it may be the previous session's): the challenge gets
// the device a verdict on a nonce issued within the session.
func (s *Service) Hello(deviceID string, at time.Time) {
	s.SessionStarted(deviceID, at)
	if err := s.Challenge(deviceID); err != nil {
		s.log.Warn("challenging a device at its hello failed", "device_id", deviceID, "err", err)
	}
}

// SessionEnded tells the service that the device's last connection ended.
func (s *Service) SessionEnded(deviceID string) {
	if err := s.state.SessionEnded(context.TODO(), deviceID); err != nil {
		s.log.Error("ending the device's session failed", "device_id", deviceID, "err", err)
	}
}

// Current reports whether credentials (SSH certificates, secrets) may go
// out to a device now: nil when it is active, its inventory verdict is a
// pass, and its newest verdict passed on a nonce the fleet issued during
// the device's current broker session (SessionStarted: so after its
// enrollment or re-enrollment, and after a reboot, which reconnects) no
// more than Config.VerdictMaxAge ago. Otherwise an error wrapping
// ErrNoCurrentVerdict says why.
func (s *Service) Current(deviceID string) error {
	d, err := s.cfg.Inventory.Device(context.TODO(), deviceID)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoCurrentVerdict, err)
	}
	if d.State != inventory.StateActive || d.Attestation != wire.VerdictPass {
		return fmt.Errorf("%w: device is %s, last verdict %q", ErrNoCurrentVerdict, d.State, d.Attestation)
	}
	if err := s.state.Current(context.TODO(), deviceID, s.cfg.VerdictMaxAge); err != nil {
		if !errors.Is(err, ErrNoCurrentVerdict) {
			return fmt.Errorf("%w: %w", ErrNoCurrentVerdict, err)
		}
		return err
	}
	return nil
}

// sweepStale flags devices that missed StaleAfter intervals or left
// StaleAfter challenges unanswered.
func (s *Service) sweepStale(ctx context.Context) error {
	s.sweeps.Add(1)
	after := ""
	for {
		devs, next, err := s.cfg.Inventory.ListDevices(ctx, inventory.Filter{After: after, Limit: 1000})
		if err != nil {
			return err
		}
		ids := make([]string, 0, len(devs))
		for i := range devs {
			if devs[i].State == inventory.StateActive || devs[i].State == inventory.StateQuarantined {
				ids = append(ids, devs[i].ID)
			}
		}
		live, err := s.state.Liveness(ctx, ids)
		if err != nil {
			return err
		}
		k := 0
		for i := range devs {
			d := &devs[i]
			if d.State != inventory.StateActive && d.State != inventory.StateQuarantined {
				continue
			}
			l := live[k]
			k++
			missed := l.Unanswered
			silent := l.Silent > time.Duration(s.cfg.StaleAfter)*s.cfg.Interval
			if (silent || missed >= s.cfg.StaleAfter) && !d.HasFlag(FlagStale) {
				why := fmt.Sprintf("no attestation for %s", l.Silent.Round(time.Second))
				if missed >= s.cfg.StaleAfter {
					why = fmt.Sprintf("%d attestation challenges unanswered", missed)
				}
				err := s.cfg.Inventory.Update(ctx, d.ID, func(d *inventory.Device) error {
					if !d.HasFlag(FlagStale) {
						d.Flags = append(d.Flags, FlagStale)
					}
					return nil
				})
				if err != nil {
					return err
				}
				s.alert(Alert{DeviceID: d.ID, Kind: "stale", Severity: "warning", Summary: why})
			}
		}
		if next == "" {
			return nil
		}
		after = next
	}
}

func removeFlag(flags []string, f string) []string {
	out := flags[:0]
	for _, x := range flags {
		if x != f {
			out = append(out, x)
		}
	}
	return out
}

// History returns a device's verdicts, newest first.
func (s *Service) History(ctx context.Context, deviceID string, limit int) ([]Record, error) {
	return s.cfg.History.List(ctx, deviceID, limit)
}

// HistoryBefore returns a device's verdicts older than sequence number
// before (0: from the newest), newest first (History.ListBefore).
func (s *Service) HistoryBefore(ctx context.Context, deviceID string, before uint64, limit int) ([]Record, error) {
	return s.cfg.History.ListBefore(ctx, deviceID, before, limit)
}

// Selections builds the PCR selections Config.Selections takes from the
// configured banks (attest_banks: "sha256", "sha1", "sha384"; none means
// sha256) and PCRs (attest_pcrs; none means wire.DefaultPCRs); neither
// means nil, the service's default.
func Selections(banks []string, pcrs []int) ([]wire.PCRSelection, error) {
	if len(banks) == 0 && len(pcrs) == 0 {
		return nil, nil
	}
	if len(banks) == 0 {
		banks = []string{"sha256"}
	}
	if len(pcrs) == 0 {
		pcrs = wire.DefaultPCRs()
	}
	var out []wire.PCRSelection
	for _, b := range banks {
		id := verifier.BankID(b)
		if id == 0 || slices.ContainsFunc(out, func(s wire.PCRSelection) bool { return s.Hash == id }) {
			return nil, fmt.Errorf("attest: attest_banks: %q is not a supported bank or is repeated", b)
		}
		sel := wire.PCRSelection{Hash: id, PCRs: pcrs}
		if err := sel.Validate(); err != nil {
			return nil, fmt.Errorf("attest: attest_pcrs: %w", err)
		}
		out = append(out, sel)
	}
	return out, nil
}
