package campaign

import (
	"errors"
	"testing"
)

// TestClaimedFetchedBytes: the bytes a device says it fetched are kept per
// device (its latest applied claim) and summed per campaign; a negative
// count is refused.
func TestClaimedFetchedBytes(t *testing.T) {
	e := newEnv(t, 3)
	id := e.started(def(3, 1))
	e.step()
	for _, r := range []DeviceReport{
		{DeviceID: "dev-000", Campaign: id, Step: StepDownloading, ClaimedFetched: 1000},
		{DeviceID: "dev-000", Campaign: id, Step: StepCommitted, RunningVersion: "2.0.0", ClaimedFetched: 70_000},
		{DeviceID: "dev-001", Campaign: id, Step: StepCommitted, RunningVersion: "2.0.0", ClaimedFetched: 1 << 20},
	} {
		if ok, err := e.m.Report(r); !ok || err != nil {
			t.Fatalf("%+v: %v %v", r, ok, err)
		}
	}
	if _, err := e.m.Report(DeviceReport{DeviceID: "dev-002", Campaign: id, Step: StepCommitted, ClaimedFetched: -1}); !errors.Is(err, ErrInvalidReport) {
		t.Fatalf("negative bytes fetched: %v", err)
	}
	if d := e.device(id, "dev-000"); d.ClaimedFetchedBytes != 70_000 {
		t.Fatalf("dev-000 claimed %d bytes, want 70000", d.ClaimedFetchedBytes)
	}
	if c := e.get(id); c.ClaimedFetchedBytes != 70_000+1<<20 {
		t.Fatalf("campaign claims %d bytes, want %d", c.ClaimedFetchedBytes, 70_000+1<<20)
	}
}
