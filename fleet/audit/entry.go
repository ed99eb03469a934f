package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ActorKind says what kind of principal acted.
type ActorKind string

// Actor kinds.
const (
	ActorUser   ActorKind = "user"   // an operator logged in to the console or API
	ActorToken  ActorKind = "token"  // an API token (ID is the token's public handle, never its secret)
	ActorDevice ActorKind = "device" // a device, by the ID in its certificate
	ActorSystem ActorKind = "system" // the fleet itself (ID names the component, e.g. "rotation")
)

func (k ActorKind) valid() bool {
	switch k {
	case ActorUser, ActorToken, ActorDevice, ActorSystem:
		return true
	}
	return false
}

// Actor is who acted.
type Actor struct {
	Kind ActorKind `json:"kind"`
	ID   string    `json:"id"`
}

// String returns "kind:id".
func (a Actor) String() string { return string(a.Kind) + ":" + a.ID }

// User returns the actor for an operator.
func User(name string) Actor { return Actor{Kind: ActorUser, ID: name} }

// Token returns the actor for an API token, by its public ID.
func Token(id string) Actor { return Actor{Kind: ActorToken, ID: id} }

// Device returns the actor for a device.
func Device(id string) Actor { return Actor{Kind: ActorDevice, ID: id} }

// System returns the actor for a component of the fleet.
func System(component string) Actor { return Actor{Kind: ActorSystem, ID: component} }

// Outcome is how an action ended.
type Outcome string

// Outcomes.
const (
	OK     Outcome = "ok"     // done
	Denied Outcome = "denied" // refused by authorization, approval or policy
	Failed Outcome = "failed" // attempted and failed
)

func (o Outcome) valid() bool { return o == OK || o == Denied || o == Failed }

// Hash is a SHA-256 digest. It marshals as 64 lowercase hex digits.
type Hash [sha256.Size]byte

// String returns h in lowercase hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is all zeros (the Prev of the first entry).
func (h Hash) IsZero() bool { return h == Hash{} }

// MarshalText implements encoding.TextMarshaler.
func (h Hash) MarshalText() ([]byte, error) { return hex.AppendEncode(nil, h[:]), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it accepts exactly 64
// lowercase hex digits.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("audit: hash is %d characters, want %d", len(b), 2*len(h))
	}
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return errors.New("audit: hash is not lowercase hex")
		}
	}
	_, err := hex.Decode(h[:], b)
	return err
}

// Entry is one record of the log. The caller fills Actor, Action, Target,
// Outcome, Reason, RequestID and Details (New and its methods help); the
// log sets Seq, Time, Prev and Hash when it appends the entry, ignoring
// whatever the caller put there.
type Entry struct {
	Seq       uint64            `json:"seq"`  // 1 for the first entry, then +1 each
	Time      time.Time         `json:"time"` // UTC, never before the previous entry's
	Actor     Actor             `json:"actor"`
	Action    string            `json:"action"`           // dotted, e.g. "device.revoke"
	Target    string            `json:"target,omitempty"` // what was acted on, e.g. a device ID
	Outcome   Outcome           `json:"outcome"`
	Reason    string            `json:"reason,omitempty"` // why it was denied or failed, or the operator's justification
	RequestID string            `json:"request_id,omitempty"`
	Details   map[string]string `json:"details,omitempty"` // small, never secrets
	Prev      Hash              `json:"prev"`              // Hash of entry Seq-1; zero for entry 1
	Hash      Hash              `json:"hash"`              // SHA-256 of the canonical encoding (package doc)
}

// Limits on an entry's fields.
const (
	MaxID      = 256  // bytes of Actor.ID, Target
	MaxAction  = 128  // bytes of Action
	MaxRequest = 128  // bytes of RequestID
	MaxReason  = 1024 // bytes of Reason
	MaxDetails = 32   // pairs in Details
	MaxKey     = 64   // bytes of a Details key
	MaxValue   = 1024 // bytes of a Details value
)

