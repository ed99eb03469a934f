package secrets

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// DeliveriesFile is the usual name of the delivery records (OpenDeliveries)
// in the fleet's data directory: which version of which secret was sent
// to and acknowledged by which device. The secrets themselves are in
// DBFile, encrypted under KeyFile (0600).
const DeliveriesFile = "secret-deliveries.db"

// retryInterval is how often devices whose delivery waits for a (current)
// passing attestation are tried again while connected.
const retryInterval = 2 * time.Second

// Devices is what the delivery service reads of the inventory, and where
// it records delivered and acknowledged secrets as lifecycle events.
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
	AddEvent(ctx context.Context, e inventory.Event) error
}

// Attestations are the recorded verdicts, newest first, whose verified
// sha256 PCR values a PCR-bound secret is sealed to (attest.History).
type Attestations interface {
	List(ctx context.Context, deviceID string, limit int) ([]attest.Record, error)
}

// Deliveries keeps the delivery state of each secret at each device
// (*DeliveryStore).
type Deliveries interface {
	// Get returns the state of name at deviceID (zero when none).
	Get(ctx context.Context, name, deviceID string) (Delivery, error)
	// Update changes the state of name at deviceID, creating it.
	// fn may run more than once, each time on the state as stored.
	Update(ctx context.Context, name, deviceID string, fn func(*Delivery)) error
	// UpdateExisting changes the state only when one exists.
	UpdateExisting(ctx context.Context, name, deviceID string, fn func(*Delivery)) error
	// ForDevice returns a device's states by secret name.
	ForDevice(ctx context.Context, deviceID string) (map[string]Delivery, error)
	// Summary counts the devices by where version of name got.
	Summary(ctx context.Context, name string, version int) (DeliverySummary, error)
}

// Delivery is the state of one secret at one device.
type Delivery struct {
	Sent   int       `json:"sent,omitempty"`
	SentAt time.Time `json:"sent_at,omitzero"`
	// Attempt names the delivery that recorded Sent (random, one per
	// publish): a failed publish undoes the record only while it is still
	// its own, never another replica's later one.
	Attempt string    `json:"attempt,omitempty"`
	Acked   int       `json:"acked,omitempty"`
	AckedAt time.Time `json:"acked_at,omitzero"`
	Error   string    `json:"error,omitempty"`
	ErrorAt time.Time `json:"error_at,omitzero"`
}

// Status is a secret as GET /api/v1/secrets shows it: its latest version,
// target and versions kept, and how far the latest version got. Never its
// value.
type Status struct {
	Listing
	Delivery DeliverySummary `json:"delivery"`
}

// DeliverySummary counts the devices the fleet tried to deliver a secret's
// latest version to.
type DeliverySummary struct {
	Acked   int `json:"acked"`   // imported into the device's TPM
	Pending int `json:"pending"` // sent, not acknowledged yet
	Failed  int `json:"failed"`  // the last attempt failed (see the device's secrets)
}

// DeviceStatus is one device's delivery state of one secret.
type DeviceStatus struct {
	Name     string    `json:"name"`
	Latest   int       `json:"latest"` // latest version for this device; 0 when the secret was deleted or no longer targets it
	PCRBound bool      `json:"pcr_bound"`
	Sent     int       `json:"sent,omitempty"` // last version sent
	SentAt   time.Time `json:"sent_at,omitzero"`
	Acked    int       `json:"acked,omitempty"` // last version the device imported
	AckedAt  time.Time `json:"acked_at,omitzero"`
	Error    string    `json:"error,omitempty"` // why the last attempt failed
	ErrorAt  time.Time `json:"error_at,omitzero"`
}

