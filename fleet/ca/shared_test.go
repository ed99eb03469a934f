package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// replica is a CA sharing its generations through a PostgreSQL database,
// with its bus running, as a replica of the fleet runs it.
type replica struct {
	ca      *CA
	changes atomic.Int32 // onChange calls
	adopted atomic.Int32 // OnAdopt calls
}

func startReplica(t *testing.T, dir, url string) *replica {
	t.Helper()
	r := &replica{ca: openCA(t, dir)}
	r.ca.OnAdopt(func() { r.adopted.Add(1) })
	db := pgtest.Open(t, url)
	bus := notify.NewPostgres(db, nil)
	if err := r.ca.Share(t.Context(), db, bus, func() error { r.changes.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); bus.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// copyCA copies a replica's ca.key and ca.crt, as an operator copies
// ca/ to a new replica.
func copyCA(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{KeyFile, CertFile} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRotationReachesOtherReplicas: two replicas on one database; each
// step of a rotation made through the first (prepare, activate, retire)
// reaches the second through NOTIFY, without a restart: its trust
// bundle, the generation it issues from (with the key, which crosses the
// database sealed only), what it refuses, and its onChange hook (the
// server certificate's refresh). A step made on stale generations fails
// with ErrStale and changes nothing.
func TestRotationReachesOtherReplicas(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	openCA(t, dirA)
	copyCA(t, dirA, dirB)
	a := startReplica(t, dirA, url)
	b := startReplica(t, dirB, url)
	oldDev, err := b.ca.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}

	g, err := a.ca.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the second replica to trust the prepared generation", func() bool { return len(b.ca.TrustBundle()) == 2 })
	if !bytes.Equal(b.ca.TrustBundle()[1], a.ca.TrustBundle()[1]) || b.changes.Load() == 0 || b.adopted.Load() == 0 {
		t.Fatalf("the second replica's bundle differs from the first's, or it was not told (%d, %d)", b.changes.Load(), b.adopted.Load())
	}
	if a.adopted.Load() != 0 {
		t.Fatalf("the replica that prepared adopted its own change %d times", a.adopted.Load())
	}
	if _, err := b.ca.Prepare(); !errors.Is(err, ErrAlreadyPrepared) {
		t.Fatalf("prepare on the second replica after the first's: %v", err)
	}

	if _, err := a.ca.Activate(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the second replica to issue from the new generation", func() bool {
		return bytes.Equal(b.ca.Certificate().Raw, a.ca.Certificate().Raw)
	})
	dev, err := b.ca.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if gen, err := a.ca.Issuer(dev); err != nil || gen.N != g.N {
		t.Fatalf("the second replica's new certificate: generation %d, %v; want %d", gen.N, err, g.N)
	}
	if _, err := dev.Verify(x509.VerifyOptions{Roots: poolOf(t, a.ca.Certificate().Raw), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	srv, err := b.ca.ServerTLS([]string{"broker.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyServer(srv.Certificate, poolOf(t, a.ca.Certificate().Raw)); err != nil {
		t.Fatalf("the second replica's server certificate after the activation: %v", err)
	}
	// The key is in the second replica's directory, and in the database
	// only sealed.
	keyB, err := loadKey(filepath.Join(dirB, "ca-2.key"))
	if err != nil || !publicKeyEqual(keyB.Public(), a.ca.Certificate().PublicKey) {
		t.Fatalf("the second replica's ca-2.key: %v", err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(keyB)
	var doc []byte
	if err := a.ca.shared.db.Pool().QueryRow(t.Context(), `SELECT doc FROM ca_generations`).Scan(&doc); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(doc, der) || bytes.Contains(doc, der[len(der)-40:]) {
		t.Fatal("the database holds the generation's key in the clear")
	}

	if _, err := a.ca.Retire(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the second replica to refuse the retired generation", func() bool {
		_, err := b.ca.Issuer(oldDev)
		return errors.Is(err, ErrRetiredGenerator)
	})

	// A step on generations another replica changed meanwhile.
	b.ca.mu.Lock()
	b.ca.shared.version--
	b.ca.mu.Unlock()
	if _, err := b.ca.Prepare(); !errors.Is(err, ErrStale) {
		t.Fatalf("prepare on stale generations: %v, want ErrStale", err)
	}
	if n := len(b.ca.Generations()); n != 2 {
		t.Fatalf("a refused prepare left %d generations", n)
	}

	// A writer of the database without ca.key cannot change what the
	// replicas adopt.
	db := pgtest.Open(t, url)
	var version int64
	var saved []byte
	if err := db.Pool().QueryRow(t.Context(), `SELECT version, doc FROM ca_generations`).Scan(&version, &saved); err != nil {
		t.Fatal(err)
	}
	forged := bytes.Replace(saved, []byte(`"state":"active"`), []byte(`"state":"retired"`), 1)
	if bytes.Equal(forged, saved) {
		t.Fatal("no active generation in the shared document")
	}
	if _, err := db.Pool().Exec(t.Context(), `UPDATE ca_generations SET version = $1, doc = $2`, version+1, forged); err != nil {
		t.Fatal(err)
	}
	if err := b.ca.sync(t.Context(), false); !errors.Is(err, ErrSealed) {
		t.Fatalf("adopting a document changed without ca.key: %v, want ErrSealed", err)
	}
	if _, err := db.Pool().Exec(t.Context(), `UPDATE ca_generations SET version = $1, doc = $2`, version, saved); err != nil {
		t.Fatal(err)
	}

	// A replica that was down through it all adopts the rotation at its
	// start.
	dirC := t.TempDir()
	copyCA(t, dirA, dirC)
	c := startReplica(t, dirC, url)
	if !bytes.Equal(c.ca.Certificate().Raw, a.ca.Certificate().Raw) || len(c.ca.TrustBundle()) != 1 {
		t.Fatal("a replica started after the rotation does not issue from the new generation")
	}
	// One whose ca/ is another fleet's is refused.
	if err := openCA(t, t.TempDir()).Share(t.Context(), pgtest.Open(t, url), nil); !errors.Is(err, ErrDiverged) {
		t.Fatalf("a replica with another CA: %v, want ErrDiverged", err)
	}
}

// TestCRLSetFollowsOtherReplicas: each rotation step, made here or
// adopted from another replica, calls OnGenerations (what has the CRL
// publisher sign a new set at once), and the set a replica signs after
// adopting it lists the generations the fleet trusts: during the overlap
// both roots, the cross certificate and a CRL of each (signed with the
// key the replica adopted), after the retirement the new one alone.
func TestCRLSetFollowsOtherReplicas(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	openCA(t, dirA)
	copyCA(t, dirA, dirB)
	a := startReplica(t, dirA, url)
	b := startReplica(t, dirB, url)
	var changedA, changedB atomic.Int32
	a.ca.OnGenerations(func() { changedA.Add(1) })
	b.ca.OnGenerations(func() { changedB.Add(1) })
	// set returns the roots' and the CRLs' issuers (common names) and the
	// number of other certificates of b's CRL set.
	set := func() (roots, crls []string, cross int) {
		t.Helper()
		s, err := b.ca.CRLsNumbered(big.NewInt(7), []Revoked{{Serial: "0a", Time: time.Now()}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for blk, rest := pem.Decode(s.PEM); blk != nil; blk, rest = pem.Decode(rest) {
			switch blk.Type {
			case "CERTIFICATE":
				c, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Equal(c.RawIssuer, c.RawSubject) {
					roots = append(roots, c.Subject.CommonName)
				} else {
					cross++
				}
			case "X509 CRL":
				l, err := x509.ParseRevocationList(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				if l.Number.Int64() != 7 || len(l.RevokedCertificateEntries) != 1 {
					t.Fatalf("CRL of %s: number %v, %d entries", l.Issuer.CommonName, l.Number, len(l.RevokedCertificateEntries))
				}
				roots := b.ca.Generations()
				ok := false
				for _, g := range roots {
					ok = ok || g.Subject == l.Issuer.CommonName
				}
				if !ok {
					t.Fatalf("a CRL of %s, no generation of b", l.Issuer.CommonName)
				}
				crls = append(crls, l.Issuer.CommonName)
			}
		}
		return roots, crls, cross
	}
	g1 := a.ca.Certificate().Subject.CommonName
	var g2 string
	step := func(what string, fn func() error, wantRoots func() []string, wantCross int) {
		t.Helper()
		beforeA, beforeB := changedA.Load(), changedB.Load()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if changedA.Load() == beforeA {
			t.Fatalf("%s: OnGenerations not called on the replica that made it", what)
		}
		wait.For(t, what+" adopted by the other replica", func() bool { return changedB.Load() > beforeB })
		roots, crls, cross := set()
		if want := wantRoots(); !slices.Equal(roots, want) || !slices.Equal(crls, want) || cross != wantCross {
			t.Fatalf("%s: b's set has roots %q, CRLs of %q, %d cross certificates; want %q, a CRL of each, %d", what, roots, crls, cross, want, wantCross)
		}
	}
	step("prepare", func() error { g, err := a.ca.Prepare(); g2 = g.Subject; return err }, func() []string { return []string{g1, g2} }, 1)
	step("activate", func() error { _, err := a.ca.Activate(); return err }, func() []string { return []string{g2, g1} }, 1)
	step("retire", func() error { _, err := a.ca.Retire(); return err }, func() []string { return []string{g2} }, 1)
}
