package policy

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestChoose: the policy a device is judged by, the action a failure asks
// for and when a device fails closed for want of a policy.
func TestChoose(t *testing.T) {
	ps := []Policy{
		{ID: "gw", Name: "n", Model: "gw", Action: ActionQuarantine},
		{ID: "gw-9", Name: "n", Model: "gw", Firmware: "9.9", Action: ActionAlert},
		{ID: "gw-lab", Name: "n", Model: "gw", Group: "lab", Action: ActionAlert},
		{ID: "cam-2", Name: "n", Model: "cam", Firmware: "2.0", Action: ActionAlert},
		{ID: "cam-3", Name: "n", Model: "cam", Firmware: "3.0"},
		{ID: "lamp-lab", Name: "n", Model: "lamp", Group: "lab", Action: ActionAlert},
		{ID: "fw-only", Name: "n", Firmware: "7.0", Action: ActionAlert},
		{ID: "gone", Name: "n", Model: "bulb", Deleted: true},
	}
	for _, tc := range []struct {
		model, fw, group string
		policy, action   string
		covered          bool
	}{
		// A failing device that claims the firmware of the alert-only
		// policy is still quarantined: the model's own policy would.
		{"gw", "9.9", "", "gw-9", ActionQuarantine, true},
		{"gw", "1.0", "", "gw", ActionQuarantine, true},
		// The group is the fleet's: its alert-only policy stands.
		{"gw", "1.0", "lab", "gw-lab", ActionAlert, true},
		{"gw", "9.9", "lab", "gw-9", ActionAlert, true},
		// No policy for the firmware claimed, but some for the model: fail
		// closed, with the strictest reachable action.
		{"cam", "1.0", "", "", ActionQuarantine, true},
		{"cam", "2.0", "", "cam-2", ActionQuarantine, true},
		// The model has policies only for another group: fail closed (with
		// the firmware-only policy's action, the only one reachable).
		{"lamp", "1.0", "", "", ActionAlert, true},
		{"lamp", "1.0", "lab", "lamp-lab", ActionAlert, true},
		// A firmware-only policy reaches every model.
		{"sensor", "1.0", "", "", ActionAlert, true},
		{"sensor", "7.0", "", "fw-only", ActionAlert, true},
		// A deleted policy covers nothing.
		{"bulb", "1.0", "", "", ActionAlert, true},
	} {
		c := Choose(ps, tc.model, tc.fw, tc.group)
		id := ""
		if c.Policy != nil {
			id = c.Policy.ID
		}
		if id != tc.policy || c.Action != tc.action || c.Covered != tc.covered {
			t.Errorf("Choose(%q, %q, %q) = policy %q action %q covered %v, want %q %q %v",
				tc.model, tc.fw, tc.group, id, c.Action, c.Covered, tc.policy, tc.action, tc.covered)
		}
		if c.FailClosed() != (id == "" && tc.covered) {
			t.Errorf("Choose(%q, %q, %q).FailClosed() = %v", tc.model, tc.fw, tc.group, c.FailClosed())
		}
	}
	if c := Choose(ps[:6], "lamp", "1.0", ""); c.Policy != nil || c.Action != ActionQuarantine || !c.FailClosed() {
		t.Errorf("a model with policies for another group only: %+v", c)
	}
	if c := Choose(ps[:3], "cam", "1.0", ""); c.Covered || c.Policy != nil || c.Action != "" || c.FailClosed() {
		t.Errorf("a model without policies: %+v", c)
	}
}

// TestChooseMatchesSelect holds Choose's one-pass search to its
// definition: Select for every firmware a policy names.
func TestChooseMatchesSelect(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(vals ...string) string { return vals[r.IntN(len(vals))] }
	for round := range 2000 {
		var ps []Policy
		for i := range r.IntN(8) {
			ps = append(ps, Policy{ID: fmt.Sprintf("p%d", r.IntN(5)*10+i), Name: "n",
				Model: pick("", "a", "b"), Firmware: pick("", "1", "2", "3"), Group: pick("", "g", "h"),
				Action: pick("", ActionAlert, ActionQuarantine), Deleted: r.IntN(6) == 0})
		}
		model, fw, group := pick("", "a", "b"), pick("", "1", "2", "4"), pick("", "g", "h")
		got := Choose(ps, model, fw, group)

		want := Choice{Policy: Select(ps, model, fw, group)}
		for _, f := range []string{"", "1", "2", "3", fw} {
			if p := Select(ps, model, f, group); p != nil {
				want.Covered = true
				if p.action() == ActionQuarantine || want.Action == "" {
					want.Action = p.action()
				}
			}
		}
		for _, p := range ps {
			want.Covered = want.Covered || (!p.Deleted && model != "" && p.Model == model)
		}
		if want.Covered && want.Action == "" {
			want.Action = ActionQuarantine
		}
		gotID, wantID := "", ""
		if got.Policy != nil {
			gotID = got.Policy.ID
		}
		if want.Policy != nil {
			wantID = want.Policy.ID
		}
		if gotID != wantID || got.Action != want.Action || got.Covered != want.Covered {
			t.Fatalf("round %d: Choose(%q, %q, %q) over %+v\n got %q %q %v\nwant %q %q %v",
				round, model, fw, group, ps, gotID, got.Action, got.Covered, wantID, want.Action, want.Covered)
		}
	}
}
