// Package governance keeps every device identity accounted for: who owns
// it and why it exists, which unknown identities knock at the fleet's door,
// which identities sleep while still holding a valid credential, which are
// used in two places at once, and how risky each device is.
//
// A Service holds its own records in a bbolt file and reads the inventory
// through the small Devices interface (*inventory.Store implements it). It
// acts only through injected interfaces: an Alerter for alerts, a Revoker to
// revoke a dormant device's certificate, a Quarantiner to isolate a clone.
// What the rest of the fleet asks of it has a method or a type here: the
// broker's screen (Screen), enrollment's view (Enrollment), the triage
// decisions (TriageEnrolled, TriageEnroller).
//
// # Owners and orphans
//
// Owners are people or teams with a status (OwnerActive, OwnerDeparted,
// OwnerInactive). Assign gives a device an owner and a purpose. A device's
// owner is its assignment, or, without one, the inventory's Owner field
// (set from the enrollment token). A device that is not decommissioned and
// whose owner is missing, unknown or not active is orphaned: the sweep
// flags it (inventory flag FlagOrphaned), records since when and why, and
// raises KindOrphaned once; the alert is resolved when it has a live owner
// again.
//
// # Shadow devices
//
// Observe records a connection attempt from an identity the fleet does not
// know (Attempt). Attempts are aggregated in memory by kind and identity and
// written by Flush (Run calls it every Config.FlushInterval), so a flood
// costs one map update per attempt and one transaction per interval. Both
// stages are bounded: at most Config.MaxPending distinct identities wait for
// a flush (further new identities are counted as dropped), and at most
// Config.MaxTriage entries are kept (the least recently seen is evicted and
// counted). Repeats of one identity only raise its count and last-seen time
// and add its source address to a short list. An operator decides on each
// entry (Decide): enroll (handed to the Enroller), block (the identity goes
// on the block list that the broker consults with IsBlocked), or dismiss.
//
// # Dormant identities
//
// A device is dormant when it has not been seen for Config.DormantAfter
// (not connected, and its inventory LastSeen is older) while it holds a
// valid credential: a current certificate serial that is neither revoked nor
// expired. The sweep flags it (FlagDormant), raises KindDormant and, when
// Config.RevokeDormant is set, revokes the device through the Revoker
// (every certificate it holds that has not expired, a renewed-away one
// too, reason cessationOfOperation; its sessions are closed) and raises
// KindDormantRevoked. The flag and the alert clear when the device is seen
// again.
//
// # Clones
//
// Two signals mark a clone, each raised once per device and kind until an
// operator resolves it (ResolveClone), then acted on: a critical alert and a
// quarantine through the Quarantiner. Only an enrolled device (active or
// quarantined) is a clone's victim: a pending record has no identity to
// clone and stays pending, and a decommissioned one stays retired.
//
//   - CloneEK: the same EK under two identities. The enrollment service
//     flags the enrolled device clone-suspect when a client proves it holds
//     that EK while claiming another identity; the sweep acts on the flag,
//     and EKConflict acts at once.
//   - CloneCertificate: one certificate serial in use from two places. The
//     broker reports sessions (SessionOpened, SessionClosed). Sessions with
//     one serial from two different hosts that both stay open longer than
//     Config.CloneGrace are a clone. So are two holders kicking each other
//     off, which is what an MQTT broker's session takeover turns concurrent
//     use into: a host whose session was taken over by another host takes
//     the serial back, Config.CloneTakebacks times within
//     Config.CloneWindow. A device that moves from one address to another
//     is not a clone.
//
// # Risk
//
// Score rates a device from 0 to 100 as the sum of named factors, each with
// its points and evidence, capped at 100: attestation state and history,
// credential hygiene, firmware compliance, open alerts, silence, listening
// ports and owner status. The weights are Config.Weights (DefaultWeights
// documents each). Inputs the inventory lacks come through optional
// interfaces (Attestations, Firmware, Anomalies, Exposure); a nil one
// contributes no factor. The score depends only on its inputs and the
// clock, so the same inputs give the same score. Each sweep stores every
// device's score; Ranking pages through them, riskiest first.
//
// Scores do not wait for the sweep: whoever changes an input of a device
// (a verdict, an alert, its ports, firmware, state or connection) calls
// Rescore, and Run scores the marked devices every Config.RescoreDelay —
// each once per tick however often it was marked, between one and two
// ticks after its first mark, so that the change has settled. The queue
// is bounded (Config.MaxRescore); past it a full sweep covers everything.
// Ownership and clone incidents mark their devices themselves; a change
// of an owner's status marks them all (RescoreAll).
//
// # Running
//
// Run sweeps every Config.SweepInterval (and once at start), scores the
// marked devices every Config.RescoreDelay, flushes the
// triage aggregate every Config.FlushInterval and checks open sessions for
// concurrent use every Config.CloneGrace, until its context ends.
package governance
