// Package policy holds reference policies: what a device of a model and
// firmware version (and, optionally, an operator group) must measure at
// boot, judged against evidence the verifier has already proved.
//
// A Policy pins PCR values per bank and, for devices that send a
// measured-boot event log, rules on the verified events: the Secure Boot
// state, the boot components allowed on chosen PCRs, and the kernel
// command line. Evaluate compares a policy with Evidence built only from
// verified values (verifier.VerifyQuote, verifier.VerifyEventLog) and
// returns a Verdict whose failures say, in an operator's words, which PCR
// or event differs, what was expected and what it means.
//
// Select picks the policy for a device: the most specific one whose
// non-empty scope fields (model, firmware, group) all match. Choose, which
// enrollment and attestation both use, adds what a failure asks for and
// when a device fails closed, so that the firmware a device claims never
// buys it a milder verdict. Learn drafts
// a policy from one vouched-for ("golden") device. Store keeps every
// version of every policy in a bbolt file: Put never overwrites, Delete
// records a deletion, History lists all versions.
package policy

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Actions a failed evaluation asks for.
const (
	ActionAlert      = "alert"      // record and notify; the device keeps working
	ActionQuarantine = "quarantine" // restrict the device until released
)

// Secure Boot expectations.
const (
	SecureBootEnabled  = "enabled"
	SecureBootDisabled = "disabled"
)

// Policy is one version of a reference policy.
type Policy struct {
	ID      string `json:"id"`      // stable across versions: 1-64 of [a-z0-9._-], not starting with . or -
	Version int    `json:"version"` // set by Store.Put: 1, 2, ...; 0 before it is stored
	Name    string `json:"name"`    // for people

	// Scope: "" matches anything. See Select for which policy wins.
	Model    string `json:"model,omitempty"`
	Firmware string `json:"firmware,omitempty"`
	Group    string `json:"group,omitempty"`

	Action      string `json:"action,omitempty"`       // ActionAlert or ActionQuarantine; "" means quarantine
	AutoRelease bool   `json:"auto_release,omitempty"` // a later passing attestation releases a device this policy quarantined

	// PCRs maps a bank ("sha1", "sha256", "sha384", "sha512") to PCR index
	// (0-23) to the expected value in hex.
	PCRs map[string]map[int]string `json:"pcrs,omitempty"`

	// Events are rules on the verified event log. A policy with Events
	// fails evidence that has no event log: give devices without a log a
	// policy without Events.
	Events *EventRules `json:"events,omitempty"`

	CreatedAt time.Time `json:"created_at,omitzero"` // set by Store.Put
	CreatedBy string    `json:"created_by,omitempty"`
	Comment   string    `json:"comment,omitempty"`
	Deleted   bool      `json:"deleted,omitempty"` // set on the version Store.Delete records
}

// EventRules judge the verified events of a measured-boot log.
type EventRules struct {
	// SecureBoot is "" (not judged), "enabled" or "disabled": the state the
	// verified PCR 7 events must establish.
	SecureBoot string `json:"secure_boot,omitempty"`

	// AllowedDigests maps a PCR to the event digests (hex, in the bank the
	// log was verified in, SHA-256 when quoted) allowed on it. Every
	// verified event on that PCR must have one of them, except separators
	// and action strings (EV_SEPARATOR, EV_ACTION, EV_EFI_ACTION), which
	// mark phases rather than load code. Typical use: PCR 4 with the
	// digests of the shim, grub and kernel images
	// (EV_EFI_BOOT_SERVICES_APPLICATION) an operator approved, so that a
	// boot loader update is allowed while anything else is refused.
	AllowedDigests map[int][]string `json:"allowed_digests,omitempty"`

	// KernelCmdline lists the allowed kernel command lines, as grub
	// measures them into PCR 8 ("kernel_cmdline: ..." events; the kernel
	// path comes first). An entry matches a command line exactly, or, when
	// it ends in "*", every command line that starts with the rest. Every
	// verified command line must match an entry, and there must be at
	// least one whose data the verifier could prove.
	KernelCmdline []string `json:"kernel_cmdline,omitempty"`
}

var idRule = "1-64 characters of [a-z0-9._-], not starting with . or -"

func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// text checks a free-text field: at most max bytes, no control characters.
func text(name, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("policy: %s longer than %d bytes", name, max)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("policy: %s has control characters", name)
	}
	return nil
}

