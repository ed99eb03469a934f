package update

import (
	"strings"
	"testing"
)

// The parsers of bytes from outside the engine: a hook's output and the
// file backend's boot record. (The HTTP response parser is device/fetch's,
// fuzzed there.)

func FuzzBooted(f *testing.F) {
	for _, s := range []string{"a\n", "b 1234\n", "a 7d3f-9\nextra\n", " b  x ", "c\n", "a b c\n", "", "\n"} {
		f.Add([]byte(s))
	}
	slots := [2]string{"a", "b"}
	f.Fuzz(func(t *testing.T, out []byte) {
		b, err := parseBooted(out, slots)
		if err != nil {
			return
		}
		if b.Slot != "a" && b.Slot != "b" {
			t.Fatalf("%q: slot %q", out, b.Slot)
		}
		if strings.ContainsAny(b.ID, " \t\n") || len(b.ID) > 128 {
			t.Fatalf("%q: boot ID %q", out, b.ID)
		}
	})
}

func FuzzFileState(f *testing.F) {
	for _, s := range []string{`{"active":"a","booted":"b","pending":"b","boot":3}`, `{"active":"c","booted":"a","boot":1}`, `{}`, `[`, `{"boot":-1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseFileState(b)
		if err != nil {
			return
		}
		for _, slot := range []string{s.Active, s.Booted} {
			if slot != fileSlotA && slot != fileSlotB {
				t.Fatalf("%q: slot %q accepted", b, slot)
			}
		}
		if s.Pending != "" && s.Pending != fileSlotA && s.Pending != fileSlotB {
			t.Fatalf("%q: pending %q accepted", b, s.Pending)
		}
	})
}
