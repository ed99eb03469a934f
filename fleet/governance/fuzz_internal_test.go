package governance

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var fuzzKinds = []AttemptKind{AttemptForeignCert, AttemptUnknownDevice, AttemptUnknownClient, AttemptUnknownEK, "bogus"}

func checkClean(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) || len(s) > maxText+len("foreign-certificate/client:") || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		t.Fatalf("%s not clean: %q", what, s)
	}
}

// What unknown clients present is untrusted: any bytes become a clean
// triage entry or ErrInvalid, and repeats aggregate without growing.
func FuzzPrepareAttempt(f *testing.F) {
	f.Add(uint8(2), "gw-1", "", "192.0.2.1:1883", "bad token")
	f.Add(uint8(3), "", strings.Repeat("AB", 32), "[2001:db8::1]:5", "EK not trusted")
	f.Add(uint8(0), "\x00\xff\xfe", "\n", "not an address", strings.Repeat("é", 500))
	f.Add(uint8(1), "", "", "[fe80::1%eth0]:9", "")
	f.Add(uint8(4), "x", "y", "z", "")
	f.Add(uint8(1), "", "", "", "")
	f.Fuzz(func(t *testing.T, kind uint8, client, ek, remote, reason string) {
		a := Attempt{Kind: fuzzKinds[int(kind)%len(fuzzKinds)], ClientID: client, EKFingerprint: ek, Remote: remote, Reason: reason,
			Time: time.Unix(1e9, 0)}
		sh, err := prepare(a)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("prepare: %v", err)
			}
			return
		}
		if !strings.HasPrefix(sh.Key, string(a.Kind)+"/") || sh.Count != 1 {
			t.Fatalf("entry %+v", sh)
		}
		for _, s := range append([]string{sh.Key, sh.ClientID, sh.EKFingerprint, sh.Reason}, sh.Remotes...) {
			checkClean(t, "field", s)
		}
		// The same attempt again: same key; merging counts, keeps one
		// address.
		again, err := prepare(a)
		if err != nil || again.Key != sh.Key {
			t.Fatalf("not deterministic: %q vs %q (%v)", again.Key, sh.Key, err)
		}
		sh.merge(again)
		if sh.Count != 2 || len(sh.Remotes) > 1 {
			t.Fatalf("merged %+v", sh)
		}
	})
}

// Block values come from operators and the API: any string is refused
// with ErrInvalid or normalized (idempotently) into an entry that matches
// what it names and stops matching once removed.
func FuzzBlockValue(f *testing.F) {
	f.Add(uint8(1), "192.0.2.1")
	f.Add(uint8(1), "10.0.0.0/8")
	f.Add(uint8(1), "::ffff:10.0.0.0/104")
	f.Add(uint8(1), "::ffff:10.0.0.0/8")
	f.Add(uint8(1), "fe80::1%eth0")
	f.Add(uint8(2), strings.Repeat("A", 64))
	f.Add(uint8(0), "gw\x00")
	kinds := []BlockKind{BlockClientID, BlockAddress, BlockEK, "mac"}
	f.Fuzz(func(t *testing.T, kind uint8, value string) {
		b := Block{Kind: kinds[int(kind)%len(kinds)], Value: value}
		if err := normalizeBlock(&b); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("normalizeBlock(%q): %v", value, err)
			}
			return
		}
		b2 := b
		if err := normalizeBlock(&b2); err != nil || b2.Value != b.Value {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", value, b.Value, b2.Value, err)
		}
		s := &Service{blocks: blockSet{exact: map[string]Block{}}}
		s.blocks.add(b)
		probe := func() bool {
			switch b.Kind {
			case BlockClientID:
				return s.IsBlocked(value, "", "")
			case BlockEK:
				return s.IsBlocked("", "", value)
			}
			var a netip.Addr
			if p, err := netip.ParsePrefix(b.Value); err == nil {
				a = p.Addr()
			} else {
				a = netip.MustParseAddr(b.Value)
			}
			return s.IsBlocked("", netip.AddrPortFrom(a, 1883).String(), "")
		}
		if !probe() {
			t.Fatalf("%s %q (normalized %q) blocked but not matched", b.Kind, value, b.Value)
		}
		s.blocks.remove(b.Kind, b.Value)
		if probe() {
			t.Fatalf("%s %q still matched after removal", b.Kind, value)
		}
	})
}
