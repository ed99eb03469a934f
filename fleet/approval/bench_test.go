package approval

import (
	"context"
	"testing"
)

// BenchmarkSubmitApproveExecute measures a request's whole life: submit,
// one approval, execution and the recorded outcome (no fsync).
func BenchmarkSubmitApproveExecute(b *testing.B) {
	f := newFixture(b, nil)
	ctx := context.Background()
	for b.Loop() {
		r, err := f.m.Submit(ctx, alice, Draft{Kind: KindFirmwareRelease, Target: "campaign-1", Justification: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.m.Approve(ctx, dave, r.ID, ""); err != nil {
			b.Fatal(err)
		}
	}
}
