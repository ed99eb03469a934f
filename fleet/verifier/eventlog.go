package verifier

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// MaxEventData bounds Event.Data: longer event data (certificate lists in
// Secure Boot variables, for instance) is cut; Event.DataSize keeps the size.
const MaxEventData = 1024

// EventLog is the part of a measured-boot event log (TCG PC Client format)
// that replayed to PCR values proved by quotes. Only verified events are in
// it: events for PCRs the quotes did not cover are dropped.
//
// An EventLog and its events are read-only: the Secure Boot state, event
// descriptions and DataVerified are worked out on demand from the verified
// bytes the events point into, so do not modify Events or their slices.
type EventLog struct {
	Hash   uint16   // TPM_ALG_ID of the bank whose digests Events carry (SHA-256 when it was quoted)
	Banks  []uint16 // every bank the log was replayed against, in the order given
	PCRs   []int    // PCRs the log has events for and the quote of bank Hash proved, ascending
	Events []Event  // verified events, in log order

	sb *lazySecureBoot // nil in a zero EventLog
}

// lazySecureBoot establishes the Secure Boot state once, on the first call
// of EventLog.SecureBoot or SecureBootErr: most callers never ask, and
// explaining a state that cannot be established costs a second parse.
type lazySecureBoot struct {
	once    sync.Once
	events  []Event                                  // the log's verified events
	compute func() (*attest.SecurebootState, string) // go-attestation's reading of the verified events; nil after the first call
	state   *SecureBootState
	err     string
}

func newLazySecureBoot(events []Event, compute func() (*attest.SecurebootState, string)) *lazySecureBoot {
	return &lazySecureBoot{events: events, compute: compute}
}

func (l *EventLog) secureBoot() (*SecureBootState, string) {
	if l.sb == nil {
		return nil, "PCR 7 was not verified"
	}
	l.sb.once.Do(func() {
		sb, err := l.sb.compute()
		if sb != nil {
			l.sb.state, l.sb.err = secureBootState(l.sb.events, sb)
		} else {
			l.sb.err = err
		}
		l.sb.compute, l.sb.events = nil, nil
	})
	return l.sb.state, l.sb.err
}

// SecureBoot returns the Secure Boot state established from the verified
// PCR 7 events (go-attestation's ParseSecurebootState, which checks that
// each event's data matches its digest, held to a strict reading of the
// signature databases PK, KEK, db and dbx: see secureBootState), or nil
// when PCR 7 was not verified or its events do not establish a state;
// SecureBootErr then says why. It is worked out on the first call (of
// either), from the events VerifyEventLog verified, and safe for
// concurrent use.
func (l *EventLog) SecureBoot() *SecureBootState {
	s, _ := l.secureBoot()
	return s
}

// SecureBootErr says why SecureBoot is nil, or is "" when it is not.
func (l *EventLog) SecureBootErr() string {
	_, e := l.secureBoot()
	return e
}

// Event is one verified event of a measured-boot log.
//
// Digest is proved by the replay. Data is proved only when DataVerified:
// for many event types (boot applications, firmware blobs, grub's file
// measurements) the digest is of something else than the data, which is
// then only a description and can be changed without breaking the replay.
// Events of the types whose digest must be the hash of their data
// (EV_SEPARATOR, EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG,
// EV_EFI_VARIABLE_AUTHORITY) are always DataVerified: VerifyEventLog
// refuses a log where one is not.
type Event struct {
	Index    int    // position in the log, the first record being 0 (the Spec ID header of a crypto-agile log); -1 for an event go-attestation added to work around known firmware bugs
	PCR      int    // PCR the event extended
	Type     string // event type, e.g. "EV_EFI_BOOT_SERVICES_APPLICATION"
	Digest   []byte // digest in bank EventLog.Hash
	Data     []byte // event data, at most MaxEventData bytes
	DataSize int    // size of the whole event data

	typ  attest.EventType
	full []byte      // the whole event data
	hash crypto.Hash // of bank EventLog.Hash
}

// DataVerified reports whether Digest is the bank's hash of the event data
// (without a trailing NUL; for grub's PCR 8 events, of the text after
// "grub_cmd: " or "kernel_cmdline: "). It hashes the data on every call.
func (e *Event) DataVerified() bool {
	if e.hash == 0 || len(e.Digest) != e.hash.Size() {
		return false
	}
	return dataVerified(e.hash, e.PCR, e.typ, e.full, e.Digest)
}

