package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestReplicasCARotation: each step of a CA rotation made through one
// replica (prepare through a `sigil serve` process, activate through the
// other, retire through the in-process one) reaches the other replicas at
// once, without a restart: they list the same generations and trust
// bundle, and after the activation each presents an API certificate of
// the new generation (so it holds the new key, which crossed the
// database sealed).
func TestReplicasCARotation(t *testing.T) {
	r := startReplicaFleet(t)
	ctx := context.Background()
	all := []*api.Client{r.client(r.f.APIURL()), r.client(r.procs[0].api), r.client(r.procs[1].api)}
	// agree waits until every replica lists generations as want says.
	agree := func(what string, want func([]ca.Generation) bool) *api.CAView {
		t.Helper()
		var first *api.CAView
		for i, c := range all {
			wait.Until(t, func() error {
				v, err := c.CA(ctx)
				if err != nil {
					return fmt.Errorf("replica %d: %v", i, err)
				}
				if !want(v.Generations) {
					return fmt.Errorf("replica %d: %s: generations %+v", i, what, v.Generations)
				}
				if first != nil && v.BundlePEM != first.BundlePEM {
					return fmt.Errorf("replica %d: %s: another trust bundle than replica 0's", i, what)
				}
				first = v
				return nil
			})
		}
		return first
	}
	states := func(s ...string) func([]ca.Generation) bool {
		return func(gens []ca.Generation) bool {
			if len(gens) != len(s) {
				return false
			}
			for i, g := range gens {
				if g.State != s[i] {
					return false
				}
			}
			return true
		}
	}

	if _, err := all[1].PrepareCA(ctx); err != nil {
		t.Fatal(err)
	}
	agree("prepared through replica 1", states(ca.GenActive, ca.GenPrepared))
	if _, err := all[2].ActivateCA(ctx, 0); err != nil {
		t.Fatal(err)
	}
	v := agree("activated through replica 2", states(ca.GenSuperseded, ca.GenActive))
	newRoot := v.Generations[1]
	for i, c := range all {
		u, err := url.Parse(c.BaseURL)
		if err != nil {
			t.Fatal(err)
		}
		wait.Until(t, func() error {
			conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: r.roots, ServerName: "localhost"})
			if err != nil {
				return fmt.Errorf("replica %d: %v", i, err)
			}
			defer conn.Close()
			leaf := conn.ConnectionState().PeerCertificates[0]
			if leaf.Issuer.CommonName != newRoot.Subject {
				return fmt.Errorf("replica %d presents a certificate issued by %q, want %q", i, leaf.Issuer.CommonName, newRoot.Subject)
			}
			return nil
		})
	}
	// The brokers' certificates issued again by the new generation
	// first: a retirement is refused while a broker presents the old
	// one.
	reissueBrokerCerts(t, r.f.CA, append(slices.Clone(r.dev), r.boot)...)
	wait.Until(t, func() error { _, err := all[0].RetireCA(ctx); return err })
	v = agree("retired through replica 0", states(ca.GenRetired, ca.GenActive))
	blk, _ := pem.Decode([]byte(v.BundlePEM))
	if blk == nil {
		t.Fatal("no certificate in the trust bundle")
	}
	if root, err := x509.ParseCertificate(blk.Bytes); err != nil || root.Subject.CommonName != newRoot.Subject {
		t.Fatalf("the trust bundle after the retirement starts with %v (%v), want the new root", root, err)
	}
}
