package inventory

import "strings"

// MatchesText reports whether q, a free-text search, names d: its whole EK
// fingerprint, or a part of its ID, serial, model, owner, group or
// firmware, ignoring case. The console's search box and the API's bulk
// filters use it, so both select the same devices.
func (d *Device) MatchesText(q string) bool {
	if q == "" {
		return true
	}
	if strings.EqualFold(d.EKFingerprint, q) {
		return true
	}
	lq := strings.ToLower(q)
	for _, s := range []string{d.ID, d.Serial, d.Model, d.Owner, d.Group, d.Firmware} {
		if containsFold(s, lq) {
			return true
		}
	}
	return false
}

// containsFold reports whether sub is in s, ignoring case: the same as
// strings.Contains(strings.ToLower(s), strings.ToLower(sub)), without
// allocating when both are ASCII (device IDs, serials and names usually
// are). lsub is sub in lower case.
func containsFold(s, lsub string) bool {
	if !isASCII(s) || !isASCII(lsub) {
		return strings.Contains(strings.ToLower(s), lsub)
	}
	n := len(lsub)
next:
	for i := 0; i+n <= len(s); i++ {
		for j := 0; j < n; j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lsub[j] {
				continue next
			}
		}
		return true
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
