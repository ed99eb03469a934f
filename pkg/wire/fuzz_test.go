package wire_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/pkg/wire/wiretest"
)

// FuzzDecode decodes envelopes and, through the registry, the body of every
// message type: its seeds are the wiretest vectors, at least one of each
// registered type. Malformed input yields one of the package's errors,
// never a panic; what decodes and validates encodes again to a message
// that decodes and validates to the same bytes.
func FuzzDecode(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	for _, v := range wiretest.Envelopes() {
		f.Add(v.Bytes())
	}
	for _, v := range wiretest.Bodies() {
		b, err := wire.Encode(v.Type, nil, now, v.Value)
		if err != nil {
			f.Fatalf("%s: %v", v.Name, err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := wire.Decode(b)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) && !errors.Is(err, wire.ErrTooLarge) && !errors.Is(err, wire.ErrVersion) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		m, ok := wire.Lookup(env.Type)
		if !ok {
			return // receivers refuse a type they do not know before reading its body
		}
		v := m.New()
		if err := wire.DecodeBody(env, m.Type, v); err != nil {
			if !errors.Is(err, wire.ErrMalformed) && !errors.Is(err, wire.ErrInvalidBody) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if batch, ok := v.(*wire.TelemetryBatch); ok && batch.Last() < batch.First {
			t.Fatalf("valid batch with last %d < first %d", batch.Last(), batch.First)
		}
		out, err := wire.Encode(m.Type, env.Corr, now, v)
		if errors.Is(err, wire.ErrTooLarge) {
			return
		}
		if err != nil {
			t.Fatalf("re-encode %s: %v", m.Type, err)
		}
		env2, err := wire.Decode(out)
		if err != nil {
			t.Fatalf("re-decode %s: %v", m.Type, err)
		}
		again := m.New()
		if err := wire.DecodeBody(env2, m.Type, again); err != nil {
			t.Fatalf("re-encoded %s refused: %v", m.Type, err)
		}
		b1, _ := wire.Marshal(v)
		b2, _ := wire.Marshal(again)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("%s does not survive a round trip:\n%x\n%x", m.Type, b1, b2)
		}
	})
}
