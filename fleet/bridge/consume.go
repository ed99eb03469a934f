package bridge

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Why a bridged message was refused: the reason label of
// sigil_bridge_messages_refused_total and the keys of Health.Refused.
const (
	RefusedSignature = "signature" // the envelope's signature or key ID is not the device's current certificate's
	RefusedReplay    = "replay"    // its counter is not above the last one accepted from the device
	RefusedTopic     = "topic"     // bound to another topic than the one it arrived on
	RefusedSite      = "site"      // the device is not assigned to the bridge's site
	RefusedDevice    = "device"    // unknown device, or one holding no current certificate (revoked, decommissioned)
	RefusedMalformed = "malformed" // not an envelope of the profile, or not a device up-topic
	RefusedInternal  = "internal"  // the fleet could not read or store what the check needs
)

var refusedReasons = []string{RefusedSignature, RefusedReplay, RefusedTopic, RefusedSite, RefusedDevice, RefusedMalformed, RefusedInternal}

// Errors of the site assignment.
var (
	// ErrOtherSite: the device is not assigned to the site its message
	// came from (or to none).
	ErrOtherSite = errors.New("bridge: the device is not assigned to this site")
)

var (
	bucketSites    = []byte("device_sites")    // device ID -> site
	bucketCounters = []byte("device_counters") // device ID -> last accepted envelope counter
)

// Broker is what Consume uses of the fleet's embedded broker
// (*broker.Broker).
type Broker interface {
	Subscribe(filter string, handler func(id broker.Identity, topic string, payload []byte)) error
	BridgeConnected(site string) bool
}

var _ Broker = (*broker.Broker)(nil)

// Consume configures the fleet's consumer of bridged device messages.
type Consume struct {
	// Devices is the inventory. Required.
	Devices Devices
	// TrustDomain names the fleet's devices in their certificates.
	TrustDomain string
	// Dispatch receives each accepted message as the device's direct
	// message: the identity of the device (ClientID the bridge's, Site
	// the bridge's site, Cert the device's current certificate), the
	// device's own topic <prefix>/v1/dev/<id>/up/<kind> and the wire
	// message the envelope carried. The fleet passes its deviceMessage,
	// which applies admission.Check (a quarantined device's telemetry is
	// refused there) and dispatches. Required.
	Dispatch func(id broker.Identity, topic string, payload []byte)
	// Metrics registers sigil_bridge_messages_{accepted,refused}_total;
	// nil registers nothing.
	Metrics prometheus.Registerer
}

// consumer is the state of Consume: per-site health and counters.
type consumer struct {
	cfg      Consume
	b        Broker
	accepted *prometheus.CounterVec
	refused  *prometheus.CounterVec

	mu     sync.Mutex
	health map[string]*Health // by site
}

// Health is what the fleet saw of a site's bridge since it started.
type Health struct {
	// Connected: the bridge holds an admitted session at the fleet's broker now.
	Connected bool `json:"connected"`
	// LastSeen is when the bridge last carried a device message (accepted
	// or refused); zero if never since the fleet started.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Accepted counts the messages accepted from it.
	Accepted uint64 `json:"accepted"`
	// Refused counts the refused ones by reason (Refused*).
	Refused map[string]uint64 `json:"refused"`
}

// Consume subscribes, on b, to every site's device up-topics
// (<prefix>/site/+/v1/dev/+/up/#) and serves them as Handle describes.
func (s *Service) Consume(b Broker, cfg Consume) error {
	if cfg.Devices == nil || cfg.Dispatch == nil {
		return fmt.Errorf("%w: Consume needs Devices and Dispatch", ErrInvalid)
	}
	c := &consumer{cfg: cfg, b: b, health: map[string]*Health{},
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sigil_bridge_messages_accepted_total",
			Help: "Device messages accepted through an OT bridge, by site."}, []string{"site"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sigil_bridge_messages_refused_total",
			Help: "Device messages refused on an OT bridge, by site and reason."}, []string{"site", "reason"}),
	}
	if cfg.Metrics != nil {
		for _, m := range []prometheus.Collector{c.accepted, c.refused} {
			if err := cfg.Metrics.Register(m); err != nil {
				return fmt.Errorf("bridge: metrics: %w", err)
			}
		}
	}
	s.consumer.Store(c)
	filter := strings.TrimSuffix(broker.SitePrefix(s.cfg.Topics, "+"), "/") + "/v1/" + wire.SegDevice + "/+/" + wire.Up + "/#"
	return b.Subscribe(filter, s.Handle)
}

