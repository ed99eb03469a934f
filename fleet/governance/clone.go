package governance

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// CloneKind says how a clone was detected.
type CloneKind string

// Clone kinds.
const (
	CloneEK          CloneKind = "ek"          // one EK under two identities
	CloneCertificate CloneKind = "certificate" // one certificate serial used from two places
)

// Clone is a clone incident: raised once per device and kind until an
// operator resolves it.
type Clone struct {
	DeviceID   string    `json:"device_id"`
	Kind       CloneKind `json:"kind"`
	Serial     string    `json:"serial,omitempty"` // the certificate used twice
	Hosts      []string  `json:"hosts,omitempty"`  // where it was used from
	Evidence   string    `json:"evidence"`
	DetectedAt time.Time `json:"detected_at"`
	// Quarantined reports that the Quarantiner isolated the device;
	// QuarantineError says why it did not.
	Quarantined     bool      `json:"quarantined,omitempty"`
	QuarantineError string    `json:"quarantine_error,omitempty"`
	Resolved        bool      `json:"resolved,omitempty"`
	ResolvedBy      string    `json:"resolved_by,omitempty"`
	ResolvedAt      time.Time `json:"resolved_at,omitzero"`
	Note            string    `json:"note,omitempty"`
}

func cloneKey(deviceID string, kind CloneKind) []byte {
	return []byte(deviceID + "\x00" + string(kind))
}

func openClones(tx kv.Tx, deviceID string) ([]Clone, error) {
	var out []Clone
	for _, k := range []CloneKind{CloneEK, CloneCertificate} {
		c, err := get[Clone](tx, bucketClones, cloneKey(deviceID, k))
		if err != nil {
			return nil, err
		}
		if c != nil && !c.Resolved {
			out = append(out, *c)
		}
	}
	return out, nil
}

// Session is one MQTT connection of a device, as the broker admitted it.
type Session struct {
	DeviceID string
	// CertSerial is the certificate's serial (hex, as in the inventory);
	// empty when the broker does not say (a broker pool's connection
	// log: fleet/mqttpool), and the device's sessions are then followed
	// as one identity whatever certificate they present.
	CertSerial string
	Remote     string // "host:port": identifies the connection
	Time       time.Time
}

// identity is the key the session tracker follows a session under: its
// certificate serial, or its device when the serial is unknown (a 0 byte
// first: never a serial).
func (x Session) identity() string {
	if x.CertSerial != "" {
		return x.CertSerial
	}
	return "\x00" + x.DeviceID
}

// describe names an identity the tracker follows in an incident's
// evidence, and the serial to record (none for a device's identity).
func describe(identity string) (what, serial string) {
	if id, ok := strings.CutPrefix(identity, "\x00"); ok {
		return "the identity of device " + id, ""
	}
	return "certificate " + identity, identity
}

// SessionOpened records an admitted device connection and checks it for
// the takeover pattern of a clone (see the package doc). It works in
// memory only; a detected clone is acted on by the next Flush.
func (s *Service) SessionOpened(x Session) {
	if x.DeviceID == "" || x.Remote == "" {
		return
	}
	if x.Time.IsZero() {
		x.Time = s.cfg.Now()
	}
	s.sessions.opened(s, x)
}

// SessionClosed records the end of a connection. An empty Remote ends
// every session of the serial (a broker reporting only the last
// connection of a client).
func (s *Service) SessionClosed(x Session) {
	if x.DeviceID == "" && x.CertSerial == "" {
		return
	}
	s.sessions.closed(x)
}

// EKConflict raises a clone incident at once for an enrolled device
// (active or quarantined) whose EK was proven by a client claiming another
// identity (evidence says how). A record that never enrolled (pending) has
// no identity to clone: it is left alone, and so is a decommissioned one.
func (s *Service) EKConflict(deviceID, evidence string) error {
	d, err := s.cfg.Devices.Device(context.TODO(), deviceID)
	if err != nil {
		return fmt.Errorf("governance: EK conflict: %w", err)
	}
	if !cloneable(d) {
		s.log.Info("governance: EK conflict of a device that is not enrolled; no incident", "device_id", deviceID, "state", d.State)
		return nil
	}
	_, err = s.raiseClone(Clone{DeviceID: deviceID, Kind: CloneEK, Evidence: clean(evidence), DetectedAt: s.cfg.Now().UTC()})
	return err
}

