package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// DeliveriesFile, relative to DataDir, records which version of which
// secret was sent to and acknowledged by which device. The secrets
// themselves are in secrets.DBFile, encrypted under secrets.KeyFile (0600).
const DeliveriesFile = "secret-deliveries.db"

// secretRetry is how often devices whose PCR-bound delivery waits for a
// passing attestation are tried again while connected.
const secretRetry = 2 * time.Second

// errNoAttestation refuses a PCR-bound delivery to a device that has not
// passed an attestation yet.
var errNoAttestation = errors.New("no passing attestation with sha256 PCR values yet: a PCR-bound secret is delivered after the device's first passing attestation")

// secretService delivers sealed secrets (docs/PROTOCOL.md, "Sealed
// secrets"): to every targeted active device that is connected when a
// version is stored, and to a device on each connect for every secret
// whose latest version it has not acknowledged (on its hello, which it
// sends once subscribed) — each time only once the device's attestation
// is current (a pass in its present session, recent enough: current, the
// fleet's attest.Service.Current); until then it waits and is tried again
// on the next pass and every secretRetry. Each delivery is wrapped
// to the device's enrolled EK (inventory); a PCR-bound one also to the
// sha256 values of the quoted PCRs in the device's newest passing
// attestation. One worker does the wrapping, off the broker's and the
// API's goroutines.
type secretService struct {
	store      *secrets.Store
	deliveries *deliveries
	inv        *inventory.Store
	history    *attest.History
	pcrs       []int // sha256 PCRs a PCR-bound secret is sealed to; nil when the bank is not quoted
	send       func(deviceID, kind string, payload []byte) error
	connected  func(deviceID string) bool
	rand       io.Reader // nil: crypto/rand
	now        func() time.Time
	log        *slog.Logger

	// current is nil when the device's attestation is current enough for
	// a secret to go out; nil current delivers nothing.
	current func(deviceID string) error

	mu      sync.Mutex
	pending map[string]struct{} // devices to check
	waiting map[string]struct{} // devices whose PCR-bound delivery waits for an attestation
	wake    chan struct{}
}

var _ api.Secrets = (*secretService)(nil)

func newSecretService(s *secretService) *secretService {
	s.pending, s.waiting, s.wake = map[string]struct{}{}, map[string]struct{}{}, make(chan struct{}, 1)
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// boundPCRs are the sha256 PCRs of the attestation selections.
func boundPCRs(sels []wire.PCRSelection) []int {
	if sels == nil { // the attestation service's default
		return wire.DefaultPCRs()
	}
	for _, s := range sels {
		if s.Hash == wire.AlgSHA256 {
			return slices.Clone(s.PCRs)
		}
	}
	return nil
}

// queue marks a device to be checked by the worker.
func (s *secretService) queue(deviceID string) {
	s.mu.Lock()
	s.pending[deviceID] = struct{}{}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends.
func (s *secretService) Run(ctx context.Context) error {
	tick := time.NewTicker(secretRetry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-tick.C:
			s.rotateDue()
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
			s.deliver(id)
		}
	}
}

// deliver sends a connected active device every secret that targets it
// and whose latest version it has not acknowledged.
func (s *secretService) deliver(deviceID string) {
	if s.connected != nil && !s.connected(deviceID) {
		return // sent on its next connect
	}
	dev, err := s.inv.Device(deviceID)
	if err != nil || dev.State != inventory.StateActive || len(dev.EKPublic) == 0 {
		return
	}
	list, err := s.store.List()
	if err != nil {
		s.log.Warn("secrets: listing failed", "err", err)
		return
	}
	var due []string
	for _, l := range list {
		if !l.Target.Matches(dev.ID, dev.Group, dev.Model) {
			continue
		}
		rec, err := s.deliveries.get(l.Name, dev.ID)
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
			s.fail(dev.ID, name, fmt.Errorf("%w (%w)", errNotCurrent, cur))
		}
		return
	}
	for _, name := range due {
		s.deliverOne(dev, name)
	}
}

var (
	// errNotCurrent: a delivery waits for a current passing attestation.
	errNotCurrent = errors.New("waiting for a passing attestation in the device's current session")
	// errNoCurrentCheck: the service was built without a way to judge
	// attestations, so it delivers nothing.
	errNoCurrentCheck = errors.New("no attestation check configured")
)