// Health returns what the fleet saw of a site's bridge since it started
// (zero counts before Consume); Refused holds every reason.
func (s *Service) Health(site string) Health {
	h := Health{Refused: map[string]uint64{}}
	for _, r := range refusedReasons {
		h.Refused[r] = 0 // every reason shown, zero or not
	}
	c := s.consumer.Load()
	if c == nil {
		return h
	}
	h.Connected = c.b.BridgeConnected(site)
	c.mu.Lock()
	defer c.mu.Unlock()
	if got := c.health[site]; got != nil {
		h.LastSeen, h.Accepted = got.LastSeen, got.Accepted
		maps.Copy(h.Refused, got.Refused)
	}
	return h
}

// Handle serves one message a bridge published (the broker's identity of
// the bridge, the topic it arrived on). It dispatches the envelope's
// payload (Consume.Dispatch) only once every check passed, in order:
// (1) the sender is a bridge and the topic is a device up-topic under its
// site's prefix, <prefix>/site/<site>/v1/dev/<id>/up/<kind>
// (RefusedMalformed); (2) the device is in the inventory (RefusedDevice);
// (3) it is assigned to that site by an operator (AssignSite;
// RefusedSite) — the message's claims are never read for it;
// (4) VerifyDevice against the device's current certificate and state,
// with the topic it arrived on (the remapped form) and the last counter
// accepted from that certificate (RefusedDevice,
// RefusedSignature, RefusedTopic, RefusedReplay, RefusedMalformed);
// (5) the counter is stored durably, only if still above the stored one
// (RefusedReplay: a concurrent duplicate). A refusal is counted by site
// and reason (metrics, Health) and audited in aggregate: one
// bridge.refused entry when a site's count of a reason reaches 1, 10,
// 100, … (never one per message).
func (s *Service) Handle(id broker.Identity, topic string, payload []byte) {
	c := s.consumer.Load()
	if c == nil || id.Site == "" {
		return // only bridges publish under a site's prefix (broker)
	}
	ctx := context.TODO()
	deviceID, local, err := s.localTopic(id.Site, topic)
	if err != nil {
		s.refuse(ctx, c, id.Site, deviceID, RefusedMalformed, err)
		return
	}
	v, cert, err := s.verify(ctx, c, id.Site, deviceID, topic, payload)
	if err == nil {
		err = s.AdvanceCounter(ctx, deviceID, v.KeyID, v.Counter)
	}
	if err != nil {
		s.refuse(ctx, c, id.Site, deviceID, reasonOf(err), err)
		return
	}
	c.seen(s.cfg.Now(), id.Site, "")
	c.accepted.WithLabelValues(id.Site).Inc()
	c.cfg.Dispatch(broker.Identity{ClientID: id.ClientID, DeviceID: deviceID, Cert: cert, Site: id.Site}, local, v.Payload)
}

// localTopic maps <prefix>/site/<site>/v1/dev/<id>/up/<kind> to the
// device's own <prefix>/v1/dev/<id>/up/<kind>.
func (s *Service) localTopic(site, topic string) (deviceID, local string, err error) {
	rest, ok := strings.CutPrefix(topic, s.Prefix(site))
	if !ok {
		return "", "", fmt.Errorf("bridge: topic %q is not under site %s", topic, site)
	}
	t := s.cfg.Topics
	prefix := t.Prefix
	if prefix == "" {
		prefix = wire.DefaultPrefix
	}
	local = prefix + "/" + rest
	tp, err := t.Parse(local)
	if err != nil || tp.Segment != wire.SegDevice || tp.Dir != wire.Up {
		return "", "", fmt.Errorf("bridge: topic %q is not a device up-topic", topic)
	}
	return tp.ID, local, nil
}

func (s *Service) verify(ctx context.Context, c *consumer, site, deviceID, topic string, payload []byte) (*envelope.Verified, *x509.Certificate, error) {
	d, err := c.cfg.Devices.Device(ctx, deviceID)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge: device %s: %w", deviceID, err)
	}
	if err := s.inSite(ctx, deviceID, site); err != nil {
		return nil, nil, err
	}
	serial, after, err := s.Counter(ctx, deviceID)
	if err != nil {
		return nil, nil, err
	}
	if serial != d.CertSerial {
		after = 0 // a new certificate starts its counter afresh; the old one's envelopes fail its key ID
	}
	return verifyDevice(d, c.cfg.TrustDomain, deviceID, topic, payload, after, s.cfg.Now())
}

func (c *consumer) seen(now time.Time, site, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.health[site]
	if h == nil {
		h = &Health{Refused: map[string]uint64{}}
		c.health[site] = h
	}
	h.LastSeen = now.UTC()
	if reason == "" {
		h.Accepted++
		return
	}
	h.Refused[reason]++
}

