package console_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// counting is the console's inventory, counting its Count calls: each is
// a read of every matching record (on PostgreSQL, count(*) over the
// table when nothing filters).
type counting struct {
	console.Inventory
	counts atomic.Int32
}

func (c *counting) Count(ctx context.Context, where map[inventory.Field]string) (int, error) {
	c.counts.Add(1)
	return c.Inventory.Count(ctx, where)
}

// TestDeviceListCountsOnce: the device list counts the fleet once; it
// counts again only for a filter (state, model, ...), not for the
// unfiltered list, whose total is the fleet's (before, every load of the
// list counted the whole fleet twice).
func TestDeviceListCountsOnce(t *testing.T) {
	var inv *counting
	f := newFixture(t, func(c *console.Config) {
		inv = &counting{Inventory: c.Inventory}
		c.Inventory = inv
	})
	for i := range 5 {
		st := inventory.StateActive
		if i%2 == 0 {
			st = inventory.StatePending
		}
		f.addDevice(i, st, nil)
	}
	op := f.login("olga", auth.RoleOperator)
	for _, c := range []struct {
		path   string
		counts int32
		shown  string
	}{
		{"/devices", 1, "5 devices in the fleet"},
		{"/devices?state=active", 2, "2 devices match"},
	} {
		inv.counts.Store(0)
		page := body(t, op.get(c.path), http.StatusOK)
		if n := inv.counts.Load(); n != c.counts {
			t.Errorf("%s: %d counts of the inventory, want %d", c.path, n, c.counts)
		}
		mustContain(t, page, c.shown)
	}
}
