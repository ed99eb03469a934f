package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func sample() *Manifest {
	return &Manifest{
		Name:            "gateway-os",
		Version:         "2.4.1-rc.1+build.7",
		SecurityVersion: 7,
		Models:          []string{"gw-100", "GW 200"},
		Size:            1 << 20,
		SHA256:          sha256.Sum256([]byte("image")),
		Expires:         time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC),
		Measurements: &Measurements{
			PCRs: map[string]map[int]string{
				"sha256": {9: strings.Repeat("ab", 32), 10: strings.Repeat("cd", 32)},
				"sha1":   {9: strings.Repeat("01", 20)},
			},
			EventDigests: map[int][]string{4: {strings.Repeat("0f", 32), strings.Repeat("f0", 32)}},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	m := sample()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal) = %v\n%s", err, b)
	}
	if got.Name != m.Name || got.Version != m.Version || got.SecurityVersion != m.SecurityVersion ||
		got.Size != m.Size || got.SHA256 != m.SHA256 || !got.Expires.Equal(m.Expires) ||
		strings.Join(got.Models, "|") != strings.Join(m.Models, "|") ||
		got.Measurements.PCRs["sha256"][10] != m.Measurements.PCRs["sha256"][10] ||
		got.Measurements.EventDigests[4][1] != m.Measurements.EventDigests[4][1] {
		t.Fatalf("round trip changed the manifest:\n got %+v\nwant %+v", got, m)
	}
	again, err := got.Marshal()
	if err != nil || !bytes.Equal(again, b) {
		t.Fatalf("re-encoding differs (%v):\n%s\n%s", err, again, b)
	}
	if !bytes.HasPrefix(b, []byte(`{"type":"`+Type+`","name":"gateway-os",`)) {
		t.Fatalf("canonical encoding does not start with type and name: %s", b)
	}
}

// TestCanonicalFormOnly checks that every other spelling of a valid manifest
// is refused: one signed byte string, one meaning.
func TestCanonicalFormOnly(t *testing.T) {
	m := sample()
	m.Measurements = nil
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	digest := hex.EncodeToString(m.SHA256[:])
	for name, variant := range map[string]string{
		"trailing newline":     s + "\n",
		"leading space":        " " + s,
		"space after colon":    strings.Replace(s, `"name":"`, `"name": "`, 1),
		"duplicate key":        strings.Replace(s, `"name":"gateway-os",`, `"name":"other",`+`"name":"gateway-os",`, 1),
		"key in other case":    strings.Replace(s, `"name":`, `"Name":`, 1),
		"unknown field":        strings.Replace(s, `"name":`, `"extra":1,"name":`, 1),
		"trailing object":      s + `{}`,
		"number with exponent": strings.Replace(s, `"security_version":7`, `"security_version":7e0`, 1),
		"escaped character":    strings.Replace(s, `"gw-100"`, `"gw\u002d100"`, 1),
		"upper-case digest":    strings.Replace(s, digest, strings.ToUpper(digest), 1),
		"expiry with offset":   strings.Replace(s, `2027-01-02T03:04:05Z`, `2027-01-02T04:04:05+01:00`, 1),
		"expiry fraction":      strings.Replace(s, `2027-01-02T03:04:05Z`, `2027-01-02T03:04:05.000Z`, 1),
		"empty measurements":   strings.Replace(s, `}`, `,"measurements":{}}`, 1),
		"null measurements":    strings.Replace(s, `}`, `,"measurements":null}`, 1),
		"wrong type":           strings.Replace(s, Type, "sigil.firmware.trust/v1", 1),
	} {
		if variant == s {
			t.Fatalf("%s: variant is identical to the canonical form", name)
		}
		if _, err := Parse([]byte(variant)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Parse(%s) = %v, want ErrInvalid", name, variant, err)
		}
	}
	if _, err := Parse(b); err != nil {
		t.Fatalf("the canonical form itself is refused: %v", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	m := &Manifest{
		Name:    "-bad",
		Version: "v1.0",
		Models:  []string{"a", "a", " lead"},
		Size:    0,
		Measurements: &Measurements{
			PCRs:         map[string]map[int]string{"md5": {1: "00"}, "sha256": {24: "zz"}},
			EventDigests: map[int][]string{-1: nil},
		},
	}
	err := m.Validate()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate = %v, want ErrInvalid", err)
	}
	for _, want := range []string{"name", "version", "listed twice", "leading or trailing space", "size", "sha256 is missing",
		"expires is missing", `unknown PCR bank "md5"`, "PCR 24", "not 64 lowercase hex", "event digests for PCR -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q:\n%v", want, err)
		}
	}
	if _, err := m.Marshal(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Marshal of an invalid manifest = %v", err)
	}
}

