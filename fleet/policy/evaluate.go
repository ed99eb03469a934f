package policy

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Evidence is what a device proved in one attestation, plus what it says
// it is. Build it with NewEvidence from verified values only.
type Evidence struct {
	Model, Firmware string                    // reported by the device (not proved: its PCRs are)
	PCRs            map[string]map[int][]byte // bank name -> PCR -> value, from verified quotes only
	Log             *verifier.EventLog        // verified event log; nil when the device sent none
}

// NewEvidence gathers verified quotes (one per bank) and the verified
// event log (nil when none) with the model and firmware the device
// reports.
func NewEvidence(model, firmware string, log *verifier.EventLog, quotes ...*verifier.VerifiedQuote) *Evidence {
	ev := &Evidence{Model: model, Firmware: firmware, Log: log, PCRs: map[string]map[int][]byte{}}
	for _, q := range quotes {
		if q != nil {
			ev.PCRs[verifier.BankName(q.Hash)] = maps.Clone(q.PCRs)
		}
	}
	return ev
}

// Failure kinds.
const (
	KindPCR        = "pcr"        // a PCR value differs from the policy's
	KindEvent      = "event"      // a verified event is not allowed
	KindSecureBoot = "secureboot" // the Secure Boot state is not the expected one
	KindCmdline    = "cmdline"    // a kernel command line is not allowed or not proved
	KindMissing    = "missing"    // the evidence lacks what the policy judges
	KindScope      = "scope"      // the device reports a model or firmware the policy is not for
)

// Failure is one way evidence breaks a policy.
type Failure struct {
	Kind       string `json:"kind"`
	Bank       string `json:"bank,omitempty"`
	PCR        int    `json:"pcr"`         // -1 when no PCR is concerned
	EventIndex int    `json:"event_index"` // position of the event in the log; -1 when no event is concerned
	Expected   string `json:"expected,omitempty"`
	Actual     string `json:"actual,omitempty"`
	Message    string `json:"message"` // for operators: what differs and what it means
}

// Verdict is the outcome of Evaluate.
type Verdict struct {
	Pass          bool      `json:"pass"`
	PolicyID      string    `json:"policy_id"`
	PolicyVersion int       `json:"policy_version"`
	Failures      []Failure `json:"failures,omitempty"`
}

// Reason is the wire reason for the verdict: ok or policy_violation.
func (v *Verdict) Reason() wire.Reason {
	if v.Pass {
		return wire.ReasonOK
	}
	return wire.ReasonPolicyViolation
}

// Summary is one line for people: "pass", or the first failure's message
// and how many more there are.
func (v *Verdict) Summary() string {
	switch {
	case v.Pass:
		return "pass"
	case len(v.Failures) == 0:
		return "fail"
	case len(v.Failures) == 1:
		return v.Failures[0].Message
	}
	return fmt.Sprintf("%s (and %d more)", v.Failures[0].Message, len(v.Failures)-1)
}

