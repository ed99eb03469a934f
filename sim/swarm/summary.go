package swarm

import (
	"slices"
	"time"
)

// Summary adds devices' outcomes up, for a harness's report.
type Summary struct {
	Devices int
	// Started counts the agents started, Active those whose mTLS
	// session the broker accepted at least once, Connected those
	// connected now, Exited those whose agent returned an error.
	Started, Active, Connected, Exited int
	// Sent and Received are the messages by type (Outcome.Sent,
	// Outcome.Received), summed.
	Sent, Received map[string]uint64
	// Unacknowledged is Outcome.Unacknowledged, summed.
	Unacknowledged map[string]uint64
	// TelemetryPoints, Unjudged, Dials, Disconnects and Warnings are the
	// outcomes' counts, summed.
	TelemetryPoints, Unjudged, Dials, Disconnects, Warnings uint64
	// TimeToActive is the distribution of the active devices' time from
	// start to their first mTLS session.
	TimeToActive Distribution
}

// Distribution is the median, 99th percentile and maximum of durations.
type Distribution struct {
	P50, P99, Max time.Duration
}

// Summarize adds outcomes up.
func Summarize(outcomes []Outcome) Summary {
	s := Summary{Devices: len(outcomes), Sent: map[string]uint64{}, Unacknowledged: map[string]uint64{}, Received: map[string]uint64{}}
	var toActive []time.Duration
	for _, o := range outcomes {
		if !o.Started.IsZero() {
			s.Started++
		}
		if !o.Active.IsZero() {
			s.Active++
			toActive = append(toActive, o.TimeToActive)
		}
		if o.Connected {
			s.Connected++
		}
		if o.Exited != nil {
			s.Exited++
		}
		for k, n := range o.Sent {
			s.Sent[k] += n
		}
		for k, n := range o.Unacknowledged {
			s.Unacknowledged[k] += n
		}
		for k, n := range o.Received {
			s.Received[k] += n
		}
		s.TelemetryPoints += o.TelemetryPoints
		s.Unjudged += o.Unjudged
		s.Dials += o.Dials
		s.Disconnects += o.Disconnects
		s.Warnings += o.Warnings
	}
	s.TimeToActive = distribution(toActive)
	return s
}

// distribution takes the nearest-rank percentiles of d (which it sorts).
func distribution(d []time.Duration) Distribution {
	if len(d) == 0 {
		return Distribution{}
	}
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		i := int(float64(len(d))*p+0.999999) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	return Distribution{P50: rank(0.50), P99: rank(0.99), Max: d[len(d)-1]}
}
