// Package access gives operators just-in-time SSH access to devices: an
// operator requests access to a device or a group for a local account,
// with a justification and a duration the policy bounds; the request goes
// through fleet/approval (the policy's number of people other than the
// requester, holding access.approve, approve it: under the fleet's
// two-person rule when it is on, else in the service's own access-only
// approvals); once approved, the fleet's
// SSH user CA (a key of its own, not the host CA's) signs a short-lived
// OpenSSH user certificate for the operator's own public key, limited to
// the grant: principals that only the grant's device (or group) accepts,
// valid until the grant ends, source-address if given, no forwarding
// unless granted, the grant in its key ID and serial.
//
// Devices keep their sshd trusting the user CA and a key revocation list
// (KRL) the fleet sends (pkg/wire access.trust) when a device asks at the
// start of its session and at once when a grant covering it is revoked.
// Session starts and ends that devices read in sshd's log come back as
// access.sessions: device claims, recorded in the audit log as the
// device's word, tied to the grant (who asked, why, who approved), at
// most MaxSessionEvents a minute per device.
//
// A grant's life is a state machine (Transition): requested → approved
// (certificate signed) → active (a device reported a session) → expired
// or revoked; a request can also be denied (rejected, withdrawn) or
// expire unapproved. No other change is possible.
package access

import (
	"errors"

	"fmt"
	"github.com/sigil-iot/sigil/pkg/config"
	"slices"
	"time"
)

// State is where a grant is in its life.
type State string

// States. Expired, revoked and denied are final.
const (
	StateRequested State = "requested" // waiting for approval
	StateApproved  State = "approved"  // certificate signed, not used yet
	StateActive    State = "active"    // a device reported a session under it
	StateExpired   State = "expired"   // its end passed (or its request expired unapproved)
	StateRevoked   State = "revoked"   // revoked by an operator
	StateDenied    State = "denied"    // rejected by an approver or withdrawn
)

// transitions lists the states each state may change to.
var transitions = map[State][]State{
	StateRequested: {StateApproved, StateDenied, StateExpired},
	StateApproved:  {StateActive, StateExpired, StateRevoked},
	StateActive:    {StateExpired, StateRevoked},
}

// ErrTransition: the grant's state does not allow the change.
var ErrTransition = errors.New("access: state does not allow this change")

// Transition returns to if a grant in from may change to it, else an
// error wrapping ErrTransition.
func Transition(from, to State) (State, error) {
	if slices.Contains(transitions[from], to) {
		return to, nil
	}
	return from, fmt.Errorf("%w: %s to %s", ErrTransition, from, to)
}

// Final reports whether s is a final state.
func (s State) Final() bool { return len(transitions[s]) == 0 }

// Session is one login under a grant as a device reported it (a device
// claim, never verified by the fleet).
type Session struct {
	Device string    `json:"device"`
	User   string    `json:"user"`
	From   string    `json:"from"`
	Port   int       `json:"port,omitempty"`
	Start  time.Time `json:"start"`        // when the device read the line, fleet clock
	End    time.Time `json:"end,omitzero"` // zero while open
}

// Grant is one request for access and, once approved, its certificate.
type Grant struct {
	ID        string `json:"id"`
	Serial    uint64 `json:"serial"` // the certificate's serial, what the KRL revokes
	Requester string `json:"requester"`
	// Device or Group is the target (exactly one).
	Device string `json:"device,omitempty"`
	Group  string `json:"group,omitempty"`
	// Login is the local account on the device.
	Login string `json:"login"`
	// PublicKey is the operator's own public key (authorized_keys line);
	// Fingerprint its SHA-256 fingerprint.
	PublicKey   string `json:"public_key"`
	Fingerprint string `json:"fingerprint"`
	// SourceAddress, if set, limits where logins may come from.
	SourceAddress   string          `json:"source_address,omitempty"`
	PortForwarding  bool            `json:"port_forwarding,omitempty"`
	AgentForwarding bool            `json:"agent_forwarding,omitempty"`
	Justification   string          `json:"justification"`
	Duration        config.Duration `json:"duration"` // from approval
	State           State           `json:"state"`
	Created         time.Time       `json:"created"`
	// ApprovalID is the two-person request (fleet/approval);
	// ApprovalExpires when it lapses unapproved.
	ApprovalID      string    `json:"approval_id"`
	ApprovalExpires time.Time `json:"approval_expires"`
	Approvers       []string  `json:"approvers,omitempty"`
	// Start and End bound the certificate (End = approval + Duration).
	Start       time.Time `json:"start,omitzero"`
	End         time.Time `json:"end,omitzero"`
	Certificate string    `json:"certificate,omitempty"` // authorized_keys line
	Revoked     time.Time `json:"revoked,omitzero"`
	RevokedBy   string    `json:"revoked_by,omitempty"`
	Reason      string    `json:"reason,omitempty"` // revocation or denial reason
	Sessions    []Session `json:"sessions,omitempty"`
}

// KeyID is the certificate key ID naming the grant, as sshd logs it.
func (g *Grant) KeyID() string { return KeyIDPrefix + g.ID }

// KeyIDPrefix starts every grant certificate's key ID.
const KeyIDPrefix = "sigil-grant:"

// Target names the grant's target: "device=<id>" or "group=<name>".
func (g *Grant) Target() string {
	if g.Device != "" {
		return "device=" + g.Device
	}
	return "group=" + g.Group
}

// Principal is the certificate principal for the grant: "<login>@<id>"
// for a device, "<login>@group:<name>" for a group. A device's sshd
// accepts, for each account, only its own two (Principals).
func (g *Grant) Principal() string {
	if g.Device != "" {
		return g.Login + "@" + g.Device
	}
	return g.Login + "@group:" + g.Group
}

// Principals returns the principals the device deviceID (in group, which
// may be empty) accepts for login.
func Principals(login, deviceID, group string) []string {
	out := []string{login + "@" + deviceID}
	if group != "" {
		out = append(out, login+"@group:"+group)
	}
	return out
}

// StateAt is g's state at now: an approved or active grant past its end,
// or a request past its approval expiry, is expired even before the sweep
// records it.
func (g *Grant) StateAt(now time.Time) State {
	switch g.State {
	case StateApproved, StateActive:
		if !now.Before(g.End) {
			return StateExpired
		}
	case StateRequested:
		if !g.ApprovalExpires.IsZero() && !now.Before(g.ApprovalExpires) {
			return StateExpired
		}
	}
	return g.State
}

// move changes g's state if the machine allows it.
func (g *Grant) move(to State) error {
	s, err := Transition(g.State, to)
	if err != nil {
		return err
	}
	g.State = s
	return nil
}
