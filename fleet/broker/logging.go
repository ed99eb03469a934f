package broker

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sigil-iot/sigil/fleet/internal/loglimit"
)

// libraryHandler is the slog.Handler mochi logs through. mochi puts whole
// packets in some of its records (a refused publish is logged with its
// payload, a CONNECT with its password), and it may add more in any
// release, so the handler lets through only values that cannot carry a
// message: strings, numbers, booleans, times, durations and error texts.
// A packet becomes its type and packet ID; any other value, its type name.
// Records about one client ("client" attribute) are what remote clients
// can cause at will: they go through the broker's rate limiter.
type libraryHandler struct {
	inner slog.Handler
	limit *loglimit.Limiter
}

var _ slog.Handler = libraryHandler{}

func (h libraryHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h libraryHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	perClient := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			perClient = true
		}
		out.AddAttrs(safeAttr(a))
		return true
	})
	if perClient && !h.limit.Allow("mqtt library: "+r.Message, r.Level, r.Message) {
		return nil
	}
	return h.inner.Handle(ctx, out)
}

func (h libraryHandler) WithAttrs(as []slog.Attr) slog.Handler {
	safe := make([]slog.Attr, len(as))
	for i, a := range as {
		safe[i] = safeAttr(a)
	}
	return libraryHandler{inner: h.inner.WithAttrs(safe), limit: h.limit}
}

func (h libraryHandler) WithGroup(name string) slog.Handler {
	return libraryHandler{inner: h.inner.WithGroup(name), limit: h.limit}
}

// safeAttr keeps a's value only if it cannot hold message contents.
func safeAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString, slog.KindInt64, slog.KindUint64, slog.KindFloat64,
		slog.KindBool, slog.KindDuration, slog.KindTime:
		return slog.Attr{Key: a.Key, Value: v}
	case slog.KindGroup:
		g := v.Group()
		safe := make([]any, len(g))
		for i, x := range g {
			safe[i] = safeAttr(x)
		}
		return slog.Group(a.Key, safe...)
	}
	switch x := v.Any().(type) {
	case error:
		return slog.String(a.Key, x.Error())
	case packets.Packet:
		return packetAttr(a.Key, &x)
	case *packets.Packet:
		if x != nil {
			return packetAttr(a.Key, x)
		}
	}
	return slog.String(a.Key, fmt.Sprintf("(%T withheld)", v.Any()))
}

// packetAttr names a packet without its contents.
func packetAttr(key string, pk *packets.Packet) slog.Attr {
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = fmt.Sprintf("type %d", pk.FixedHeader.Type)
	}
	return slog.Group(key, "type", name, "id", pk.PacketID, "bytes", pk.FixedHeader.Remaining)
}