// Description says what the event measured, for people: a file path, a
// variable name, a string; it comes from the (unverified unless
// DataVerified) data, and is worked out on every call.
func (e *Event) Description() string {
	return describe(e.typ, e.full)
}

// SecureBootState is what the verified PCR 7 events say about Secure Boot.
type SecureBootState struct {
	Enabled               bool
	DMAProtectionDisabled bool     // the platform reported DMA protection supported but disabled
	Authorities           []string // subjects of the certificates that authorized boot components, in log order
	ForbiddenHashes       int      // SHA-256 hashes in dbx
}

// VerifyEventLog parses raw, a TCG PC Client binary event log (SHA-1 or
// crypto-agile, as in /sys/kernel/security/tpm0/binary_bios_measurements),
// and checks that it reproduces the PCR values the quotes proved. Each
// quote is one bank's VerifiedQuote from VerifyQuote; there must be at
// least one, and no bank twice. Checks, in order:
//
//  1. raw parses (go-attestation's ParseEventLog);
//  2. for every bank, replaying the log's digests for that bank reproduces
//     the quoted value of every PCR the log has events for and the quote
//     includes (go-attestation's Verify, with its workarounds for known
//     firmware bugs); PCRs the log has no events for are not judged here;
//  3. every verified event whose type requires its digest to be the hash
//     of its data (EV_SEPARATOR, EV_EFI_ACTION,
//     EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_VARIABLE_AUTHORITY) has such a
//     digest, so that the data the fleet reads from them is the data that
//     was measured.
//
// These are all the refusals. What only describes the verified events is
// worked out when a caller asks, from the verified bytes: the Secure Boot
// state (EventLog.SecureBoot), Event.DataVerified for the event types not
// listed in 3, and Event.Description.
//
// A log that parses without surprises and replays exactly is decided by a
// fast path of our own (one pass over the events for every bank; see
// tcglog.go) whose result is, field for field, the one go-attestation's
// path gives (a differential fuzz test holds it to that); every other log
// (refusals, workarounds, unusual digest algorithms) is decided by
// go-attestation as described above.
//
// Devices without an event log are judged by their PCR values alone; do
// not call VerifyEventLog for them. Refusals carry
// wire.ReasonEventLogInvalid; the public message names the PCR and, where
// it can be found, the event (index, type, description) that breaks the
// replay. An event that was changed without a digest of its data cannot
// be singled out: the hash chain only shows that the PCR's events as a
// whole are not what the TPM measured.
func VerifyEventLog(raw []byte, quotes ...*VerifiedQuote) (*EventLog, error) {
	if len(quotes) == 0 {
		return nil, errors.New("verifier: event log: no verified quote")
	}
	best := -1
	for i, q := range quotes {
		if q == nil {
			return nil, errors.New("verifier: event log: nil quote")
		}
		for _, o := range quotes[:i] {
			if o.Hash == q.Hash {
				return nil, fmt.Errorf("verifier: event log: bank %#04x quoted twice", q.Hash)
			}
		}
		if best < 0 || bankRank(q.Hash) > bankRank(quotes[best].Hash) {
			best = i
		}
	}
	if len(raw) == 0 {
		return nil, refuse(wire.ReasonEventLogInvalid, "event log empty", "event log: empty")
	}
	if out, ok := fastEventLog(raw, quotes, best); ok {
		return out, nil
	}
	return slowEventLog(raw, quotes, best)
}

