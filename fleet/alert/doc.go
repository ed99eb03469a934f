// Package alert judges what devices report against rules and per-device
// baselines, keeps each alert's life from firing to resolution, and routes
// notifications to sinks.
//
// # Inputs
//
// The telemetry ingestion and the fleet's security components call the
// Engine with plain values; this package imports neither:
//
//   - Observe(device, at, metrics, sets): numeric metrics and sets such as
//     listening ports or process names.
//   - Event(device, kind, severity, at, attrs): security events —
//     attestation failure, authentication failures, certificate near
//     expiry, clone suspicion, dormancy (the Event* constants).
//   - Seen(device, at): the device was heard from, for absence rules.
//
// Every rule kind except absence is evaluated on the input's own time, so
// replaying inputs gives the same alerts; absence and clear-after are
// checked by Run's sweep against Config.Now.
//
// # Rules
//
// A Rule is stored in the engine's bbolt file and validated with every
// problem reported (Rule.Validate). Kinds: threshold (metric op value for
// a duration), absence (silent for a duration), rate (change per time op
// value), event (a kind, optionally N within a window), baseline and
// new-member. DefaultRules is a starting set.
//
// Baseline rules learn each device's own usual value of a metric: an
// exponentially weighted mean and variance, a band of mean ± K·σ, a
// warm-up before the rule may fire, a floor on σ so that tiny noise on a
// flat metric does not fire, and Consecutive observations outside the band
// before it fires. New-member rules learn the members of a set during a
// learning period and then fire on any member never seen before. Both
// alerts carry their evidence (value, mean, σ, band; the member).
//
// # Lifecycle
//
// An alert is identified by its fingerprint, a hash of (rule, device, key);
// while one is open (firing or acknowledged) the same condition is absorbed
// into it (Count) instead of opening another. It resolves by itself when
// its condition clears, or by hand (Resolve); acknowledging (who, note)
// keeps it open. Every alert stays in the history, bounded by
// Config.MaxAlerts (the oldest resolved ones go first); Alerts pages it by
// device, rule, state. A rule's Action runs once when an alert opens,
// through the injected Actions.
//
// # Floods, groups and bulk acknowledgement
//
// Config.Flood bounds how many new alerts open per window of time, per
// rule and fleet-wide (see Flood): past a limit a new alert is held back —
// absorbed while its condition holds, its rule's action still run — and
// counted in one summary alert per rule and window (Kind KindFlood,
// Alert.Held: how many, of which severities, from which devices, when),
// which is listed at once and sent to the routes once, when the window
// closes. Stats.Fired plus Stats.Held is every alert the rules raised.
// Groups counts alerts by rule or by device; Query filters by severity;
// AcknowledgeMany acknowledges a selection or everything a filter selects.
//
// # Delivery
//
// Each Route has a bounded queue and one worker, so sinks never slow the
// inputs; a sink that implements BatchNotifier gets what queued up in one
// request. A route selects by transition, minimum severity and labels; it
// retries a failed delivery with exponential backoff for a bounded number
// of attempts, then records a dead letter in the store — so does a
// notification that finds the queue full or is still queued when the
// engine stops (those are sent again by the next Run). Dead letters are
// listed with DeadLetters and sent again with Redrive. Delivery is at least
// once. Notifications are never dropped silently: a periodic re-send of an
// open alert that finds the queue full is skipped and counted (the next
// re-send carries it), and a dead letter that cannot be written is logged
// as an error.
//
// The store is one bbolt file; each change is one transaction. Learned
// state (baselines, known members, last-seen times, event windows) is
// written every Config.FlushInterval and when the engine stops, so a crash
// loses at most that much learning, never an alert.
package alert
