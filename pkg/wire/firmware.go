package wire

import (
	"errors"
	"fmt"
	"strings"
)

// Firmware update message types (protocol version 4), all on the topic kind
// KindFirmware.
//
// The fleet announces a release to a device in a campaign
// (FirmwareAnnounce); the device checks the manifest's signatures against
// its own release trust set, downloads the image over HTTPS with its mTLS
// identity, installs it and reports each step (FirmwareReport). The release
// trust set reaches the device in EnrollResult.FirmwareTrust and changes
// only through rotations that the current keys signed (FirmwareTrust, and
// EnrollResult.FirmwareRotations at a re-enrollment).
const (
	TypeFirmwareAnnounce = "firmware.announce" // fleet -> device (down "fw"): FirmwareAnnounce
	TypeFirmwareReport   = "firmware.report"   // device -> fleet (up "fw"): FirmwareReport
	TypeFirmwareTrust    = "firmware.trust"    // fleet -> device (down "fw"): FirmwareTrust
)

// KindFirmware is the topic kind of firmware messages in both directions.
const KindFirmware = "fw"

// Limits on firmware messages. The manifest and each bundle have the bounds
// firmware/manifest and firmware/verify enforce; an announcement must also
// fit MaxMessageSize once encoded.
const (
	MaxFirmwareManifest     = 64 << 10  // bytes of a signed manifest
	MaxFirmwareBundle       = 64 << 10  // bytes of one signature bundle
	MaxFirmwareBundles      = 16        // bundles per manifest or statement
	MaxFirmwareBundlesTotal = 192 << 10 // bytes of all bundles of one message
	MaxFirmwareTrust        = 64 << 10  // bytes of an encoded release trust set
	MaxFirmwareRotations    = 16        // rotation statements in one FirmwareTrust
	MaxFirmwarePath         = 256       // bytes of a download path
)

// FirmwareAnnounce offers a release to the device. Update is the device's
// key for this update: an announcement repeated with the same Update (QoS 1
// redelivery, a campaign's retry) is the same update, and its final report
// is sent again. The fleet uses the campaign's ID as Update.
type FirmwareAnnounce struct {
	Campaign string `cbor:"1,keyasint"`
	Update   string `cbor:"2,keyasint"`
	// Manifest is the release manifest exactly as signed
	// (firmware/manifest's canonical form).
	Manifest []byte `cbor:"3,keyasint"`
	// Bundles are the sigstore bundles that sign Manifest; the device
	// checks them against its own trust set and threshold.
	Bundles [][]byte `cbor:"4,keyasint"`
	// Path is where the image is downloaded from on the fleet's HTTPS
	// listener (the device's update_server), "/firmware/<sha256 hex>".
	// The device authenticates with its mTLS identity; the path grants
	// nothing by itself.
	Path string `cbor:"5,keyasint"`
}

// Validate checks the IDs, the path and the sizes.
func (a *FirmwareAnnounce) Validate() error {
	var errs []error
	if !ValidID(a.Campaign) || !ValidID(a.Update) {
		errs = append(errs, errors.New("campaign or update ID"))
	}
	if len(a.Manifest) == 0 || len(a.Manifest) > MaxFirmwareManifest {
		errs = append(errs, fmt.Errorf("manifest: %d bytes, want 1 to %d", len(a.Manifest), MaxFirmwareManifest))
	}
	errs = append(errs, validBundles(a.Bundles))
	if !validPath(a.Path) {
		errs = append(errs, errors.New("path: want an absolute path of printable characters without '..', '?' or '#'"))
	}
	return errors.Join(errs...)
}

// FirmwareReport is a device's report of a step of an update. The fleet
// takes the device's identity from its authenticated session, never from
// the report. Reports other than final ones are best effort; a final one is
// sent again (also after a restart) until the broker acknowledged it.
type FirmwareReport struct {
	Update   string `cbor:"1,keyasint"`
	Campaign string `cbor:"2,keyasint"`
	// Phase is one of the phases of device/update: announced,
	// downloading, verifying, installing, switching, rebooting, health,
	// committing, advancing_floor (the new slot is permanent, the
	// anti-rollback counter not yet raised; Message says why it lags),
	// committed, rolling_back, rolled_back, failed.
	Phase string `cbor:"3,keyasint"`
	// Final is set for committed, rolled_back and failed.
	Final bool `cbor:"4,keyasint,omitempty"`
	// Reason says why an update failed or rolled back (the ReasonFirmware
	// codes); ReasonOK otherwise.
	Reason  Reason `cbor:"5,keyasint,omitempty"`
	Message string `cbor:"6,keyasint,omitempty"` // public detail
	// Version is the release being installed, once its manifest verified.
	Version string `cbor:"7,keyasint,omitempty"`
	// Running is the version the device runs now: after a rollback or a
	// fallback of the boot loader, the previous one.
	Running string `cbor:"8,keyasint,omitempty"`
	Slot    string `cbor:"9,keyasint,omitempty"` // the slot it runs from
	// Fetched is the bytes the device says it downloaded for the update
	// so far (image and block index; since version 6): an adaptive update
	// fetches a fraction of the image. A device's claim, not a fact the
	// fleet checked.
	Fetched int64 `cbor:"10,keyasint,omitempty"`
}