// slowEventLog is VerifyEventLog on go-attestation's parser and replay,
// which decide every log the fast path (tcglog.go) does not: refusals and
// their explanations, firmware-bug workarounds, unusual digest algorithms.
func slowEventLog(raw []byte, quotes []*VerifiedQuote, best int) (*EventLog, error) {
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		return nil, refuse(wire.ReasonEventLogInvalid, "event log does not parse", "event log: %w", err)
	}
	offset := 0 // records before the first one go-attestation returns
	if isCryptoAgile(raw) {
		offset = 1
	}

	out := &EventLog{Hash: quotes[best].Hash}
	var bestEvents []attest.Event
	for i, q := range quotes {
		h, err := cryptoHash(q.Hash)
		if err != nil {
			return nil, fmt.Errorf("verifier: event log: %w", err)
		}
		pcrs := make([]attest.PCR, 0, len(q.PCRs))
		for _, idx := range slices.Sorted(maps.Keys(q.PCRs)) {
			pcrs = append(pcrs, attest.PCR{Index: idx, Digest: q.PCRs[idx], DigestAlg: h})
		}
		events, err := el.Verify(pcrs)
		if err != nil {
			return nil, replayRefusal(el, offset, q, h, err)
		}
		out.Banks = append(out.Banks, q.Hash)
		if i == best {
			bestEvents = events
		}
	}

	h, _ := cryptoHash(out.Hash)
	all := el.Events(attest.HashAlg(out.Hash))
	out.Events = make([]Event, 0, len(bestEvents))
	j := 0
	for _, e := range bestEvents {
		if !slices.Contains(out.PCRs, e.Index) {
			out.PCRs = append(out.PCRs, e.Index)
		}
		ev := newEvent(e, h)
		ev.Index = -1
		for k := j; k < len(all); k++ { // verified events are a subsequence of the log
			a := all[k]
			if a.Index == e.Index && a.Type == e.Type && bytes.Equal(a.Digest, e.Digest) && bytes.Equal(a.Data, e.Data) {
				ev.Index, j = k+offset, k+1
				break
			}
		}
		if dataBound(e.Type) && !ev.DataVerified() {
			return nil, refuse(wire.ReasonEventLogInvalid,
				fmt.Sprintf("event log altered: %s on PCR %d (%s): its data does not match its digest", ev.Label(), ev.PCR, PCRName(ev.PCR)),
				"event log: %s: data does not hash to digest %x", ev.Label(), ev.Digest)
		}
		out.Events = append(out.Events, ev)
	}

	slices.Sort(out.PCRs)
	if slices.Contains(out.PCRs, 7) { // else sb stays nil: "PCR 7 was not verified"
		out.sb = newLazySecureBoot(out.Events, func() (*attest.SecurebootState, string) { return parseSecureBoot(bestEvents) })
	}
	return out, nil
}

// parseSecureBoot is go-attestation's reading of the Secure Boot state
// from verified events as its Verify returns them, or why it has none.
func parseSecureBoot(events []attest.Event) (*attest.SecurebootState, string) {
	sb, err := attest.ParseSecurebootState(events)
	if err != nil {
		return nil, err.Error()
	}
	return sb, ""
}

// Label names the event for people: "event 23 (EV_EFI_BOOT_SERVICES_APPLICATION \EFI\BOOT\BOOTX64.EFI)".
func (e *Event) Label() string {
	var b strings.Builder
	if e.Index >= 0 {
		fmt.Fprintf(&b, "event %d (%s", e.Index, e.Type)
	} else {
		fmt.Fprintf(&b, "an added event (%s", e.Type)
	}
	if d := e.Description(); d != "" {
		b.WriteString(" ")
		b.WriteString(d)
	}
	b.WriteString(")")
	return b.String()
}

// replayRefusal explains a failed replay of bank q: the first PCR that
// failed, what the log replays to, and the event that breaks it when one
// can be found.
func replayRefusal(el *attest.EventLog, offset int, q *VerifiedQuote, h crypto.Hash, err error) error {
	var re attest.ReplayError
	if !errors.As(err, &re) || len(re.InvalidPCRs) == 0 {
		return refuse(wire.ReasonEventLogInvalid, "event log does not replay", "event log: %w", err)
	}
	bank := BankName(q.Hash)
	pcr := re.InvalidPCRs[0]
	all := el.Events(attest.HashAlg(q.Hash))
	var (
		n        int
		culprit  string
		locality byte
	)
	value := make([]byte, h.Size())
	for k, e := range all {
		if e.Index != pcr {
			continue
		}
		if e.Type == eventTypeNoAction {
			if pcr == 0 && len(e.Data) == 17 && bytes.HasPrefix(e.Data, []byte("StartupLocality")) {
				locality = e.Data[16]
				value[len(value)-1] = locality
			}
			continue
		}
		n++
		ev := newEvent(e, h)
		ev.Index = k + offset
		if culprit == "" && len(e.Digest) != h.Size() {
			culprit = fmt.Sprintf("%s has no %s digest", ev.Label(), bank)
		}
		if culprit == "" && dataBound(e.Type) && !ev.DataVerified() {
			culprit = fmt.Sprintf("%s does not match its data", ev.Label())
		}
		if len(e.Digest) == h.Size() {
			x := h.New()
			x.Write(value)
			x.Write(e.Digest)
			value = x.Sum(value[:0])
		}
	}
	msg := fmt.Sprintf("event log does not reproduce PCR %d (%s) in the %s bank: its %d events replay to %s, the quote proves %s",
		pcr, PCRName(pcr), bank, n, short(value), short(q.PCRs[pcr]))
	if culprit != "" {
		msg += "; " + culprit
	} else {
		msg += "; no single event can be blamed: events were changed, added or removed, or the log is from another boot"
	}
	if len(re.InvalidPCRs) > 1 {
		msg += fmt.Sprintf(" (PCRs failing: %v)", re.InvalidPCRs)
	}
	return refuse(wire.ReasonEventLogInvalid, msg, "event log: bank %s: %w", bank, err)
}

