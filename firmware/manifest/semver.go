package manifest

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Version is a parsed Semantic Versioning 2.0.0 version.
type Version struct {
	Major, Minor, Patch uint64
	Pre                 []string // pre-release identifiers; empty for a release
	Build               string   // build metadata without the '+'; ignored by Compare
}

// ParseVersion parses a Semantic Versioning 2.0.0 version (no "v" prefix,
// at most MaxVersion bytes, numbers that fit in 64 bits). Errors wrap
// ErrInvalid.
func ParseVersion(s string) (Version, error) {
	var v Version
	bad := func(why string) (Version, error) {
		return Version{}, fmt.Errorf("%w: version %q is not semantic versioning 2.0.0: %s", ErrInvalid, s, why)
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > MaxVersion {
		return bad(fmt.Sprintf("longer than %d bytes", MaxVersion))
	}
	rest := s
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		v.Build = rest[i+1:]
		rest = rest[:i]
		if !identifiers(v.Build, false) {
			return bad("build metadata must be dot-separated non-empty [0-9A-Za-z-] identifiers")
		}
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		pre := rest[i+1:]
		rest = rest[:i]
		if !identifiers(pre, true) {
			return bad("pre-release must be dot-separated non-empty [0-9A-Za-z-] identifiers, numbers without leading zeros")
		}
		v.Pre = strings.Split(pre, ".")
	}
	core := strings.Split(rest, ".")
	if len(core) != 3 {
		return bad("want MAJOR.MINOR.PATCH")
	}
	var nums [3]uint64
	for i, p := range core {
		n, ok := number(p)
		if !ok {
			return bad("MAJOR, MINOR and PATCH must be numbers without leading zeros that fit in 64 bits")
		}
		nums[i] = n
	}
	v.Major, v.Minor, v.Patch = nums[0], nums[1], nums[2]
	return v, nil
}

// String returns the version in its canonical text form.
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if len(v.Pre) > 0 {
		s += "-" + strings.Join(v.Pre, ".")
	}
	if v.Build != "" {
		s += "+" + v.Build
	}
	return s
}

// Compare returns -1, 0 or +1 as v has lower, equal or higher precedence
// than w under Semantic Versioning 2.0.0 (build metadata does not count).
func (v Version) Compare(w Version) int {
	if c := cmp.Compare(v.Major, w.Major); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Minor, w.Minor); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Patch, w.Patch); c != 0 {
		return c
	}
	switch {
	case len(v.Pre) == 0 && len(w.Pre) == 0:
		return 0
	case len(v.Pre) == 0:
		return 1 // a release outranks its pre-releases
	case len(w.Pre) == 0:
		return -1
	}
	for i := 0; i < len(v.Pre) && i < len(w.Pre); i++ {
		a, b := v.Pre[i], w.Pre[i]
		na, aNum := number(a)
		nb, bNum := number(b)
		var c int
		switch {
		case aNum && bNum:
			c = cmp.Compare(na, nb)
		case aNum:
			c = -1 // numeric identifiers rank below alphanumeric ones
		case bNum:
			c = 1
		default:
			c = strings.Compare(a, b)
		}
		if c != 0 {
			return c
		}
	}
	return cmp.Compare(len(v.Pre), len(w.Pre))
}

// number parses a numeric identifier: digits only, no leading zero, fits in
// 64 bits.
func number(s string) (uint64, bool) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// identifiers checks dot-separated identifiers of [0-9A-Za-z-]; with
// strictNumbers, all-digit identifiers may not have leading zeros
// (pre-release rule) and must fit in 64 bits so that Compare can order them.
func identifiers(s string, strictNumbers bool) bool {
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return false
		}
		digits := true
		for i := 0; i < len(id); i++ {
			c := id[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				digits = false
			default:
				return false
			}
		}
		if strictNumbers && digits {
			if _, ok := number(id); !ok {
				return false
			}
		}
	}
	return true
}
