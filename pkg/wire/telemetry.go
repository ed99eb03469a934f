package wire

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// Telemetry message types. The device publishes batches on up
// "telemetry"; the fleet acknowledges on down "telemetry".
//
// Delivery is exactly once or counted as dropped, end to end: the device's
// outbox numbers every point of a stream 1, 2, 3, … and deletes a point
// only when the fleet has acknowledged it (an MQTT PUBACK only means the
// broker has the batch). A batch carries a contiguous run of points
// starting at First, always the oldest the device still holds. The fleet
// keeps, per device and stream, the highest sequence up to which it has
// stored or accounted for every point (its cursor): points at or below the
// cursor are duplicates and skipped; a gap between the cursor and First
// holds points the device dropped from its bounded outbox, which the
// fleet counts as dropped. The ack names the new cursor.
const (
	TypeTelemetryBatch = "telemetry.batch" // device -> fleet (up "telemetry"): TelemetryBatch
	TypeTelemetryAck   = "telemetry.ack"   // fleet -> device (down "telemetry"): TelemetryAck
)

// KindTelemetry is the topic kind of telemetry in both directions.
const KindTelemetry = "telemetry"

// Limits on telemetry. A batch must also fit MaxMessageSize once encoded:
// the sender sizes batches by bytes as well as by points.
const (
	MaxTelemetryPoints = 256 // points per batch
	MaxPointMetrics    = 64  // numeric series per point
	MaxPointSets       = 8   // sets per point
	MaxSetMembers      = 256 // members per set
	MaxSetMember       = 64  // bytes per member
	MaxPointInfo       = 16  // info entries per point
	MaxMetricName      = 64  // bytes per metric, set or info name
	TelemetryStreamLen = 16  // bytes of a stream ID
)

// TelemetryBatch carries points from the device's outbox. Points[i] has
// sequence number First+i.
type TelemetryBatch struct {
	// Stream names the outbox the sequence numbers belong to: 16 random
	// bytes chosen when the outbox is created. A device whose state store
	// was recreated starts a new stream at sequence 1.
	Stream []byte           `cbor:"1,keyasint"`
	First  uint64           `cbor:"2,keyasint"` // sequence number of Points[0]; streams start at 1
	Points []TelemetryPoint `cbor:"3,keyasint"`
	// Acked is the highest sequence the device holds an acknowledgement
	// for. A fleet that lost its cursor resumes from it instead of
	// counting already delivered points as dropped.
	Acked uint64 `cbor:"4,keyasint,omitempty"`
	// Dropped counts the points the device's outbox dropped, oldest
	// first, since the stream began (cumulative). It is the device's own
	// report; the fleet's accounting is by sequence numbers.
	Dropped uint64 `cbor:"5,keyasint,omitempty"`
}

// Last returns the sequence number of the batch's last point.
func (b *TelemetryBatch) Last() uint64 { return b.First + uint64(len(b.Points)) - 1 }

// Validate checks the sequence numbers and bounds every point.
func (b *TelemetryBatch) Validate() error {
	if len(b.Stream) != TelemetryStreamLen {
		return fmt.Errorf("stream: %d bytes, want %d", len(b.Stream), TelemetryStreamLen)
	}
	if len(b.Points) == 0 || len(b.Points) > MaxTelemetryPoints {
		return fmt.Errorf("points: %d, want 1 to %d", len(b.Points), MaxTelemetryPoints)
	}
	if b.First == 0 || b.First > math.MaxUint64-uint64(len(b.Points)) {
		return fmt.Errorf("first sequence %d out of range", b.First)
	}
	if b.Acked >= b.First {
		return fmt.Errorf("acked %d not below first %d", b.Acked, b.First)
	}
	if b.Dropped >= b.First {
		return fmt.Errorf("dropped %d not below first %d", b.Dropped, b.First)
	}
	var errs []error
	for i := range b.Points {
		if err := b.Points[i].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("point %d: %w", i, err))
			if len(errs) == 4 {
				break // enough to say what is wrong
			}
		}
	}
	return errors.Join(errs...)
}

// TelemetryPoint is one sample of a device: numeric metrics (e.g.
// "cpu.busy"), sets (e.g. "listen.tcp": the listening ports) and info
// strings (e.g. "boot_id"), taken at Time on the device's clock.
type TelemetryPoint struct {
	Time    int64               `cbor:"1,keyasint"` // device clock, Unix milliseconds
	Metrics map[string]float64  `cbor:"2,keyasint,omitempty"`
	Sets    map[string][]string `cbor:"3,keyasint,omitempty"` // members sorted, unique
	Info    map[string]string   `cbor:"4,keyasint,omitempty"`
}

