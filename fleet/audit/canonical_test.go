package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// docCanonical builds an entry's canonical encoding from the package doc's
// description, independently of Entry.Canonical.
func docCanonical(e *Entry) []byte {
	var b bytes.Buffer
	str := func(s string) {
		binary.Write(&b, binary.BigEndian, uint32(len(s)))
		b.WriteString(s)
	}
	str("sigil-audit-entry-v1")
	binary.Write(&b, binary.BigEndian, e.Seq)
	binary.Write(&b, binary.BigEndian, e.Time.UnixNano())
	str(string(e.Actor.Kind))
	str(e.Actor.ID)
	for _, s := range []string{e.Action, e.Target, string(e.Outcome), e.Reason, e.RequestID} {
		str(s)
	}
	var keys []string
	for k := range e.Details {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	binary.Write(&b, binary.BigEndian, uint32(len(keys)))
	for _, k := range keys {
		str(k)
		str(e.Details[k])
	}
	b.Write(e.Prev[:])
	return b.Bytes()
}

func docCheckpointCanonical(c *Checkpoint) []byte {
	var b bytes.Buffer
	const domain = "sigil-audit-checkpoint-v1"
	binary.Write(&b, binary.BigEndian, uint32(len(domain)))
	b.WriteString(domain)
	binary.Write(&b, binary.BigEndian, c.Seq)
	b.Write(c.Head[:])
	binary.Write(&b, binary.BigEndian, c.Time.UnixNano())
	return b.Bytes()
}

// TestCanonicalEncodingMatchesDoc checks every entry of a varied log
// against the encoding as the package doc describes it.
func TestCanonicalEncodingMatchesDoc(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), File), newKey(t), nil)
	for i := range 12 {
		e := record(t, l, sample(i))
		if got, want := e.Canonical(), docCanonical(&e); !bytes.Equal(got, want) {
			t.Fatalf("entry %d: Canonical\n%x\ndoc says\n%x", e.Seq, got, want)
		}
		if e.Hash != sha256.Sum256(docCanonical(&e)) {
			t.Fatalf("entry %d: hash is not SHA-256 of the documented encoding", e.Seq)
		}
	}
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cp.Canonical(), docCheckpointCanonical(&cp)) {
		t.Fatal("checkpoint canonical encoding differs from the package doc")
	}
}

// TestCanonicalVector pins the encoding of one entry: a change here breaks
// every existing log and every third-party verifier. Refresh with -update
// only for a new format version.
func TestCanonicalVector(t *testing.T) {
	e := New(User("alice"), "device.revoke", "0123456789abcdef0123456789abcdef").
		Because("stolen from site B").Request("req-42").With("serial", "0a1b").With("ticket", "OPS-7")
	e.Seq = 42
	e.Time = time.Date(2026, 5, 1, 10, 30, 0, 123456789, time.UTC)
	e.Prev = sha256.Sum256([]byte("previous"))
	e.Hash = e.ComputeHash()
	line, err := jsonLine(&e)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("canonical %x\nhash %s\nline %s\n", e.Canonical(), e.Hash, line)
	golden := filepath.Join("testdata", "entry-v1.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("entry encoding changed:\n%s\nwant\n%s", got, want)
	}
	// The golden line verifies as an entry.
	l, err := parseLine(line)
	if err != nil || l.Entry.ComputeHash() != l.Entry.Hash {
		t.Fatalf("golden line does not parse or verify: %v", err)
	}
}

func jsonLine(e *Entry) ([]byte, error) { return json.Marshal(line{Entry: e}) }

// TestOpenSSLInterop uses openssl as the independent party: it makes the
// audit key, verifies a checkpoint's signature over the documented bytes,
// computes the key ID and an entry's hash.
func TestOpenSSLInterop(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl missing")
		}
		t.Skip("openssl missing")
	}
	dir := t.TempDir()
	run := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	keyFile, pubFile := filepath.Join(dir, "audit.key"), filepath.Join(dir, "audit.pub")
	run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyFile)
	run("pkey", "-in", keyFile, "-pubout", "-out", pubFile)
	pemKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemKey)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(Config{Path: filepath.Join(dir, File), Signer: k.(crypto.Signer), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := record(t, l, sample(2))
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// The checkpoint signature, over the bytes the doc describes.
	data, sig := filepath.Join(dir, "cp.bin"), filepath.Join(dir, "cp.sig")
	os.WriteFile(data, docCheckpointCanonical(&cp), 0o600)
	os.WriteFile(sig, cp.Signature, 0o600)
	if out := run("dgst", "-sha256", "-verify", pubFile, "-signature", sig, data); !strings.Contains(string(out), "Verified OK") {
		t.Fatalf("openssl: %s", out)
	}
	// And openssl refuses it for other bytes, so the check above can fail.
	other := docCheckpointCanonical(&cp)
	other[len(other)-1] ^= 1
	os.WriteFile(data, other, 0o600)
	if out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", pubFile, "-signature", sig, data).CombinedOutput(); err == nil {
		t.Fatalf("openssl verified a signature over altered bytes: %s", out)
	}

	// The public key file openssl wrote verifies the export.
	pubPEM, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	var exp bytes.Buffer
	if err := l.Export(t.Context(), &exp, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(&exp, pub); err != nil || rep.Checkpoints != 1 {
		t.Fatalf("verify with openssl's public key: %+v, %v", rep, err)
	}

	// The key ID, as the doc says openssl computes it.
	der := run("pkey", "-pubin", "-in", pubFile, "-outform", "DER")
	if sum := sha256.Sum256(der); hex.EncodeToString(sum[:]) != cp.KeyID {
		t.Fatalf("key ID %s, openssl's key hashes to %x", cp.KeyID, sum)
	}

	// The entry hash: openssl's SHA-256 of the documented bytes.
	entryFile := filepath.Join(dir, "entry.bin")
	os.WriteFile(entryFile, docCanonical(&e), 0o600)
	out := run("dgst", "-sha256", "-r", entryFile)
	if got := strings.Fields(string(out))[0]; got != e.Hash.String() {
		t.Fatalf("openssl hashes the entry to %s, the log says %s", got, e.Hash)
	}
}

func TestParsePublicKey(t *testing.T) {
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	other := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("ignored")})
	pub, err := ParsePublicKey(append(other, certPEM...))
	if err != nil || !pub.Equal(&key.PublicKey) {
		t.Fatalf("ParsePublicKey(certificate) = %v, %v", pub, err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if _, err := ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})); err == nil {
		t.Fatal("RSA key accepted")
	}
	if _, err := ParsePublicKey([]byte("not PEM")); err == nil {
		t.Fatal("non-PEM accepted")
	}
}
