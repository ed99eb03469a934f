package update_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/sigil-iot/sigil/device/update"
)

// BenchmarkUpdate measures one whole update of a 1 MiB image on the file
// backend: announce, HTTPS download over loopback, SHA-256, install into
// the inactive slot (fsynced), switch, simulated reboot, health check,
// commit, with every phase synced to the state store before it is acted on.
func BenchmarkUpdate(b *testing.B) {
	e := newEnv(b)
	eng := e.engine(func(c *update.Config) { c.Reporter = nil })
	img := image("v", 1<<20)
	url := e.srv.put("/v.img", img)
	b.SetBytes(int64(len(img)))
	i := 0
	for b.Loop() {
		i++
		m, bundle := release(fmt.Sprintf("2.0.%d", i), 1, img)
		id := fmt.Sprintf("u%d", i)
		if err := eng.Announce(update.Announcement{ID: id, Manifest: m, Bundle: bundle, URL: url}); err != nil {
			b.Fatal(err)
		}
		if err := eng.Resume(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	st, err := eng.Status(context.Background())
	if err != nil || st.Update.Phase != string(update.PhaseCommitted) {
		b.Fatalf("last update: %+v, %v", st, err)
	}
}
