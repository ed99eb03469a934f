// Package firmware is the fleet's release store: it accepts firmware
// releases only when they are properly signed, keeps their images by
// content, puts every release through a two-person approval, and serves
// images to devices over mTLS with resumable downloads.
//
// # Releases
//
// A release is a manifest (firmware/manifest), the sigstore bundles that
// sign it, and the image the manifest describes. Upload verifies the
// bundles against the fleet's release trust set (Config.Trust, with its
// threshold) and refuses a release that is unsigned, signed by too few
// trusted keys, malformed or already expired, or whose image does not
// match the manifest's size and SHA-256 — before anything is stored. The
// release ID is derived from the manifest bytes (the first 32 hex digits of
// their SHA-256), so a re-signed manifest with a later expiry is a new
// release of the same image.
//
// A release moves through these states:
//
//	uploaded ──Approve (Config.Approvals distinct approvers)──▶ approved
//	    │                                                         │
//	    └──────────────────── Withdraw ──────────▶ withdrawn ◀────┘
//
// Two-person rule: the person who uploaded (requested) a release can never
// approve it, and each approver counts once. Every approval is kept on the
// release with who and when, and every upload, approval and withdrawal —
// refused attempts included — goes to the Auditor. An accepted change is
// stored only if the Auditor recorded it.
//
// Offerable is the gate for campaigns: a release is offered to devices
// only while it is approved, not withdrawn, still signed by the threshold
// of the current trust set (which may have been rotated since upload), and
// not expired.
//
// # Storage
//
// Records live in a bbolt file (DBFile) in Config.Dir, one transaction per
// change. Images live in ImagesDir, named by their SHA-256 in hex: written
// to a temporary file, verified against the manifest, fsynced and renamed,
// and the directory fsynced, so an image file that exists under its name
// is complete and correct. A crash can leave a temporary file (removed at
// the next Open) or an image no record refers to (harmless; same content
// for the next upload), never a record without its image.
//
// ServedTrustFile records the release trust set the fleet serves devices;
// RememberTrust refuses a configuration that does not reach the configured
// set from it through signed rotations (TrustChangeError), since devices
// hold that set and follow nothing else.
//
// # Downloads
//
// Handler serves GET /firmware/{sha256} with HTTP range requests, so an
// interrupted download resumes where it stopped (an ETag of the digest lets
// clients use If-Range). The URL grants nothing: the request must come with
// a client certificate verified by the TLS layer (else 401), the injected
// Authorize callback must accept the device for that image (else 403), and
// the image must belong to an offerable release (else 404).
package firmware