// New returns an entry for actor doing action on target, with outcome OK.
// Chain the methods below to say more:
//
//	audit.New(audit.User("alice"), "device.revoke", id).Because(justification).Request(reqID)
//
// A target too long or unfit for the log (more than MaxID bytes, control
// characters, invalid UTF-8) is made to fit (Fit) rather than refused: what
// it records happened either way, and an entry refused would be lost.
func New(actor Actor, action, target string) Entry {
	return Entry{Actor: actor, Action: action, Target: Fit(target, MaxID), Outcome: OK}
}

// Fit returns s made fit for an entry's field of at most max bytes:
// invalid UTF-8 becomes U+FFFD, control characters become Go escapes
// (\n, \x00, \u0085), and what is still longer than max is cut at a
// character boundary and marked "…[truncated N bytes]". A fitting s is
// returned unchanged.
func Fit(s string, max int) string {
	if len(s) <= max && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.ContainsFunc(s, unicode.IsControl) {
		var b strings.Builder
		for _, r := range s {
			if unicode.IsControl(r) {
				q := strconv.QuoteRune(r)
				b.WriteString(q[1 : len(q)-1])
			} else {
				b.WriteRune(r)
			}
		}
		s = b.String()
	}
	return truncate(s, max)
}

// truncate cuts s (valid UTF-8) to at most max bytes, if longer, ending it
// with a marker that says how many bytes were cut.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	for keep := max; keep >= 0; keep-- {
		kept := clip(s, keep)
		marker := fmt.Sprintf("…[truncated %d bytes]", len(s)-len(kept))
		if len(kept)+len(marker) <= max {
			return kept + marker
		}
	}
	return clip(s, max)
}

// Because returns e with reason set (for OK, the operator's justification).
func (e Entry) Because(reason string) Entry {
	e.Reason = clip(reason, MaxReason)
	return e
}

// Deny returns e with outcome Denied and reason set.
func (e Entry) Deny(reason string) Entry {
	e.Outcome, e.Reason = Denied, clip(reason, MaxReason)
	return e
}

// Fail returns e with outcome Failed and err's text as the reason
// (clipped to MaxReason). A nil err leaves e as it is, so that
//
//	err := do()
//	rec.Record(ctx, entry.Fail(err))
//
// records either outcome.
func (e Entry) Fail(err error) Entry {
	if err == nil {
		return e
	}
	e.Outcome, e.Reason = Failed, clip(strings.ToValidUTF8(err.Error(), "?"), MaxReason)
	return e
}

// Request returns e with its request ID set.
func (e Entry) Request(id string) Entry {
	e.RequestID = id
	return e
}

// With returns e with a detail added; a value longer than MaxValue bytes
// is cut and marked, invalid UTF-8 replaced (the key must be valid). It
// does not modify e's map, so one Entry can be a template for several.
func (e Entry) With(key, value string) Entry {
	d := maps.Clone(e.Details)
	if d == nil {
		d = make(map[string]string, 1)
	}
	if len(value) > MaxValue || !utf8.ValidString(value) {
		value = fitValue(value)
	}
	d[key] = value
	e.Details = d
	return e
}

// fitValue makes a detail value fit: valid UTF-8, at most MaxValue bytes
// (control characters are allowed in values).
func fitValue(v string) string {
	return truncate(strings.ToValidUTF8(v, "\uFFFD"), MaxValue)
}