const eventTypeNoAction = attest.EventType(0x03)

// Event types whose digest must be the hash of their data.
func dataBound(t attest.EventType) bool {
	switch uint32(t) {
	case 0x04, // EV_SEPARATOR
		0x80000007, // EV_EFI_ACTION
		0x80000001, // EV_EFI_VARIABLE_DRIVER_CONFIG
		0x800000E0: // EV_EFI_VARIABLE_AUTHORITY
		return true
	}
	return false
}

// newEvent makes the Event for e, whose digest is in the bank of h; its
// Index is left to the caller.
func newEvent(e attest.Event, h crypto.Hash) Event {
	ev := Event{
		PCR:      e.Index,
		Type:     e.Type.String(),
		Digest:   e.Digest,
		Data:     e.Data,
		DataSize: len(e.Data),
		typ:      e.Type,
		full:     e.Data,
		hash:     h,
	}
	if len(ev.Data) > MaxEventData {
		ev.Data = ev.Data[:MaxEventData:MaxEventData]
	}
	return ev
}

// grubPrefixes start the data of grub's EV_IPL events on PCR 8; the digest
// covers what follows the prefix, without the trailing NUL.
var grubPrefixes = [][]byte{[]byte("grub_cmd: "), []byte("kernel_cmdline: ")}

// dataVerified reports whether digest, of an event of type t on pcr, is
// the hash h of its data d, allowing for the encodings real boot chains use.
func dataVerified(h crypto.Hash, pcr int, t attest.EventType, d, digest []byte) bool {
	switch uint32(t) {
	case 0x80000003, 0x80000004, 0x80000005, 0x80000008, 0x80000009:
		return false // images, firmware blobs, tables: measured in memory, the data only locates them
	}
	if uint32(t) == 0x04 && len(d) == 4 && binary.LittleEndian.Uint32(d) == 0 && string(digest) == separatorDigest(h) {
		return true // the usual separator: its hash is known
	}
	if digestOf(h, d, digest) {
		return true
	}
	trimmed := bytes.TrimSuffix(d, []byte{0})
	if len(trimmed) != len(d) && digestOf(h, trimmed, digest) {
		return true
	}
	switch uint32(t) {
	case 0x800000E0: // shim before 15.3 measures one byte too many in its authority events
		return len(d) > 0 && digestOf(h, d[:len(d)-1], digest)
	case 0x0D: // EV_IPL
		if pcr != 8 {
			return false
		}
		for _, p := range grubPrefixes {
			if rest, ok := bytes.CutPrefix(trimmed, p); ok {
				return digestOf(h, rest, digest)
			}
		}
	}
	return false
}

// separatorDigest returns the hash h of the data of a normal EV_SEPARATOR,
// four zero bytes, or "" for other hashes. A log has a separator for each
// of PCRs 0-7 in each bank: comparing with the known value spares hashing
// them (a separator that does not match is hashed as any other event).
func separatorDigest(h crypto.Hash) string {
	switch h {
	case crypto.SHA1:
		return "\x90\x69\xca\x78\xe7\x45\x0a\x28\x51\x73\x43\x1b\x3e\x52\xc5\xc2\x52\x99\xe4\x73"
	case crypto.SHA256:
		return "\xdf\x3f\x61\x98\x04\xa9\x2f\xdb\x40\x57\x19\x2d\xc4\x3d\xd7\x48\xea\x77\x8a\xdc\x52\xbc\x49\x8c\xe8\x05\x24\xc0\x14\xb8\x11\x19"
	case crypto.SHA384:
		return "\x39\x43\x41\xb7\x18\x2c\xd2\x27\xc5\xc6\xb0\x7e\xf8\x00\x0c\xdf\xd8\x61\x36\xc4\x29\x2b\x8e\x57\x65\x73\xad\x7e\xd9\xae\x41\x01\x9f\x58\x18\xb4\xb9\x71\xc9\xef\xfc\x60\xe1\xad\x9f\x12\x89\xf0"
	case crypto.SHA512:
		return "\xec\x2d\x57\x69\x1d\x9b\x2d\x40\x18\x2a\xc5\x65\x03\x20\x54\xb7\xd7\x84\xba\x96\xb1\x8b\xcb\x5b\xe0\xbb\x4e\x70\xe3\xfb\x04\x1e\xff\x58\x2c\x8a\xf6\x6e\xe5\x02\x56\x53\x9f\x21\x81\xd7\xf9\xe5\x36\x27\xc0\x18\x9d\xa7\xe7\x5a\x4d\x5e\xf1\x0e\xa9\x3b\x20\xb3"
	}
	return ""
}

