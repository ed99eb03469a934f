package enroll_test

import (
	"bytes"
	"testing"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestResultCarriesReleaseTrustRotations: an active enrollment result
// carries the fleet's release trust set and the signed rotations that lead
// to it, so that a re-enrolling device that holds an earlier set can
// follow them (it never takes the set as it is).
func TestResultCarriesReleaseTrustRotations(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.inv.Close()
	trust := []byte(`{"type":"sigil.firmware.trust/v1","sequence":2}`)
	rots := []wire.TrustRotation{{Statement: trust, Bundles: [][]byte{[]byte(`{"bundle":1}`), []byte(`{"bundle":2}`)}}}
	h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: rec.trust(), Rand: h.rand,
		FirmwareTrust: func() ([]byte, []wire.TrustRotation) { return trust, rots },
		Send:          h.send,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.rand.rewind()
	h.svc.Handle("bench", encode(wire.TypeEnrollRequest, &rec.req))
	h.svc.Handle("bench", encode(wire.TypeEnrollProof, &rec.proof))
	res := result(t, h)
	if res.Status != wire.StatusActive {
		t.Fatalf("enrollment: %v %v %s", res.Status, res.Reason, res.Message)
	}
	if !bytes.Equal(res.FirmwareTrust, trust) || len(res.FirmwareRotations) != 1 ||
		!bytes.Equal(res.FirmwareRotations[0].Statement, trust) || len(res.FirmwareRotations[0].Bundles) != 2 {
		t.Fatalf("result carries trust %s and rotations %+v", res.FirmwareTrust, res.FirmwareRotations)
	}
}