// ServiceConfig configures a Service. Store, Deliveries, Devices,
// Attestations and Send are required.
type ServiceConfig struct {
	Store        *Store
	Deliveries   Deliveries
	Devices      Devices
	Attestations Attestations
	// PCRs are the sha256 PCRs a PCR-bound secret is sealed to (BoundPCRs
	// of the attestation selections); nil when the bank is not quoted,
	// and then PCR-bound secrets are not delivered.
	PCRs []int
	// Send publishes a message to a device on a down kind ("secret").
	Send func(deviceID, kind string, payload []byte) error
	// Connected reports whether a device has a session now; nil means
	// every device does.
	Connected func(deviceID string) bool
	// Current is nil when the device's attestation is current enough for
	// a secret to go out (attest.Service.Current); a nil Current delivers
	// nothing.
	Current func(deviceID string) error
	// Rand is the entropy of the wrapping; nil means crypto/rand.
	Rand io.Reader
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Service delivers sealed secrets (docs/PROTOCOL.md, "Sealed secrets"):
// to every targeted active device that is connected when a version is
// stored, and to a device on each connect for every secret whose latest
// version it has not acknowledged (on its hello, which it sends once
// subscribed: Queue) — each time only once the device's attestation is
// current (a pass in its present session, recent enough:
// ServiceConfig.Current); until then it waits and is tried again on the
// next pass and every two seconds. Each delivery is wrapped to the
// device's enrolled EK (inventory); a PCR-bound one also to the sha256
// values of the quoted PCRs in the device's newest passing attestation.
// One worker (Run) does the wrapping, off the broker's and the API's
// goroutines. Its methods Put, List, Delete, DeviceSecrets, SetRotation
// and Rotate are the API's (api.Secrets).
type Service struct {
	store      *Store
	deliveries Deliveries
	inv        Devices
	history    Attestations
	pcrs       []int
	send       func(deviceID, kind string, payload []byte) error
	connected  func(deviceID string) bool
	current    func(deviceID string) error
	rand       io.Reader
	now        func() time.Time
	log        *slog.Logger

	mu      sync.Mutex
	pending map[string]struct{} // devices to check
	waiting map[string]struct{} // devices whose delivery waits for an attestation
	wake    chan struct{}
}

// NewService returns a delivery service; Run delivers.
func NewService(cfg ServiceConfig) *Service {
	s := &Service{store: cfg.Store, deliveries: cfg.Deliveries, inv: cfg.Devices, history: cfg.Attestations,
		pcrs: cfg.PCRs, send: cfg.Send, connected: cfg.Connected, current: cfg.Current, rand: cfg.Rand,
		now: cfg.Now, log: cfg.Logger,
		pending: map[string]struct{}{}, waiting: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// BoundPCRs are the sha256 PCRs of the attestation selections (nil
// selections: the attestation service's default), the PCRs a PCR-bound
// secret is sealed to; nil when no selection quotes the sha256 bank.
func BoundPCRs(sels []wire.PCRSelection) []int {
	if sels == nil {
		return wire.DefaultPCRs()
	}
	for _, s := range sels {
		if s.Hash == wire.AlgSHA256 {
			return slices.Clone(s.PCRs)
		}
	}
	return nil
}

// Queue marks a device to be checked by the worker: it said hello, or
// passed an attestation.
func (s *Service) Queue(deviceID string) {
	s.mu.Lock()
	s.pending[deviceID] = struct{}{}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run delivers, and rotates scheduled secrets when due, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	tick := time.NewTicker(retryInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-tick.C:
			s.rotateDue(ctx)
			s.mu.Lock()
			for id := range s.waiting {
				s.pending[id] = struct{}{}
			}
			clear(s.waiting)
			s.mu.Unlock()
		}
		for ctx.Err() == nil {
			s.mu.Lock()
			var id string
			for id = range s.pending {
				break
			}
			delete(s.pending, id)
			s.mu.Unlock()
			if id == "" {
				break
			}
			s.deliver(ctx, id)
		}
	}
}

// deliver sends a connected active device every secret that targets it
// and whose latest version it has not acknowledged.
func (s *Service) deliver(ctx context.Context, deviceID string) {
	if s.connected != nil && !s.connected(deviceID) {
		return // sent on its next connect
	}
	list, listErr := s.store.List(ctx)
	if listErr == nil && len(list) == 0 {
		return // nothing to deliver: no need to read the device
	}
	dev, err := s.inv.Device(context.TODO(), deviceID)
	if err != nil || dev.State != inventory.StateActive || len(dev.EKPublic) == 0 {
		return
	}
	if listErr != nil {
		s.log.Warn("secrets: listing failed", "err", listErr)
		return
	}
	var due []string
	for _, l := range list {
		if !l.Target.Matches(dev.ID, dev.Group, dev.Model) {
			continue
		}
		rec, err := s.deliveries.Get(ctx, l.Name, dev.ID)
		if err != nil {
			s.log.Warn("secrets: delivery state unreadable", "name", l.Name, "device_id", dev.ID, "err", err)
			continue
		}
		if rec.Acked >= l.Version {
			continue
		}
		due = append(due, l.Name)
	}
	if len(due) == 0 {
		return
	}
	cur := errNoCurrentCheck
	if s.current != nil {
		cur = s.current(dev.ID)
	}
	if cur != nil {
		// An earlier pass proves nothing about the device now.
		s.mu.Lock()
		s.waiting[dev.ID] = struct{}{}
		s.mu.Unlock()
		for _, name := range due {
			s.fail(ctx, dev.ID, name, fmt.Errorf("%w (%w)", errNotCurrent, cur))
		}
		return
	}
	for _, name := range due {
		s.deliverOne(ctx, dev, name)
	}
}

var (
	// errNotCurrent: a delivery waits for a current passing attestation.
	errNotCurrent = errors.New("waiting for a passing attestation in the device's current session")
	// errNoCurrentCheck: the service was built without a way to judge
	// attestations, so it delivers nothing.
	errNoCurrentCheck = errors.New("no attestation check configured")
	// errNoAttestation refuses a PCR-bound delivery to a device that has
	// not passed an attestation yet.
	errNoAttestation = errors.New("no passing attestation with sha256 PCR values yet: a PCR-bound secret is delivered after the device's first passing attestation")
)

// deliverOne wraps the latest version of name to dev's EK and sends it.
func (s *Service) deliverOne(ctx context.Context, dev *inventory.Device, name string) {
	sec, err := s.store.Get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return // deleted meanwhile
	}
	if err != nil {
		s.fail(ctx, dev.ID, name, err)
		return
	}
	defer clear(sec.Value)
	var (
		sel    *wire.PCRSelection
		values [][]byte
	)
	if sec.PCRBound {
		if sel, values, err = s.attestedPCRs(dev.ID); err != nil {
			if errors.Is(err, errNoAttestation) {
				s.mu.Lock()
				s.waiting[dev.ID] = struct{}{}
				s.mu.Unlock()
			}
			s.fail(ctx, dev.ID, name, err)
			return
		}
	}
	blob, err := Wrap(s.rand, dev.EKPublic, sec.Value, sel, values)
	if err != nil {
		s.fail(ctx, dev.ID, name, err)
		return
	}
	msg := blob.Deliver(name, sec.Version)
	msg.Grace = uint32(time.Duration(sec.Grace) / time.Second)
	payload, err := wire.Encode(wire.TypeSecretDeliver, nil, s.now(), msg)
	if err != nil {
		s.fail(ctx, dev.ID, name, err)
		return
	}
	// Recorded as sent before it is: the device's ack may be handled
	// (by another replica of a broker pool) before the publish returns,
	// and an ack counts only for a version sent. Undone if the publish
	// fails, only while the record is still this attempt's: another
	// replica may have delivered the same version meanwhile (the device
	// reconnected through another broker), and its delivery stands.
	now := s.now().UTC()
	attempt := rand.Text()
	var prev Delivery
	err = s.deliveries.Update(ctx, name, dev.ID, func(r *Delivery) {
		prev = *r
		r.Sent, r.SentAt, r.Attempt, r.Error, r.ErrorAt = sec.Version, now, attempt, "", time.Time{}
	})
	if err != nil {
		s.fail(ctx, dev.ID, name, fmt.Errorf("recording the delivery: %w", err))
		return
	}
	if err := s.send(dev.ID, "secret", payload); err != nil {
		s.log.Warn("secret not delivered", "name", name, "device_id", dev.ID, "err", err)
		failedAt, msg := s.now().UTC(), err.Error()
		if uerr := s.deliveries.UpdateExisting(context.WithoutCancel(ctx), name, dev.ID, func(r *Delivery) {
			if r.Attempt != attempt || r.Acked >= sec.Version {
				return // another delivery's record, or acknowledged: it stands
			}
			r.Sent, r.SentAt, r.Attempt = prev.Sent, prev.SentAt, prev.Attempt
			r.Error, r.ErrorAt = msg, failedAt
		}); uerr != nil {
			s.log.Warn("secrets: undoing a delivery record failed", "name", name, "device_id", dev.ID, "err", uerr)
		}
		return
	}
	s.log.Info("secret sent", "name", name, "version", sec.Version, "device_id", dev.ID, "pcr_bound", sel != nil)
	_ = s.inv.AddEvent(context.TODO(), inventory.Event{Time: now, DeviceID: dev.ID, Kind: "secret-delivered",
		Detail: fmt.Sprintf("secret %s version %d sealed to the EK (PCR-bound: %v)", name, sec.Version, sel != nil)})
}

// fail records why a delivery could not be made.
func (s *Service) fail(ctx context.Context, deviceID, name string, cause error) {
	msg := cause.Error()
	if r, err := s.deliveries.Get(ctx, name, deviceID); err == nil && r.Error == msg {
		return // already recorded (a retry while waiting for an attestation)
	}
	s.log.Warn("secret not delivered", "name", name, "device_id", deviceID, "err", cause)
	now := s.now().UTC()
	if err := s.deliveries.Update(ctx, name, deviceID, func(r *Delivery) { r.Error, r.ErrorAt = msg, now }); err != nil {
		s.log.Warn("secrets: recording a failure failed", "name", name, "device_id", deviceID, "err", err)
	}
}

// attestedPCRs returns the sealing selection and the values of the bound
// PCRs from the device's newest passing attestation (verified quote
// values, recorded in the history).
func (s *Service) attestedPCRs(deviceID string) (*wire.PCRSelection, [][]byte, error) {
	if len(s.pcrs) == 0 {
		return nil, nil, errors.New("the fleet does not quote the sha256 PCR bank (attest_banks), so it cannot bind secrets to PCRs")
	}
	recs, err := s.history.List(context.Background(), deviceID, 100)
	if err != nil {
		return nil, nil, fmt.Errorf("attestation history: %w", err)
	}
next:
	for _, r := range recs {
		bank := r.PCRs["sha256"]
		if r.Result != wire.VerdictPass || bank == nil {
			continue
		}
		values := make([][]byte, 0, len(s.pcrs))
		for _, p := range s.pcrs {
			v, err := hex.DecodeString(bank[p])
			if err != nil || len(v) != 32 {
				continue next
			}
			values = append(values, v)
		}
		return &wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: slices.Clone(s.pcrs)}, values, nil
	}
	return nil, nil, errNoAttestation
}