// Firmware phases a FirmwareReport may carry.
var firmwarePhases = []string{"announced", "downloading", "verifying", "installing", "switching", "rebooting",
	"health", "committing", "advancing_floor", "committed", "rolling_back", "rolled_back", "failed"}

// FirmwareFinal reports whether phase ends an update.
func FirmwareFinal(phase string) bool {
	return phase == "committed" || phase == "rolled_back" || phase == "failed"
}

// Validate checks the IDs, the phase and the labels.
func (r *FirmwareReport) Validate() error {
	var errs []error
	if !ValidID(r.Update) || !ValidID(r.Campaign) {
		errs = append(errs, errors.New("update or campaign ID"))
	}
	known := false
	for _, p := range firmwarePhases {
		known = known || p == r.Phase
	}
	if !known {
		errs = append(errs, fmt.Errorf("phase %q", clipText(r.Phase)))
	} else if r.Final != FirmwareFinal(r.Phase) {
		errs = append(errs, fmt.Errorf("final is %v for phase %s", r.Final, r.Phase))
	}
	if len(r.Message) > 512 {
		errs = append(errs, errors.New("message too long"))
	}
	if r.Fetched < 0 {
		errs = append(errs, errors.New("fetched is negative"))
	}
	errs = append(errs, label("version", r.Version, false), label("running", r.Running, false), label("slot", r.Slot, false))
	return errors.Join(errs...)
}

// FirmwareTrust carries the fleet's release trust: the current set, and the
// rotation statements that lead to it from earlier sets. The fleet sends it
// after a device's hello when it has rotated its release keys, or when the
// device may have none.
//
// A device that holds a trust set applies the rotations above its set's
// sequence number, in order, each verified with firmware/verify's Rotate
// (signed by the current threshold of its current keys and the new
// threshold of the new keys); it never takes Trust as is. A device without a
// trust set (enrolled before the fleet had one) takes Trust, which arrives
// over its authenticated session like EnrollResult.FirmwareTrust.
type FirmwareTrust struct {
	Trust     []byte          `cbor:"1,keyasint,omitempty"` // verify.TrustSet.Marshal
	Rotations []TrustRotation `cbor:"2,keyasint,omitempty"` // in sequence order
}

// TrustRotation is one signed rotation of the release trust set.
type TrustRotation struct {
	Statement []byte   `cbor:"1,keyasint"` // the new set, canonical (verify.TrustSet.Marshal), optionally followed by one newline (version 6): the bytes as signed
	Bundles   [][]byte `cbor:"2,keyasint"` // sigstore bundles over Statement
}

// Validate bounds the trust set and the rotations.
func (t *FirmwareTrust) Validate() error {
	if len(t.Trust) == 0 && len(t.Rotations) == 0 {
		return errors.New("neither a trust set nor rotations")
	}
	if len(t.Trust) > MaxFirmwareTrust {
		return fmt.Errorf("trust: %d bytes, at most %d", len(t.Trust), MaxFirmwareTrust)
	}
	return validRotations(t.Rotations)
}

// validRotations bounds a list of trust set rotations (FirmwareTrust's and
// EnrollResult's).
func validRotations(rots []TrustRotation) error {
	if len(rots) > MaxFirmwareRotations {
		return fmt.Errorf("rotations: %d, at most %d", len(rots), MaxFirmwareRotations)
	}
	var errs []error
	for i, r := range rots {
		if len(r.Statement) == 0 || len(r.Statement) > MaxFirmwareTrust {
			errs = append(errs, fmt.Errorf("rotation %d: statement of %d bytes", i, len(r.Statement)))
		}
		if err := validBundles(r.Bundles); err != nil {
			errs = append(errs, fmt.Errorf("rotation %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// validBundles bounds a list of signature bundles.
func validBundles(bundles [][]byte) error {
	if len(bundles) == 0 || len(bundles) > MaxFirmwareBundles {
		return fmt.Errorf("bundles: %d, want 1 to %d", len(bundles), MaxFirmwareBundles)
	}
	total := 0
	for i, b := range bundles {
		if len(b) == 0 || len(b) > MaxFirmwareBundle {
			return fmt.Errorf("bundle %d: %d bytes, want 1 to %d", i, len(b), MaxFirmwareBundle)
		}
		total += len(b)
	}
	if total > MaxFirmwareBundlesTotal {
		return fmt.Errorf("bundles: %d bytes in all, at most %d", total, MaxFirmwareBundlesTotal)
	}
	return nil
}

// validPath accepts an absolute URL path of printable ASCII without a
// query, a fragment, a dot segment or white space.
func validPath(p string) bool {
	if len(p) < 2 || len(p) > MaxFirmwarePath || p[0] != '/' || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\' || c == '%' {
			return false
		}
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// clipText shortens s for an error message.
func clipText(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
