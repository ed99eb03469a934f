// Package exposure answers "which devices run the affected component, right
// now, as attested": the software bill of materials a release carries
// (CycloneDX or SPDX JSON, bound into the signed manifest by digest), the release
// each device runs as its TPM attested it (the image digest measured into
// the firmware PCR, never the version the device claims), queries by
// package URL and version range, and OSV advisories matched against what
// is deployed, with a report per device, group, model and owner in JSON
// and CSV.
//
// A device's running release comes from its newest attestation record
// whose quote verified: the SHA-256 bank's firmware PCR (14, where
// device/update measures the running image) must equal SHA-256(32 zero
// bytes || image digest) of a release's manifest. A device whose PCR
// matches no release, or that never attested, runs an unknown release and
// is reported as such, not assumed to run what it says.
//
// Queries and reports are computed when asked, from the inventory, the
// newest attestation records of every device (50 each) and the releases'
// components: their cost grows with the fleet, one history read per
// device; nothing is cached between them.
//
// A device may become exposed after an advisory was imported: rolled back
// to an affected release, or attesting for the first time. Attested
// re-evaluates one device per recorded verdict and raises the stored
// advisories that affect its release when its attested release changed;
// it keeps the firmware PCR and release last seen per device, so a
// verdict that changes neither costs one read and raises nothing.
package exposure