// Ack records a device's secret.ack. deviceID is the authenticated sender.
func (s *Service) Ack(deviceID string, env *wire.Envelope) {
	var a wire.SecretAck
	if err := wire.DecodeBody(env, wire.TypeSecretAck, &a); err != nil {
		s.log.Warn("malformed secret ack", "device_id", deviceID, "err", err)
		return
	}
	now := s.now().UTC()
	err := s.deliveries.UpdateExisting(context.TODO(), a.Name, deviceID, func(r *Delivery) {
		if a.Version > r.Sent {
			return // never sent: not the device's to acknowledge
		}
		if !a.OK {
			r.Error, r.ErrorAt = "device: "+a.Error, now
			return
		}
		if a.Version > r.Acked {
			r.Acked, r.AckedAt = a.Version, now
		}
		if r.Acked >= r.Sent {
			r.Error, r.ErrorAt = "", time.Time{}
		}
	})
	if err != nil {
		s.log.Warn("secrets: recording an ack failed", "name", a.Name, "device_id", deviceID, "err", err)
		return
	}
	if a.OK {
		s.log.Info("secret acknowledged", "name", a.Name, "version", a.Version, "device_id", deviceID)
		_ = s.inv.AddEvent(context.TODO(), inventory.Event{Time: now, DeviceID: deviceID, Kind: "secret-acknowledged",
			Detail: fmt.Sprintf("secret %s version %d imported into the TPM", a.Name, a.Version)})
	} else {
		s.log.Warn("device could not import a secret", "name", a.Name, "version", a.Version, "device_id", deviceID, "err", a.Error)
	}
}

