package verifier

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"unicode/utf16"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
)

// The fast path of VerifyEventLog (tcglog.go) is held to go-attestation's
// path (slowEventLog): whenever it decides a log, its result must equal,
// field for field, what go-attestation's path returns for the same log and
// quotes. Logs it does not decide go to go-attestation anyway.

// logCase is an event log and the banks to quote it in.
type logCase struct {
	name  string
	raw   []byte
	banks []tpm2.TPMAlgID
	pcrs  []int
}

// logCases are real logs (Ubuntu, Windows), synthetic crypto-agile logs
// with and without a Secure Boot state, and a SHA-1 format log.
func logCases(t testing.TB) []logCase {
	cases := []logCase{{"ubuntu", eventlogtest.Ubuntu(t), []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1}, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}}}

	var dump struct{ Log struct{ Raw []byte } }
	if err := json.Unmarshal(eventlogtest.GoAttestation(t, "windows_gcp_shielded_vm.json"), &dump); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, logCase{"windows", dump.Log.Raw, []tpm2.TPMAlgID{tpm2.TPMAlgSHA1}, []int{0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14}})

	sb := eventlogtest.New()
	sb.Add(0, 3, append([]byte("StartupLocality\x00"), 3), nil)
	sb.Add(0, 0x08, []byte("firmware 1.0"), nil)
	sb.Add(7, 0x80000001, efiVar("SecureBoot", []byte{1}), nil)
	sb.Add(2, 0x80000004, imageLoad(`\driver.efi`), []byte("driver"))
	sb.Add(7, 0x04, []byte{0, 0, 0, 0}, nil)
	sb.Add(2, 0x04, []byte{0, 0, 0, 0}, nil)
	sb.Add(8, 0x0D, []byte("grub_cmd: linux /vmlinuz\x00"), []byte("linux /vmlinuz"))
	sb.Add(4, 0x80000003, imageLoad(`\EFI\BOOT\BOOTX64.EFI`), []byte("shim"))
	sb.Add(7, 0x800000E0, efiVar("db", []byte("not a signature list")), nil)
	cases = append(cases, logCase{"secure boot", sb.Bytes(), []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1}, []int{0, 2, 4, 7, 8}})

	action := eventlogtest.New()
	for i := range 12 {
		action.Add([]int{0, 7, 23}[i%3], []uint32{0x80000007, 0x04, 0x0D, 0x80000001}[i%4], fmt.Appendf(nil, "event %d", i), nil)
	}
	cases = append(cases, logCase{"EFI action on PCR 7", action.Bytes(), []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}, []int{0, 7, 23}})

	var sha1Log bytes.Buffer
	for i, data := range []string{"crtm", "bios", "separator", "config", "loader"} {
		d := sha1.Sum([]byte(data))
		binary.Write(&sha1Log, binary.LittleEndian, []uint32{uint32(i % 3), 0x0D})
		sha1Log.Write(d[:])
		binary.Write(&sha1Log, binary.LittleEndian, uint32(len(data)))
		sha1Log.WriteString(data)
	}
	cases = append(cases, logCase{"SHA-1 format", sha1Log.Bytes(), []tpm2.TPMAlgID{tpm2.TPMAlgSHA1}, []int{0, 1, 2}})
	return cases
}

// referenceQuote replays raw with go-attestation's parser and test code to
// the values of pcrs in bank, as a TPM that measured the log would have
// quoted them; PCRs the log has no events for get a fixed value.
func referenceQuote(raw []byte, bank tpm2.TPMAlgID, pcrs []int) *VerifiedQuote {
	h, _ := cryptoHash(uint16(bank))
	q := &VerifiedQuote{Hash: uint16(bank), PCRs: map[int][]byte{}}
	for _, p := range pcrs {
		q.PCRs[p] = bytes.Repeat([]byte{byte(p)}, h.Size())
	}
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		return q
	}
	values := map[int][]byte{}
	locality := map[int]byte{}
	for _, e := range el.Events(attest.HashAlg(bank)) {
		if e.Type == eventTypeNoAction {
			if e.Index == 0 && len(e.Data) == 17 && bytes.HasPrefix(e.Data, []byte("StartupLocality")) {
				locality[0] = e.Data[16]
			}
			continue
		}
		if len(e.Digest) != h.Size() {
			continue
		}
		v := values[e.Index]
		if v == nil {
			v = make([]byte, h.Size())
			v[len(v)-1] = locality[e.Index]
		}
		x := h.New()
		x.Write(v)
		x.Write(e.Digest)
		values[e.Index] = x.Sum(nil)
	}
	for _, p := range pcrs {
		if v, ok := values[p]; ok {
			q.PCRs[p] = v
		}
	}
	return q
}

