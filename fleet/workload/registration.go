// Package workload gives the processes running on a device their own
// SPIFFE identities: operators register workloads (a name, the selectors a
// process must match, and the devices it applies to), the device's sigild
// asks for SVIDs over its mTLS MQTT session (wire.TypeWorkloadRequest),
// and this package answers with X.509-SVIDs signed by the fleet CA and
// JWT-SVIDs signed by its own rotating keys, only for an active device
// whose last attestation passed. It publishes the OpenID Connect
// discovery document and JWKS that clouds' workload identity federation
// fetches to trust those JWT-SVIDs.
//
// A workload's SPIFFE ID is always under the asking device's own:
// spiffe://<trust domain>/device/<device ID>/workload/<name>, built from
// the device ID the broker authenticated, never from the request.
package workload

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors of registrations and the store.
var (
	ErrNotFound = errors.New("workload: no such registration")
	ErrInvalid  = errors.New("workload: invalid registration")
)

// Scope says which devices a registration applies to.
type Scope string

// Scopes.
const (
	ScopeDevice Scope = "device" // Target is a device ID
	ScopeGroup  Scope = "group"  // Target is a device group
	ScopeModel  Scope = "model"  // Target is a hardware model
)

// Registration is one workload: its name, the devices it applies to
// (Scope and Target) and the selectors a calling process must all match
// on the device (at least one). ExeSHA256 is the SHA-256 of the
// executable file, in lowercase hex.
type Registration struct {
	Name      string    `json:"name"`
	Scope     Scope     `json:"scope"`
	Target    string    `json:"target"`
	UID       *uint32   `json:"uid,omitempty"`
	GID       *uint32   `json:"gid,omitempty"`
	ExePath   string    `json:"exe_path,omitempty"`
	ExeSHA256 string    `json:"exe_sha256,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// Validate checks every field; the errors are joined and match
// ErrInvalid.
func (r *Registration) Validate() error {
	var errs []error
	if !wire.ValidWorkloadName(r.Name) {
		errs = append(errs, errors.New("name must be 1 to 64 of a-z 0-9 . _ - (not starting with . or -)"))
	}
	switch r.Scope {
	case ScopeDevice, ScopeGroup, ScopeModel:
		if r.Target == "" || len(r.Target) > 128 || strings.ContainsAny(r.Target, "\x00\n\r") {
			errs = append(errs, errors.New("target must name the device, group or model (1 to 128 bytes)"))
		}
	default:
		errs = append(errs, errors.New("scope must be device, group or model"))
	}
	if r.Scope == ScopeDevice && r.Target != "" && !wire.ValidID(r.Target) {
		errs = append(errs, errors.New("target must be a device ID"))
	}
	if r.ExePath != "" && (r.ExePath[0] != '/' || len(r.ExePath) > wire.MaxWorkloadPath || strings.ContainsRune(r.ExePath, 0)) {
		errs = append(errs, errors.New("exe_path must be an absolute path of at most 1024 bytes"))
	}
	if r.ExeSHA256 != "" {
		if b, err := hex.DecodeString(r.ExeSHA256); err != nil || len(b) != 32 || strings.ToLower(r.ExeSHA256) != r.ExeSHA256 {
			errs = append(errs, errors.New("exe_sha256 must be 64 lowercase hex digits"))
		}
	}
	if r.UID == nil && r.GID == nil && r.ExePath == "" && r.ExeSHA256 == "" {
		errs = append(errs, errors.New("at least one selector (uid, gid, exe_path, exe_sha256) is required"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// Applies reports whether the registration applies to device d.
func (r *Registration) Applies(d *inventory.Device) bool {
	switch r.Scope {
	case ScopeDevice:
		return d.ID == r.Target
	case ScopeGroup:
		return d.Group != "" && d.Group == r.Target
	case ScopeModel:
		return d.Model != "" && d.Model == r.Target
	}
	return false
}

// SPIFFEID returns the workload's SPIFFE ID on the device deviceID:
// spiffe://<trustDomain>/device/<deviceID>/workload/<name>.
func SPIFFEID(trustDomain, deviceID, name string) *url.URL {
	u := identity.SPIFFEID(trustDomain, deviceID)
	u.Path += "/workload/" + name
	return u
}

// Entry is the registration as the device deviceID receives it.
func (r *Registration) Entry(trustDomain, deviceID string) wire.WorkloadEntry {
	e := wire.WorkloadEntry{Name: r.Name, SPIFFEID: SPIFFEID(trustDomain, deviceID, r.Name).String(), ExePath: r.ExePath}
	if r.UID != nil {
		e.HasUID, e.UID = true, *r.UID
	}
	if r.GID != nil {
		e.HasGID, e.GID = true, *r.GID
	}
	if r.ExeSHA256 != "" {
		e.ExeSHA256, _ = hex.DecodeString(r.ExeSHA256)
	}
	return e
}
