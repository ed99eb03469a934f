package workload

import (
	"context"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestRun answers submitted requests on the device's down topic (a
// malformed one with a refusal), and writes the counts to the audit log
// when it stops.
func TestRun(t *testing.T) {
	rec := &recorder{}
	type sent struct {
		id, kind string
		payload  []byte
	}
	out := make(chan sent, 4)
	f := newFixture(t, "", func(c *Config) {
		c.Audit = rec
		c.Send = func(id, kind string, p []byte) error { out <- sent{id, kind, p}; return nil }
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(ctx) }()

	answer := func(req any) *wire.WorkloadAnswer {
		t.Helper()
		b, err := wire.Encode(wire.TypeWorkloadRequest, nil, time.Now(), req)
		if err != nil {
			t.Fatal(err)
		}
		env, err := wire.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		f.svc.Submit("d1", env)
		s := wait.Recv(t, out, "the answer")
		reply, err := wire.Decode(s.payload)
		if err != nil || s.id != "d1" || s.kind != wire.KindWorkload || string(reply.Corr) != string(env.ID) {
			t.Fatalf("answer to %s on %s: %v", s.id, s.kind, err)
		}
		var a wire.WorkloadAnswer
		if err := wire.DecodeBody(reply, wire.TypeWorkloadAnswer, &a); err != nil {
			t.Fatal(err)
		}
		return &a
	}
	if a := answer(&wire.WorkloadRequest{Op: wire.WorkloadEntries}); a.Status != wire.StatusActive || len(a.JWKS) == 0 || len(a.Bundle) == 0 {
		t.Fatalf("entries: %+v", a)
	}
	if a := answer(&wire.WorkloadRequest{Op: 9}); a.Status != wire.StatusRefused || a.Reason != wire.ReasonBadRequest {
		t.Fatalf("malformed request: %+v", a)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	es := rec.Entries()
	if len(es) != 1 || es[0].Details["entries"] != "1" || es[0].Details["refused.bad_request"] != "1" || es[0].Details["devices"] != "1" {
		t.Fatalf("audit: %+v", es)
	}
}