// Put stores value as a new version of name, then delivers it to the
// targeted connected devices.
func (s *Service) Put(name string, value []byte, target Target, pcrBound bool) (*Info, error) {
	version, err := s.store.Put(context.TODO(), name, value, target, pcrBound)
	if err != nil {
		return nil, err
	}
	sec, err := s.store.GetVersion(context.TODO(), name, version)
	if err != nil {
		return nil, err
	}
	clear(sec.Value)
	if err := s.queueTarget(target); err != nil {
		s.log.Warn("secrets: finding the targeted devices failed; they receive the secret when they connect", "name", name, "err", err)
	}
	return &sec.Info, nil
}

// rotateDue stores a new random version of every scheduled secret that is
// due and starts delivering it.
func (s *Service) rotateDue(ctx context.Context) {
	now := s.now()
	due, err := s.store.Due(ctx, now)
	if err != nil {
		s.log.Warn("secrets: checking rotation schedules failed", "err", err)
		return
	}
	for _, name := range due {
		info, err := s.store.RotateDue(ctx, name, now)
		if err != nil {
			s.log.Warn("secrets: scheduled rotation failed", "name", name, "err", err)
			continue
		}
		if info != nil { // nil: another replica rotated it
			s.rotated(info)
		}
	}
}

// Rotate stores a new random version now (the secret needs a schedule),
// delivered to the targeted connected devices.
func (s *Service) Rotate(name string) (*Info, error) {
	info, err := s.store.Rotate(context.TODO(), name)
	if err != nil {
		return nil, err
	}
	s.rotated(info)
	return info, nil
}