// agreeEventLog fails unless the fast path, when it decides raw, returns
// what go-attestation's path returns, and VerifyEventLog returns exactly
// what go-attestation's path does. It reports whether the fast path
// decided.
func agreeEventLog(t testing.TB, raw []byte, quotes []*VerifiedQuote) bool {
	t.Helper()
	best := 0
	for i, q := range quotes {
		if bankRank(q.Hash) > bankRank(quotes[best].Hash) {
			best = i
		}
	}
	want, wantErr := slowEventLog(raw, quotes, best)
	fast, ok := fastEventLog(raw, quotes, best)
	if ok && (wantErr != nil || !reflect.DeepEqual(viewLog(fast), viewLog(want))) {
		t.Fatalf("log %x:\nfast path decided %+v\ngo-attestation: %+v, %v", raw, viewLog(fast), viewLog(want), wantErr)
	}
	if len(raw) == 0 {
		return ok
	}
	got, err := VerifyEventLog(raw, quotes...)
	if fmt.Sprint(err) != fmt.Sprint(wantErr) || !reflect.DeepEqual(viewLog(got), viewLog(want)) {
		t.Fatalf("log %x:\nVerifyEventLog %+v, %v\ngo-attestation %+v, %v", raw, viewLog(got), err, viewLog(want), wantErr)
	}
	return ok
}

// logView is everything an EventLog tells its callers: its fields and
// what its methods and its events' methods return.
type logView struct {
	Hash          uint16
	Banks         []uint16
	PCRs          []int
	Events        []eventView
	SecureBoot    *SecureBootState
	SecureBootErr string
}

type eventView struct {
	Event
	DataVerified bool
	Description  string
	Label        string
}

// viewLog works out everything el tells (nil for nil), the lazily
// computed parts included.
func viewLog(el *EventLog) *logView {
	if el == nil {
		return nil
	}
	v := &logView{Hash: el.Hash, Banks: el.Banks, PCRs: el.PCRs, SecureBoot: el.SecureBoot(), SecureBootErr: el.SecureBootErr()}
	for _, e := range el.Events {
		v.Events = append(v.Events, eventView{e, e.DataVerified(), e.Description(), e.Label()})
	}
	return v
}

// quotesFor quotes raw in each bank of c, sometimes with one value wrong.
func quotesFor(r *rand.Rand, raw []byte, c logCase) []*VerifiedQuote {
	var qs []*VerifiedQuote
	for _, b := range c.banks {
		q := referenceQuote(raw, b, c.pcrs)
		if r != nil && r.IntN(8) == 0 {
			p := c.pcrs[r.IntN(len(c.pcrs))]
			q.PCRs[p] = bytes.Clone(q.PCRs[p])
			q.PCRs[p][0] ^= 1
		}
		qs = append(qs, q)
	}
	return qs
}