// Evaluate judges ev against p. It checks, and reports every failure:
//
//  1. scope: a non-empty Model or Firmware of the policy equals what the
//     device reports (the group is the caller's to match, see Select);
//  2. every PCR value the policy pins is in the evidence and equal;
//  3. with event rules: the evidence has a verified event log; the Secure
//     Boot state it establishes is the expected one; every judged event
//     on a PCR with allowed digests has one of them; every verified
//     kernel command line is allowed and its data proved by its digest.
//
// The verdict passes when there is no failure. A policy that does not
// validate fails everything.
func (p *Policy) Evaluate(ev *Evidence) Verdict {
	v := Verdict{PolicyID: p.ID, PolicyVersion: p.Version}
	fail := func(f Failure) { v.Failures = append(v.Failures, f) }
	if err := p.Validate(); err != nil {
		fail(Failure{Kind: KindMissing, PCR: -1, EventIndex: -1, Message: "the policy is invalid: " + err.Error()})
		return v
	}
	if ev == nil {
		fail(Failure{Kind: KindMissing, PCR: -1, EventIndex: -1, Message: "no evidence"})
		return v
	}
	if p.Model != "" && ev.Model != p.Model {
		fail(Failure{Kind: KindScope, PCR: -1, EventIndex: -1, Expected: p.Model, Actual: ev.Model,
			Message: fmt.Sprintf("the device reports model %q but the policy is for model %q", ev.Model, p.Model)})
	}
	if p.Firmware != "" && ev.Firmware != p.Firmware {
		fail(Failure{Kind: KindScope, PCR: -1, EventIndex: -1, Expected: p.Firmware, Actual: ev.Firmware,
			Message: fmt.Sprintf("the device reports firmware %q but the policy is for firmware %q", ev.Firmware, p.Firmware)})
	}

	for _, bank := range slices.Sorted(maps.Keys(p.PCRs)) {
		for _, i := range slices.Sorted(maps.Keys(p.PCRs[bank])) {
			want, _ := hex.DecodeString(p.PCRs[bank][i])
			got, ok := ev.PCRs[bank][i]
			if !ok {
				fail(Failure{Kind: KindMissing, Bank: bank, PCR: i, EventIndex: -1, Expected: hex.EncodeToString(want),
					Message: fmt.Sprintf("PCR %d (%s, %s) was not quoted: the policy needs it", i, verifier.PCRName(i), bank)})
				continue
			}
			if !bytes.Equal(got, want) {
				fail(Failure{Kind: KindPCR, Bank: bank, PCR: i, EventIndex: -1, Expected: hex.EncodeToString(want), Actual: hex.EncodeToString(got),
					Message: fmt.Sprintf("PCR %d (%s, %s) is %s but the policy expects %s: %s",
						i, verifier.PCRName(i), bank, short(got), short(want), meaning(i))})
			}
		}
	}
	if p.Events != nil {
		p.Events.evaluate(ev.Log, fail)
	}
	v.Pass = len(v.Failures) == 0
	return v
}

func (r *EventRules) evaluate(log *verifier.EventLog, fail func(Failure)) {
	if log == nil {
		fail(Failure{Kind: KindMissing, PCR: -1, EventIndex: -1,
			Message: "the policy has event-log rules but the device sent no verified event log"})
		return
	}
	bank := verifier.BankName(log.Hash)

	if r.SecureBoot != "" {
		switch sb := log.SecureBoot(); {
		case sb == nil:
			fail(Failure{Kind: KindSecureBoot, PCR: 7, EventIndex: -1, Expected: r.SecureBoot, Actual: "unknown",
				Message: fmt.Sprintf("the Secure Boot state cannot be established from the event log (%s); the policy expects it %s", log.SecureBootErr(), r.SecureBoot)})
		case sb.Enabled != (r.SecureBoot == SecureBootEnabled):
			actual := SecureBootDisabled
			if sb.Enabled {
				actual = SecureBootEnabled
			}
			fail(Failure{Kind: KindSecureBoot, PCR: 7, EventIndex: -1, Expected: r.SecureBoot, Actual: actual,
				Message: fmt.Sprintf("Secure Boot is %s but the policy expects it %s", actual, r.SecureBoot)})
		}
	}

	for _, pcr := range slices.Sorted(maps.Keys(r.AllowedDigests)) {
		if !slices.Contains(log.PCRs, pcr) {
			fail(Failure{Kind: KindMissing, Bank: bank, PCR: pcr, EventIndex: -1,
				Message: fmt.Sprintf("PCR %d (%s) has no verified events: it was not quoted or the log has none for it, so its boot components cannot be checked", pcr, verifier.PCRName(pcr))})
			continue
		}
		allowed := map[string]bool{}
		for _, d := range r.AllowedDigests[pcr] {
			allowed[strings.ToLower(d)] = true
		}
		for _, e := range log.Events {
			if e.PCR != pcr || !judgedEvent(e.Type) {
				continue
			}
			if d := hex.EncodeToString(e.Digest); !allowed[d] {
				fail(Failure{Kind: KindEvent, Bank: bank, PCR: pcr, EventIndex: e.Index, Actual: d,
					Expected: fmt.Sprintf("one of %d allowed digests", len(r.AllowedDigests[pcr])),
					Message: fmt.Sprintf("%s on PCR %d (%s) has digest %s, which the policy does not allow: %s",
						e.Label(), pcr, verifier.PCRName(pcr), short(e.Digest), componentMeaning(e.Type))})
			}
		}
	}

	if len(r.KernelCmdline) > 0 {
		seen := false
		for _, e := range log.Events {
			c, ok := cmdline(e)
			if !ok {
				continue
			}
			seen = true
			switch {
			case !e.DataVerified():
				fail(Failure{Kind: KindCmdline, PCR: 8, EventIndex: e.Index, Actual: c,
					Message: fmt.Sprintf("the kernel command line of %s does not match its measured digest: the log was altered and the command line cannot be trusted", e.Label())})
			case e.DataSize > len(e.Data):
				fail(Failure{Kind: KindCmdline, PCR: 8, EventIndex: e.Index,
					Message: fmt.Sprintf("the kernel command line of %s is longer than %d bytes and cannot be judged", e.Label(), verifier.MaxEventData)})
			case !cmdlineAllowed(r.KernelCmdline, c):
				fail(Failure{Kind: KindCmdline, PCR: 8, EventIndex: e.Index, Actual: c, Expected: strings.Join(r.KernelCmdline, " | "),
					Message: fmt.Sprintf("kernel command line %q (event %d) is not one the policy allows: the boot parameters were changed", c, e.Index)})
			}
		}
		if !seen {
			fail(Failure{Kind: KindMissing, PCR: 8, EventIndex: -1, Expected: strings.Join(r.KernelCmdline, " | "),
				Message: "no verified kernel command line in the event log: PCR 8 was not quoted, or the boot loader does not measure it"})
		}
	}
}