// refuse counts a refusal and audits it when the count reaches a power of ten.
func (s *Service) refuse(ctx context.Context, c *consumer, site, deviceID, reason string, cause error) {
	c.seen(s.cfg.Now(), site, reason)
	c.refused.WithLabelValues(site, reason).Inc()
	c.mu.Lock()
	n := c.health[site].Refused[reason]
	c.mu.Unlock()
	s.log.Debug("bridge: bridged message refused", "site", site, "device_id", deviceID, "reason", reason, "err", cause)
	if powerOfTen(n) {
		s.log.Warn("bridge: bridged messages refused", "site", site, "reason", reason, "count", n)
		s.record(ctx, audit.New(audit.System("bridge"), "bridge.refused", site).
			With("reason", reason).With("count", fmt.Sprint(n)).With("last_device", deviceID))
	}
}

// reasonOf maps a refusal's cause to its reason, by type.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, envelope.ErrSignature), errors.Is(err, envelope.ErrKey):
		return RefusedSignature
	case errors.Is(err, envelope.ErrReplay):
		return RefusedReplay
	case errors.Is(err, envelope.ErrTopic):
		return RefusedTopic
	case errors.Is(err, envelope.ErrMalformed):
		return RefusedMalformed
	case errors.Is(err, ErrOtherSite):
		return RefusedSite
	case errors.Is(err, inventory.ErrNotFound), errors.Is(err, ErrNoCurrentCert):
		return RefusedDevice
	}
	return RefusedInternal
}

// AssignSite records, by the actor, that deviceID reaches the fleet
// through site's bridge (an empty site: through none). Only the operator
// says where a device is: the fleet accepts a bridged message from a
// device only through the bridge of its assigned site, whatever the
// message claims. Audited as bridge.assign.
func (s *Service) AssignSite(ctx context.Context, by audit.Actor, deviceID, site string) error {
	if !wire.ValidID(deviceID) || (site != "" && !wire.ValidID(site)) {
		return fmt.Errorf("%w: device %q, site %q", ErrInvalid, deviceID, site)
	}
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketSites)
		if err != nil {
			return err
		}
		if site == "" {
			return bk.Delete([]byte(deviceID))
		}
		return bk.Put([]byte(deviceID), []byte(site))
	})
	entry := audit.New(by, "bridge.assign", deviceID).With("site", site)
	if err != nil {
		s.record(ctx, entry.Fail(err))
		return fmt.Errorf("bridge: assign %s: %w", deviceID, err)
	}
	s.record(ctx, entry)
	return nil
}

// Site returns the site deviceID is assigned to ("" for none).
func (s *Service) Site(ctx context.Context, deviceID string) (string, error) {
	var site string
	err := s.db.View(ctx, func(tx kv.Tx) error {
		if bk := tx.Bucket(bucketSites); bk != nil {
			site = string(bk.Get([]byte(deviceID)))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("bridge: site of %s: %w", deviceID, err)
	}
	return site, nil
}

func (s *Service) inSite(ctx context.Context, deviceID, site string) error {
	got, err := s.Site(ctx, deviceID)
	if err != nil {
		return err
	}
	if got != site {
		return fmt.Errorf("%w: %s is assigned to %q, came through %s", ErrOtherSite, deviceID, got, site)
	}
	return nil
}

// Counter returns the serial of the certificate whose envelopes were last
// accepted from deviceID and the last counter accepted with it (zero
// values when none).
func (s *Service) Counter(ctx context.Context, deviceID string) (serial string, last uint64, err error) {
	err = s.db.View(ctx, func(tx kv.Tx) error {
		if bk := tx.Bucket(bucketCounters); bk != nil {
			serial, last = decodeCounter(bk.Get([]byte(deviceID)))
		}
		return nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("bridge: counter of %s: %w", deviceID, err)
	}
	return serial, last, nil
}

// AdvanceCounter records counter as the last accepted from deviceID's
// certificate serial, durably, only if it is above the one stored for
// that serial (envelope.ErrReplay otherwise: a replay, or a duplicate
// verified concurrently). A new serial starts afresh: envelopes of the
// device's older certificates no longer verify (their key ID).
func (s *Service) AdvanceCounter(ctx context.Context, deviceID, serial string, counter uint64) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketCounters)
		if err != nil {
			return err
		}
		if had, last := decodeCounter(bk.Get([]byte(deviceID))); had == serial && counter <= last {
			return fmt.Errorf("%w: counter %d, last stored %d", envelope.ErrReplay, counter, last)
		}
		return bk.Put([]byte(deviceID), append(binary.BigEndian.AppendUint64(nil, counter), serial...))
	})
}

// decodeCounter reads a counter record: the counter (8 bytes, big
// endian) then the certificate's hex serial.
func decodeCounter(v []byte) (serial string, last uint64) {
	if len(v) < 8 {
		return "", 0
	}
	return string(v[8:]), binary.BigEndian.Uint64(v)
}

// powerOfTen reports whether n is 1, 10, 100, …
func powerOfTen(n uint64) bool {
	for n >= 10 && n%10 == 0 {
		n /= 10
	}
	return n == 1
}
