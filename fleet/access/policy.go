package access

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/sshca"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/crypto/ssh"
)

// Policy bounds what a grant may give. The zero value is usable: every
// field documents its default.
type Policy struct {
	// MaxDuration bounds a grant's duration; 0 means DefaultMaxDuration.
	MaxDuration config.Duration `json:"max_duration"`
	// DefaultDuration is a request's duration when it names none; 0
	// means one hour (or MaxDuration if shorter).
	DefaultDuration config.Duration `json:"default_duration"`
	// Logins are the local accounts a grant may name; empty means
	// ["root"]. Devices accept certificates for these accounts only.
	Logins []string `json:"logins"`
	// AllowForwarding lets a request ask for port or agent forwarding;
	// false refuses such requests.
	AllowForwarding bool `json:"allow_forwarding"`
	// Approvals is how many people other than the requester, each with
	// access.approve, must approve a grant: 0 means 1, at most
	// approval.MaxApprovals. Under the fleet's two-person rule a grant
	// needs at least that rule's count.
	Approvals int `json:"approvals"`
}

// DefaultMaxDuration is Policy.MaxDuration's default.
const DefaultMaxDuration = 8 * time.Hour

// withDefaults returns p with its defaults applied, or why it is invalid.
func (p Policy) withDefaults() (Policy, error) {
	if p.MaxDuration == 0 {
		p.MaxDuration = config.Duration(DefaultMaxDuration)
	}
	if p.MaxDuration < 0 || time.Duration(p.MaxDuration) > sshca.MaxValidity {
		return p, fmt.Errorf("access: max duration %s out of range", time.Duration(p.MaxDuration))
	}
	if p.DefaultDuration == 0 {
		p.DefaultDuration = min(config.Duration(time.Hour), p.MaxDuration)
	}
	if p.DefaultDuration < 0 || p.DefaultDuration > p.MaxDuration {
		return p, errors.New("access: default duration must be positive and at most the max duration")
	}
	if len(p.Logins) == 0 {
		p.Logins = []string{"root"}
	}
	if p.Approvals == 0 {
		p.Approvals = 1
	}
	if p.Approvals < 0 || p.Approvals > approval.MaxApprovals {
		return p, fmt.Errorf("access: approvals must be 1 to %d", approval.MaxApprovals)
	}
	if len(p.Logins) > wire.MaxAccessLogins {
		return p, errors.New("access: too many logins")
	}
	for _, l := range p.Logins {
		if !wire.ValidLogin(l) {
			return p, fmt.Errorf("access: login %q is not a portable user name", l)
		}
	}
	return p, nil
}

// Draft is what an operator requests.
type Draft struct {
	Device string `json:"device,omitempty"` // exactly one of Device and Group
	Group  string `json:"group,omitempty"`
	Login  string `json:"login"` // "" means the policy's first login
	// PublicKey is the operator's own public key, one authorized_keys
	// line; never a private key.
	PublicKey       string          `json:"public_key"`
	Justification   string          `json:"justification"`
	Duration        config.Duration `json:"duration"` // "2h"; "" or 0 means the policy's default
	SourceAddress   string          `json:"source_address,omitempty"`
	PortForwarding  bool            `json:"port_forwarding,omitempty"`
	AgentForwarding bool            `json:"agent_forwarding,omitempty"`
}

// ErrPolicy: a request that the policy or the rules of a grant refuse
// (the message says why; it is safe to show the requester).
var ErrPolicy = errors.New("access: request refused")

// Check applies the policy to d and returns it completed (defaults,
// normalized source addresses) with the parsed key, or an error wrapping
// ErrPolicy that names every problem.
func (p Policy) Check(d Draft) (Draft, ssh.PublicKey, error) {
	var errs []error
	if (d.Device == "") == (d.Group == "") {
		errs = append(errs, errors.New("name exactly one of device and group"))
	}
	if d.Device != "" && !wire.ValidID(d.Device) {
		errs = append(errs, errors.New("device ID is invalid"))
	}
	if d.Group != "" && !wire.ValidPrincipal(d.Group) {
		errs = append(errs, errors.New("group name is invalid"))
	}
	if d.Login == "" {
		d.Login = p.Logins[0]
	}
	if !slices.Contains(p.Logins, d.Login) {
		errs = append(errs, fmt.Errorf("login %q is not allowed (allowed: %s)", d.Login, strings.Join(p.Logins, ", ")))
	}
	if d.Duration == 0 {
		d.Duration = p.DefaultDuration
	}
	if time.Duration(d.Duration) < time.Second || d.Duration > p.MaxDuration {
		errs = append(errs, fmt.Errorf("duration must be between 1s and %s", time.Duration(p.MaxDuration)))
	}
	d.Justification = strings.TrimSpace(d.Justification)
	if d.Justification == "" || len(d.Justification) > 2000 || strings.ContainsFunc(d.Justification, func(r rune) bool { return r < ' ' && r != '\n' }) {
		errs = append(errs, errors.New("a justification of 1 to 2000 printable characters is required"))
	}
	if (d.PortForwarding || d.AgentForwarding) && !p.AllowForwarding {
		errs = append(errs, errors.New("the policy allows no port or agent forwarding"))
	}
	if d.SourceAddress != "" {
		var norm []string
		for _, a := range strings.Split(d.SourceAddress, ",") {
			a = strings.TrimSpace(a)
			if pf, err := netip.ParsePrefix(a); err == nil {
				norm = append(norm, pf.Masked().String())
			} else if ip, err := netip.ParseAddr(a); err == nil && ip.Zone() == "" {
				norm = append(norm, ip.String())
			} else {
				errs = append(errs, fmt.Errorf("source address %q is not an address or CIDR block", a))
			}
		}
		if len(norm) > 16 {
			errs = append(errs, errors.New("at most 16 source addresses"))
		}
		d.SourceAddress = strings.Join(norm, ",")
	}
	var key ssh.PublicKey
	if strings.Contains(d.PublicKey, "PRIVATE KEY") {
		errs = append(errs, errors.New("this is a private key: send the public key (.pub)"))
	} else if err := wire.SSHLine(strings.TrimSpace(d.PublicKey), wire.MaxSSHKeyLine); err != nil {
		errs = append(errs, errors.New("public key must be one authorized_keys line"))
	} else if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(d.PublicKey)); err != nil {
		errs = append(errs, errors.New("public key does not parse"))
	} else if _, isCert := k.(*ssh.Certificate); isCert {
		errs = append(errs, errors.New("public key is a certificate"))
	} else if err := sshca.CheckHostKey(k); err != nil {
		errs = append(errs, errors.New("public key type is not accepted (ed25519, ECDSA or RSA ≥ 2048)"))
	} else {
		key = k
		d.PublicKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	}
	if len(errs) > 0 {
		return d, nil, fmt.Errorf("%w: %w", ErrPolicy, errors.Join(errs...))
	}
	return d, key, nil
}
