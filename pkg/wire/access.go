package wire

import (
	"errors"
	"fmt"
	"strings"
)

// Just-in-time operator access message types (registered with Since 5;
// listed under version 6 in the history: the lead bumps Version once).
const (
	TypeAccessTrust    = "access.trust"    // fleet -> device (down "access"): AccessTrust
	TypeAccessSessions = "access.sessions" // device -> fleet (up "access"): AccessSessions
)

// Limits on access messages.
const (
	MaxAccessLogins     = 16
	MaxAccessPrincipals = 16
	MaxAccessName       = 128
	MaxAccessKRL        = 256 << 10
	MaxAccessEvents     = 64
)

// AccessLogin is one local account operators may log in as with a user
// certificate, and the certificate principals that sshd accepts for it on
// this device (the lines of its AuthorizedPrincipalsFile).
type AccessLogin struct {
	Login      string   `cbor:"1,keyasint"`
	Principals []string `cbor:"2,keyasint"`
}

// AccessTrust is what the device's sshd needs to admit operators with
// fleet-signed user certificates: the user CA keys (TrustedUserCAKeys, one
// authorized_keys line each), the accounts and their principals, and the
// OpenSSH key revocation list (RevokedKeys, binary KRL). The fleet sends
// it in answer to an empty AccessSessions (which the device sends at the
// start of each session) and whenever a grant covering the device is
// revoked; the device replaces its files with it atomically. Generation
// increases with every revocation.
type AccessTrust struct {
	UserCAKeys  []string      `cbor:"1,keyasint"`
	Logins      []AccessLogin `cbor:"2,keyasint,omitempty"`
	RevokedKeys []byte        `cbor:"3,keyasint"`
	Generation  uint64        `cbor:"4,keyasint,omitempty"`
}

// Validate bounds the lists and checks every name: logins are safe file
// names, principals contain no comma, space or control character, the KRL
// starts with OpenSSH's magic.
func (t *AccessTrust) Validate() error {
	if len(t.UserCAKeys) == 0 || len(t.UserCAKeys) > 4 {
		return errors.New("user CA keys: 1 to 4")
	}
	for i, k := range t.UserCAKeys {
		if err := SSHLine(k, MaxSSHKeyLine); err != nil {
			return fmt.Errorf("user CA key %d: %w", i, err)
		}
	}
	if len(t.Logins) > MaxAccessLogins {
		return errors.New("too many logins")
	}
	seen := map[string]bool{}
	for _, l := range t.Logins {
		if !ValidLogin(l.Login) || seen[l.Login] {
			return fmt.Errorf("login %q", l.Login)
		}
		seen[l.Login] = true
		if len(l.Principals) > MaxAccessPrincipals {
			return errors.New("too many principals")
		}
		for _, p := range l.Principals {
			if !ValidPrincipal(p) {
				return fmt.Errorf("principal %q", p)
			}
		}
	}
	if len(t.RevokedKeys) < 8 || len(t.RevokedKeys) > MaxAccessKRL || string(t.RevokedKeys[:8]) != "SSHKRL\n\x00" {
		return errors.New("revoked keys are not an OpenSSH KRL")
	}
	return nil
}

// ValidLogin reports whether s is a POSIX-portable user name that is safe
// as a file name: [a-z_][a-z0-9_-]*, at most 32 bytes.
func ValidLogin(s string) bool {
	if s == "" || len(s) > 32 || !(s[0] >= 'a' && s[0] <= 'z' || s[0] == '_') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidPrincipal reports whether s is a certificate principal Sigil uses:
// printable ASCII without space or comma, at most MaxAccessName bytes.
func ValidPrincipal(s string) bool {
	if s == "" || len(s) > MaxAccessName || s[0] == '#' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] > 0x7e || s[i] == ',' {
			return false
		}
	}
	return true
}

// Access session event kinds.
const (
	AccessSessionStart = "start"
	AccessSessionEnd   = "end"
)

// AccessSession is one login or logout the device saw in sshd's log. It
// is a device claim: the fleet records it as what the device reported.
// Start carries the certificate's key ID, serial and signing CA
// fingerprint; End carries them when the device saw the start.
type AccessSession struct {
	Event  string `cbor:"1,keyasint"`           // AccessSessionStart or AccessSessionEnd
	Time   int64  `cbor:"2,keyasint"`           // Unix seconds, device clock, when the line was read
	User   string `cbor:"3,keyasint"`           // local account
	From   string `cbor:"4,keyasint"`           // client address
	Port   int    `cbor:"5,keyasint,omitempty"` // client port
	KeyID  string `cbor:"6,keyasint,omitempty"`
	Serial uint64 `cbor:"7,keyasint,omitempty"`
	CA     string `cbor:"8,keyasint,omitempty"` // "SHA256:..."
}

// AccessSessions reports session events, oldest first. Without events it
// asks the fleet for the device's AccessTrust.
type AccessSessions struct {
	Events []AccessSession `cbor:"1,keyasint"`
}

// Validate bounds the events and their fields.
func (s *AccessSessions) Validate() error {
	if len(s.Events) > MaxAccessEvents {
		return fmt.Errorf("events: %d, want at most %d", len(s.Events), MaxAccessEvents)
	}
	for i, e := range s.Events {
		if e.Event != AccessSessionStart && e.Event != AccessSessionEnd {
			return fmt.Errorf("event %d: kind %q", i, e.Event)
		}
		if !ValidLogin(e.User) || e.Port < 0 || e.Port > 65535 || e.Time < 0 {
			return fmt.Errorf("event %d: user or port", i)
		}
		for _, f := range []string{e.From, e.KeyID, e.CA} {
			if len(f) > MaxAccessName || strings.ContainsFunc(f, func(r rune) bool { return r <= 0x20 || r > 0x7e }) {
				return fmt.Errorf("event %d: field", i)
			}
		}
	}
	return nil
}