// Validate reports every problem with p at once (errors.Join): ID, names,
// action, bank names, PCR indexes (0-23), hex values and their lengths
// (the bank's digest size), event rules, and a policy that checks nothing.
func (p *Policy) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if !validID(p.ID) {
		add(fmt.Errorf("policy: id %q is not %s", p.ID, idRule))
	}
	if p.Version < 0 {
		add(fmt.Errorf("policy: version %d is negative", p.Version))
	}
	if strings.TrimSpace(p.Name) == "" {
		add(errors.New("policy: name missing"))
	}
	add(text("name", p.Name, 128))
	add(text("model", p.Model, 128))
	add(text("firmware", p.Firmware, 128))
	add(text("group", p.Group, 128))
	add(text("created_by", p.CreatedBy, 128))
	add(text("comment", p.Comment, 1024))
	switch p.Action {
	case "", ActionAlert, ActionQuarantine:
	default:
		add(fmt.Errorf("policy: action %q is not %q or %q", p.Action, ActionAlert, ActionQuarantine))
	}
	checks := 0
	for _, bank := range slices.Sorted(maps.Keys(p.PCRs)) {
		alg := verifier.BankID(bank)
		size := digestSize(alg)
		if size == 0 {
			add(fmt.Errorf("policy: PCR bank %q is not sha1, sha256, sha384 or sha512", bank))
		}
		for _, i := range slices.Sorted(maps.Keys(p.PCRs[bank])) {
			checks++
			if i < 0 || i > 23 {
				add(fmt.Errorf("policy: PCR %d (%s) is not 0-23", i, bank))
			}
			b, err := hex.DecodeString(p.PCRs[bank][i])
			switch {
			case err != nil:
				add(fmt.Errorf("policy: PCR %d (%s): value is not hex: %w", i, bank, err))
			case size != 0 && len(b) != size:
				add(fmt.Errorf("policy: PCR %d (%s): value of %d bytes, the bank's digests have %d", i, bank, len(b), size))
			}
		}
	}
	if r := p.Events; r != nil {
		switch r.SecureBoot {
		case "":
		case SecureBootEnabled, SecureBootDisabled:
			checks++
		default:
			add(fmt.Errorf("policy: secure_boot %q is not %q, %q or empty", r.SecureBoot, SecureBootEnabled, SecureBootDisabled))
		}
		for _, i := range slices.Sorted(maps.Keys(r.AllowedDigests)) {
			checks++
			if i < 0 || i > 23 {
				add(fmt.Errorf("policy: allowed digests: PCR %d is not 0-23", i))
			}
			if len(r.AllowedDigests[i]) == 0 {
				add(fmt.Errorf("policy: allowed digests: PCR %d has an empty list (no event would be allowed)", i))
			}
			for _, d := range r.AllowedDigests[i] {
				b, err := hex.DecodeString(d)
				if err != nil || !slices.Contains([]int{20, 32, 48, 64}, len(b)) {
					add(fmt.Errorf("policy: allowed digests: PCR %d: %q is not a SHA-1/256/384/512 digest in hex", i, d))
				}
			}
		}
		if len(r.KernelCmdline) > 0 {
			checks++
		}
		for _, c := range r.KernelCmdline {
			if c == "" || c == "*" {
				add(fmt.Errorf("policy: kernel command line %q allows anything: remove the rule instead", c))
			}
			add(text("kernel command line", c, 4096))
		}
	}
	if checks == 0 {
		add(errors.New("policy: checks nothing: give it PCR values or event rules"))
	}
	return errors.Join(errs...)
}

// action returns the effective action.
func (p *Policy) action() string {
	if p.Action == "" {
		return ActionQuarantine
	}
	return p.Action
}

// EffectiveAction is p.Action with the default applied.
func (p *Policy) EffectiveAction() string { return p.action() }

