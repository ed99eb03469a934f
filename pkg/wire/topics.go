package wire

import (
	"errors"
	"strings"
)

// DefaultPrefix is the first topic level. It is configurable so an OT bridge
// can remap Sigil's tree.
const DefaultPrefix = "sigil"

// Topics builds and parses topic names under a prefix.
//
//	<prefix>/v1/enroll/<client-id>/up/<kind>    bootstrap device -> fleet
//	<prefix>/v1/enroll/<client-id>/down/<kind>  fleet -> bootstrap device
//	<prefix>/v1/dev/<device-id>/up/<kind>       enrolled device -> fleet
//	<prefix>/v1/dev/<device-id>/down/<kind>     fleet -> enrolled device
//
// The fleet derives the ID in a topic from the connection's credential and
// checks it; a payload's claims about identity are never used.
type Topics struct {
	Prefix string
}

// Segment names the second level of a topic: "enroll" or "dev".
const (
	SegEnroll = "enroll"
	SegDevice = "dev"
)

// Direction of a message.
const (
	Up   = "up"
	Down = "down"
)

func (t Topics) prefix() string {
	if t.Prefix == "" {
		return DefaultPrefix
	}
	return t.Prefix
}

// EnrollUp is the topic a bootstrap client publishes a kind of message to.
func (t Topics) EnrollUp(clientID, kind string) string {
	return t.prefix() + "/v1/enroll/" + clientID + "/up/" + kind
}

// EnrollDown is the topic the fleet answers a bootstrap client on.
func (t Topics) EnrollDown(clientID, kind string) string {
	return t.prefix() + "/v1/enroll/" + clientID + "/down/" + kind
}

// DeviceUp is the topic an enrolled device publishes a kind of message to.
func (t Topics) DeviceUp(deviceID, kind string) string {
	return t.prefix() + "/v1/dev/" + deviceID + "/up/" + kind
}

// DeviceDown is the topic the fleet sends a kind of message to a device on.
func (t Topics) DeviceDown(deviceID, kind string) string {
	return t.prefix() + "/v1/dev/" + deviceID + "/down/" + kind
}

// Filter returns the subscription filter for one segment, ID and direction;
// id "+" matches every ID (fleet side only).
func (t Topics) Filter(seg, id, dir string) string {
	return t.prefix() + "/v1/" + seg + "/" + id + "/" + dir + "/#"
}

// Topic is a parsed topic name.
type Topic struct {
	Segment string // SegEnroll or SegDevice
	ID      string // client ID or device ID
	Dir     string // Up or Down
	Kind    string
}

// ErrTopic reports a topic name outside Sigil's tree.
var ErrTopic = errors.New("wire: not a sigil topic")

// Parse splits a topic name. It rejects names with wildcards, empty levels
// or IDs that are not ValidID.
func (t Topics) Parse(name string) (Topic, error) {
	p := t.prefix() + "/v1/"
	if !strings.HasPrefix(name, p) {
		return Topic{}, ErrTopic
	}
	parts := strings.Split(name[len(p):], "/")
	if len(parts) != 4 {
		return Topic{}, ErrTopic
	}
	tp := Topic{Segment: parts[0], ID: parts[1], Dir: parts[2], Kind: parts[3]}
	if tp.Segment != SegEnroll && tp.Segment != SegDevice {
		return Topic{}, ErrTopic
	}
	if tp.Dir != Up && tp.Dir != Down {
		return Topic{}, ErrTopic
	}
	if !ValidID(tp.ID) || !validKind(tp.Kind) {
		return Topic{}, ErrTopic
	}
	return tp, nil
}

// ValidID reports whether s may stand in a topic level as a client or device
// ID: 1 to 64 characters of [a-z0-9._-], not starting with '.' or '-'.
// Anything that could widen a filter (+ # / and the like) or smuggle a
// special topic ($SYS) is refused.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func validKind(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