func digestOf(h crypto.Hash, data, digest []byte) bool {
	switch h {
	case crypto.SHA1:
		d := sha1.Sum(data)
		return hmac.Equal(d[:], digest)
	case crypto.SHA256:
		d := sha256.Sum256(data)
		return hmac.Equal(d[:], digest)
	case crypto.SHA384:
		d := sha512.Sum384(data)
		return hmac.Equal(d[:], digest)
	case crypto.SHA512:
		d := sha512.Sum512(data)
		return hmac.Equal(d[:], digest)
	}
	return false
}

// describe extracts what an event measured from its (unverified) data.
func describe(t attest.EventType, data []byte) string {
	switch uint32(t) {
	case 0x04: // EV_SEPARATOR
		if bytes.Equal(data, []byte{0, 0, 0, 0}) {
			return "separator"
		}
		return "separator (error)"
	case 0x80000001, 0x80000002, 0x800000E0, 0x8000000C: // EFI variables
		if name, val, ok := efiVariable(data); ok {
			if name == "SecureBoot" && len(val) == 1 {
				return fmt.Sprintf("SecureBoot=%d", val[0])
			}
			return name
		}
	case 0x80000003, 0x80000004, 0x80000005: // EFI images
		if p := efiImagePath(data); p != "" {
			return p
		}
	case 0x80000006:
		return "GPT partition table"
	case 0x80000008, 0x80000009, 0x0B, 0x12:
		return ""
	case 0x08: // EV_S_CRTM_VERSION: usually UTF-16
		if len(data) >= 2 && len(data)%2 == 0 && data[1] == 0 {
			return text(utf16String(data))
		}
	}
	return text(string(data))
}

