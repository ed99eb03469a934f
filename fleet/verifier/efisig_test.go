package verifier

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-attestation/attest"
)

// guidOf is the in-memory EFI_GUID of a GUID in registry form.
func guidOf(t testing.TB, s string) efiGUID {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		t.Fatalf("GUID %q", s)
	}
	var g efiGUID
	binary.LittleEndian.PutUint32(g[0:4], binary.BigEndian.Uint32(b[0:4]))
	binary.LittleEndian.PutUint16(g[4:6], binary.BigEndian.Uint16(b[4:6]))
	binary.LittleEndian.PutUint16(g[6:8], binary.BigEndian.Uint16(b[6:8]))
	copy(g[8:], b[8:])
	if g.String() != s {
		t.Fatalf("GUID %q reads back as %q", s, g)
	}
	return g
}

// appendSignatureList appends the encoding of l (l.Offset is not encoded):
// for a list parseSignatureDatabase returned, the bytes it was read from.
func appendSignatureList(b []byte, l signatureList) []byte {
	size := signatureListHeaderSize + len(l.Header) + len(l.Signatures)*l.Size
	b = append(b, l.Type[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(size))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(l.Header)))
	b = binary.LittleEndian.AppendUint32(b, uint32(l.Size))
	b = append(b, l.Header...)
	for _, s := range l.Signatures {
		b = append(b, s.Owner[:]...)
		b = append(b, s.Data...)
	}
	return b
}

// theirDatabase is go-attestation's reading of data as the dbx variable:
// the certificates and SHA-256 hashes it takes from it, or its refusal.
func theirDatabase(t testing.TB, data []byte) (*attest.SecurebootState, error) {
	t.Helper()
	ev := dbxEvent(t, data)
	return attest.ParseSecurebootState([]attest.Event{ev})
}

// dbxEvent is a verified PCR 7 event that measured data as dbx.
func dbxEvent(t testing.TB, data []byte) attest.Event {
	v := efiVar("dbx", data)
	copy(v, guidBytes(t, efiImageSecurityDatabase))
	d := sha256.Sum256(v)
	return attest.Event{Index: 7, Type: 0x80000001, Data: v, Digest: d[:]}
}

// judged is what secureBootState makes of go-attestation's reading of data
// as dbx, the only variable measured.
func judged(t testing.TB, data []byte) (*SecureBootState, string) {
	t.Helper()
	ev := dbxEvent(t, data)
	sb, err := attest.ParseSecurebootState([]attest.Event{ev})
	if err != nil {
		return nil, err.Error()
	}
	e := newEvent(ev, crypto.SHA256)
	e.Index = 1
	return secureBootState([]Event{e}, sb)
}

