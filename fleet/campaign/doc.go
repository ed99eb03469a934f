// Package campaign rolls a firmware release out to the fleet in staged
// campaigns that stop themselves.
//
// A Definition names the release, the target devices (a Selector that
// Targets resolves, for the release: the fleet decides which devices it
// is for), how the devices are split into waves (a canary and a
// growth factor, or explicit sizes), the share of a wave that must commit
// before the next opens, the share that may fail before the campaign
// pauses or aborts itself, a per-device timeout, maintenance windows, the
// most devices in flight at once, and how often a silent device is
// announced again. Validate reports every problem at once.
//
// # Lifecycle
//
// Create stores a draft with its devices resolved and its waves planned;
// Start runs it now or schedules it; Pause, Resume and Abort are operator
// actions that need an actor and a justification, and every action is
// passed to the Auditor. Rollback creates a campaign of the previous
// release for exactly the devices that committed a campaign.
//
// The engine (Run) steps every Config.Tick: it times out devices whose
// deadline passed (a device never stays in flight forever), starts
// scheduled campaigns, and inside a maintenance window announces the next
// devices of the open wave through the Announcer. A device the Announcer
// refuses for good (IneligibleError: the release is not for it) fails at
// once with the reason given; one it could not reach is tried again.
// Devices report their steps through Report; a report that makes a wave
// fail beyond its threshold pauses or aborts the campaign in the same
// transaction, so no further device is announced after it.
//
// # Persistence
//
// Everything lives in a bbolt file or in PostgreSQL (Store). A device is
// marked announced before the Announcer is called, so a restart never
// announces a device twice: a device whose announcement was lost times
// out, and is announced again only if Definition.Retries allows. Reports
// are idempotent.
//
// Reports arriving together share one transaction: concurrent Report calls
// (say, from each device connection's goroutine) are group-committed, and
// Submit queues a report for Run to write with the others, calling back
// once it is on disk. An engine step writes one transaction per phase,
// touching only the devices it moves, so a campaign of many thousand
// devices costs work in proportion to the devices that move.
//
// Manager.Get, List, Devices, Device and InFlight return plain structs for
// the API.
package campaign
