package inventorytest

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// RandomFleet stores n devices with random fields (mixed case, empty
// values, several tags) and then changes some of them every way a record
// changes (Update, the lifecycle, Upsert), so that the indexes have moved
// with the records.
func RandomFleet(t *testing.T, s Store, n int, rng *rand.Rand) {
	t.Helper()
	base := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	pick := func(vals ...string) string { return vals[rng.IntN(len(vals))] }
	fill := func(d *inventory.Device) {
		d.Model = pick("gw-1", "GW-1", "cam-2", "")
		d.Owner = pick("plant-a", "Plant-A", "plant-b", "", "plant-c")
		d.Group = pick("kiosks", "pumps", "")
		d.Firmware = pick("1.4.2", "1.5.0", "")
		d.Serial = fmt.Sprintf("SN-%04d", rng.IntN(50))
		d.Tags = nil
		for _, tg := range []string{"canary", "site:7", "lab"} {
			if rng.IntN(3) == 0 {
				d.Tags = append(d.Tags, tg)
			}
		}
		d.LastSeen, d.CertExpiry = time.Time{}, time.Time{}
		if rng.IntN(5) > 0 {
			d.LastSeen = base.Add(time.Duration(rng.IntN(1000)) * time.Minute)
		}
		if rng.IntN(5) > 0 {
			d.CertExpiry = base.Add(time.Duration(rng.IntN(100)) * time.Hour)
		}
	}
	for i := range n {
		d := NewDevice(i)
		d.State = []inventory.State{inventory.StateActive, inventory.StateActive, inventory.StatePending, inventory.StateQuarantined}[rng.IntN(4)]
		fill(d)
		if err := s.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		id := ID(i)
		switch rng.IntN(5) {
		case 0:
			if err := s.Update(t.Context(), id, func(d *inventory.Device) error { fill(d); return nil }); err != nil {
				t.Fatal(err)
			}
		case 1:
			if _, _, err := s.Quarantine(t.Context(), id, inventory.Cause{Source: inventory.CauseOperator, Reason: "test"}); err != nil && !errors.Is(err, inventory.ErrTransition) {
				t.Fatal(err)
			}
		case 2:
			if _, _, err := s.Decommission(t.Context(), id); err != nil {
				t.Fatal(err)
			}
		case 3:
			if err := s.Upsert(t.Context(), id, func(d *inventory.Device, _ bool) error {
				d.Tags = append(d.Tags, "upserted")
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// All returns every device (by the records, not the indexes).
func All(t *testing.T, s Store) []inventory.Device {
	t.Helper()
	var out []inventory.Device
	after := ""
	for {
		devs, next, err := s.ListDevices(t.Context(), inventory.Filter{After: after, Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, devs...)
		if next == "" {
			return out
		}
		after = next
	}
}

func fieldOf(d *inventory.Device, f inventory.Field) string {
	switch f {
	case inventory.FieldState:
		return string(d.State)
	case inventory.FieldModel:
		return d.Model
	case inventory.FieldFirmware:
		return d.Firmware
	case inventory.FieldOwner:
		return d.Owner
	case inventory.FieldGroup:
		return d.Group
	case inventory.FieldSerial:
		return d.Serial
	}
	return ""
}

// Brute answers a query by reading every record: what Query must return.
func Brute(devs []inventory.Device, q inventory.Query) []string {
	var out []inventory.Device
	for _, d := range devs {
		ok := true
		for f, v := range q.Where {
			if v == "" {
				continue
			}
			if f == inventory.FieldTag {
				ok = ok && slices.ContainsFunc(d.Tags, func(t string) bool { return strings.EqualFold(t, v) })
			} else {
				ok = ok && strings.EqualFold(fieldOf(&d, f), v)
			}
		}
		if ok && (q.Match == nil || q.Match(&d)) {
			out = append(out, d)
		}
	}
	slices.SortStableFunc(out, func(a, b inventory.Device) int {
		var c int
		switch q.Order {
		case inventory.FieldLastSeen:
			c = a.LastSeen.Compare(b.LastSeen)
		case inventory.FieldCertExpiry:
			c = a.CertExpiry.Compare(b.CertExpiry)
		case "", inventory.FieldID:
		default:
			c = strings.Compare(strings.ToLower(fieldOf(&a, q.Order)), strings.ToLower(fieldOf(&b, q.Order)))
		}
		c = cmp.Or(c, strings.Compare(a.ID, b.ID))
		if q.Desc {
			c = -c
		}
		return c
	})
	ids := make([]string, len(out))
	for i := range out {
		ids[i] = out[i].ID
	}
	return ids
}

// PageAll follows Next to the end.
func PageAll(t *testing.T, s Store, q inventory.Query) []string {
	t.Helper()
	var ids []string
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("query %+v does not end", q)
		}
		p, err := s.Query(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range p.Devices {
			ids = append(ids, d.ID)
		}
		if p.Next == "" {
			return ids
		}
		q.After = p.Next
	}
}

// TestQueryMatchesBruteForce: for filters on every indexed field (alone
// and together, in any case), every order, both directions, any page
// size and scan budget, paging through Query lists exactly the devices a
// scan of every record finds, in the same order; Count agrees.
func testQueryMatchesBruteForce(t *testing.T, open Opener) {
	s := open(t, inventory.WithNoSync())
	rng := rand.New(rand.NewPCG(1, 2))
	RandomFleet(t, s, 300, rng)
	devs := All(t, s)
	if len(devs) != 300 {
		t.Fatalf("%d devices", len(devs))
	}
	wheres := []map[inventory.Field]string{
		nil,
		{inventory.FieldState: "quarantined"},
		{inventory.FieldModel: "gw-1"},
		{inventory.FieldOwner: "PLANT-A", inventory.FieldGroup: "pumps"},
		{inventory.FieldFirmware: "1.4.2", inventory.FieldState: "active"},
		{inventory.FieldTag: "canary"},
		{inventory.FieldTag: "CANARY", inventory.FieldOwner: "plant-b"},
		{inventory.FieldSerial: "sn-0007"},
		{inventory.FieldModel: "no-such-model"},
		{inventory.FieldState: "active", inventory.FieldModel: "cam-2", inventory.FieldOwner: "", inventory.FieldTag: "upserted"},
	}
	orders := []inventory.Field{"", inventory.FieldID, inventory.FieldState, inventory.FieldModel, inventory.FieldFirmware, inventory.FieldOwner,
		inventory.FieldGroup, inventory.FieldSerial, inventory.FieldLastSeen, inventory.FieldCertExpiry}
	for _, w := range wheres {
		n, err := s.Count(t.Context(), w)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(Brute(devs, inventory.Query{Where: w})); n != want {
			t.Errorf("Count(%v) = %d, want %d", w, n, want)
		}
		for _, o := range orders {
			for _, desc := range []bool{false, true} {
				q := inventory.Query{Where: w, Order: o, Desc: desc, Limit: 1 + rng.IntN(40)}
				want := Brute(devs, q)
				if got := PageAll(t, s, q); !slices.Equal(got, want) {
					t.Errorf("where %v order %q desc %v limit %d: got %d devices, want %d\n got %v\nwant %v", w, o, desc, q.Limit, len(got), len(want), got, want)
				}
				// A Match that rejects most, under a small budget: pages
				// come back partial and the walk still ends with the same
				// devices.
				q.Match = func(d *inventory.Device) bool { return strings.HasSuffix(d.ID, "1") }
				q.Budget = 1 + rng.IntN(9)
				if got, want := PageAll(t, s, q), Brute(devs, q); !slices.Equal(got, want) {
					t.Errorf("where %v order %q desc %v with a match, budget %d: got %v, want %v", w, o, desc, q.Budget, got, want)
				}
			}
		}
	}
	counts, err := s.Counts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []inventory.State{inventory.StatePending, inventory.StateActive, inventory.StateQuarantined, inventory.StateDecommissioned} {
		if want := len(Brute(devs, inventory.Query{Where: map[inventory.Field]string{inventory.FieldState: string(st)}})); counts[st] != want {
			t.Errorf("Counts[%s] = %d, want %d", st, counts[st], want)
		}
	}
	for _, bad := range []inventory.Query{{Order: inventory.FieldTag}, {Order: "colour"}, {Where: map[inventory.Field]string{inventory.FieldLastSeen: "x"}},
		{Order: inventory.FieldModel, After: "not base64!"}} {
		if _, err := s.Query(t.Context(), bad); !errors.Is(err, inventory.ErrQuery) {
			t.Errorf("Query(%+v): %v, want ErrQuery", bad, err)
		}
	}
}
