package exposure

import (
	"errors"
	"os"
	"testing"
)

// TestMatchRanges: OSV events walked in order, intervals closed by fixed
// (exclusive) and last_affected (inclusive), "0" from the first version,
// listed versions, GIT ranges and other packages never matching.
func TestMatchRanges(t *testing.T) {
	a := &Advisory{ID: "X", Affected: []Affected{
		{PURL: "pkg:generic/lib", Ranges: []Range{
			{Type: "SEMVER", Events: []Event{{Introduced: "0"}, {Fixed: "1.0.5"}, {Introduced: "2.0.0"}, {LastAffected: "2.1.0"}}},
			{Type: "GIT", Events: []Event{{Introduced: "0"}}},
		}, Versions: []string{"3.0.0-weird"}},
	}}
	for v, want := range map[string]struct {
		hit   bool
		fixed string
	}{
		"0.1.0": {true, "1.0.5"}, "1.0.4": {true, "1.0.5"}, "1.0.5": {false, ""}, "1.9.9": {false, ""},
		"2.0.0": {true, ""}, "2.1.0": {true, ""}, "2.1.1": {false, ""}, "3.0.0-weird": {true, ""}, "not-a-version": {false, ""},
	} {
		hit, fixed := a.Match(Component{PURL: "pkg:generic/lib@" + v, Version: v})
		if hit != want.hit || fixed != want.fixed {
			t.Errorf("version %s: (%v, %q), want (%v, %q)", v, hit, fixed, want.hit, want.fixed)
		}
	}
	if hit, _ := a.Match(Component{PURL: "pkg:generic/other@0.1.0", Version: "0.1.0"}); hit {
		t.Error("another package matched")
	}
}

// TestParseErrors: what is not a CycloneDX SBOM or an OSV advisory is
// refused with the package's error.
func TestParseErrors(t *testing.T) {
	for _, b := range []string{``, `[]`, `{"bomFormat":"SPDX","specVersion":"1.5"}`, `{"bomFormat":"CycloneDX"}`,
		`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"x","purl":"not a purl"}]}`} {
		if _, err := ParseSBOM([]byte(b)); !errors.Is(err, ErrSBOM) {
			t.Errorf("ParseSBOM(%s) = %v, want ErrSBOM", b, err)
		}
	}
	for _, b := range []string{``, `{}`, `{"id":""}`, `{"id":"X","affected":[{"package":{"purl":"nope"}}]}`, `{"id":"X","affected":"no"}`} {
		if _, err := ParseOSV([]byte(b)); !errors.Is(err, ErrAdvisory) {
			t.Errorf("ParseOSV(%s) = %v, want ErrAdvisory", b, err)
		}
	}
}

func FuzzParseSBOM(f *testing.F) {
	for _, p := range []string{"testdata/gw-os-1.0.0.cdx.json", "testdata/gw-os-1.1.0.cdx.json"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"bomFormat":"CycloneDX","specVersion":"1.4","components":[{"components":[{"components":[]}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cs, err := ParseSBOM(b)
		if err != nil {
			if !errors.Is(err, ErrSBOM) {
				t.Fatalf("error does not wrap ErrSBOM: %v", err)
			}
			return
		}
		if len(cs) > MaxComponents {
			t.Fatalf("%d components", len(cs))
		}
	})
}

func FuzzParseOSV(f *testing.F) {
	b, err := os.ReadFile("testdata/OSV-2026-0001.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"id":"A","affected":[{"package":{"purl":"pkg:npm/x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseOSV(b)
		if err != nil {
			if !errors.Is(err, ErrAdvisory) {
				t.Fatalf("error does not wrap ErrAdvisory: %v", err)
			}
			return
		}
		for _, af := range a.Affected {
			a.Match(Component{PURL: af.PURL + "@1.2.3", Version: "1.2.3"})
		}
	})
}

// TestParseSPDX: packages with a purl external reference are the
// components; the version comes from the purl, else versionInfo; what is
// not SPDX JSON is refused.
func TestParseSPDX(t *testing.T) {
	b, err := os.ReadFile("testdata/gw-os-1.0.0.spdx.json")
	if err != nil {
		t.Fatal(err)
	}
	cs, err := ParseSPDX(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []Component{
		{PURL: "pkg:deb/debian/openssl@3.0.1?arch=arm64", Name: "openssl", Version: "3.0.1"},
		{PURL: "pkg:generic/zlib", Name: "zlib", Version: "1.2.13"},
	}
	if len(cs) != len(want) || cs[0] != want[0] || cs[1] != want[1] {
		t.Fatalf("components %+v, want %+v", cs, want)
	}
	for _, bad := range []string{``, `[]`, `{"bomFormat":"CycloneDX","specVersion":"1.5"}`, `{"spdxVersion":"SPDX-9.9"}`} {
		if _, err := ParseSPDX([]byte(bad)); !errors.Is(err, ErrSBOM) {
			t.Errorf("ParseSPDX(%s) = %v, want ErrSBOM", bad, err)
		}
	}
}

func FuzzParseSPDX(f *testing.F) {
	b, err := os.ReadFile("testdata/gw-os-1.0.0.spdx.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"spdxVersion":"SPDX-2.2","packages":[{"externalRefs":[{"referenceType":"purl","referenceLocator":"pkg:a/b"}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ParseSPDX(b); err != nil && !errors.Is(err, ErrSBOM) {
			t.Fatalf("error does not wrap ErrSBOM: %v", err)
		}
	})
}
