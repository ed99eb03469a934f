package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzKey is a fixed test key, so that the seed corpus holds checkpoints
// that verify.
const fuzzKey = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkdHaNsKGXdqvcD7S
j98HzFS8jNL6EzJjSQRzjzeXBFmhRANCAAQshDtostmke3Q9Bc39z7u006WNU2/i
pYzYy9ai/6krhg41r68ewC+spYN+AknV5KNF8DxpxdB5zE+XyC9Kad7i
-----END PRIVATE KEY-----
`

func parseFuzzKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	b, _ := pem.Decode([]byte(fuzzKey))
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// seedExport is a small signed export.
func seedExport(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	l := openLog(t, filepath.Join(t.TempDir(), File), key, newClock().Now)
	for i := range 4 {
		record(t, l, sample(i))
		if i == 1 {
			if _, err := l.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	return exportAll(t, l)
}

// FuzzParseLine feeds arbitrary bytes to the export line parser: it never
// panics, and what it accepts is exactly what Export would write for the
// record it returns.
func FuzzParseLine(f *testing.F) {
	for _, l := range strings.Split(string(seedExport(f, parseFuzzKey(f))), "\n") {
		f.Add([]byte(l))
	}
	f.Add([]byte(`{"entry":null}`))
	f.Add([]byte(`{"header":{"format":"sigil-audit-export-v1","first":1,"last":0},"entry":{}}`))
	f.Add([]byte(`{"entry":{"seq":1,"seq":2}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := parseLine(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(&l)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("accepted a line Export would not write: %q (re-encoded %q, %v)", b, out, err)
		}
		if l.Entry != nil {
			if err := checkStored(l.Entry); err != nil {
				t.Fatalf("accepted an invalid entry: %v", err)
			}
			_ = l.Entry.ComputeHash()
		}
	})
}

// FuzzVerify feeds arbitrary exports to Verify: it never panics, and what
// it accepts is a consistent chain.
func FuzzVerify(f *testing.F) {
	key := parseFuzzKey(f)
	exp := seedExport(f, key)
	f.Add(exp)
	f.Add(exp[:len(exp)/2])
	f.Add(bytes.Replace(exp, []byte(`"seq":2`), []byte(`"seq":3`), 1))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := Verify(bytes.NewReader(b), &key.PublicKey)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "audit: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if rep.Entries > 0 && uint64(rep.Entries) != rep.Last-rep.First+1 || rep.Unsigned > rep.Entries || rep.Checkpoint.Seq > rep.Last {
			t.Fatalf("inconsistent report %+v", rep)
		}
	})
}
