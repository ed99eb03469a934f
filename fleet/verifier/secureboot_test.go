package verifier

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
)

// windowsPCR7 returns the PCR 7 events of go-attestation's Windows fixture
// (attest/testdata/windows_gcp_shielded_vm.json: Secure Boot enabled, with
// real PK, KEK, db and dbx), in log order.
func windowsPCR7(t testing.TB) []attest.Event {
	t.Helper()
	var dump struct{ Log struct{ Raw []byte } }
	if err := json.Unmarshal(eventlogtest.GoAttestation(t, "windows_gcp_shielded_vm.json"), &dump); err != nil {
		t.Fatal(err)
	}
	el, err := attest.ParseEventLog(dump.Log.Raw)
	if err != nil {
		t.Fatal(err)
	}
	var out []attest.Event
	for _, e := range el.Events(attest.HashSHA1) {
		if e.Index == 7 {
			out = append(out, e)
		}
	}
	return out
}

// variableName is the name of a UEFI_VARIABLE_DATA, "" when it has none.
func variableName(data []byte) string {
	if len(data) < 32 {
		return ""
	}
	n := binary.LittleEndian.Uint64(data[16:24])
	if n > 64 || 32+2*n > uint64(len(data)) {
		return ""
	}
	var b strings.Builder
	for i := range n {
		b.WriteRune(rune(binary.LittleEndian.Uint16(data[32+2*i:])))
	}
	return b.String()
}

// windowsVariable returns the value of the Windows fixture's Secure Boot
// variable name (its signature database for PK, KEK, db, dbx).
func windowsVariable(t testing.TB, name string) []byte {
	t.Helper()
	for _, e := range windowsPCR7(t) {
		if uint32(e.Type) == 0x80000001 && variableName(e.Data) == name {
			n, size := binary.LittleEndian.Uint64(e.Data[16:24]), binary.LittleEndian.Uint64(e.Data[24:32])
			return e.Data[32+2*n : 32+2*n+size]
		}
	}
	t.Fatalf("no variable %s", name)
	return nil
}

// windowsSecureBootLog is the Windows fixture's PCR 7 (its Secure Boot
// configuration: SecureBoot, PK, KEK, db, dbx, separator, authority) as a
// crypto-agile log, with edit applied to the data of each variable event,
// and the SHA-256 quote of PCR 7 it replays to: an event log the device's
// firmware could have measured, and the TPM quoted.
func windowsSecureBootLog(t testing.TB, edit func(name string, data []byte) []byte) ([]byte, *VerifiedQuote) {
	t.Helper()
	l := eventlogtest.New()
	for _, e := range windowsPCR7(t) {
		data := e.Data
		if uint32(e.Type) == 0x80000001 && edit != nil {
			data = edit(variableName(data), bytes.Clone(data))
		}
		l.Add(7, uint32(e.Type), data, nil)
	}
	q := quoteOf(l, tpm2.TPMAlgSHA256)
	for p := range q.PCRs {
		if p != 7 {
			delete(q.PCRs, p)
		}
	}
	return l.Bytes(), q
}

// withValue returns the UEFI_VARIABLE_DATA v with its value replaced.
func withValue(v, val []byte) []byte {
	n := binary.LittleEndian.Uint64(v[16:24])
	out := slices.Concat(v[:32+2*n], val)
	binary.LittleEndian.PutUint64(out[24:32], uint64(len(val)))
	return out
}

// guidBytes is the in-memory EFI_GUID of a GUID in registry form.
func guidBytes(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		t.Fatalf("GUID %q", s)
	}
	return slices.Concat([]byte{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]}, b[8:])
}

// rawList encodes a signature list header with the sizes given, whatever
// they are, followed by body.
func rawList(t testing.TB, typ string, listSize, headerSize, sigSize uint32, body ...[]byte) []byte {
	out := guidBytes(t, typ)
	out = binary.LittleEndian.AppendUint32(out, listSize)
	out = binary.LittleEndian.AppendUint32(out, headerSize)
	out = binary.LittleEndian.AppendUint32(out, sigSize)
	return append(out, bytes.Join(body, nil)...)
}

// owner is the SignatureOwner of the signatures the tests make.
var owner = []byte("sigil test owner")

// sha256Entry is an EFI_SIGNATURE_DATA of a SHA-256 list.
func sha256Entry(h []byte) []byte { return slices.Concat(owner, h) }

func digest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

// injectedDbx appends to db two SHA-256 signature lists whose sizes
// disagree: the first says it holds 68 bytes of 48-byte signatures (one
// signature, revoked, then 20 bytes), the second is a list without
// signatures whose 76-byte vendor header holds a whole list revoking
// injected. Firmware counts the signatures of a list by dividing its size,
// and never looks inside a vendor header: it revokes revoked only. A
// reader that reads the first list's signatures until they pass its size
// reads 28 bytes of the second list as a signature, then takes the list
// hidden in the header as the next list, and finds injected revoked.
func injectedDbx(t testing.TB, db, revoked, injected []byte) []byte {
	hidden := rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(injected))
	return slices.Concat(db,
		rawList(t, efiCertSHA256, 28+48+20, 0, 48, sha256Entry(revoked), slices.Concat(owner, []byte("pad!"))),
		rawList(t, efiCertSHA256, uint32(28+len(hidden)), uint32(len(hidden)), 48, hidden))
}

