package campaign

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// FuzzReport feeds arbitrary reports (the fields come from the network)
// to a running campaign: none may panic, and the kept counts must always
// match the device records.
func FuzzReport(f *testing.F) {
	e := newEnv(f, 4)
	d := def(2, 2)
	d.FailureThreshold = 1
	id := e.started(d)
	if id != "cmp_0001020304050607" {
		f.Fatalf("campaign ID %s; update the seeds", id)
	}
	e.step()
	for _, s := range []string{"downloading", "committed", "failed", "rolled_back", "health", "timed_out", "pending", "", "\xff"} {
		f.Add("dev-000", id, s, uint16(0), "2.0.0")
		f.Add("dev-001", id, s, uint16(wire.ReasonFirmwareHealth), "")
	}
	f.Add("dev-003", id, "committed", uint16(0), "1")
	f.Add("dev-000", "cmp_ffffffffffffffff", "committed", uint16(0), "1")
	f.Add("DEV", id, "committed", uint16(70), "\x00")
	f.Fuzz(func(t *testing.T, dev, campaign, step string, reason uint16, version string) {
		_, err := e.m.Report(DeviceReport{DeviceID: dev, Campaign: campaign, Step: Step(step), Reason: wire.Reason(reason), RunningVersion: version})
		if err != nil && !errors.Is(err, ErrInvalidReport) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrNotTarget) {
			t.Fatalf("unexpected error: %v", err)
		}
		e.t = t
		e.recount(id)
	})
}

// FuzzDefinition decodes arbitrary JSON as a definition (as the API does):
// Validate never panics, and a valid definition plans waves that hold
// every device exactly once.
func FuzzDefinition(f *testing.F) {
	f.Add([]byte(`{"release":"r","targets":{"group":"g"}}`), 10)
	f.Add([]byte(`{"release":"r","targets":{"device_ids":["a","b"]},"waves":{"sizes":[1,5]}}`), 100)
	f.Add([]byte(`{"release":"r","targets":{"model":"m"},"waves":{"canary":3,"growth":1.01}}`), 5000)
	f.Add([]byte(`{"release":"r","targets":{"tags":["x"]},"windows":[{"start":"23:00","end":"01:00","days":["fri"],"location":"Asia/Kolkata"}]}`), 1)
	f.Add([]byte(`{"release":"r","targets":{"group":"g"},"device_timeout":"-5s","success_threshold":1e309}`), 3)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		var d Definition
		if json.Unmarshal(data, &d) != nil {
			return
		}
		c, err := compile(&d)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		n = 1 + abs(n)%20000
		sizes, err := c.plan(n)
		if err != nil {
			if len(sizes) != 0 || !errors.Is(err, ErrInvalid) {
				t.Fatalf("plan: %v %v", sizes, err)
			}
			return
		}
		sum := 0
		for _, s := range sizes {
			if s < 1 {
				t.Fatalf("empty wave in %v", sizes)
			}
			sum += s
		}
		if sum != n || len(sizes) > MaxWaves {
			t.Fatalf("%d devices planned as %v", n, sizes)
		}
		for _, s := range sizes {
			if need := c.need(s); need < 1 || need > s {
				t.Fatalf("need %d of %d", need, s)
			}
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
