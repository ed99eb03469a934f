package alert

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/pkg/config"
)

// Kind is the kind of condition a rule checks.
type Kind string

// Rule kinds. Each has its own field in Rule.
const (
	KindThreshold Kind = "threshold"  // metric op value, held for a duration
	KindAbsence   Kind = "absence"    // device silent for a duration
	KindRate      Kind = "rate"       // metric change per time op value
	KindEvent     Kind = "event"      // security events of a kind, optionally N within a window
	KindBaseline  Kind = "baseline"   // metric outside the device's own usual band
	KindNewMember Kind = "new-member" // set member (port, process) the device never had
)

// Action is what a rule asks the fleet to do to the device when one of its
// alerts opens, through Config.Actions.
type Action string

// Actions a rule may carry.
const (
	ActionQuarantine Action = "quarantine" // restrict the device as a failed attestation does
	ActionRevoke     Action = "revoke"     // revoke every unexpired certificate of the device
)

// Op compares a value with a rule's value.
type Op string

// Comparison operators.
const (
	OpGT Op = ">"
	OpGE Op = ">="
	OpLT Op = "<"
	OpLE Op = "<="
	OpEQ Op = "=="
	OpNE Op = "!="
)

// Compare reports whether "v op w" holds. An unknown Op is false.
func (op Op) Compare(v, w float64) bool {
	switch op {
	case OpGT:
		return v > w
	case OpGE:
		return v >= w
	case OpLT:
		return v < w
	case OpLE:
		return v <= w
	case OpEQ:
		return v == w
	case OpNE:
		return v != w
	}
	return false
}

func (op Op) valid() bool {
	switch op {
	case OpGT, OpGE, OpLT, OpLE, OpEQ, OpNE:
		return true
	}
	return false
}

// Rule is a persisted alert rule. Exactly one of the condition fields
// (Threshold, Absence, Rate, Event, Baseline, NewMember) is set; it decides
// the rule's Kind. As JSON:
//
//	{"id":"cpu-hot","severity":"warning","threshold":{"metric":"cpu","op":">","value":90,"for":"5m"}}
//	{"id":"auth-failures","severity":"warning","event":{"kind":"auth-failure","count":5,"window":"10m","clear_after":"30m"}}
//	{"id":"new-port","severity":"warning","new_member":{"set":"ports","learn":"24h"}}
type Rule struct {
	// ID names the rule: 1-64 of a-z, 0-9, '.', '_', '-', starting with a
	// letter or digit.
	ID string `json:"id"`
	// Name is the human title, the "alertname" label. Default: the ID.
	Name string `json:"name,omitempty"`
	// Description is free text sent with the alert.
	Description string `json:"description,omitempty"`
	// Severity of the rule's alerts. Required, except for event rules,
	// where empty means the event's own severity (warning when it has
	// none).
	Severity Severity `json:"severity,omitempty"`
	// Labels are added to the alerts' labels, for routing. Names follow
	// Prometheus label syntax and may not be a standard label (LabelsOf).
	Labels map[string]string `json:"labels,omitempty"`
	// Action runs when one of the rule's alerts opens. Optional.
	Action Action `json:"action,omitempty"`
	// Devices limits the rule to these device IDs. Empty: every device.
	Devices []string `json:"devices,omitempty"`
	// Disabled rules are kept but not evaluated.
	Disabled bool `json:"disabled,omitempty"`

	Threshold *Threshold  `json:"threshold,omitempty"`
	Absence   *Absence    `json:"absence,omitempty"`
	Rate      *Rate       `json:"rate,omitempty"`
	Event     *EventMatch `json:"event,omitempty"`
	Baseline  *Baseline   `json:"baseline,omitempty"`
	NewMember *NewMember  `json:"new_member,omitempty"`
}

// Threshold fires when "Metric Op Value" has held on every observation of
// the metric for at least For (0: at once) and resolves on the first
// observation where it does not.
type Threshold struct {
	Metric string          `json:"metric"`
	Op     Op              `json:"op"`
	Value  float64         `json:"value"`
	For    config.Duration `json:"for,omitempty"`
}

// Absence fires when a device that was seen (Observe, Event or Seen) has
// been silent for After, and resolves when it is seen again. Silence is
// counted from the engine's start at the earliest, so a fleet outage does
// not make every device absent.
type Absence struct {
	After config.Duration `json:"after"`
}

// Rate fires when the change of Metric between two consecutive
// observations, scaled to Per, satisfies "rate Op Value", and resolves on
// the first rate that does not. Per defaults to one minute.
type Rate struct {
	Metric string          `json:"metric"`
	Op     Op              `json:"op"`
	Value  float64         `json:"value"`
	Per    config.Duration `json:"per,omitempty"`
}