func TestBounds(t *testing.T) {
	if _, err := Parse(bytes.Repeat([]byte(" "), MaxSize+1)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized input: %v", err)
	}
	m := sample()
	m.Models = make([]string, MaxModels+1)
	for i := range m.Models {
		m.Models[i] = strings.Repeat("m", 10) + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("too many models: %v", err)
	}
	m = sample()
	m.Size = MaxImageSize + 1
	if err := m.Validate(); err == nil {
		t.Fatal("image larger than MaxImageSize accepted")
	}
	m = sample()
	m.SecurityVersion = 1<<64 - 1
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil || got.SecurityVersion != 1<<64-1 {
		t.Fatalf("largest security version: %v, %d", err, got.SecurityVersion)
	}
}

func TestCompatibleAndExpired(t *testing.T) {
	m := sample()
	for model, want := range map[string]bool{"gw-100": true, "GW 200": true, "gw-10": false, "GW-100": false, "": false} {
		if got := m.Compatible(model); got != want {
			t.Errorf("Compatible(%q) = %v, want %v", model, got, want)
		}
	}
	if m.Expired(m.Expires.Add(-time.Second)) || !m.Expired(m.Expires) || !m.Expired(m.Expires.Add(time.Hour)) {
		t.Error("Expired must hold from Expires on, and only then")
	}
}