// TestSecureBootInjectedDbx verifies event logs whose dbx (or db) was
// crafted so that go-attestation reads hashes the firmware does not hold
// (GO-2026-5298 and its kin): the PCR 7 replay matches the quote, so only
// the reading of the signature databases can tell. The Secure Boot state
// is established only when the databases have the UEFI layout and
// go-attestation read from them what the specification reads; otherwise
// it is unknown, with the event and the reason.
func TestSecureBootInjectedDbx(t *testing.T) {
	realDbx, realDb := windowsVariable(t, "dbx"), windowsVariable(t, "db")
	revoked, injected := digest("a boot loader revoked by the firmware"), digest("a boot loader only the verifier thinks revoked")
	const realRevocations = 77 // SHA-256 hashes in the fixture's dbx
	replace := func(name string, val []byte) func(string, []byte) []byte {
		return func(n string, v []byte) []byte {
			if n == name {
				return withValue(v, val)
			}
			return v
		}
	}
	for _, c := range []struct {
		name      string
		edit      func(string, []byte) []byte
		forbidden int      // hashes in dbx when the state is established
		refusal   []string // parts of SecureBootErr when it is not
	}{
		{"real", nil, realRevocations, nil},
		{"dbx revocation added", replace("dbx", slices.Concat(realDbx, rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(revoked)))), realRevocations + 1, nil},
		// A vendor header shaped as a signature is not a signature: both
		// readers skip it (the go-attestation served here does).
		{"dbx vendor header shaped as a revocation",
			replace("dbx", slices.Concat(realDbx, rawList(t, efiCertSHA256, 28+48+48, 48, 48, sha256Entry(injected), sha256Entry(revoked)))),
			realRevocations + 1, nil},
		{"dbx revocation injected across lists", replace("dbx", injectedDbx(t, realDbx, revoked, injected)), 0,
			[]string{"event 5 (EV_EFI_VARIABLE_DRIVER_CONFIG dbx): signature list 1 (at byte 3724 of dbx): its 68 bytes of signatures are not a whole number of 48-byte signatures",
				"judged only as the UEFI specification lays them out"}},
		{"dbx revocation of 64 bytes", replace("dbx", slices.Concat(realDbx, rawList(t, efiCertSHA256, 28+80, 0, 80, sha256Entry(injected), revoked))), 0,
			[]string{"event 5 (EV_EFI_VARIABLE_DRIVER_CONFIG dbx)", "SignatureSize 80 is not the 48 bytes of a signature of type " + efiCertSHA256}},
		{"dbx shorter than a list header", replace("dbx", []byte("revoked")), 0,
			[]string{"dbx", "7 bytes left, short of the 28-byte list header"}},
		{"dbx under another vendor", func(n string, v []byte) []byte {
			if n == "dbx" {
				copy(v, guidBytes(t, efiGlobalVariable))
			}
			return v
		}, 0, []string{"variable dbx has vendor GUID " + efiGlobalVariable + ", not " + efiImageSecurityDatabase}},
		{"db hash injected across lists", replace("db", injectedDbx(t, realDb, revoked, injected)), 0,
			[]string{"event 4 (EV_EFI_VARIABLE_DRIVER_CONFIG db): signature list 3 (at byte 4708 of db)", "not a whole number"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw, q := windowsSecureBootLog(t, c.edit)
			for path, verify := range map[string]func() (*EventLog, error){
				"fast path": func() (*EventLog, error) {
					el, ok := fastEventLog(raw, []*VerifiedQuote{q}, 0)
					if !ok {
						return nil, errors.New("not decided by the fast path")
					}
					return el, nil
				},
				"go-attestation path": func() (*EventLog, error) { return slowEventLog(raw, []*VerifiedQuote{q}, 0) },
			} {
				el, err := verify()
				if err != nil {
					t.Fatalf("%s: the log does not verify: %v", path, err)
				}
				sb, why := el.SecureBoot(), el.SecureBootErr()
				if c.refusal == nil {
					if sb == nil || !sb.Enabled || sb.ForbiddenHashes != c.forbidden || why != "" {
						t.Fatalf("%s: state %+v (%s), want enabled with %d forbidden hashes", path, sb, why, c.forbidden)
					}
					continue
				}
				if sb != nil {
					t.Fatalf("%s: state %+v established (%d forbidden hashes) from a database the firmware reads otherwise", path, sb, sb.ForbiddenHashes)
				}
				for _, part := range c.refusal {
					if !strings.Contains(why, part) {
						t.Fatalf("%s: SecureBootErr %q, want it to say %q", path, why, part)
					}
				}
			}
		})
	}
}