// rotated starts delivering a new version a rotation stored.
func (s *Service) rotated(info *Info) {
	s.log.Info("secret rotated", "name", info.Name, "version", info.Version)
	if err := s.queueTarget(info.Target); err != nil {
		s.log.Warn("secrets: finding the targeted devices failed; they receive the secret when they connect", "name", info.Name, "err", err)
	}
}

// SetRotation sets (nil clears) the secret's rotation schedule.
func (s *Service) SetRotation(name string, r *Rotation) error {
	return s.store.SetRotation(context.TODO(), name, r)
}

// queueTarget queues the connected devices target matches.
func (s *Service) queueTarget(t Target) error {
	if t.Device != "" {
		s.Queue(t.Device)
		return nil
	}
	f := inventory.Filter{State: inventory.StateActive, Model: t.Model, Limit: 1000}
	for {
		devs, next, err := s.inv.ListDevices(context.TODO(), f)
		if err != nil {
			return err
		}
		for i := range devs {
			d := &devs[i]
			if t.Matches(d.ID, d.Group, d.Model) && (s.connected == nil || s.connected(d.ID)) {
				s.Queue(d.ID)
			}
		}
		if next == "" {
			return nil
		}
		f.After = next
	}
}

// List returns every secret with its delivery summary.
func (s *Service) List() ([]Status, error) {
	list, err := s.store.List(context.TODO())
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(list))
	for _, l := range list {
		sum, err := s.deliveries.Summary(context.TODO(), l.Name, l.Version)
		if err != nil {
			return nil, err
		}
		out = append(out, Status{Listing: l, Delivery: sum})
	}
	return out, nil
}

// Delete removes every version of name. Delivery records stay: the device
// still holds what it acknowledged.
func (s *Service) Delete(name string) error { return s.store.Delete(context.TODO(), name) }

// DeviceSecrets returns every secret that targets the device or was
// delivered to it, with its delivery state, by name.
func (s *Service) DeviceSecrets(deviceID string) ([]DeviceStatus, error) {
	dev, err := s.inv.Device(context.TODO(), deviceID)
	if err != nil {
		return nil, err
	}
	list, err := s.store.List(context.TODO())
	if err != nil {
		return nil, err
	}
	recs, err := s.deliveries.ForDevice(context.TODO(), deviceID)
	if err != nil {
		return nil, err
	}
	byName := map[string]DeviceStatus{}
	for name, r := range recs {
		byName[name] = DeviceStatus{Name: name, Sent: r.Sent, SentAt: r.SentAt, Acked: r.Acked, AckedAt: r.AckedAt, Error: r.Error, ErrorAt: r.ErrorAt}
	}
	for _, l := range list {
		if !l.Target.Matches(dev.ID, dev.Group, dev.Model) {
			if v, ok := byName[l.Name]; ok {
				v.PCRBound = l.PCRBound
				byName[l.Name] = v
			}
			continue
		}
		v := byName[l.Name]
		v.Name, v.Latest, v.PCRBound = l.Name, l.Version, l.PCRBound
		byName[l.Name] = v
	}
	out := make([]DeviceStatus, 0, len(byName))
	for _, v := range byName {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b DeviceStatus) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out, nil
}