// Selections returns the PCR selections a device must quote for p: one per
// bank, with every PCR p pins or judges events of (PCR 7 for a Secure Boot
// rule, PCR 8 for command lines), sorted. Banks are in ascending
// algorithm ID order; event rules without PCR values ask for SHA-256.
func (p *Policy) Selections() []wire.PCRSelection {
	banks := map[uint16]map[int]bool{}
	for bank, vals := range p.PCRs {
		alg := verifier.BankID(bank)
		if alg == 0 {
			continue
		}
		if banks[alg] == nil {
			banks[alg] = map[int]bool{}
		}
		for i := range vals {
			banks[alg][i] = true
		}
	}
	if r := p.Events; r != nil {
		var extra []int
		if r.SecureBoot != "" {
			extra = append(extra, 7)
		}
		for i := range r.AllowedDigests {
			extra = append(extra, i)
		}
		if len(r.KernelCmdline) > 0 {
			extra = append(extra, 8)
		}
		sha256 := verifier.BankID("sha256")
		if len(extra) > 0 && banks[sha256] == nil {
			banks[sha256] = map[int]bool{}
		}
		for _, alg := range slices.Collect(maps.Keys(banks)) {
			for _, i := range extra {
				banks[alg][i] = true
			}
		}
	}
	var out []wire.PCRSelection
	for _, alg := range slices.Sorted(maps.Keys(banks)) {
		out = append(out, wire.PCRSelection{Hash: alg, PCRs: slices.Sorted(maps.Keys(banks[alg]))})
	}
	return out
}

// Select returns a copy of the policy that applies to a device, or nil.
// A policy applies when each of its non-empty Model, Firmware and Group
// equals the device's and it is not deleted. The most specific wins,
// scored model 4, firmware 2, group 1:
//
//	model+firmware+group > model+firmware > model+group > model >
//	firmware+group > firmware > group > any
//
// Equal scores (two policies with the same scope; Store.Put refuses that)
// go to the smallest ID, so the choice is deterministic.
func Select(policies []Policy, model, firmware, group string) *Policy {
	best, bestScore := -1, -1
	for i := range policies {
		p := &policies[i]
		if p.Deleted || (p.Model != "" && p.Model != model) || (p.Firmware != "" && p.Firmware != firmware) || (p.Group != "" && p.Group != group) {
			continue
		}
		s := specificity(p)
		if s > bestScore || (s == bestScore && p.ID < policies[best].ID) {
			best, bestScore = i, s
		}
	}
	if best < 0 {
		return nil
	}
	c := policies[best].clone()
	return &c
}

// Choice is how a device is judged: the policy its evidence is evaluated
// against and what a failure asks for. Build it with Choose.
type Choice struct {
	// Policy is the policy Select picks for the device's model, firmware
	// and group; nil when none applies.
	Policy *Policy
	// Action is what failing evidence asks for (ActionAlert or
	// ActionQuarantine): the strictest action of every policy the device
	// could be judged by whatever firmware it reported ("" when there is
	// none). A firmware version is the device's claim, not proof: only
	// evidence that passes the policy it selects vindicates it, so a
	// failing device never gets a milder action by claiming the firmware
	// of an alert-only policy.
	Action string
	// Covered reports that the device's model has policies: one names the
	// model, or one would apply to the device's model and group had it
	// reported another firmware. With no Policy, the device must then fail
	// closed: its unexpected firmware claim must not leave it unjudged.
	Covered bool
}

// FailClosed reports whether a device must fail for want of a policy: none
// applies to the firmware it reports, though some would to another.
func (c Choice) FailClosed() bool { return c.Policy == nil && c.Covered }

// Choose decides how a device is judged. model and group are what the
// fleet assigned to the device (the inventory, the enrollment token or an
// operator), never what the device says about itself; firmware is what the
// device reports. The policy is Select's. The reachable policies are the
// ones Select picks for the same model and group with any firmware (none,
// or one that a live policy names). Covered is whether there is one, or a
// live policy names the model whatever its group. Action is the strictest
// action of the reachable policies (ActionQuarantine outranks
// ActionAlert), and ActionQuarantine when the device is covered but no
// policy is reachable: deny by default.
func Choose(policies []Policy, model, firmware, group string) Choice {
	c := Choice{Policy: Select(policies, model, firmware, group)}
	// What Select would pick for each firmware, in one pass: the best
	// policy without a firmware, and the best for each firmware named.
	var general *Policy
	named := map[string]*Policy{}
	for i := range policies {
		p := &policies[i]
		if p.Deleted {
			continue
		}
		if model != "" && p.Model == model {
			c.Covered = true
		}
		if (p.Model != "" && p.Model != model) || (p.Group != "" && p.Group != group) {
			continue
		}
		if p.Firmware == "" {
			if better(p, general) {
				general = p
			}
		} else if better(p, named[p.Firmware]) {
			named[p.Firmware] = p
		}
	}
	reach := func(p *Policy) {
		if p == nil {
			return
		}
		c.Covered = true
		if c.Action != ActionQuarantine {
			c.Action = p.action()
		}
	}
	reach(general)
	for _, p := range named {
		if better(general, p) {
			p = general
		}
		reach(p)
	}
	if c.Covered && c.Action == "" {
		c.Action = ActionQuarantine
	}
	return c
}

