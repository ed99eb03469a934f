package agent

import (
	"math"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/internal/fakefleet"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// enrollWithTrust enrolls a device that holds the release trust set held
// (nil: none) with a fleet whose result carries trust and rotations, and
// returns the set the device holds afterwards.
func enrollWithTrust(t *testing.T, held, trust []byte, rotations []wire.TrustRotation) (*testDevice, []byte) {
	t.Helper()
	d := newTestDevice(t, nil)
	if held != nil {
		if err := d.st.SaveReleaseTrust(held); err != nil {
			t.Fatal(err)
		}
	}
	d.fleet.OnEnroll(func(int, *wire.EnrollRequest) fakefleet.EnrollAnswer {
		return fakefleet.EnrollAnswer{Edit: func(res *wire.EnrollResult) { res.FirmwareTrust, res.FirmwareRotations = trust, rotations }}
	})
	stop := d.run(t)
	d.connected(t, time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := d.st.ReleaseTrust()
	return d, got
}

// TestRogueEnrollmentAnswerKeepsTheReleaseTrust: whoever answers a
// re-enrollment cannot choose the keys that sign firmware. A result whose
// release trust set is the attacker's, with sequence 2^64-1, is not taken:
// the device keeps the set it holds, and a rotation its keys signed still
// applies afterwards.
func TestRogueEnrollmentAnswerKeepsTheReleaseTrust(t *testing.T) {
	k := signtest.Signers(t, 3)
	s1 := trustSet(t, 1, 1, k[0])
	rogue := trustSet(t, math.MaxUint64, 1, k[2]) // the attacker's key
	s2 := trustSet(t, 2, 1, k[1])
	r2 := rotation(t, s2, k[0], k[1])
	synctest.Test(t, func(t *testing.T) {
		d, held := enrollWithTrust(t, s1, rogue, nil)
		if string(held) != string(s1) {
			t.Fatalf("an enrollment answer replaced the release trust set:\n held %s\n want %s", held, s1)
		}
		d.a.applyTrust(&wire.FirmwareTrust{Trust: s2, Rotations: []wire.TrustRotation{r2}})
		if got := heldSequence(t, d.a); got != 2 {
			t.Fatalf("a signed rotation after the rogue answer: sequence %d, want 2", got)
		}
	})
}

// TestEnrollmentRotatesTheReleaseTrust: an enrollment result that carries
// the signed rotations from the set the device holds to the fleet's moves
// the device along them, as a firmware.trust message does; a chain with a
// forged step stops before it, and a chain that skips a sequence number is
// not followed. A device that holds no set takes the fleet's.
func TestEnrollmentRotatesTheReleaseTrust(t *testing.T) {
	k := signtest.Signers(t, 4)
	s1, s2, s3 := trustSet(t, 1, 1, k[0]), trustSet(t, 2, 2, k[1], k[2]), trustSet(t, 3, 1, k[3])
	r2, r3 := rotation(t, s2, k[0], k[1], k[2]), rotation(t, s3, k[1], k[2], k[3])
	forged := rotation(t, s3, k[3])
	skip := trustSet(t, 3, 1, k[3])
	skipped := rotation(t, skip, k[0], k[3])
	for _, c := range []struct {
		name string
		held []byte
		rots []wire.TrustRotation
		want []byte
	}{
		{"signed chain", s1, []wire.TrustRotation{r2, r3}, s3},
		{"forged last step", s1, []wire.TrustRotation{r2, forged}, s2},
		{"skipped sequence", s1, []wire.TrustRotation{skipped}, s1},
		{"no rotations", s1, nil, s1},
		{"first enrollment", nil, nil, s3},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				if _, held := enrollWithTrust(t, c.held, s3, c.rots); string(held) != string(c.want) {
					t.Fatalf("held %s\nwant %s", held, c.want)
				}
			})
		})
	}
}
