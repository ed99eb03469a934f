package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func sampleAnnounce() *FirmwareAnnounce {
	return &FirmwareAnnounce{
		Campaign: "cmp_0123456789abcdef", Update: "cmp_0123456789abcdef",
		Manifest: []byte(`{"type":"sigil.firmware.manifest/v1"}`),
		Bundles:  [][]byte{[]byte(`{"mediaType":"a"}`), []byte(`{"mediaType":"b"}`)},
		Path:     "/firmware/" + strings.Repeat("ab", 32),
	}
}

func TestFirmwareRoundTrip(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, m := range []struct {
		typ       string
		body, out any
	}{
		{TypeFirmwareAnnounce, sampleAnnounce(), &FirmwareAnnounce{}},
		{TypeFirmwareReport, &FirmwareReport{Update: "cmp_1", Campaign: "cmp_1", Phase: "committed", Final: true, Version: "2.0.0", Running: "2.0.0", Slot: "b", Fetched: 123456}, &FirmwareReport{}},
		{TypeFirmwareTrust, &FirmwareTrust{Trust: []byte("{}"), Rotations: []TrustRotation{{Statement: []byte("s"), Bundles: [][]byte{[]byte("b")}}}}, &FirmwareTrust{}},
	} {
		b, err := Encode(m.typ, nil, now, m.body)
		if err != nil {
			t.Fatalf("%s: %v", m.typ, err)
		}
		env, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", m.typ, err)
		}
		if err := DecodeBody(env, m.typ, m.out); err != nil {
			t.Fatalf("%s: %v", m.typ, err)
		}
		again, _ := Marshal(m.out)
		want, _ := Marshal(m.body)
		if !bytes.Equal(again, want) {
			t.Fatalf("%s: decoded body differs:\n got %x\nwant %x", m.typ, again, want)
		}
	}
}