// cmdline returns the kernel command line grub measured in e.
func cmdline(e verifier.Event) (string, bool) {
	if e.PCR != 8 || e.Type != "EV_IPL" {
		return "", false
	}
	rest, ok := bytes.CutPrefix(e.Data, []byte("kernel_cmdline: "))
	if !ok {
		return "", false
	}
	return string(bytes.TrimRight(rest, "\x00")), true
}

func cmdlineAllowed(rules []string, c string) bool {
	for _, r := range rules {
		if prefix, ok := strings.CutSuffix(r, "*"); ok {
			if strings.HasPrefix(c, prefix) {
				return true
			}
		} else if r == c {
			return true
		}
	}
	return false
}

// judgedEvent reports whether AllowedDigests judge events of type t:
// everything but separators and action strings.
func judgedEvent(t string) bool {
	switch t {
	case "EV_SEPARATOR", "EV_ACTION", "EV_EFI_ACTION", "EV_NO_ACTION":
		return false
	}
	return true
}

// meaning says what a changed PCR value means.
func meaning(pcr int) string {
	switch pcr {
	case 0:
		return "the firmware changed"
	case 1:
		return "the firmware settings changed"
	case 2:
		return "option ROMs or UEFI drivers changed"
	case 3:
		return "the option ROM configuration changed"
	case 4:
		return "the boot loader changed"
	case 5:
		return "the boot order, boot configuration or partition table changed"
	case 6:
		return "the platform manufacturer's measurements changed"
	case 7:
		return "the Secure Boot configuration changed"
	case 8:
		return "the kernel command line or the boot loader's commands changed"
	case 9:
		return "the kernel, initrd or boot loader files changed"
	case 10:
		return "the runtime (IMA) measurements differ"
	case 11:
		return "the unified kernel image changed"
	case 12:
		return "the kernel command line changed"
	case 13:
		return "the system extensions changed"
	case 14:
		return "the shim's MOK or SBAT state changed"
	case 16:
		return "the debug PCR was extended"
	}
	return "the measured state changed"
}

func componentMeaning(t string) string {
	switch t {
	case "EV_EFI_BOOT_SERVICES_APPLICATION":
		return "an unapproved boot application ran"
	case "EV_EFI_BOOT_SERVICES_DRIVER", "EV_EFI_RUNTIME_SERVICES_DRIVER":
		return "an unapproved UEFI driver was loaded"
	case "EV_EFI_PLATFORM_FIRMWARE_BLOB", "EV_POST_CODE", "EV_S_CRTM_CONTENTS", "EV_S_CRTM_VERSION":
		return "the firmware is not an approved build"
	case "EV_IPL":
		return "the boot loader loaded or ran something not approved"
	}
	return "an unapproved measurement was made"
}

// short renders a digest for a message: its first 8 hex digits.
func short(b []byte) string {
	s := hex.EncodeToString(b)
	if len(s) > 8 {
		return s[:8] + "…"
	}
	return s
}