func TestMarshalNormalizesExpiry(t *testing.T) {
	m := sample()
	m.Expires = time.Date(2027, 1, 2, 4, 4, 5, 999, time.FixedZone("CET", 3600))
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"expires":"2027-01-02T03:04:05Z"`)) {
		t.Fatalf("expiry not written in UTC whole seconds: %s", b)
	}
}

func FuzzParse(f *testing.F) {
	b, err := sample().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	m := sample()
	m.Measurements = nil
	b, _ = m.Marshal()
	f.Add(b)
	f.Add([]byte(`{"type":"sigil.firmware.manifest/v1"}`))
	f.Add([]byte(`{"measurements":{"pcrs":{"sha256":{"99":"x"}}}}`))
	f.Add([]byte(`[]`))
	m = sample()
	m.SBOM = &SBOM{Format: SBOMSPDX, SHA256: sha256.Sum256(nil)}
	b, _ = m.Marshal()
	f.Add(b)
	m.Blocks = &Blocks{BlockSize: 65536, SHA256: sha256.Sum256(nil)}
	b, _ = m.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// Whatever Parse accepts is canonical and valid.
		again, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest does not marshal: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted non-canonical input:\n%q\n%q", data, again)
		}
	})
}

// TestSBOM: a manifest binds an SBOM by format and digest, last in the
// canonical form; a manifest without one encodes as before the field
// existed (the same bytes, so earlier signatures hold); bad SBOM fields are
// refused.
func TestSBOM(t *testing.T) {
	m := sample()
	before, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(before, []byte("sbom")) {
		t.Fatalf("a manifest without an SBOM names one: %s", before)
	}
	m.SBOM = &SBOM{Format: SBOMCycloneDX, SHA256: sha256.Sum256([]byte("sbom"))}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `,"sbom":{"format":"cyclonedx+json","sha256":"` + hex.EncodeToString(m.SBOM.SHA256[:]) + `"}}`
	if !bytes.HasSuffix(b, []byte(want)) || !bytes.Equal(b[:len(before)-1], before[:len(before)-1]) {
		t.Fatalf("encoding %s\nwant the manifest without SBOM followed by %s", b, want)
	}
	got, err := Parse(b)
	if err != nil || got.SBOM == nil || *got.SBOM != *m.SBOM {
		t.Fatalf("Parse: %v, SBOM %+v", err, got)
	}
	for name, bad := range map[string]*SBOM{
		"format": {Format: "cyclonedx+xml", SHA256: m.SBOM.SHA256},
		"digest": {Format: SBOMSPDX},
	} {
		m.SBOM = bad
		if _, err := m.Marshal(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Marshal = %v, want ErrInvalid", name, err)
		}
	}
	d := sha256.Sum256([]byte("sbom"))
	bad := bytes.Replace(b, []byte(hex.EncodeToString(d[:])), []byte(strings.Repeat("z", 64)), 1)
	if _, err := Parse(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("Parse with a non-hex SBOM digest = %v, want ErrInvalid", err)
	}
}

// TestBlocks: a manifest binds a block-hash index by block size and
// digest, after the SBOM, last in the canonical form; a manifest without
// one encodes as before; a bad block size or digest is refused.
func TestBlocks(t *testing.T) {
	m := sample()
	m.SBOM = &SBOM{Format: SBOMSPDX, SHA256: sha256.Sum256([]byte("sbom"))}
	before, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m.Blocks = &Blocks{BlockSize: 65536, SHA256: sha256.Sum256([]byte("index"))}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `,"blocks":{"block_size":65536,"sha256":"` + hex.EncodeToString(m.Blocks.SHA256[:]) + `"}}`
	if !bytes.HasSuffix(b, []byte(want)) || !bytes.Equal(b[:len(before)-1], before[:len(before)-1]) {
		t.Fatalf("encoding %s\nwant the manifest without blocks followed by %s", b, want)
	}
	got, err := Parse(b)
	if err != nil || got.Blocks == nil || *got.Blocks != *m.Blocks {
		t.Fatalf("Parse: %v, Blocks %+v", err, got)
	}
	for name, bad := range map[string]*Blocks{
		"not a power of two": {BlockSize: 65535, SHA256: m.Blocks.SHA256},
		"too small":          {BlockSize: 512, SHA256: m.Blocks.SHA256},
		"too many blocks":    {BlockSize: 4096, SHA256: m.Blocks.SHA256},
		"digest":             {BlockSize: 65536},
	} {
		m := sample()
		if name == "too many blocks" {
			m.Size = 4096<<20 + 1
		}
		m.Blocks = bad
		if _, err := m.Marshal(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Marshal = %v, want ErrInvalid", name, err)
		}
	}
	bad := bytes.Replace(b, []byte(`"block_size":65536`), []byte(`"block_size":65536.0`), 1)
	if _, err := Parse(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("Parse with a non-integer block size = %v, want ErrInvalid", err)
	}
}

// TestCanonicalVector pins the canonical bytes of sample(): what the fleet
// signs (built with Go's default encoding/json) and what sigild re-encodes
// to check the canonical form (built with the classic one; cmd/sigild's
// TestReleaseJSON runs this test that way too). Map keys sort as strings:
// "10" before "9".
func TestCanonicalVector(t *testing.T) {
	const want = `{"type":"sigil.firmware.manifest/v1","name":"gateway-os","version":"2.4.1-rc.1+build.7","security_version":7,"models":["gw-100","GW 200"],"size":1048576,"sha256":"6105d6cc76af400325e94d588ce511be5bfdbb73b437dc51eca43917d7a43e3d","expires":"2027-01-02T03:04:05Z","measurements":{"pcrs":{"sha1":{"9":"0101010101010101010101010101010101010101"},"sha256":{"10":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","9":"abababababababababababababababababababababababababababababababab"}},"event_digests":{"4":["0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"]}}}`
	b, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Fatalf("Marshal =\n%s\nwant\n%s", b, want)
	}
	if _, err := Parse([]byte(want)); err != nil {
		t.Fatalf("Parse(vector) = %v", err)
	}
}
