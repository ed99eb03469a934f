package campaign

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the window tests name time zones; do not depend on the machine's

	"github.com/sigil-iot/sigil/pkg/config"
)

func TestValidateRefusesBadDefinitions(t *testing.T) {
	good := def(1)
	if err := good.Validate(); err != nil {
		t.Fatalf("good definition refused: %v", err)
	}
	cases := []struct {
		name string
		edit func(*Definition)
		want string
	}{
		{"no release", func(d *Definition) { d.Release = "" }, "release is required"},
		{"release with space", func(d *Definition) { d.Release = "rel b" }, "release \"rel b\""},
		{"no targets", func(d *Definition) { d.Targets = Selector{} }, "set at least one of group"},
		{"bad device ID", func(d *Definition) { d.Targets = Selector{DeviceIDs: []string{"ok-1", "Not/OK"}} }, `"Not/OK" is not a device ID`},
		{"repeated device", func(d *Definition) { d.Targets = Selector{DeviceIDs: []string{"a", "a"}} }, "device a is listed twice"},
		{"empty tag", func(d *Definition) { d.Targets.Tags = []string{""} }, "tag \"\""},
		{"sizes and growth", func(d *Definition) { d.Waves.Growth = 2 }, "either sizes or canary and growth"},
		{"zero size", func(d *Definition) { d.Waves.Sizes = []int{1, 0} }, "size 0 of wave 2"},
		{"negative canary", func(d *Definition) { d.Waves = Waves{Canary: -1} }, "canary -1"},
		{"growth below 1", func(d *Definition) { d.Waves = Waves{Growth: 0.5} }, "growth 0.5"},
		{"NaN growth", func(d *Definition) { d.Waves = Waves{Growth: math.NaN()} }, "growth NaN"},
		{"success above 1", func(d *Definition) { d.SuccessThreshold = 1.5 }, "success_threshold 1.5"},
		{"negative failure", func(d *Definition) { d.FailureThreshold = -0.1 }, "failure_threshold -0.1"},
		{"unknown action", func(d *Definition) { d.OnFailure = "explode" }, `on_failure "explode"`},
		{"short timeout", func(d *Definition) { d.DeviceTimeout = config.Duration(time.Millisecond) }, "device_timeout 1ms"},
		{"too many retries", func(d *Definition) { d.Retries = 11 }, "retries 11"},
		{"negative in flight", func(d *Definition) { d.MaxInFlight = -1 }, "max_in_flight -1"},
		{"bad window time", func(d *Definition) { d.Windows = []Window{{Start: "25:00", End: "02:00"}} }, `window 1: start: "25:00"`},
		{"bad window day", func(d *Definition) { d.Windows = []Window{{Start: "01:00", End: "02:00", Days: []string{"someday"}}} }, `day "someday"`},
		{"bad zone", func(d *Definition) { d.Windows = []Window{{Start: "01:00", End: "02:00", Location: "Mars/Olympus"}} }, `"Mars/Olympus" is not a known time zone`},
		{"local zone", func(d *Definition) { d.Windows = []Window{{Start: "01:00", End: "02:00", Location: "Local"}} }, "depends on the fleet machine"},
		{"bad rollback ID", func(d *Definition) { d.Targets = Selector{}; d.RollbackOf = "X Y" }, `rollback_of "X Y"`},
		{"name with newline", func(d *Definition) { d.Name = "a\nb" }, "name must be"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := def(1)
			c.edit(&d)
			err := d.Validate()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an ErrInvalid containing %q", err, c.want)
			}
		})
	}
}

// Validate reports every problem at once.
func TestValidateJoinsErrors(t *testing.T) {
	d := Definition{Waves: Waves{Canary: -3}, SuccessThreshold: 2, OnFailure: "x",
		Windows: []Window{{Start: "7", End: "8"}}}
	err := d.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 6 {
		t.Fatalf("want 6 joined errors, got %v", err)
	}
	for _, e := range joined.Unwrap() {
		if !errors.Is(e, ErrInvalid) || !strings.HasPrefix(e.Error(), "campaign: invalid definition: ") {
			t.Errorf("%q does not wrap ErrInvalid with the package prefix", e)
		}
	}
	for _, want := range []string{"release is required", "targets", "canary -3", "success_threshold 2", `on_failure "x"`, "window 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from %v", want, err)
		}
	}
}

func TestPlan(t *testing.T) {
	cases := []struct {
		w    Waves
		n    int
		want string
	}{
		{Waves{}, 10, "[1 2 4 3]"},
		{Waves{Canary: 5, Growth: 3}, 100, "[5 15 45 35]"},
		{Waves{Canary: 3, Growth: 1}, 7, "[3 3 1]"},
		{Waves{Canary: 50}, 10, "[10]"},
		{Waves{Sizes: []int{1, 10, 100}}, 400, "[1 10 100 100 100 89]"},
		{Waves{Canary: 1, Growth: 1.5}, 10, "[1 2 3 4]"},
	}
	for _, c := range cases {
		d := def()
		d.Waves = c.w
		comp, err := compile(&d)
		if err != nil {
			t.Fatal(err)
		}
		sizes, err := comp.plan(c.n)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(sizes); got != c.want {
			t.Errorf("%+v over %d: %s, want %s", c.w, c.n, got, c.want)
		}
	}
}
