// Package rollout is the fleet's firmware service: it puts the release
// store (fleet/firmware) and the campaign engine (fleet/campaign) to work
// for the devices. It resolves a campaign's targets in the inventory (the
// devices whose fleet-assigned model a release is built for), announces
// releases over the devices' sessions and again after each hello, takes
// the devices' firmware reports into their campaigns, serves image
// downloads only to admitted devices in flight in a campaign of that
// image, hands out the release trust set and its signed rotations, stages
// images uploaded ahead of their release, and prepares the attestation
// policies a release's new measurements need before any device runs it.
//
// What it needs of the rest of the fleet it names in small interfaces and
// functions of its Config: Devices (the inventory), Policies (reference
// policies), Admit (the broker's gate), Send (the broker's publish) and an
// audit.Recorder.
package rollout
