package manifest

import (
	"errors"
	"testing"
)

func TestParseVersion(t *testing.T) {
	for _, s := range []string{"0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-0.3.7",
		"1.0.0-x.7.z.92", "1.0.0+20130313144700", "1.0.0-beta+exp.sha.5114f85", "1.0.0+21AF26D3----117B344092BD",
		"1.0.0-rc.1+build.001", "18446744073709551615.0.0"} {
		v, err := ParseVersion(s)
		if err != nil {
			t.Errorf("ParseVersion(%q) = %v", s, err)
			continue
		}
		if v.String() != s {
			t.Errorf("ParseVersion(%q).String() = %q", s, v.String())
		}
	}
	for _, s := range []string{"", "1", "1.2", "1.2.3.4", "v1.2.3", "01.2.3", "1.02.3", "1.2.03", "1.2.3-", "1.2.3+",
		"1.2.3-01", "1.2.3-a..b", "1.2.3-a_b", "1.2.3+a..b", "1.2.3-ü", " 1.2.3", "1.2.-3", "18446744073709551616.0.0",
		"1.0.0-99999999999999999999"} {
		if _, err := ParseVersion(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseVersion(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

// TestVersionPrecedence checks the ordering example of Semantic Versioning
// 2.0.0, section 11, and that build metadata does not count.
func TestVersionPrecedence(t *testing.T) {
	order := []string{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
		"1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0", "2.0.10"}
	for i := range order {
		for j := range order {
			a, _ := ParseVersion(order[i])
			b, _ := ParseVersion(order[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	a, _ := ParseVersion("1.0.0+a")
	b, _ := ParseVersion("1.0.0+b")
	if a.Compare(b) != 0 {
		t.Error("build metadata changed precedence")
	}
}