func TestFirmwareAnnounceRefusals(t *testing.T) {
	big := bytes.Repeat([]byte{'x'}, MaxFirmwareBundle)
	for name, mutate := range map[string]func(a *FirmwareAnnounce){
		"no campaign":        func(a *FirmwareAnnounce) { a.Campaign = "" },
		"wildcard update":    func(a *FirmwareAnnounce) { a.Update = "a/#" },
		"no manifest":        func(a *FirmwareAnnounce) { a.Manifest = nil },
		"huge manifest":      func(a *FirmwareAnnounce) { a.Manifest = make([]byte, MaxFirmwareManifest+1) },
		"no bundles":         func(a *FirmwareAnnounce) { a.Bundles = nil },
		"empty bundle":       func(a *FirmwareAnnounce) { a.Bundles = [][]byte{{}} },
		"bundle too large":   func(a *FirmwareAnnounce) { a.Bundles = [][]byte{append(big, 'y')} },
		"bundles too large":  func(a *FirmwareAnnounce) { a.Bundles = [][]byte{big, big, big, {1}} },
		"too many bundles":   func(a *FirmwareAnnounce) { a.Bundles = make([][]byte, MaxFirmwareBundles+1) },
		"relative path":      func(a *FirmwareAnnounce) { a.Path = "firmware/x" },
		"absolute URL":       func(a *FirmwareAnnounce) { a.Path = "https://evil.example/x" },
		"dot segment":        func(a *FirmwareAnnounce) { a.Path = "/firmware/../api/v1/users" },
		"query":              func(a *FirmwareAnnounce) { a.Path = "/firmware/x?y" },
		"escape":             func(a *FirmwareAnnounce) { a.Path = "/firmware/%2e%2e" },
		"space":              func(a *FirmwareAnnounce) { a.Path = "/firmware/a b" },
		"network-path":       func(a *FirmwareAnnounce) { a.Path = "//evil.example/x" },
		"path too long":      func(a *FirmwareAnnounce) { a.Path = "/" + strings.Repeat("a", MaxFirmwarePath) },
		"control characters": func(a *FirmwareAnnounce) { a.Path = "/a\r\nHost: x" },
	} {
		a := sampleAnnounce()
		mutate(a)
		if err := a.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := sampleAnnounce().Validate(); err != nil {
		t.Fatalf("sample refused: %v", err)
	}
}

func TestFirmwareReportRefusals(t *testing.T) {
	good := FirmwareReport{Update: "cmp_1", Campaign: "cmp_1", Phase: "health"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(r *FirmwareReport){
		"unknown phase":       func(r *FirmwareReport) { r.Phase = "done" },
		"negative fetched":    func(r *FirmwareReport) { r.Fetched = -1 },
		"final not final":     func(r *FirmwareReport) { r.Final = true },
		"final without final": func(r *FirmwareReport) { r.Phase = "committed" },
		"bad campaign":        func(r *FirmwareReport) { r.Campaign = "A+B" },
		"long message":        func(r *FirmwareReport) { r.Message = strings.Repeat("m", 513) },
		"control in version":  func(r *FirmwareReport) { r.Running = "1.0\n" },
	} {
		r := good
		mutate(&r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestFirmwareTrustRefusals(t *testing.T) {
	many := make([]TrustRotation, MaxFirmwareRotations+1)
	for i := range many {
		many[i] = TrustRotation{Statement: []byte("s"), Bundles: [][]byte{{1}}}
	}
	for name, ft := range map[string]*FirmwareTrust{
		"empty":           {},
		"huge trust":      {Trust: make([]byte, MaxFirmwareTrust+1)},
		"too many":        {Rotations: many},
		"empty statement": {Rotations: []TrustRotation{{Bundles: [][]byte{{1}}}}},
		"unsigned":        {Rotations: []TrustRotation{{Statement: []byte("s")}}},
	} {
		if err := ft.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	b, _ := Encode(TypeFirmwareTrust, nil, time.Now(), &FirmwareTrust{})
	env, _ := Decode(b)
	if err := DecodeBody(env, TypeFirmwareTrust, &FirmwareTrust{}); !errors.Is(err, ErrInvalidBody) {
		t.Fatalf("empty trust message: %v", err)
	}
}

func TestEnrollResultFirmwareTrustBound(t *testing.T) {
	r := EnrollResult{Status: StatusRefused, Reason: ReasonUnknownEK, FirmwareTrust: make([]byte, MaxFirmwareTrust+1)}
	if err := r.Validate(); err == nil {
		t.Fatal("oversized firmware trust accepted")
	}
	r.FirmwareTrust = []byte("{}")
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	r.FirmwareRotations = []TrustRotation{{Statement: []byte("s"), Bundles: [][]byte{{1}}}}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, rots := range map[string][]TrustRotation{
		"too many":        make([]TrustRotation, MaxFirmwareRotations+1),
		"empty statement": {{Bundles: [][]byte{{1}}}},
		"unsigned":        {{Statement: []byte("s")}},
		"huge statement":  {{Statement: make([]byte, MaxFirmwareTrust+1), Bundles: [][]byte{{1}}}},
	} {
		r.FirmwareRotations = rots
		if err := r.Validate(); err == nil {
			t.Errorf("rotations %s: accepted", name)
		}
	}
}

// TestEnrollResultWithoutRotations decodes a result of an older fleet,
// without FirmwareRotations (field 11, version 5; its encoding is pinned by
// the wiretest vector "enroll.result/rotations").
func TestEnrollResultWithoutRotations(t *testing.T) {
	old, _ := Marshal(&EnrollResult{Status: StatusRefused, FirmwareTrust: []byte("{}")})
	var older EnrollResult
	if err := Unmarshal(old, &older); err != nil || older.FirmwareRotations != nil || string(older.FirmwareTrust) != "{}" {
		t.Fatalf("result without rotations: %+v %v", older, err)
	}
}