// EventMatch fires on security events of Kind whose attributes include all
// of Attrs: on each one (Count 1, the default) or when Count of them fall
// within Window. Events with a different value of the KeyAttr attribute are
// separate alerts (e.g. one per port). The alert resolves on an event of
// kind ClearOn, after ClearAfter without a matching event, or by hand; with
// neither set, only by hand.
type EventMatch struct {
	Kind       string            `json:"kind"`
	Attrs      map[string]string `json:"attrs,omitempty"`
	Count      int               `json:"count,omitempty"`
	Window     config.Duration   `json:"window,omitempty"`
	KeyAttr    string            `json:"key_attr,omitempty"`
	ClearOn    string            `json:"clear_on,omitempty"`
	ClearAfter config.Duration   `json:"clear_after,omitempty"`
}

// Baseline learns each device's usual value of Metric — an exponentially
// weighted mean and variance — and fires when Consecutive observations in a
// row fall outside mean ± K·σ, once Warmup observations have been learned.
// σ is never taken below MinSigma nor below 1% of |mean|, so tiny noise on
// a flat metric does not fire. An observation outside the band moves the
// mean towards it by at most α·K·σ and leaves σ alone, so an anomaly
// neither widens the band nor quickly teaches itself as normal. It
// resolves after Consecutive observations in a row inside the band.
type Baseline struct {
	Metric string `json:"metric"`
	// K is the band's half-width in σ. Default 4.
	K float64 `json:"k,omitempty"`
	// Alpha is the weight of a new observation, in (0, 1); the memory is
	// about 1/Alpha observations. Default 0.02.
	Alpha float64 `json:"alpha,omitempty"`
	// Warmup observations are learned before the rule may fire. Default 50.
	Warmup int `json:"warmup,omitempty"`
	// MinSigma is the smallest σ used, in the metric's unit. Default 0
	// (only the 1% of |mean| floor applies).
	MinSigma float64 `json:"min_sigma,omitempty"`
	// Consecutive observations outside (to fire) or inside (to resolve)
	// the band. Default 3.
	Consecutive int `json:"consecutive,omitempty"`
	// Direction is "both" (default), "above" or "below".
	Direction string `json:"direction,omitempty"`
}

// NewMember learns the members of a device's Set (listening ports,
// processes) for Learn from the first time the device reports it; after
// that, a member never seen before fires an alert keyed by the member. The
// alert resolves when the member leaves the set; resolving it by hand
// accepts the member as normal for that device. Members first seen after
// learning are not learned by themselves: each reappearance fires again.
type NewMember struct {
	Set string `json:"set"`
	// Learn is the learning period. Default 24h.
	Learn config.Duration `json:"learn,omitempty"`
	// MaxMembers bounds the members remembered per device. Default 1024.
	MaxMembers int `json:"max_members,omitempty"`
}

// Directions of a Baseline.
const (
	DirectionBoth  = "both"
	DirectionAbove = "above"
	DirectionBelow = "below"
)

// Limits of rule fields.
const (
	maxIDLen      = 64
	maxNameLen    = 128
	maxTextLen    = 1024
	maxLabels     = 32
	maxLabelValue = 256
	maxEventCount = 1000
	maxMembers    = 65536
	maxDevices    = 10000
)

// Kind returns the kind of the condition that is set, or "" when none is.
// Validate checks that exactly one is.
func (r *Rule) Kind() Kind {
	switch {
	case r.Threshold != nil:
		return KindThreshold
	case r.Absence != nil:
		return KindAbsence
	case r.Rate != nil:
		return KindRate
	case r.Event != nil:
		return KindEvent
	case r.Baseline != nil:
		return KindBaseline
	case r.NewMember != nil:
		return KindNewMember
	}
	return ""
}

// SetDefaults fills the optional fields with their defaults (documented on
// each field). PutRule stores rules with their defaults filled.
func (r *Rule) SetDefaults() {
	if r.Name == "" {
		r.Name = r.ID
	}
	if r.Rate != nil && r.Rate.Per == 0 {
		r.Rate.Per = config.Duration(time.Minute)
	}
	if r.Event != nil && r.Event.Count == 0 {
		r.Event.Count = 1
	}
	if b := r.Baseline; b != nil {
		if b.K == 0 {
			b.K = 4
		}
		if b.Alpha == 0 {
			b.Alpha = 0.02
		}
		if b.Warmup == 0 {
			b.Warmup = 50
		}
		if b.Consecutive == 0 {
			b.Consecutive = 3
		}
		if b.Direction == "" {
			b.Direction = DirectionBoth
		}
	}
	if n := r.NewMember; n != nil {
		if n.Learn == 0 {
			n.Learn = config.Duration(24 * time.Hour)
		}
		if n.MaxMembers == 0 {
			n.MaxMembers = 1024
		}
	}
}

