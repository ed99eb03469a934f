package alert

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"
)

// GroupBy names what Groups groups alerts by.
type GroupBy string

// Groupings.
const (
	GroupByRule   GroupBy = "rule"   // one group per rule
	GroupByDevice GroupBy = "device" // one group per device ("" for flood summaries)
)

// Group is a set of alerts with one rule or one device, as counts.
type Group struct {
	// Key is the rule ID or the device ID ("" for flood summaries, which
	// have no device).
	Key string `json:"key"`
	// RuleName is the rule's name (rule groups).
	RuleName string `json:"rule_name,omitempty"`
	// Count is the alerts in the group; BySeverity and ByState split it.
	Count      int              `json:"count"`
	BySeverity map[Severity]int `json:"by_severity"`
	ByState    map[State]int    `json:"by_state"`
	// Devices counts the distinct devices (rule groups); Rules the
	// distinct rules (device groups).
	Devices int `json:"devices,omitempty"`
	Rules   int `json:"rules,omitempty"`
	// Held is how many alerts flood control held back in the group (the
	// counts of its flood summaries, which Count includes as one alert
	// each).
	Held int `json:"held,omitempty"`
	// Newest is the latest firing among the group's alerts, NewestID the
	// newest alert.
	Newest   time.Time `json:"newest"`
	NewestID uint64    `json:"newest_id"`
}

// MaxGrouped bounds the alerts one Groups call reads.
const MaxGrouped = 200000

// Groups counts the alerts q's filters select (its page ignored) by rule
// or by device, largest group first (then by key). It reads at most
// MaxGrouped alerts; truncated says it stopped there.
func (e *Engine) Groups(q Query, by GroupBy) (groups []Group, truncated bool, err error) {
	if by != GroupByRule && by != GroupByDevice {
		return nil, false, fmt.Errorf("%w: group by %q: rule or device", ErrInvalidInput, by)
	}
	index := map[string]*Group{}
	members := map[string]map[string]struct{}{}
	n := 0
	err = e.st.each(context.Background(), q, func(a *Alert) bool {
		if n++; n > MaxGrouped {
			truncated = true
			return false
		}
		key, other := a.RuleID, a.DeviceID
		if by == GroupByDevice {
			key, other = a.DeviceID, a.RuleID
		}
		g := index[key]
		if g == nil {
			g = &Group{Key: key, BySeverity: map[Severity]int{}, ByState: map[State]int{}}
			if by == GroupByRule {
				g.RuleName = a.RuleName
			}
			index[key] = g
			members[key] = map[string]struct{}{}
		}
		if a.Held != nil {
			g.Held += a.Held.Count
		}
		g.Count++
		g.BySeverity[a.Severity]++
		g.ByState[a.State]++
		if other != "" {
			members[key][other] = struct{}{}
		}
		if a.LastFiredAt.After(g.Newest) {
			g.Newest = a.LastFiredAt
		}
		g.NewestID = max(g.NewestID, a.ID)
		return true
	})
	if err != nil {
		return nil, false, fmt.Errorf("alert: groups: %w", err)
	}
	for key, g := range index {
		if by == GroupByRule {
			g.Devices = len(members[key])
		} else {
			g.Rules = len(members[key])
		}
		groups = append(groups, *g)
	}
	slices.SortFunc(groups, func(a, b Group) int { return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Key, b.Key)) })
	return groups, truncated, nil
}

// AckReport says what a bulk acknowledgement did.
type AckReport struct {
	Acknowledged int      `json:"acknowledged"`
	Skipped      int      `json:"skipped"`   // selected but not firing (already acknowledged or resolved)
	NotFound     int      `json:"not_found"` // IDs of no alert
	IDs          []uint64 `json:"ids"`       // the alerts acknowledged
}

// MaxAckIDs bounds the IDs one AcknowledgeMany names.
const MaxAckIDs = 1000

// AcknowledgeMany acknowledges many firing alerts at once: those of ids
// when given (at most MaxAckIDs), else every open alert q's filters
// select (a group: its rule or device; or any filter). Alerts already
// acknowledged keep who acknowledged them and are counted as skipped.
// Each acknowledgement is sent to the routes that select it.
func (e *Engine) AcknowledgeMany(ids []uint64, q Query, by, note string) (AckReport, error) {
	var rep AckReport
	if err := checkOperator(by, note); err != nil {
		return rep, err
	}
	if len(ids) > MaxAckIDs {
		return rep, fmt.Errorf("%w: at most %d alert IDs at once", ErrInvalidInput, MaxAckIDs)
	}
	if len(ids) == 0 {
		q.Open, q.State = true, StateFiring
		err := e.st.each(context.Background(), q, func(a *Alert) bool {
			ids = append(ids, a.ID)
			return true
		})
		if err != nil {
			return rep, fmt.Errorf("alert: acknowledge: %w", err)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	now := e.cfg.Now()
	const chunk = 256
	for len(ids) > 0 {
		part := ids[:min(len(ids), chunk)]
		ids = ids[len(part):]
		acked, skipped, missing, err := e.st.ackMany(context.Background(), part, by, note, now)
		if err != nil {
			return rep, fmt.Errorf("alert: acknowledge: %w", err)
		}
		rep.Skipped += skipped
		rep.NotFound += missing
		for _, a := range acked {
			rep.Acknowledged++
			rep.IDs = append(rep.IDs, a.ID)
			e.dispatch(Notification{Transition: TransitionAcknowledged, At: now, Alert: a})
		}
	}
	if rep.Acknowledged > 0 {
		e.log.Info("alerts acknowledged", "count", rep.Acknowledged, "by", by)
	}
	return rep, nil
}