func TestParseSignatureDatabase(t *testing.T) {
	h1, h2, injected := digest("revoked boot loader 1"), digest("revoked boot loader 2"), digest("injected")
	vendor := sha256Entry(injected) // vendor header bytes shaped as a signature
	for _, c := range []struct {
		name   string
		data   []byte
		hashes [][]byte // what the specification reads
		header []byte   // of the first list
		reason string   // of the refusal, when not ""
	}{
		{"empty database", nil, nil, nil, ""},
		{"one list", rawList(t, efiCertSHA256, 28+96, 0, 48, sha256Entry(h1), sha256Entry(h2)), [][]byte{h1, h2}, []byte{}, ""},
		{"two lists", slices.Concat(rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(h1)), rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(h2))),
			[][]byte{h1, h2}, []byte{}, ""},
		// The vendor header is SignatureHeaderSize bytes before the
		// signatures: never a signature, whatever it looks like.
		{"vendor header", rawList(t, efiCertSHA256, 28+48+48, 48, 48, vendor, sha256Entry(h1)), [][]byte{h1}, vendor, ""},
		{"odd vendor header", rawList(t, efiCertSHA256, 28+5+48, 5, 48, []byte("abcde"), sha256Entry(h1)), [][]byte{h1}, []byte("abcde"), ""},

		{"garbage shorter than a header", []byte("not a signature list"), nil, nil, "20 bytes left, short of the 28-byte list header"},
		{"trailing bytes", append(rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(h1)), 0), nil, nil, "1 bytes left"},
		{"list size below header", rawList(t, efiCertSHA256, 27, 0, 48, sha256Entry(h1)), nil, nil, "SignatureListSize 27 is smaller"},
		{"list size past the end", rawList(t, efiCertSHA256, 28+49, 0, 48, sha256Entry(h1)), nil, nil, "SignatureListSize 77 runs past the 76 bytes left"},
		{"list size 4 GiB", rawList(t, efiCertSHA256, 0xffffffff, 0, 48, sha256Entry(h1)), nil, nil, "runs past"},
		{"header past the list", rawList(t, efiCertSHA256, 28+48, 49, 48, sha256Entry(h1)), nil, nil, "SignatureHeaderSize 49 runs past the 48 bytes"},
		{"header is the whole list", rawList(t, efiCertSHA256, 28+48, 48, 48, vendor), nil, nil, "the list has no signatures"},
		{"signature without data", rawList(t, efiCertSHA256, 28+48, 0, 16, sha256Entry(h1)), nil, nil, "SignatureSize 16 leaves no room"},
		{"signature size 0", rawList(t, efiCertSHA256, 28+48, 0, 0, sha256Entry(h1)), nil, nil, "SignatureSize 0 leaves no room"},
		{"no signatures", rawList(t, efiCertSHA256, 28, 0, 48), nil, nil, "the list has no signatures"},
		{"signatures do not fill the list", slices.Concat(rawList(t, efiCertSHA256, 28+48+20, 0, 48, sha256Entry(h1), make([]byte, 20))),
			nil, nil, "its 68 bytes of signatures are not a whole number of 48-byte signatures"},
		{"SHA-256 signature of 64 bytes", rawList(t, efiCertSHA256, 28+80, 0, 80, sha256Entry(h1), injected), nil, nil,
			"SignatureSize 80 is not the 48 bytes of a signature of type " + efiCertSHA256},
		{"second list bad", slices.Concat(rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(h1)), rawList(t, efiCertSHA256, 28, 0, 48)),
			nil, nil, "EFI signature list 1 (at byte 76): the list has no signatures"},
	} {
		t.Run(c.name, func(t *testing.T) {
			lists, err := parseSignatureDatabase(c.data)
			if c.reason != "" {
				var le *signatureListError
				if !errors.As(err, &le) || !strings.Contains(err.Error(), c.reason) || lists != nil {
					t.Fatalf("lists %v, error %v; want a *signatureListError saying %q", lists, err, c.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var hashes [][]byte
			var enc []byte
			for i, l := range lists {
				if l.Type.String() != efiCertSHA256 {
					t.Fatalf("list %d type %s", i, l.Type)
				}
				for _, s := range l.Signatures {
					if !bytes.Equal(s.Owner[:], owner) {
						t.Fatalf("owner %x", s.Owner)
					}
					hashes = append(hashes, s.Data)
				}
				enc = appendSignatureList(enc, l)
			}
			if !slices.EqualFunc(hashes, c.hashes, bytes.Equal) || !bytes.Equal(enc, c.data) {
				t.Fatalf("hashes %x, want %x; re-encoded %x", hashes, c.hashes, enc)
			}
			if len(lists) > 0 && !bytes.Equal(lists[0].Header, c.header) {
				t.Fatalf("header %x, want %x", lists[0].Header, c.header)
			}
		})
	}
}

// TestSignatureDatabaseDifferential holds the parser to go-attestation's on
// the layouts GO-2026-5298 is about. Without a vendor header the two agree.
// With one, the specification puts the signatures after it: the parser
// reads exactly those, and go-attestation either does too (the v0.6.4
// served here skips the header) or, as the advisory describes, reads the
// header as signatures, and then secureBootState refuses to judge.
// Where the sizes of a list contradict each other, go-attestation reads
// signatures across list boundaries (the desynchronised read of
// injectedDbx) or of the wrong size; the parser refuses the database and
// secureBootState with it.
func TestSignatureDatabaseDifferential(t *testing.T) {
	h1, injected := digest("revoked boot loader"), digest("injected")
	for _, c := range []struct {
		name   string
		data   []byte
		spec   [][]byte // nil: the layout is inconsistent
		theirs [][]byte // what go-attestation v0.6.4 reads
	}{
		{"no header", rawList(t, efiCertSHA256, 28+48, 0, 48, sha256Entry(h1)), [][]byte{h1}, [][]byte{h1}},
		{"vendor header shaped as a signature", rawList(t, efiCertSHA256, 28+48+48, 48, 48, sha256Entry(injected), sha256Entry(h1)), [][]byte{h1}, [][]byte{h1}},
		// go-attestation reads a second signature of the first list from its
		// 20 last bytes and the second list's header, then the list hidden
		// in the second list's vendor header.
		{"desynchronised lists", injectedDbx(t, nil, h1, injected), nil,
			[][]byte{h1, slices.Concat([]byte("pad!"), rawList(t, efiCertSHA256, 28+76, 76, 48)), injected}},
		{"oversized SHA-256 signature", rawList(t, efiCertSHA256, 28+80, 0, 80, sha256Entry(injected), make([]byte, 32)), nil,
			[][]byte{slices.Concat(injected, make([]byte, 32))}},
	} {
		t.Run(c.name, func(t *testing.T) {
			lists, err := parseSignatureDatabase(c.data)
			var ours [][]byte
			for _, l := range lists {
				for _, s := range l.Signatures {
					ours = append(ours, s.Data)
				}
			}
			if c.spec == nil && err == nil || c.spec != nil && (err != nil || !slices.EqualFunc(ours, c.spec, bytes.Equal)) {
				t.Fatalf("parser read %x (%v), want %x", ours, err, c.spec)
			}
			sb, err := theirDatabase(t, c.data)
			if err != nil {
				t.Fatalf("go-attestation refuses: %v", err)
			}
			if c.theirs != nil && !slices.EqualFunc(sb.ForbiddenHashes, c.theirs, bytes.Equal) {
				t.Fatalf("go-attestation read %x, want %x", sb.ForbiddenHashes, c.theirs)
			}
			state, why := judged(t, c.data)
			switch {
			case c.spec == nil && state != nil:
				t.Fatalf("inconsistent database judged: %+v", state)
			case c.spec == nil:
				t.Logf("refused: %s", why)
			case state == nil || state.ForbiddenHashes != len(c.spec):
				t.Fatalf("state %+v (%s), want %d forbidden hashes", state, why, len(c.spec))
			}
		})
	}
}

// FuzzSignatureDatabase holds parseSignatureDatabase to the specification
// (what it accepts is exactly the encoding of what it returns) and to
// go-attestation (on what both accept, the same certificates and hashes;
// what go-attestation alone accepts is not judged).
func FuzzSignatureDatabase(f *testing.F) {
	h1, injected := digest("revoked boot loader"), digest("injected")
	f.Add([]byte{})
	f.Add(rawList(f, efiCertSHA256, 28+48, 0, 48, sha256Entry(h1)))
	f.Add(rawList(f, efiCertSHA256, 28+48+48, 48, 48, sha256Entry(injected), sha256Entry(h1)))
	f.Add(rawList(f, efiCertSHA256, 28+48+20, 0, 48, sha256Entry(h1), make([]byte, 20)))
	f.Add(injectedDbx(f, nil, h1, injected))
	f.Add(rawList(f, efiCertX509, 28+16+3, 0, 16+3, owner, []byte{0x30, 0x01, 0x00}))
	f.Add(rawList(f, efiCertSHA1, 28+36, 0, 36, owner, h1[:20]))
	for _, name := range []string{"PK", "db", "dbx"} {
		f.Add(windowsVariable(f, name))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lists, err := parseSignatureDatabase(data)
		var le *signatureListError
		if err != nil && (!errors.As(err, &le) || lists != nil) {
			t.Fatalf("lists %v, error %v", lists, err)
		}
		var enc []byte
		var certs, hashes [][]byte
		other := false // a type go-attestation does not read, or an X.509 entry that is not a certificate
		for _, l := range lists {
			enc = appendSignatureList(enc, l)
			for _, s := range l.Signatures {
				switch l.Type.String() {
				case efiCertX509:
					if _, err := x509.ParseCertificate(s.Data); err != nil {
						other = true
					}
					certs = append(certs, s.Data)
				case efiCertSHA256:
					hashes = append(hashes, s.Data)
				default:
					other = true
				}
			}
		}
		if err == nil && !bytes.Equal(enc, data) {
			t.Fatalf("accepted %x, which re-encodes as %x", data, enc)
		}
		theirs, theirErr := theirDatabase(t, data)
		state, why := judged(t, data)
		switch {
		case err == nil && theirErr == nil:
			same := len(theirs.ForbiddenKeys) == len(certs) && slices.EqualFunc(theirs.ForbiddenHashes, hashes, bytes.Equal)
			for i := 0; same && i < len(certs); i++ {
				same = bytes.Equal(theirs.ForbiddenKeys[i].Raw, certs[i])
			}
			if !same {
				t.Fatalf("parser reads %d certificates and hashes %x, go-attestation %d and %x", len(certs), hashes, len(theirs.ForbiddenKeys), theirs.ForbiddenHashes)
			}
			if state == nil || state.ForbiddenHashes != len(hashes) {
				t.Fatalf("state %+v (%s), want %d forbidden hashes", state, why, len(hashes))
			}
		case err == nil && !other:
			t.Fatalf("go-attestation refuses a database of X.509 certificates and SHA-256 hashes: %v", theirErr)
		case state != nil:
			t.Fatalf("judged a database one reader refuses: %+v (parser: %v; go-attestation: %v)", state, err, theirErr)
		}
	})
}

// FuzzSignatureListVendorHeader builds SHA-256 lists with a vendor header
// of any size and content (often shaped as signatures): the parser reads
// exactly the signatures after it, go-attestation agrees where there is no
// header, and secureBootState never judges a reading other than the
// parser's.
func FuzzSignatureListVendorHeader(f *testing.F) {
	f.Add([]byte{}, slices.Concat(digest("a"), digest("b")))
	f.Add(sha256Entry(digest("injected")), digest("a"))
	f.Add(bytes.Repeat(sha256Entry(digest("injected")), 3), slices.Concat(digest("a"), digest("b"), digest("c")))
	f.Add([]byte("x"), digest("a"))
	f.Fuzz(func(t *testing.T, header, hashData []byte) {
		n := len(hashData) / 32
		if n == 0 || len(header) > 4096 {
			return
		}
		l := signatureList{Type: guidOf(t, efiCertSHA256), Header: header, Size: 48}
		var want [][]byte
		for i := range n {
			h := hashData[32*i : 32*i+32]
			l.Signatures = append(l.Signatures, signatureData{Data: h})
			want = append(want, h)
		}
		data := appendSignatureList(nil, l)
		lists, err := parseSignatureDatabase(data)
		if err != nil || len(lists) != 1 || !bytes.Equal(lists[0].Header, header) {
			t.Fatalf("lists %+v, error %v", lists, err)
		}
		var got [][]byte
		for _, s := range lists[0].Signatures {
			got = append(got, s.Data)
		}
		if !slices.EqualFunc(got, want, bytes.Equal) {
			t.Fatalf("parser reads %x, want %x", got, want)
		}
		theirs, err := theirDatabase(t, data)
		agree := err == nil && slices.EqualFunc(theirs.ForbiddenHashes, want, bytes.Equal)
		if len(header) == 0 && !agree {
			t.Fatalf("without a vendor header go-attestation reads %v (%v), want %x", theirs, err, want)
		}
		state, why := judged(t, data)
		if agree != (state != nil) || state != nil && state.ForbiddenHashes != n {
			t.Fatalf("go-attestation agrees %v; state %+v (%s)", agree, state, why)
		}
	})
}