// SetMetric records a numeric value, creating the map if needed.
func (p *TelemetryPoint) SetMetric(name string, v float64) {
	if p.Metrics == nil {
		p.Metrics = make(map[string]float64)
	}
	p.Metrics[name] = v
}

// SetMembers records a set, sorted and without repeats.
func (p *TelemetryPoint) SetMembers(name string, members []string) {
	if p.Sets == nil {
		p.Sets = make(map[string][]string)
	}
	m := slices.Clone(members)
	slices.Sort(m)
	p.Sets[name] = slices.Compact(m)
}

// SetInfo records an info string, creating the map if needed.
func (p *TelemetryPoint) SetInfo(name, v string) {
	if p.Info == nil {
		p.Info = make(map[string]string)
	}
	p.Info[name] = v
}

// Validate checks names, bounds, that values are finite and that sets are
// sorted without repeats.
func (p *TelemetryPoint) Validate() error {
	if p.Time < 0 {
		return errors.New("time before 1970")
	}
	if len(p.Metrics) > MaxPointMetrics || len(p.Sets) > MaxPointSets || len(p.Info) > MaxPointInfo {
		return errors.New("too many metrics, sets or info entries")
	}
	for name, v := range p.Metrics {
		if !ValidMetricName(name) {
			return fmt.Errorf("metric name %q", truncateName(name))
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("metric %s: value not finite", name)
		}
	}
	for name, members := range p.Sets {
		if !ValidMetricName(name) {
			return fmt.Errorf("set name %q", truncateName(name))
		}
		if len(members) > MaxSetMembers {
			return fmt.Errorf("set %s: %d members, at most %d", name, len(members), MaxSetMembers)
		}
		for i, m := range members {
			if !validMember(m) {
				return fmt.Errorf("set %s: member %d invalid", name, i)
			}
			if i > 0 && members[i-1] >= m {
				return fmt.Errorf("set %s: members not sorted and unique", name)
			}
		}
	}
	for name, v := range p.Info {
		if !ValidMetricName(name) {
			return fmt.Errorf("info name %q", truncateName(name))
		}
		if err := label("info "+name, v, false); err != nil {
			return err
		}
	}
	return nil
}

// ValidMetricName reports whether s may name a metric, set or info entry:
// 1 to MaxMetricName bytes of [a-z0-9_.], starting with a letter and not
// ending with '.'.
func ValidMetricName(s string) bool {
	if len(s) == 0 || len(s) > MaxMetricName || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validMember accepts 1 to MaxSetMember bytes of printable ASCII without
// spaces.
func validMember(s string) bool {
	if len(s) == 0 || len(s) > MaxSetMember {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func truncateName(s string) string {
	if len(s) > MaxMetricName {
		return s[:MaxMetricName] + "…"
	}
	return s
}

// TelemetryAck answers a batch. Its Corr is the batch's message ID, but it
// is cumulative: any ack for the device's current stream lets it delete
// every point up to Through.
type TelemetryAck struct {
	Stream []byte `cbor:"1,keyasint"`
	// Through is the fleet's cursor: every point of the stream up to and
	// including it is stored at the fleet or accounted for as dropped.
	Through uint64 `cbor:"2,keyasint"`
	// Reason is ReasonOK; ReasonTelemetryDropped when the fleet counted
	// points the device no longer had as dropped (Dropped says how many);
	// ReasonBadRequest when the fleet refused the batch's points as
	// invalid and counted them as dropped too (Message says why), so that
	// one bad batch cannot block the outbox.
	Reason  Reason `cbor:"3,keyasint,omitempty"`
	Dropped uint64 `cbor:"4,keyasint,omitempty"`
	Message string `cbor:"5,keyasint,omitempty"`
}

// Validate checks sizes.
func (a *TelemetryAck) Validate() error {
	if len(a.Stream) != TelemetryStreamLen {
		return fmt.Errorf("stream: %d bytes, want %d", len(a.Stream), TelemetryStreamLen)
	}
	if a.Dropped > a.Through {
		return errors.New("dropped beyond the acknowledged sequence")
	}
	if len(a.Message) > 512 {
		return errors.New("message too long")
	}
	return nil
}
