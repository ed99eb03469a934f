package memstate_test

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/state/statetest"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/memstate"
)

// TestStore runs device/state's tests over memory volumes.
func TestStore(t *testing.T) {
	statetest.Run(t, func(t *testing.T) statetest.Opener {
		v := memstate.New()
		return func(t *testing.T, readOnly bool) *state.Store {
			if readOnly {
				return state.New(v.OpenReadOnly())
			}
			return v.Store()
		}
	})
}

// TestEngine checks the memory engine against the contract device/state
// relies on (ordered keys, nested buckets, rollback, read-only views).
func TestEngine(t *testing.T) {
	statetest.RunEngine(t, func(t *testing.T) statetest.EngineOpener {
		v := memstate.New()
		return func(t *testing.T, readOnly bool) state.Engine {
			if readOnly {
				return v.OpenReadOnly()
			}
			return v.Open()
		}
	})
}

// enrolled fills st as an enrolled device's store is: the identity with
// its key blobs, certificate, chain and trust bundle (sizes of a real
// enrollment with a software TPM), the release trust set, the update
// record and measurement after one campaign, and a telemetry point
// waiting for its ack.
func enrolled(t testing.TB, st *state.Store) {
	t.Helper()
	blob := func(n int) []byte { return bytes.Repeat([]byte{7}, n) }
	id := &state.Identity{Status: state.StatusEnrolled, DeviceID: "0123456789abcdef0123456789abcdef",
		AK: state.KeyBlob{Public: blob(88), Private: blob(126)}, TK: state.KeyBlob{Public: blob(88), Private: blob(126)},
		Cert: blob(620), TrustBundle: [][]byte{blob(540)}, EnrolledAt: time.Now()}
	if err := st.SaveIdentity(id); err != nil {
		t.Fatal(err)
	}
	if err := st.SaveReleaseTrust(blob(180)); err != nil {
		t.Fatal(err)
	}
	rel := &state.Release{Name: "gw-os", Version: "2.0.0", SecurityVersion: 2, Size: 1 << 20, SHA256: blob(32)}
	if err := st.SaveUpdate(&state.Update{ID: "c-0123456789", Phase: "committed", Final: true, Release: rel, Manifest: blob(300), Bundle: blob(700)},
		state.Slot{Name: "b", Version: "2.0.0", SHA256: blob(32), SecurityVersion: 2}); err != nil {
		t.Fatal(err)
	}
	if err := st.UpdateReported("c-0123456789"); err != nil {
		t.Fatal(err)
	}
	if err := st.SaveMeasurement(&state.Measurement{PCR: 14, Digest: blob(32), After: blob(32)}); err != nil {
		t.Fatal(err)
	}
	o := st.Outbox(state.OutboxOptions{})
	p := wire.TelemetryPoint{Time: time.Now().UnixMilli()}
	for _, m := range []string{"cpu.busy", "mem.used_ratio", "load.1", "listen.tcp.count", "tpm.ok", "sigild.connected"} {
		p.SetMetric(m, 0.5)
	}
	p.SetMembers("listen.tcp", []string{"22", "443"})
	if _, err := o.Append(p); err != nil {
		t.Fatal(err)
	}
}

// TestEnrolledDeviceSize reports what an enrolled device's state costs in
// memory, by the volume's count and by the heap, and holds it to a bound
// that catches a regression to whole-file costs.
func TestEnrolledDeviceSize(t *testing.T) {
	const n = 2000
	vols := make([]*memstate.Volume, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range vols {
		vols[i] = memstate.New()
		st := vols[i].Store()
		enrolled(t, st)
		st.Close()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc-before.HeapAlloc) / n
	size := vols[0].Size()
	t.Logf("an enrolled device's state: %d bytes held, %.0f bytes of heap", size, heap)
	if size > 8<<10 || heap > 16<<10 {
		t.Fatalf("an enrolled device's state takes %d bytes (%.0f of heap), want at most 8 KiB (16 KiB)", size, heap)
	}
	runtime.KeepAlive(vols)
}
