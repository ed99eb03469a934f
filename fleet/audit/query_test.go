package audit

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestList pages through List with many filters and compares with a
// brute-force selection over every entry.
func TestList(t *testing.T) {
	clk := newClock()
	start := clk.Now()
	l := openLog(t, filepath.Join(t.TempDir(), File), nil, clk.Now)
	actors := []Actor{User("alice"), User("bob"), Device("d1"), System("rotation"), Token("t1")}
	actions := []string{"device.revoke", "device.quarantine.release", "devices-x.list", "rotation.job.start", "token.create"}
	var all []Entry
	for i := range 500 {
		e := New(actors[i%5], actions[(i/5)%5], fmt.Sprintf("dev-%d", i%13))
		if i == 333 {
			e.Target = "rare"
		}
		if i == 77 {
			e.Action = "firmware.release"
		}
		all = append(all, record(t, l, e))
		if i%3 == 0 {
			clk.Advance(time.Minute) // several entries share a time
		}
	}
	at := func(min int) time.Time { return start.Add(time.Duration(min) * time.Minute) }
	filters := []Filter{
		{},
		{Limit: 7},
		{Actor: User("alice"), Limit: 9},
		{Actor: Actor{Kind: ActorDevice}, Limit: 11},
		{Actor: Actor{ID: "t1"}},
		{Action: "device"},
		{Action: "device.", Limit: 13},
		{Action: "device.quarantine"},
		{Action: "dev"},
		{Action: "rotation.job.start", Limit: 5},
		{Target: "dev-7", Limit: 4},
		{Target: "rare", Limit: 1},
		{Action: "firmware", Limit: 1}, // one match far back: List stops at its scan budget and pages on
		{Action: "token", Target: "rare", Limit: 1},
		{Since: at(40), Until: at(90), Limit: 8},
		{Since: at(100)},
		{Until: at(10), Limit: 3},
		{Actor: User("bob"), Since: at(20), Until: at(120), Limit: 6},
		{Target: "dev-3", Since: at(50), Limit: 2},
		{Before: 250, Limit: 10},
		{Actor: Device("d1"), Before: 251, Limit: 10},
		{Target: "dev-1", Before: 100},
		{Actor: User("nobody")},
		{Since: at(1000)},
	}
	for _, f := range filters {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			var want []uint64
			for _, e := range slices.Backward(all) {
				if f.Before != 0 && e.Seq >= f.Before ||
					f.Actor.Kind != "" && e.Actor.Kind != f.Actor.Kind ||
					f.Actor.ID != "" && e.Actor.ID != f.Actor.ID ||
					f.Target != "" && e.Target != f.Target ||
					!f.Since.IsZero() && e.Time.Before(f.Since) ||
					!f.Until.IsZero() && !e.Time.Before(f.Until) {
					continue
				}
				words, prefix := strings.Split(e.Action, "."), strings.Split(strings.TrimSuffix(f.Action, "."), ".")
				if f.Action != "" && (len(prefix) > len(words) || !slices.Equal(words[:len(prefix)], prefix)) {
					continue
				}
				want = append(want, e.Seq)
			}
			var got []uint64
			empty := 0 // pages with no entries but a cursor
			g := f
			for pages := 0; ; pages++ {
				if pages > 1000 {
					t.Fatal("paging does not end")
				}
				p, err := l.List(t.Context(), g)
				if err != nil {
					t.Fatal(err)
				}
				limit := cmp(f.Limit, defaultLimit)
				if len(p.Entries) > limit {
					t.Fatalf("page of %d entries, limit %d", len(p.Entries), limit)
				}
				for _, e := range p.Entries {
					got = append(got, e.Seq)
					if a := all[e.Seq-1]; e.Hash != a.Hash || e.Target != a.Target || e.Actor != a.Actor || !e.Time.Equal(a.Time) {
						t.Fatalf("entry %d differs from the one appended", e.Seq)
					}
				}
				if p.Next == 0 {
					break
				}
				if len(p.Entries) == 0 {
					empty++
				}
				if g.Before != 0 && p.Next >= g.Before {
					t.Fatalf("cursor did not move: %d after %d", p.Next, g.Before)
				}
				g.Before = p.Next
			}
			if !slices.Equal(got, want) {
				t.Fatalf("got %v\nwant %v", got, want)
			}
			if f.Action == "firmware" && empty == 0 {
				t.Fatal("a rare match was found without reaching the scan budget: the budget is not tested")
			}
		})
	}
}

func cmp(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}
