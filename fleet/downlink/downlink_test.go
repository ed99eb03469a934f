package downlink_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/downlink"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// versions is a Devices of fixed versions; a device it lacks is unknown.
type versions map[string]int

func (v versions) Protocol(_ context.Context, id string) (int, error) {
	n, ok := v[id]
	if !ok {
		return 0, inventory.ErrNotFound
	}
	return n, nil
}

// published records what Send published.
type published struct {
	topic   string
	payload []byte
}

// TestSend: each device gets the message in the version it last spoke;
// what its version cannot carry, a device older than the fleet speaks to
// and an unknown device get nothing, and the sender an error.
func TestSend(t *testing.T) {
	devs := versions{"v4": 4, "v5": 5, "v3": 3}
	var out []published
	pub := func(topic string, payload []byte, qos byte) error {
		if qos != 1 {
			t.Errorf("QoS %d", qos)
		}
		out = append(out, published{topic, payload})
		return nil
	}
	now := time.UnixMilli(1_700_000_000_000)
	verdict, err := wire.Encode(wire.TypeAttestVerdict, nil, now, &wire.AttestVerdict{Result: "pass"})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int{"v4": 4, "v5": 5} {
		out = nil
		if err := downlink.Send(t.Context(), devs, pub, id, "t/"+id, verdict); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if len(out) != 1 || out[0].topic != "t/"+id {
			t.Fatalf("%s: published %v", id, out)
		}
		env, err := wire.Decode(out[0].payload)
		if err != nil || env.V != want || env.Type != wire.TypeAttestVerdict {
			t.Fatalf("%s: envelope %+v, %v; want version %d", id, env, err, want)
		}
	}
	rotated, err := wire.Encode(wire.TypeFirmwareTrust, nil, now, &wire.FirmwareTrust{Trust: []byte{1},
		Rotations: []wire.TrustRotation{{Statement: []byte("{}\n"), Bundles: [][]byte{{1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id      string
		payload []byte
		want    error
	}{
		{"v4", rotated, wire.ErrNeedsVersion},
		{"v3", verdict, wire.ErrVersion},
		{"nobody", verdict, inventory.ErrNotFound},
	} {
		out = nil
		if err := downlink.Send(t.Context(), devs, pub, c.id, "t/"+c.id, c.payload); !errors.Is(err, c.want) || len(out) != 0 {
			t.Errorf("%s: %v, published %d; want %v and nothing", c.id, err, len(out), c.want)
		}
	}
	out = nil
	if err := downlink.Send(t.Context(), devs, pub, "v5", "t/v5", rotated); err != nil || len(out) != 1 {
		t.Errorf("version 5 gets the rotation: %v, %d", err, len(out))
	}
}