// TestEventLogFastPathAgrees runs the differential check on the cases, on
// single banks of them, and on seeded random mutations.
func TestEventLogFastPathAgrees(t *testing.T) {
	n := 600
	if testing.Short() {
		n = 100
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, c := range logCases(t) {
		t.Run(c.name, func(t *testing.T) {
			if !agreeEventLog(t, c.raw, quotesFor(nil, c.raw, c)) {
				t.Fatal("the fast path does not decide the unaltered log")
			}
			for _, b := range c.banks {
				one := c
				one.banks = []tpm2.TPMAlgID{b}
				agreeEventLog(t, c.raw, quotesFor(nil, c.raw, one))
			}
			decided := 0
			for range n {
				raw := mutate(r, c.raw)
				if agreeEventLog(t, raw, quotesFor(r, raw, c)) {
					decided++
				}
			}
			t.Logf("%d mutations, %d decided by the fast path", n, decided)
			if decided == 0 || decided == n {
				t.Fatalf("the fast path decided %d of %d mutated logs: both paths must be exercised", decided, n)
			}
		})
	}
}

// TestEventLogSecureBootErrNamesEvent checks that a Secure Boot state the
// fast path cannot establish is explained as go-attestation explains it,
// naming the event by its place in the log.
func TestEventLogSecureBootErrNamesEvent(t *testing.T) {
	var c logCase
	for _, lc := range logCases(t) {
		if lc.name == "EFI action on PCR 7" {
			c = lc
		}
	}
	qs := quotesFor(nil, c.raw, c)
	fast, ok := fastEventLog(c.raw, qs, 0)
	if !ok {
		t.Fatal("the fast path does not decide the log")
	}
	// Record 2 is the first on PCR 7: a separator whose data is not zero.
	if want := "invalid separator data at event 2: [101 118 101 110 116 32 49]"; fast.SecureBoot() != nil || fast.SecureBootErr() != want {
		t.Fatalf("secure boot %+v, %q", fast.SecureBoot(), fast.SecureBootErr())
	}
}

// FuzzEventLogFastPath holds the fast path to go-attestation's on logs the
// fuzzer makes, quoted as a TPM that measured them would quote them.
func FuzzEventLogFastPath(f *testing.F) {
	cases := logCases(f)
	for i, c := range cases {
		f.Add(uint8(i), c.raw)
	}
	f.Fuzz(func(t *testing.T, which uint8, raw []byte) {
		c := cases[int(which)%len(cases)]
		agreeEventLog(t, raw, quotesFor(nil, raw, c))
	})
}

// TestUTF16String holds utf16String to utf16.Decode, unpaired surrogates
// and odd lengths included.
func TestUTF16String(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 20000 {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = []byte{0, 'a', 0xd8, 0xdb, 0xdc, 0xdf, 0xff, 0x41}[r.IntN(8)]
		}
		var u []uint16
		for i := 0; i+1 < len(b); i += 2 {
			c := binary.LittleEndian.Uint16(b[i:])
			if c == 0 {
				break
			}
			u = append(u, c)
		}
		if got, want := utf16String(b), string(utf16.Decode(u)); got != want {
			t.Fatalf("utf16String(%x) = %q, utf16.Decode gives %q", b, got, want)
		}
	}
}

// TestEventLogLazySecureBoot checks that the Secure Boot state, worked out
// on the first call, comes from the bytes VerifyEventLog verified (not the
// caller's buffer, changed afterwards), is the same for concurrent
// callers, and is what go-attestation's path establishes: a state (Windows)
// and each kind of explanation (the blanked copy's and "not verified").
func TestEventLogLazySecureBoot(t *testing.T) {
	for _, c := range logCases(t) {
		t.Run(c.name, func(t *testing.T) {
			qs := quotesFor(nil, c.raw, c)
			want, err := slowEventLog(c.raw, qs, 0)
			if err != nil {
				t.Fatal(err)
			}
			raw := bytes.Clone(c.raw)
			el, err := VerifyEventLog(raw, qs...)
			if err != nil {
				t.Fatal(err)
			}
			for i := range raw {
				raw[i] = 0xa5 // the caller reuses its buffer
			}
			for _, q := range qs {
				for p := range q.PCRs {
					q.PCRs[p] = nil // and its quotes
				}
			}
			type result struct {
				sb  *SecureBootState
				msg string
			}
			results := make(chan result, 8)
			for range cap(results) {
				go func() { results <- result{el.SecureBoot(), el.SecureBootErr()} }()
			}
			for range cap(results) {
				r := <-results
				if !reflect.DeepEqual(r.sb, want.SecureBoot()) || r.msg != want.SecureBootErr() {
					t.Fatalf("secure boot %+v %q, go-attestation's path %+v %q", r.sb, r.msg, want.SecureBoot(), want.SecureBootErr())
				}
			}
			if (el.SecureBoot() == nil) == (el.SecureBootErr() == "") {
				t.Fatalf("secure boot %+v with explanation %q", el.SecureBoot(), el.SecureBootErr())
			}
			t.Logf("secure boot %+v %q", el.SecureBoot(), el.SecureBootErr())
		})
	}
	var zero EventLog
	if zero.SecureBoot() != nil || zero.SecureBootErr() != "PCR 7 was not verified" {
		t.Fatalf("zero EventLog: %+v %q", zero.SecureBoot(), zero.SecureBootErr())
	}
}

// TestSeparatorDigest holds the known separator digests to the hashes.
func TestSeparatorDigest(t *testing.T) {
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		x := h.New()
		x.Write([]byte{0, 0, 0, 0})
		if got := separatorDigest(h); got != string(x.Sum(nil)) {
			t.Errorf("%v: %x", h, got)
		}
		// A separator whose digest is another one is still judged.
		if dataVerified(h, 0, 0x04, []byte{0, 0, 0, 0}, make([]byte, h.Size())) {
			t.Errorf("%v: a zero digest verified", h)
		}
	}
	if separatorDigest(crypto.MD5) != "" {
		t.Error("MD5 separator digest")
	}
}