// better reports whether Select prefers p to q (nil loses to any policy).
func better(p, q *Policy) bool {
	switch {
	case p == nil:
		return false
	case q == nil:
		return true
	}
	sp, sq := specificity(p), specificity(q)
	return sp > sq || (sp == sq && p.ID < q.ID)
}

func specificity(p *Policy) int {
	s := 0
	if p.Model != "" {
		s += 4
	}
	if p.Firmware != "" {
		s += 2
	}
	if p.Group != "" {
		s++
	}
	return s
}

// clone deep-copies p.
func (p *Policy) clone() Policy {
	c := *p
	if p.PCRs != nil {
		c.PCRs = make(map[string]map[int]string, len(p.PCRs))
		for b, m := range p.PCRs {
			c.PCRs[b] = maps.Clone(m)
		}
	}
	if p.Events != nil {
		r := *p.Events
		r.KernelCmdline = slices.Clone(r.KernelCmdline)
		if r.AllowedDigests != nil {
			r.AllowedDigests = make(map[int][]string, len(p.Events.AllowedDigests))
			for i, d := range p.Events.AllowedDigests {
				r.AllowedDigests[i] = slices.Clone(d)
			}
		}
		c.Events = &r
	}
	return c
}

// Learn drafts a policy from one vouched-for device's verified evidence:
// the model and firmware it runs, the values of the listed PCRs in every
// quoted bank (all quoted PCRs when pcrs is empty; PCRs the evidence lacks
// are left out) and, when the evidence has an event log, its Secure Boot
// state, the digests of the events on the listed PCRs that the log
// verified (as AllowedDigests), and its verified kernel command lines. The
// ID is derived from name; Version and CreatedAt are set when it is
// stored. Review it before storing: Learn trusts the device it learns from.
func Learn(name string, ev *Evidence, pcrs []int) *Policy {
	p := &Policy{ID: slug(name), Name: name, Action: ActionQuarantine, Comment: "learned from a golden device"}
	if ev == nil {
		return p
	}
	p.Model, p.Firmware = ev.Model, ev.Firmware
	for bank, vals := range ev.PCRs {
		for i, v := range vals {
			if len(pcrs) > 0 && !slices.Contains(pcrs, i) {
				continue
			}
			if p.PCRs == nil {
				p.PCRs = map[string]map[int]string{}
			}
			if p.PCRs[bank] == nil {
				p.PCRs[bank] = map[int]string{}
			}
			p.PCRs[bank][i] = hex.EncodeToString(v)
		}
	}
	if ev.Log == nil {
		return p
	}
	r := &EventRules{}
	if sb := ev.Log.SecureBoot(); sb != nil {
		r.SecureBoot = SecureBootDisabled
		if sb.Enabled {
			r.SecureBoot = SecureBootEnabled
		}
	}
	for _, e := range ev.Log.Events {
		if (len(pcrs) == 0 || slices.Contains(pcrs, e.PCR)) && judgedEvent(e.Type) {
			if r.AllowedDigests == nil {
				r.AllowedDigests = map[int][]string{}
			}
			d := hex.EncodeToString(e.Digest)
			if !slices.Contains(r.AllowedDigests[e.PCR], d) {
				r.AllowedDigests[e.PCR] = append(r.AllowedDigests[e.PCR], d)
			}
		}
		if c, ok := cmdline(e); ok && e.DataVerified() && !slices.Contains(r.KernelCmdline, c) && c != "" {
			r.KernelCmdline = append(r.KernelCmdline, c)
		}
	}
	if r.SecureBoot != "" || r.AllowedDigests != nil || r.KernelCmdline != nil {
		p.Events = r
	}
	return p
}

// slug turns a name into an ID.
func slug(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_':
			if b.Len() == 0 && r == '.' {
				continue
			}
			b.WriteRune(r)
			dash = false
		case b.Len() > 0 && !dash:
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= 64 {
			break
		}
	}
	s := strings.TrimRight(b.String(), "-")
	if len(s) > 64 {
		s = strings.TrimRight(s[:64], "-")
	}
	if s == "" {
		return "learned"
	}
	return s
}

func digestSize(alg uint16) int {
	switch verifier.BankName(alg) {
	case "sha1":
		return 20
	case "sha256":
		return 32
	case "sha384":
		return 48
	case "sha512":
		return 64
	}
	return 0
}