// Validate reports every problem of r, joined; each wraps ErrInvalidRule.
// It expects defaults to be filled (SetDefaults).
func (r *Rule) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w %q: %s", ErrInvalidRule, r.ID, fmt.Sprintf(format, args...)))
	}
	if !validID(r.ID) {
		add("id must be 1-%d of a-z 0-9 . _ - starting with a letter or digit", maxIDLen)
	}
	if len(r.Name) > maxNameLen || !utf8.ValidString(r.Name) {
		add("name longer than %d bytes or not UTF-8", maxNameLen)
	}
	if len(r.Description) > maxTextLen || !utf8.ValidString(r.Description) {
		add("description longer than %d bytes or not UTF-8", maxTextLen)
	}
	switch {
	case r.Severity.Valid():
	case r.Severity == "" && r.Event != nil:
	default:
		add("severity %q is not info, warning or critical", r.Severity)
	}
	if len(r.Labels) > maxLabels {
		add("more than %d labels", maxLabels)
	}
	for k, v := range r.Labels {
		if !validLabelName(k) {
			add("label name %q is not [a-zA-Z_][a-zA-Z0-9_]*", k)
		}
		switch k {
		case LabelAlertName, LabelRule, LabelDevice, LabelSeverity, LabelKind, LabelKey:
			add("label %q is set by the engine", k)
		}
		if len(v) > maxLabelValue || !utf8.ValidString(v) {
			add("label %q value longer than %d bytes or not UTF-8", k, maxLabelValue)
		}
	}
	switch r.Action {
	case "", ActionQuarantine, ActionRevoke:
	default:
		add("action %q is not %q or %q", r.Action, ActionQuarantine, ActionRevoke)
	}
	if len(r.Devices) > maxDevices {
		add("more than %d devices", maxDevices)
	}
	for _, d := range r.Devices {
		if d == "" {
			add("empty device ID")
		}
	}

	n := 0
	for _, set := range []bool{r.Threshold != nil, r.Absence != nil, r.Rate != nil, r.Event != nil, r.Baseline != nil, r.NewMember != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		add("exactly one of threshold, absence, rate, event, baseline, new_member must be set (%d are)", n)
	}
	if t := r.Threshold; t != nil {
		checkMetric(add, t.Metric)
		checkOp(add, t.Op, t.Value)
		if t.For < 0 {
			add("threshold for must not be negative")
		}
	}
	if a := r.Absence; a != nil && a.After <= 0 {
		add("absence after must be positive")
	}
	if rt := r.Rate; rt != nil {
		checkMetric(add, rt.Metric)
		checkOp(add, rt.Op, rt.Value)
		if rt.Per <= 0 {
			add("rate per must be positive")
		}
	}
	if e := r.Event; e != nil {
		if !validToken(e.Kind) {
			add("event kind %q must be 1-%d printable characters", e.Kind, maxNameLen)
		}
		if e.Count < 1 || e.Count > maxEventCount {
			add("event count %d is not in 1..%d", e.Count, maxEventCount)
		}
		if e.Count > 1 && e.Window <= 0 {
			add("event window must be positive when count is above 1")
		}
		if e.Window < 0 || e.ClearAfter < 0 {
			add("event window and clear_after must not be negative")
		}
		if e.KeyAttr != "" && !validToken(e.KeyAttr) {
			add("event key_attr %q must be printable", e.KeyAttr)
		}
		if e.ClearOn != "" && !validToken(e.ClearOn) {
			add("event clear_on %q must be printable", e.ClearOn)
		}
		if e.ClearOn == e.Kind && e.Kind != "" {
			add("event clear_on must differ from kind")
		}
		if len(e.Attrs) > maxLabels {
			add("more than %d event attrs", maxLabels)
		}
	}
	if b := r.Baseline; b != nil {
		checkMetric(add, b.Metric)
		if !(b.K > 0) || math.IsInf(b.K, 0) {
			add("baseline k must be positive")
		}
		if !(b.Alpha > 0 && b.Alpha < 1) {
			add("baseline alpha must be in (0, 1)")
		}
		if b.Warmup < 1 {
			add("baseline warmup must be at least 1")
		}
		if !(b.MinSigma >= 0) || math.IsInf(b.MinSigma, 0) {
			add("baseline min_sigma must be a finite non-negative number")
		}
		if b.Consecutive < 1 || b.Consecutive > 1000 {
			add("baseline consecutive must be in 1..1000")
		}
		switch b.Direction {
		case DirectionBoth, DirectionAbove, DirectionBelow:
		default:
			add("baseline direction %q is not both, above or below", b.Direction)
		}
	}
	if m := r.NewMember; m != nil {
		if !validToken(m.Set) {
			add("new_member set %q must be 1-%d printable characters", m.Set, maxNameLen)
		}
		if m.Learn <= 0 {
			add("new_member learn must be positive")
		}
		if m.MaxMembers < 1 || m.MaxMembers > maxMembers {
			add("new_member max_members must be in 1..%d", maxMembers)
		}
	}
	return errors.Join(errs...)
}