// text keeps a printable, bounded rendering of s, or "" when s is not text.
func text(s string) string {
	s = strings.TrimRight(s, "\x00")
	if s == "" {
		return ""
	}
	if plain(s) {
		return s
	}
	printable := 0
	for _, r := range s {
		if r >= 0x20 && r < 0x7f {
			printable++
		}
	}
	if printable*10 < len(s)*9 {
		return ""
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > 160 {
		s = string(r[:160]) + "…"
	}
	return s
}

// plain reports whether s is short printable ASCII.
func plain(s string) bool {
	if len(s) > 160 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// efiVariable parses UEFI_VARIABLE_DATA: GUID, name length, data length
// (both UINT64, in characters and bytes), UTF-16 name, data.
func efiVariable(b []byte) (name string, val []byte, ok bool) {
	if len(b) < 32 {
		return "", nil, false
	}
	nameLen, dataLen := binary.LittleEndian.Uint64(b[16:24]), binary.LittleEndian.Uint64(b[24:32])
	rest := b[32:]
	if nameLen > 256 || nameLen*2 > uint64(len(rest)) || dataLen > uint64(len(rest))-nameLen*2 {
		return "", nil, false
	}
	return utf16String(rest[:nameLen*2]), rest[nameLen*2 : nameLen*2+dataLen], true
}

// efiImagePath returns the file path nodes of an UEFI_IMAGE_LOAD_EVENT's
// device path (four UINT64 fields, then the path).
func efiImagePath(b []byte) string {
	if len(b) < 32 {
		return ""
	}
	n := binary.LittleEndian.Uint64(b[24:32])
	if n > uint64(len(b)-32) {
		return ""
	}
	dp := b[32 : 32+n]
	var parts []string
	for len(dp) >= 4 {
		typ, sub, l := dp[0], dp[1], int(binary.LittleEndian.Uint16(dp[2:4]))
		if l < 4 || l > len(dp) || typ == 0x7f {
			break
		}
		if typ == 4 && sub == 4 { // media device, file path
			parts = append(parts, utf16String(dp[4:l]))
		}
		dp = dp[l:]
	}
	return text(strings.Join(parts, ""))
}

// utf16String decodes little-endian UTF-16 up to the first NUL, an unpaired
// surrogate becoming U+FFFD (as utf16.Decode does).
func utf16String(b []byte) string {
	unit := func(i int) rune {
		if i+1 >= len(b) {
			return 0
		}
		return rune(binary.LittleEndian.Uint16(b[i:]))
	}
	out := make([]byte, 0, len(b)/2)
	for i := 0; ; i += 2 {
		c := unit(i)
		if c == 0 {
			break
		}
		if utf16.IsSurrogate(c) {
			if next := unit(i + 2); c < 0xdc00 && next >= 0xdc00 && next < 0xe000 {
				c = utf16.DecodeRune(c, next)
				i += 2
			} else {
				c = utf8.RuneError
			}
		}
		out = utf8.AppendRune(out, c)
	}
	return string(out)
}

// isCryptoAgile reports whether the log starts with a TCG_EfiSpecIDEvent
// ("Spec ID Event03"), which go-attestation consumes without returning it.
func isCryptoAgile(raw []byte) bool {
	const hdr = 4 + 4 + 20 + 4
	return len(raw) > hdr+16 && binary.LittleEndian.Uint32(raw[4:8]) == uint32(eventTypeNoAction) &&
		bytes.HasPrefix(raw[hdr:], []byte("Spec ID Event03\x00"))
}

// bankRank orders banks for choosing the events to return: SHA-256 first.
func bankRank(alg uint16) int {
	switch tpm2.TPMAlgID(alg) {
	case tpm2.TPMAlgSHA256:
		return 4
	case tpm2.TPMAlgSHA384:
		return 3
	case tpm2.TPMAlgSHA512:
		return 2
	case tpm2.TPMAlgSHA1:
		return 1
	}
	return 0
}

func cryptoHash(alg uint16) (crypto.Hash, error) {
	switch tpm2.TPMAlgID(alg) {
	case tpm2.TPMAlgSHA1:
		return crypto.SHA1, nil
	case tpm2.TPMAlgSHA256:
		return crypto.SHA256, nil
	case tpm2.TPMAlgSHA384:
		return crypto.SHA384, nil
	case tpm2.TPMAlgSHA512:
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("PCR bank hash %#04x not supported", alg)
}

// BankName is the lower-case name of a PCR bank ("sha256"), as reference
// policies spell it, or the algorithm ID in hex.
func BankName(alg uint16) string {
	switch tpm2.TPMAlgID(alg) {
	case tpm2.TPMAlgSHA1:
		return "sha1"
	case tpm2.TPMAlgSHA256:
		return "sha256"
	case tpm2.TPMAlgSHA384:
		return "sha384"
	case tpm2.TPMAlgSHA512:
		return "sha512"
	}
	return fmt.Sprintf("%#04x", alg)
}

// BankID is the TPM_ALG_ID of a bank named as BankName names it, or 0.
func BankID(name string) uint16 {
	for _, a := range []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512} {
		if BankName(uint16(a)) == name {
			return uint16(a)
		}
	}
	return 0
}

// PCRName says what a PCR measures on a PC Client platform (TCG PC Client
// Platform Firmware Profile; 8-15 as Linux boot loaders and systemd use
// them), for messages to operators.
func PCRName(pcr int) string {
	switch pcr {
	case 0:
		return "firmware code"
	case 1:
		return "firmware configuration"
	case 2:
		return "option ROMs and UEFI drivers"
	case 3:
		return "option ROM configuration"
	case 4:
		return "boot loader"
	case 5:
		return "boot configuration and GPT"
	case 6:
		return "platform manufacturer events"
	case 7:
		return "Secure Boot state"
	case 8:
		return "kernel command line (grub)"
	case 9:
		return "kernel and initrd (grub)"
	case 10:
		return "IMA runtime measurements"
	case 11:
		return "unified kernel image"
	case 12:
		return "kernel command line (systemd-stub)"
	case 13:
		return "system extensions"
	case 14:
		return "shim MOK and SBAT"
	case 15:
		return "system identity"
	case 16:
		return "debug"
	case 17, 18, 19, 20, 21, 22:
		return "dynamic root of trust"
	case 23:
		return "application support"
	}
	return "unknown PCR"
}

// short renders a digest for a message: its first 8 hex digits.
func short(b []byte) string {
	s := hex.EncodeToString(b)
	if len(s) > 8 {
		return s[:8] + "…"
	}
	return s
}
