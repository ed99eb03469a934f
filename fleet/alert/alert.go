package alert

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"
)

// Severity ranks an alert. Routes select by a minimum severity.
type Severity string

// Severities, lowest first.
const (
	SeverityInfo     Severity = "info"
	SeverityWarning  Severity = "warning"
	SeverityCritical Severity = "critical"
)

// Rank orders severities: info 1, warning 2, critical 3, anything else 0.
func (s Severity) Rank() int {
	switch s {
	case SeverityInfo:
		return 1
	case SeverityWarning:
		return 2
	case SeverityCritical:
		return 3
	}
	return 0
}

// Valid reports whether s is one of the severities.
func (s Severity) Valid() bool { return s.Rank() > 0 }

// State is where an alert is in its life.
type State string

// Alert states. Firing and acknowledged alerts are open; an open alert
// absorbs repeated firings of its fingerprint (deduplication).
const (
	StateFiring       State = "firing"
	StateAcknowledged State = "acknowledged"
	StateResolved     State = "resolved"
)

// Open reports whether the alert is firing or acknowledged.
func (s State) Open() bool { return s == StateFiring || s == StateAcknowledged }

// Transition is what happened to an alert; sinks receive one Notification
// per transition their route selects.
type Transition string

// Transitions.
const (
	TransitionFiring       Transition = "firing"       // a new alert opened
	TransitionAcknowledged Transition = "acknowledged" // an operator acknowledged it
	TransitionResolved     Transition = "resolved"     // its condition cleared, or an operator resolved it
	TransitionRepeat       Transition = "repeat"       // still open: periodic re-send (Config.Resend)
)

// Alert is one occurrence of a rule's condition on one device, from firing
// to resolution. While it is open, further firings of the same fingerprint
// update it (Count, LastFiredAt, Evidence) instead of opening another.
type Alert struct {
	ID          uint64            `json:"id"`          // increasing; newer alerts have larger IDs
	Fingerprint string            `json:"fingerprint"` // Fingerprint(RuleID, DeviceID, Key)
	RuleID      string            `json:"rule_id"`
	RuleName    string            `json:"rule_name"`
	Kind        Kind              `json:"kind"`
	DeviceID    string            `json:"device_id"`
	Key         string            `json:"key,omitempty"` // what distinguishes alerts of one rule on one device (a port, a process, an event attribute)
	Severity    Severity          `json:"severity"`
	State       State             `json:"state"`
	Summary     string            `json:"summary"`
	Description string            `json:"description,omitempty"` // the rule's
	Labels      map[string]string `json:"labels,omitempty"`      // the rule's labels plus the standard ones (LabelsOf)
	Evidence    map[string]string `json:"evidence,omitempty"`    // what made it fire: value, mean, band, member, ...
	Count       int               `json:"count"`                 // firings absorbed, 1 for a new alert
	StartsAt    time.Time         `json:"starts_at"`
	LastFiredAt time.Time         `json:"last_fired_at"`
	Action      Action            `json:"action,omitempty"`       // the rule's action, if any
	ActionError string            `json:"action_error,omitempty"` // why it failed; empty when it succeeded
	AckedBy     string            `json:"acked_by,omitempty"`
	AckNote     string            `json:"ack_note,omitempty"`
	AckedAt     time.Time         `json:"acked_at,omitzero"`
	ResolvedAt  time.Time         `json:"resolved_at,omitzero"`
	ResolvedBy  string            `json:"resolved_by,omitempty"` // empty when the condition cleared by itself
	ResolveNote string            `json:"resolve_note,omitempty"`
	// Held is set on a flood summary (Kind KindFlood, no device): what
	// flood control held back of the rule in one window (see Flood).
	Held *Held `json:"held,omitempty"`
}

// Standard label names every alert carries (LabelsOf); rule labels may not
// use them.
const (
	LabelAlertName = "alertname" // the rule's name
	LabelRule      = "rule_id"
	LabelDevice    = "device_id"
	LabelSeverity  = "severity"
	LabelKind      = "kind"
	LabelKey       = "key" // only when the alert has a key
)

// LabelsOf returns a's labels: its rule's labels and the standard ones.
// Routes match against them.
func LabelsOf(a *Alert) map[string]string {
	m := make(map[string]string, len(a.Labels)+6)
	for k, v := range a.Labels {
		m[k] = v
	}
	m[LabelAlertName] = a.RuleName
	m[LabelRule] = a.RuleID
	m[LabelDevice] = a.DeviceID
	m[LabelSeverity] = string(a.Severity)
	m[LabelKind] = string(a.Kind)
	if a.Key != "" {
		m[LabelKey] = a.Key
	}
	return m
}

// Fingerprint identifies an alert's condition: the same rule, device and
// key always give the same 32 hex digits (the first 16 bytes of SHA-256
// over the three, NUL-separated).
func Fingerprint(ruleID, deviceID, key string) string {
	h := sha256.New()
	h.Write([]byte(ruleID))
	h.Write([]byte{0})
	h.Write([]byte(deviceID))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Notification is what a sink receives: one transition of one alert, with
// the alert as it stood right after it.
type Notification struct {
	Transition Transition `json:"transition"`
	At         time.Time  `json:"at"`
	Alert      Alert      `json:"alert"`
}

// Errors. Compare with errors.Is.
var (
	// ErrInvalidRule wraps every problem Rule.Validate finds.
	ErrInvalidRule = errors.New("alert: invalid rule")
	// ErrNotFound: no such alert, rule or dead letter.
	ErrNotFound = errors.New("alert: not found")
	// ErrResolved: the alert is already resolved.
	ErrResolved = errors.New("alert: already resolved")
	// ErrInvalidInput: Observe, Event or Seen got input it cannot use (an
	// empty device ID, a non-finite value).
	ErrInvalidInput = errors.New("alert: invalid input")
	// ErrLocked: the store file is held by another process.
	ErrLocked = errors.New("alert: store file locked by another process")
	// ErrPermanent marks a sink error that retrying cannot fix (the
	// receiver refused the payload); the dispatcher dead-letters such a
	// notification at once. Sinks wrap it: fmt.Errorf("%w: ...", ErrPermanent).
	ErrPermanent = errors.New("alert: permanent delivery failure")
	// ErrQueueFull: a route's queue was full; the notification was
	// dead-lettered instead of delivered.
	ErrQueueFull = errors.New("alert: delivery queue full")
)