// Clones lists clone incidents in device order, open ones only unless
// all is set.
func (s *Service) Clones(all bool) ([]Clone, error) {
	var out []Clone
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		return tx.Bucket(bucketClones).ForEach(func(_, v []byte) error {
			c, err := decode[Clone](v)
			if err != nil {
				return err
			}
			if all || !c.Resolved {
				out = append(out, *c)
			}
			return nil
		})
	})
	return out, err
}

// ResolveClone closes an open incident after an operator looked into it
// (the device stays quarantined: release it through attestation). For an
// EK incident it clears the inventory's clone-suspect flag. A new signal
// afterwards raises a new incident.
func (s *Service) ResolveClone(deviceID string, kind CloneKind, by, note string) error {
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		c, err := get[Clone](tx, bucketClones, cloneKey(deviceID, kind))
		if err != nil {
			return err
		}
		if c == nil || c.Resolved {
			return fmt.Errorf("%w: open %s clone incident for %q", ErrNotFound, kind, clean(deviceID))
		}
		c.Resolved, c.ResolvedBy, c.ResolvedAt, c.Note = true, clean(by), s.cfg.Now().UTC(), clean(note)
		return put(tx, bucketClones, cloneKey(deviceID, kind), c)
	})
	if err != nil {
		return err
	}
	if kind == CloneEK {
		if d, err := s.cfg.Devices.Device(context.TODO(), deviceID); err == nil {
			s.syncFlag(d, FlagCloneSuspect, false)
		}
	}
	s.sessions.forget(deviceID)
	s.Rescore(deviceID)
	return nil
}

// raiseClone records an incident unless one is open for the device and
// kind, then alerts and quarantines. It reports whether it was new.
func (s *Service) raiseClone(c Clone) (bool, error) {
	isNew := false
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		isNew = false
		old, err := get[Clone](tx, bucketClones, cloneKey(c.DeviceID, c.Kind))
		if err != nil || (old != nil && !old.Resolved) {
			return err
		}
		isNew = true
		return put(tx, bucketClones, cloneKey(c.DeviceID, c.Kind), &c)
	})
	if err != nil || !isNew {
		return false, err
	}
	s.Rescore(c.DeviceID)
	attrs := map[string]string{"kind": string(c.Kind), "evidence": c.Evidence}
	if c.Serial != "" {
		attrs["serial"] = c.Serial
	}
	if len(c.Hosts) > 0 {
		attrs["hosts"] = strings.Join(c.Hosts, ", ")
	}
	s.alert(Alert{Time: c.DetectedAt, DeviceID: c.DeviceID, Kind: KindClone, Severity: SeverityCritical,
		Summary: "cloned identity (" + string(c.Kind) + "): " + c.Evidence, Attrs: attrs})
	return true, s.quarantineClone(c)
}

// quarantineClone quarantines the device of an incident and records the
// outcome; a failure is retried by the next sweep.
func (s *Service) quarantineClone(c Clone) error {
	if s.cfg.Quarantiner == nil {
		return nil
	}
	qerr := s.cfg.Quarantiner.Quarantine(c.DeviceID, "clone ("+string(c.Kind)+"): "+c.Evidence)
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		cur, err := get[Clone](tx, bucketClones, cloneKey(c.DeviceID, c.Kind))
		if err != nil || cur == nil {
			return err
		}
		cur.Quarantined, cur.QuarantineError = qerr == nil, ""
		if qerr != nil {
			cur.QuarantineError = clean(qerr.Error())
		}
		return put(tx, bucketClones, cloneKey(c.DeviceID, c.Kind), cur)
	})
	if qerr != nil {
		s.log.Error("governance: quarantine of a clone failed; retried at the next sweep", "device_id", c.DeviceID, "err", qerr)
		return fmt.Errorf("governance: quarantine %s: %w", c.DeviceID, qerr)
	}
	return err
}