func checkMetric(add func(string, ...any), m string) {
	if !validToken(m) {
		add("metric %q must be 1-%d printable characters", m, maxNameLen)
	}
}

func checkOp(add func(string, ...any), op Op, v float64) {
	if !op.valid() {
		add("op %q is not one of > >= < <= == !=", op)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		add("value must be a finite number")
	}
}

func validID(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func validLabelName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}

// validToken: 1-128 bytes of valid UTF-8 without control characters.
func validToken(s string) bool {
	if s == "" || len(s) > maxNameLen || !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// digest identifies the rule's condition: learned state is kept across
// changes of name, severity, labels or action and reset when the condition
// changes.
func (r *Rule) digest() string {
	b, _ := json.Marshal([]any{r.Threshold, r.Absence, r.Rate, r.Event, r.Baseline, r.NewMember})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// Well-known security event kinds that other fleet components report
// through Engine.Event, and DefaultRules match.
const (
	EventAttestationFailed = "attestation-failed"
	EventAttestationPassed = "attestation-passed"
	EventAuthFailure       = "auth-failure"
	EventCertNearExpiry    = "cert-near-expiry"
	EventCertRenewed       = "cert-renewed"
	EventNewListeningPort  = "new-listening-port"
	EventCloneSuspect      = "clone-suspect"
	EventDormant           = "dormant"
	// EventVulnerabilityExposed: an imported advisory matches a component
	// of the release the device runs as attested (fleet/exposure); its
	// attribute "advisory" names the advisory, which keys the alerts.
	EventVulnerabilityExposed = "vulnerability-exposed"
)

// Metric and set names DefaultRules use; the telemetry ingestion must pass
// them under these names.
const (
	MetricCPU    = "cpu"       // percent busy
	SetPorts     = "ports"     // listening sockets, "tcp/22"
	SetProcesses = "processes" // process names
)

// DefaultRules returns a starting set of rules: silence, repeated
// authentication failures, attestation failure, certificate near expiry,
// clone suspicion, dormancy, a known vulnerability in the attested
// release, new listening ports, new processes and CPU anomalies. The
// server installs them when the store has no rules.
func DefaultRules() []Rule {
	d := func(x time.Duration) config.Duration { return config.Duration(x) }
	rules := []Rule{
		{ID: "device-silent", Name: "Device silent", Severity: SeverityWarning,
			Absence: &Absence{After: d(15 * time.Minute)}},
		{ID: "auth-failures", Name: "Repeated authentication failures", Severity: SeverityWarning,
			Event: &EventMatch{Kind: EventAuthFailure, Count: 5, Window: d(10 * time.Minute), ClearAfter: d(30 * time.Minute)}},
		{ID: "attestation-failed", Name: "Attestation failed", Severity: SeverityCritical,
			Event: &EventMatch{Kind: EventAttestationFailed, ClearOn: EventAttestationPassed}},
		{ID: "cert-near-expiry", Name: "Certificate near expiry", Severity: SeverityWarning,
			Event: &EventMatch{Kind: EventCertNearExpiry, ClearOn: EventCertRenewed}},
		{ID: "clone-suspect", Name: "Cloned identity suspected", Severity: SeverityCritical,
			Event: &EventMatch{Kind: EventCloneSuspect}},
		{ID: "dormant", Name: "Dormant device holds a valid credential", Severity: SeverityWarning,
			Event: &EventMatch{Kind: EventDormant}},
		{ID: "vulnerability-exposed", Name: "Runs a component with a known vulnerability", Severity: SeverityWarning,
			Event: &EventMatch{Kind: EventVulnerabilityExposed, KeyAttr: "advisory"}},
		{ID: "new-listening-port", Name: "New listening port", Severity: SeverityWarning,
			NewMember: &NewMember{Set: SetPorts}},
		{ID: "new-process", Name: "New process", Severity: SeverityInfo,
			NewMember: &NewMember{Set: SetProcesses}},
		{ID: "cpu-anomaly", Name: "CPU outside the device's usual band", Severity: SeverityWarning,
			Baseline: &Baseline{Metric: MetricCPU}},
	}
	for i := range rules {
		rules[i].SetDefaults()
	}
	return rules
}