// deliverOne wraps the latest version of name to dev's EK and sends it.
func (s *secretService) deliverOne(dev *inventory.Device, name string) {
	sec, err := s.store.Get(name)
	if errors.Is(err, secrets.ErrNotFound) {
		return // deleted meanwhile
	}
	if err != nil {
		s.fail(dev.ID, name, err)
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
			s.fail(dev.ID, name, err)
			return
		}
	}
	blob, err := secrets.Wrap(s.rand, dev.EKPublic, sec.Value, sel, values)
	if err != nil {
		s.fail(dev.ID, name, err)
		return
	}
	msg := blob.Deliver(name, sec.Version)
	msg.Grace = uint32(time.Duration(sec.Grace) / time.Second)
	payload, err := wire.Encode(wire.TypeSecretDeliver, nil, s.now(), msg)
	if err == nil {
		err = s.send(dev.ID, "secret", payload)
	}
	if err != nil {
		s.fail(dev.ID, name, err)
		return
	}
	now := s.now().UTC()
	err = s.deliveries.update(name, dev.ID, func(r *delivery) {
		r.Sent, r.SentAt, r.Error, r.ErrorAt = sec.Version, now, "", time.Time{}
	})
	if err != nil {
		s.log.Warn("secrets: recording a delivery failed", "name", name, "device_id", dev.ID, "err", err)
	}
	s.log.Info("secret sent", "name", name, "version", sec.Version, "device_id", dev.ID, "pcr_bound", sel != nil)
	_ = s.inv.AddEvent(inventory.Event{Time: now, DeviceID: dev.ID, Kind: "secret-delivered",
		Detail: fmt.Sprintf("secret %s version %d sealed to the EK (PCR-bound: %v)", name, sec.Version, sel != nil)})
}

// fail records why a delivery could not be made.
func (s *secretService) fail(deviceID, name string, cause error) {
	msg := cause.Error()
	if r, err := s.deliveries.get(name, deviceID); err == nil && r.Error == msg {
		return // already recorded (a retry while waiting for an attestation)
	}
	s.log.Warn("secret not delivered", "name", name, "device_id", deviceID, "err", cause)
	now := s.now().UTC()
	if err := s.deliveries.update(name, deviceID, func(r *delivery) { r.Error, r.ErrorAt = msg, now }); err != nil {
		s.log.Warn("secrets: recording a failure failed", "name", name, "device_id", deviceID, "err", err)
	}
}