// processDetected acts on clones the session tracker found.
func (s *Service) processDetected() error {
	var errs []error
	for _, c := range s.sessions.take() {
		if _, err := s.raiseClone(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CheckSessions looks for sessions from two hosts open together for
// longer than Config.CloneGrace (acted on by the next Flush), drops
// sessions of devices Config.Connected says are gone and forgets old
// takeover history. Run calls it every CloneGrace.
func (s *Service) CheckSessions() {
	s.sessions.check(s, s.cfg.Now())
}

// sessionTracker follows open device sessions per certificate serial.
type sessionTracker struct {
	mu       sync.Mutex
	serials  map[string]*serialState
	multi    map[string]struct{} // serials open from two or more hosts
	n        int                 // open sessions
	detected map[string]Clone    // device ID -> clone waiting for Flush
	dropped  uint64
}

type serialState struct {
	deviceID string
	// conns are the open connections, one per remote address: a slice,
	// for a serial has one almost always (a map of one entry is about
	// ten times its size), and hosts visits them all anyway.
	conns []openConn
	// displaced are hosts whose session was open when another host
	// opened one, newest last, within CloneWindow.
	displaced []displacement
	takebacks []time.Time // a displaced host taking the serial back, within CloneWindow
	reported  bool
}

type openConn struct {
	remote string
	host   string
	opened time.Time
}

type displacement struct {
	host string
	by   string
	at   time.Time
}

// maxDisplaced bounds the takeover history per serial.
const maxDisplaced = 16

func (t *sessionTracker) init() {
	t.serials = map[string]*serialState{}
	t.multi = map[string]struct{}{}
	t.detected = map[string]Clone{}
}

func (t *sessionTracker) opened(s *Service, x Session) {
	host := hostOf(x.Remote)
	key := x.identity()
	what, _ := describe(key)
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.serials[key]
	if _, known := st.conn(x.Remote); !known && t.n >= s.cfg.MaxSessions {
		t.dropped++
		return
	}
	if st == nil {
		st = &serialState{deviceID: x.DeviceID}
		t.serials[key] = st
	}
	st.pruneDisplaced(x.Time, s.cfg.CloneWindow)
	others := st.hosts(host)
	if len(others) > 0 {
		for _, d := range st.displaced {
			if d.host != host {
				continue
			}
			st.takebacks = append(st.takebacks, x.Time)
			if len(st.takebacks) > maxDisplaced {
				st.takebacks = slices.Delete(st.takebacks, 0, len(st.takebacks)-maxDisplaced)
			}
			if len(st.takebacks) >= s.cfg.CloneTakebacks {
				t.detect(st, key, []string{host, d.by}, x.Time, fmt.Sprintf(
					"%s taken back %d times within %s between hosts that kept taking it over (last: %s from %s at %s)",
					what, len(st.takebacks), s.cfg.CloneWindow, host, strings.Join(others, ", "), x.Time.UTC().Format(time.RFC3339)))
			}
			break
		}
		if s.cfg.CloneGrace < 0 {
			t.detect(st, key, append([]string{host}, others...), x.Time, fmt.Sprintf(
				"%s in use from %s and %s at once", what, host, strings.Join(others, ", ")))
		}
		for _, o := range others {
			st.displaced = append(st.displaced, displacement{host: o, by: host, at: x.Time})
		}
		if len(st.displaced) > maxDisplaced {
			st.displaced = slices.Delete(st.displaced, 0, len(st.displaced)-maxDisplaced)
		}
	}
	c := openConn{remote: x.Remote, host: host, opened: x.Time}
	if i := st.index(x.Remote); i >= 0 {
		st.conns[i] = c
	} else {
		st.conns = append(st.conns, c)
		t.n++
	}
	if len(st.hosts("")) >= 2 {
		t.multi[key] = struct{}{}
	}
}

// conn returns the open connection from remote; st may be nil.
func (st *serialState) conn(remote string) (openConn, bool) {
	if st == nil {
		return openConn{}, false
	}
	if i := st.index(remote); i >= 0 {
		return st.conns[i], true
	}
	return openConn{}, false
}

// index is the index of the open connection from remote in conns, or -1.
func (st *serialState) index(remote string) int {
	return slices.IndexFunc(st.conns, func(c openConn) bool { return c.remote == remote })
}

// hosts returns the distinct hosts with open sessions, except not.
func (st *serialState) hosts(not string) []string {
	var out []string
	for _, c := range st.conns {
		if c.host != not && !slices.Contains(out, c.host) {
			out = append(out, c.host)
		}
	}
	slices.Sort(out)
	return out
}

func (st *serialState) pruneDisplaced(now time.Time, window time.Duration) {
	i := 0
	for i < len(st.displaced) && now.Sub(st.displaced[i].at) > window {
		i++
	}
	st.displaced = st.displaced[i:]
	j := 0
	for j < len(st.takebacks) && now.Sub(st.takebacks[j]) > window {
		j++
	}
	st.takebacks = st.takebacks[j:]
}

func (t *sessionTracker) detect(st *serialState, identity string, hosts []string, at time.Time, evidence string) {
	if st.reported {
		return
	}
	st.reported = true
	_, serial := describe(identity)
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	t.detected[st.deviceID] = Clone{DeviceID: st.deviceID, Kind: CloneCertificate, Serial: serial,
		Hosts: hosts, Evidence: evidence, DetectedAt: at.UTC()}
}

func (t *sessionTracker) closed(x Session) {
	key := x.identity()
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.serials[key]
	if st == nil {
		return
	}
	if x.Remote == "" {
		t.n -= len(st.conns)
		st.conns = nil
	} else if i := st.index(x.Remote); i >= 0 {
		st.conns = slices.Delete(st.conns, i, i+1)
		t.n--
	}
	if len(st.hosts("")) < 2 {
		delete(t.multi, key)
	}
	if len(st.conns) == 0 && len(st.displaced) == 0 && len(st.takebacks) == 0 {
		delete(t.serials, key)
	}
}

// check detects sessions from two hosts open together for longer than
// CloneGrace, drops sessions of devices the broker says are gone, and
// forgets serials with no session and no recent takeover.
func (t *sessionTracker) check(s *Service, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for serial, st := range t.serials {
		if len(st.conns) > 0 && s.cfg.Connected != nil && !s.cfg.Connected(st.deviceID) {
			t.n -= len(st.conns)
			st.conns = nil
			delete(t.multi, serial)
		}
		st.pruneDisplaced(now, s.cfg.CloneWindow)
		if len(st.conns) == 0 && len(st.displaced) == 0 && len(st.takebacks) == 0 {
			delete(t.serials, serial)
		}
	}
	if s.cfg.CloneGrace < 0 {
		return
	}
	for serial := range t.multi {
		st := t.serials[serial]
		if st == nil {
			delete(t.multi, serial)
			continue
		}
		since := map[string]time.Time{} // host -> earliest open session
		for _, c := range st.conns {
			if o, ok := since[c.host]; !ok || c.opened.Before(o) {
				since[c.host] = c.opened
			}
		}
		var long []string
		for _, h := range slices.Sorted(maps.Keys(since)) {
			if now.Sub(since[h]) > s.cfg.CloneGrace {
				long = append(long, h)
			}
		}
		if len(long) >= 2 {
			what, _ := describe(serial)
			t.detect(st, serial, long, now, fmt.Sprintf("%s in use from %s at once for more than %s",
				what, strings.Join(long, " and "), s.cfg.CloneGrace))
		}
	}
}

// take returns and forgets the detected clones.
func (t *sessionTracker) take() []Clone {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := slices.Collect(maps.Values(t.detected))
	slices.SortFunc(out, func(a, b Clone) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	clear(t.detected)
	return out
}

// forget lets a device's serials be reported again.
func (t *sessionTracker) forget(deviceID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, st := range t.serials {
		if st.deviceID == deviceID {
			st.reported = false
		}
	}
}

// SessionStats are the session tracker's counters.
type SessionStats struct {
	Open    int    // sessions tracked now
	Dropped uint64 // sessions not tracked because MaxSessions were
}

// SessionStats returns the session tracker's counters.
func (s *Service) SessionStats() SessionStats {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	return SessionStats{Open: s.sessions.n, Dropped: s.sessions.dropped}
}

// cloneable reports whether d is an enrolled identity clone handling may
// act on: active or quarantined.
func cloneable(d *inventory.Device) bool {
	return d.State == inventory.StateActive || d.State == inventory.StateQuarantined
}

// InventoryQuarantiner quarantines through the inventory as the
// attestation service does (inventory.Store.Quarantine): the device
// becomes quarantined (the broker then only lets it prove itself), every
// certificate it holds that has not expired is revoked as certificateHold
// in the same transaction, the event is recorded and its sessions are
// closed. Only an enrolled device can be quarantined: a pending or
// decommissioned one is left as it is (an inventory.ErrTransition).
type InventoryQuarantiner struct {
	Inventory interface {
		Quarantine(ctx context.Context, id string, c inventory.Cause) (*inventory.Device, []string, error)
		AddEvent(ctx context.Context, e inventory.Event) error
	}
	// Disconnect closes a device's sessions (broker.Disconnect); nil
	// leaves them to end on their own.
	Disconnect func(deviceID string)
	// Source is the cause recorded with the quarantine
	// (inventory.Cause.Source); "" means inventory.CauseClone. No
	// auto-release lifts it.
	Source string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

var _ Quarantiner = InventoryQuarantiner{}

// Quarantine isolates deviceID; why is recorded in its events.
func (q InventoryQuarantiner) Quarantine(deviceID, why string) error {
	now := time.Now
	if q.Now != nil {
		now = q.Now
	}
	source := q.Source
	if source == "" {
		source = inventory.CauseClone
	}
	_, revoked, err := q.Inventory.Quarantine(context.TODO(), deviceID, inventory.Cause{Source: source, Reason: why, Time: now()})
	if err != nil {
		return fmt.Errorf("governance: quarantine %s: %w", deviceID, err)
	}
	if q.Disconnect != nil {
		q.Disconnect(deviceID)
	}
	return q.Inventory.AddEvent(context.TODO(), inventory.Event{Time: now(), DeviceID: deviceID, Kind: "quarantined",
		Detail: "governance: " + why + "; certificates revoked: " + strings.Join(revoked, ", ")})
}

// InventoryRevoker revokes through the inventory
// (inventory.Store.RevokeDevice): every certificate of the device that has
// not expired is revoked, and listed for the CRL, in one transaction; the
// event is recorded when something was revoked, and the device's sessions
// are closed whatever was (a session may hold a serial revoked earlier).
// The device keeps its state: it may prove itself again from its EK.
type InventoryRevoker struct {
	Inventory interface {
		RevokeDevice(ctx context.Context, id string, reason int) (*inventory.Device, []string, error)
		AddEvent(ctx context.Context, e inventory.Event) error
	}
	// Disconnect closes a device's sessions (broker.Disconnect); nil
	// leaves them to end on their own.
	Disconnect func(deviceID string)
	// Now is the clock of the recorded event; nil means time.Now.
	Now func() time.Time
}

var _ Revoker = InventoryRevoker{}

// Revoke revokes every unexpired certificate of deviceID for reason; why
// is recorded in its events.
func (r InventoryRevoker) Revoke(deviceID string, reason int, why string) ([]string, error) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	_, revoked, err := r.Inventory.RevokeDevice(context.TODO(), deviceID, reason)
	if err != nil {
		return nil, fmt.Errorf("governance: revoke %s: %w", deviceID, err)
	}
	if r.Disconnect != nil {
		r.Disconnect(deviceID)
	}
	if len(revoked) == 0 {
		return nil, nil
	}
	err = r.Inventory.AddEvent(context.TODO(), inventory.Event{Time: now(), DeviceID: deviceID, Kind: "revoked",
		Detail: "certificates " + strings.Join(revoked, ", ") + " revoked (" + inventory.ReasonName(reason) + "): " + why})
	return revoked, err
}