// clip shortens s to at most n bytes without splitting a character.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// validate checks the fields a caller sets.
func (e *Entry) validate() error {
	var errs []error
	if !e.Actor.Kind.valid() {
		errs = append(errs, fmt.Errorf("actor kind %q is not user, token, device or system", e.Actor.Kind))
	}
	if err := checkText("actor ID", e.Actor.ID, 1, MaxID); err != nil {
		errs = append(errs, err)
	}
	if !validAction(e.Action) {
		errs = append(errs, fmt.Errorf("action %q is not dotted lowercase words (e.g. device.revoke), at most %d bytes", clip(e.Action, MaxAction), MaxAction))
	}
	if err := checkText("target", e.Target, 0, MaxID); err != nil {
		errs = append(errs, err)
	}
	if !e.Outcome.valid() {
		errs = append(errs, fmt.Errorf("outcome %q is not ok, denied or failed", e.Outcome))
	}
	if len(e.Reason) > MaxReason || !utf8.ValidString(e.Reason) {
		errs = append(errs, fmt.Errorf("reason is not UTF-8 of at most %d bytes", MaxReason))
	}
	if err := checkText("request ID", e.RequestID, 0, MaxRequest); err != nil {
		errs = append(errs, err)
	}
	if len(e.Details) > MaxDetails {
		errs = append(errs, fmt.Errorf("%d details, at most %d", len(e.Details), MaxDetails))
	}
	for k, v := range e.Details {
		if !validKey(k) {
			errs = append(errs, fmt.Errorf("detail key %q is not 1-%d of a-z 0-9 _ . -", clip(k, MaxKey), MaxKey))
		}
		if len(v) > MaxValue || !utf8.ValidString(v) {
			errs = append(errs, fmt.Errorf("detail %q is not UTF-8 of at most %d bytes", clip(k, MaxKey), MaxValue))
		}
	}
	return errors.Join(errs...)
}

// checkText checks a field that appears in index keys and tables: UTF-8,
// no control characters, between min and max bytes.
func checkText(name, s string, min, max int) error {
	if len(s) < min || len(s) > max {
		return fmt.Errorf("%s is %d bytes, want %d to %d", name, len(s), min, max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not UTF-8", name)
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("%s holds a control character", name)
	}
	return nil
}

// validAction reports whether s is two or more dot-separated words of
// a-z, 0-9, '_' and '-', each starting with a letter.
func validAction(s string) bool {
	if len(s) == 0 || len(s) > MaxAction {
		return false
	}
	words := strings.Split(s, ".")
	if len(words) < 2 {
		return false
	}
	for _, w := range words {
		if w == "" || w[0] < 'a' || w[0] > 'z' {
			return false
		}
		for _, c := range []byte(w) {
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
				return false
			}
		}
	}
	return true
}

func validKey(k string) bool {
	if k == "" || len(k) > MaxKey {
		return false
	}
	for _, c := range []byte(k) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// validTime reports whether t fits the canonical encoding, which holds
// Unix nanoseconds in an int64 (1970 to 2261 here).
func validTime(t time.Time) bool { return t.Unix() >= 0 && t.Year() < 2262 }

// Domain strings that start the canonical encodings.
const (
	entryDomain      = "sigil-audit-entry-v1"
	checkpointDomain = "sigil-audit-checkpoint-v1"
)

// Canonical returns the canonical encoding of e that Hash is computed over
// (package doc, "Canonical encoding"). It covers every field but Hash.
func (e *Entry) Canonical() []byte {
	n := 4 + len(entryDomain) + 8 + 8 + 6*4 + len(e.Actor.Kind) + len(e.Actor.ID) + len(e.Action) + len(e.Target) + len(e.Outcome) + len(e.Reason) + len(e.RequestID) + 4 + len(e.Prev)
	for k, v := range e.Details {
		n += 8 + len(k) + len(v)
	}
	b := make([]byte, 0, n+4)
	b = appendString(b, entryDomain)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixNano()))
	b = appendString(b, string(e.Actor.Kind))
	b = appendString(b, e.Actor.ID)
	b = appendString(b, e.Action)
	b = appendString(b, e.Target)
	b = appendString(b, string(e.Outcome))
	b = appendString(b, e.Reason)
	b = appendString(b, e.RequestID)
	keys := make([]string, 0, len(e.Details))
	for k := range e.Details {
		keys = append(keys, k)
	}
	slices.Sort(keys) // Go compares strings bytewise
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, e.Details[k])
	}
	return append(b, e.Prev[:]...)
}

// ComputeHash returns SHA-256 of e's canonical encoding: what e.Hash must
// hold.
func (e *Entry) ComputeHash() Hash { return sha256.Sum256(e.Canonical()) }

// appendString appends a 4-byte big-endian length and the bytes of s.
func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
