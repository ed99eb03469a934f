package agent

import (
	"context"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Extension is a part of sigild compiled in by a build tag (the SPIFFE
// Workload API: device/workload with tag workloadapi) that talks to the
// fleet over the agent's mTLS session: it is told of each session, gets
// the fleet's messages the agent does not handle itself, and each passing
// attestation verdict.
type Extension interface {
	// Session is called when a session is up; publish sends to the
	// device's up topic of a kind. end is called when the session ends.
	Session(ctx context.Context, publish func(ctx context.Context, kind string, payload []byte) error) (end func())
	// Down receives a message from the fleet of a type the agent does
	// not handle.
	Down(env *wire.Envelope)
	// Attested is told of each passing attestation verdict.
	Attested()
}

// WithExtension adds e to the agent.
func WithExtension(e Extension) Option { return func(o *options) { o.ext = e } }

// extSession tells the extension of a session (nothing without one).
func (a *Agent) extSession(ctx context.Context, conn publisher, deviceID string) (end func()) {
	if a.opts.ext == nil {
		return func() {}
	}
	return a.opts.ext.Session(ctx, func(ctx context.Context, kind string, payload []byte) error {
		return conn.Publish(ctx, a.topics.DeviceUp(deviceID, kind), payload)
	})
}