// attestedPCRs returns the sealing selection and the values of the bound
// PCRs from the device's newest passing attestation (verified quote
// values, recorded in the history).
func (s *secretService) attestedPCRs(deviceID string) (*wire.PCRSelection, [][]byte, error) {
	if len(s.pcrs) == 0 {
		return nil, nil, errors.New("the fleet does not quote the sha256 PCR bank (attest_banks), so it cannot bind secrets to PCRs")
	}
	recs, err := s.history.List(deviceID, 100)
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

// ack records a device's secret.ack. deviceID is the authenticated sender.
func (s *secretService) ack(deviceID string, env *wire.Envelope) {
	var a wire.SecretAck
	if err := wire.DecodeBody(env, wire.TypeSecretAck, &a); err != nil {
		s.log.Warn("malformed secret ack", "device_id", deviceID, "err", err)
		return
	}
	now := s.now().UTC()
	err := s.deliveries.updateExisting(a.Name, deviceID, func(r *delivery) {
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
		_ = s.inv.AddEvent(inventory.Event{Time: now, DeviceID: deviceID, Kind: "secret-acknowledged",
			Detail: fmt.Sprintf("secret %s version %d imported into the TPM", a.Name, a.Version)})
	} else {
		s.log.Warn("device could not import a secret", "name", a.Name, "version", a.Version, "device_id", deviceID, "err", a.Error)
	}
}

// Put implements api.Secrets: store, then deliver to the targeted
// connected devices.
func (s *secretService) Put(name string, value []byte, target secrets.Target, pcrBound bool) (*secrets.Info, error) {
	version, err := s.store.Put(name, value, target, pcrBound)
	if err != nil {
		return nil, err
	}
	sec, err := s.store.GetVersion(name, version)
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
func (s *secretService) rotateDue() {
	due, err := s.store.Due(s.now())
	if err != nil {
		s.log.Warn("secrets: checking rotation schedules failed", "err", err)
		return
	}
	for _, name := range due {
		if _, err := s.Rotate(name); err != nil {
			s.log.Warn("secrets: scheduled rotation failed", "name", name, "err", err)
		}
	}
}

// Rotate implements api.Secrets: a new random version now, delivered to
// the targeted connected devices.
func (s *secretService) Rotate(name string) (*secrets.Info, error) {
	info, err := s.store.Rotate(name)
	if err != nil {
		return nil, err
	}
	s.log.Info("secret rotated", "name", name, "version", info.Version)
	if err := s.queueTarget(info.Target); err != nil {
		s.log.Warn("secrets: finding the targeted devices failed; they receive the secret when they connect", "name", name, "err", err)
	}
	return info, nil
}

// SetRotation implements api.Secrets.
func (s *secretService) SetRotation(name string, r *secrets.Rotation) error {
	return s.store.SetRotation(name, r)
}

// queueTarget queues the connected devices target matches.
func (s *secretService) queueTarget(t secrets.Target) error {
	if t.Device != "" {
		s.queue(t.Device)
		return nil
	}
	f := inventory.Filter{State: inventory.StateActive, Model: t.Model, Limit: 1000}
	for {
		devs, next, err := s.inv.ListDevices(f)
		if err != nil {
			return err
		}
		for i := range devs {
			d := &devs[i]
			if t.Matches(d.ID, d.Group, d.Model) && (s.connected == nil || s.connected(d.ID)) {
				s.queue(d.ID)
			}
		}
		if next == "" {
			return nil
		}
		f.After = next
	}
}

// List implements api.Secrets.
func (s *secretService) List() ([]api.SecretStatus, error) {
	list, err := s.store.List()
	if err != nil {
		return nil, err
	}
	out := make([]api.SecretStatus, 0, len(list))
	for _, l := range list {
		sum, err := s.deliveries.summary(l.Name, l.Version)
		if err != nil {
			return nil, err
		}
		out = append(out, api.SecretStatus{Listing: l, Delivery: sum})
	}
	return out, nil
}

// Delete implements api.Secrets. Delivery records stay: the device still
// holds what it acknowledged.
func (s *secretService) Delete(name string) error { return s.store.Delete(name) }

// DeviceSecrets implements api.Secrets: every secret that targets the
// device or was delivered to it.
func (s *secretService) DeviceSecrets(deviceID string) ([]api.DeviceSecret, error) {
	dev, err := s.inv.Device(deviceID)
	if err != nil {
		return nil, err
	}
	list, err := s.store.List()
	if err != nil {
		return nil, err
	}
	recs, err := s.deliveries.forDevice(deviceID)
	if err != nil {
		return nil, err
	}
	byName := map[string]api.DeviceSecret{}
	for name, r := range recs {
		byName[name] = api.DeviceSecret{Name: name, Sent: r.Sent, SentAt: r.SentAt, Acked: r.Acked, AckedAt: r.AckedAt, Error: r.Error, ErrorAt: r.ErrorAt}
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
	out := make([]api.DeviceSecret, 0, len(byName))
	for _, v := range byName {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b api.DeviceSecret) int {
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

// delivery is the state of one secret at one device.
type delivery struct {
	Sent    int       `json:"sent,omitempty"`
	SentAt  time.Time `json:"sent_at,omitzero"`
	Acked   int       `json:"acked,omitempty"`
	AckedAt time.Time `json:"acked_at,omitzero"`
	Error   string    `json:"error,omitempty"`
	ErrorAt time.Time `json:"error_at,omitzero"`
}

// deliveries keeps delivery records in bbolt: a bucket per secret name
// whose keys are device IDs and values JSON deliveries.
type deliveries struct{ db *bolt.DB }

func openDeliveries(path string) (*deliveries, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("server: open %s: %w", path, err)
	}
	return &deliveries{db: db}, nil
}

func (d *deliveries) Close() error { return d.db.Close() }

func (d *deliveries) get(name, deviceID string) (delivery, error) {
	var r delivery
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(deviceID)); v != nil {
			return json.Unmarshal(v, &r)
		}
		return nil
	})
	return r, err
}

func (d *deliveries) update(name, deviceID string, fn func(*delivery)) error {
	return d.modify(name, deviceID, true, fn)
}

// updateExisting changes a record only when one exists.
func (d *deliveries) updateExisting(name, deviceID string, fn func(*delivery)) error {
	return d.modify(name, deviceID, false, fn)
}

func (d *deliveries) modify(name, deviceID string, create bool, fn func(*delivery)) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil && !create {
			return nil
		}
		b, err := tx.CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		var r delivery
		v := b.Get([]byte(deviceID))
		if v == nil && !create {
			return nil
		}
		if v != nil {
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
		}
		fn(&r)
		nv, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put([]byte(deviceID), nv)
	})
}

// forDevice returns a device's records by secret name.
func (d *deliveries) forDevice(deviceID string) (map[string]delivery, error) {
	out := map[string]delivery{}
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if v := b.Get([]byte(deviceID)); v != nil {
				var r delivery
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
				out[string(name)] = r
			}
			return nil
		})
	})
	return out, err
}

// summary counts the devices by where version of name got.
func (d *deliveries) summary(name string, version int) (api.DeliverySummary, error) {
	var sum api.DeliverySummary
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var r delivery
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			switch {
			case r.Acked >= version:
				sum.Acked++
			case r.Error != "":
				sum.Failed++
			case r.Sent >= version:
				sum.Pending++
			}
			return nil
		})
	})
	return sum, err
}
