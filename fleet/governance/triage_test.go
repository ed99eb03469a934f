package governance_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// selfSigned makes a certificate that no fleet CA issued.
func selfSigned(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: cn},
		NotBefore: t0, NotAfter: t0.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestShadowDevicesAreRecordedAndAggregated(t *testing.T) {
	f := newFleet(t, nil)
	foreign := selfSigned(t, "evil-gw")
	ek := strings.Repeat("ab", 32)
	attempts := []governance.Attempt{
		{Kind: governance.AttemptForeignCert, Cert: foreign, Remote: "203.0.113.5:40000", Reason: "x509: unknown authority"},
		{Kind: governance.AttemptUnknownClient, ClientID: "gw-unknown", Remote: "198.51.100.2:1883", Reason: "bad token"},
		{Kind: governance.AttemptUnknownEK, EKFingerprint: strings.ToUpper(ek), ClientID: "boot-3", Remote: "[2001:db8::7]:5000", Reason: "EK not trusted"},
	}
	for _, a := range attempts {
		if err := f.svc.Observe(a); err != nil {
			t.Fatal(err)
		}
	}
	// The foreign certificate tries again, from another address, later.
	f.clock.Advance(time.Minute)
	for range 3 {
		if err := f.svc.Observe(governance.Attempt{Kind: governance.AttemptForeignCert, Cert: foreign, Remote: "203.0.113.6:40001"}); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing is written before a flush.
	if list, _, _ := f.svc.Triage(governance.TriageFilter{}); len(list) != 0 {
		t.Fatalf("listed before a flush: %+v", list)
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	list, next, err := f.svc.Triage(governance.TriageFilter{})
	if err != nil || next != "" || len(list) != 3 {
		t.Fatalf("triage %+v %q %v", list, next, err)
	}
	// Most recently seen first: the foreign certificate.
	sum := sha256.Sum256(foreign.Raw)
	fc := list[0]
	if fc.Key != "foreign-certificate/cert:"+hex.EncodeToString(sum[:]) || fc.Count != 4 ||
		!fc.FirstSeen.Equal(t0) || !fc.LastSeen.Equal(t0.Add(time.Minute)) ||
		strings.Join(fc.Remotes, ",") != "203.0.113.5,203.0.113.6" || fc.Cert == nil || fc.Cert.Subject != "CN=evil-gw" || fc.Cert.Serial != "4d" {
		t.Fatalf("foreign certificate entry %+v cert %+v", fc, fc.Cert)
	}
	if fc.Reason != "x509: unknown authority" {
		t.Fatalf("reason %q (a later attempt without reason must not erase it)", fc.Reason)
	}
	ekEntry, err := f.svc.Shadow("unknown-ek/ek:" + ek)
	if err != nil || ekEntry.ClientID != "boot-3" || ekEntry.Remotes[0] != "2001:db8::7" {
		t.Fatalf("EK entry %+v, %v", ekEntry, err)
	}
	if a := f.alerts.of(governance.KindShadow, ""); len(a) != 1 || a[0].Attrs["new"] != "3" {
		t.Fatalf("shadow alerts %+v", a)
	}
	// A repeat is not new: no alert.
	if err := f.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "gw-unknown"}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if a := f.alerts.of(governance.KindShadow, ""); len(a) != 1 {
		t.Fatalf("a repeat alerted again: %+v", a)
	}
	only, _, _ := f.svc.Triage(governance.TriageFilter{Kind: governance.AttemptUnknownClient})
	if len(only) != 1 || only[0].Count != 2 {
		t.Fatalf("filtered triage %+v", only)
	}

	// Bad attempts are refused with a clear error.
	for _, a := range []governance.Attempt{{Kind: "bogus", ClientID: "x"}, {Kind: governance.AttemptUnknownClient}} {
		if err := f.svc.Observe(a); !errors.Is(err, governance.ErrInvalid) {
			t.Errorf("Observe(%+v) = %v", a, err)
		}
	}
}

// enroller records the shadow devices handed to it.
type enroller struct{ got []governance.Shadow }

func (e *enroller) Enroll(s governance.Shadow) error {
	e.got = append(e.got, s)
	return nil
}

func TestTriageDecisions(t *testing.T) {
	enr := &enroller{}
	f := newFleet(t, func(c *governance.Config) { c.Enroller = enr })
	foreign := selfSigned(t, "intruder")
	ek := strings.Repeat("cd", 32)
	obs := []governance.Attempt{
		{Kind: governance.AttemptUnknownClient, ClientID: "rogue-1", Remote: "198.51.100.9:1"},
		{Kind: governance.AttemptForeignCert, Cert: foreign, Remote: "203.0.113.44:2"},
		{Kind: governance.AttemptUnknownEK, EKFingerprint: ek, Remote: "192.0.2.1:3"},
		{Kind: governance.AttemptUnknownClient, ClientID: "new-gw-7", Remote: "192.0.2.8:4"},
	}
	for _, a := range obs {
		if err := f.svc.Observe(a); err != nil {
			t.Fatal(err)
		}
	}
	// Decide flushes first: the entries need not be written yet.
	if _, err := f.svc.Decide("unknown-client/client:rogue-1", governance.DecisionBlock, "alice", "not ours"); err != nil {
		t.Fatal(err)
	}
	if !f.svc.IsBlocked("rogue-1", "", "") || f.svc.IsBlocked("rogue-2", "", "") {
		t.Fatal("client ID block wrong")
	}
	// A foreign certificate has nothing but its addresses to block.
	sum := sha256.Sum256(foreign.Raw)
	if _, err := f.svc.Decide("foreign-certificate/cert:"+hex.EncodeToString(sum[:]), governance.DecisionBlock, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if !f.svc.IsBlocked("anyone", "203.0.113.44:5555", "") || f.svc.IsBlocked("anyone", "203.0.113.45:5555", "") {
		t.Fatal("address block wrong")
	}
	if _, err := f.svc.Decide("unknown-ek/ek:"+ek, governance.DecisionBlock, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if b, ok := f.svc.Blocked("", "", strings.ToUpper(ek)); !ok || b.Source != "unknown-ek/ek:"+ek || b.By != "alice" {
		t.Fatalf("EK block %+v %v", b, ok)
	}
	sh, err := f.svc.Decide("unknown-client/client:new-gw-7", governance.DecisionEnroll, "bob", "new line")
	if err != nil || sh.Decision != governance.DecisionEnroll || sh.DecidedBy != "bob" {
		t.Fatalf("enroll decision %+v %v", sh, err)
	}
	if len(enr.got) != 1 || enr.got[0].ClientID != "new-gw-7" {
		t.Fatalf("enroller got %+v", enr.got)
	}
	undecided, _, _ := f.svc.Triage(governance.TriageFilter{Undecided: true})
	if len(undecided) != 0 {
		t.Fatalf("undecided left: %+v", undecided)
	}
	if _, err := f.svc.Decide("unknown-client/client:nope", governance.DecisionBlock, "", ""); !errors.Is(err, governance.ErrNotFound) {
		t.Fatalf("deciding a missing entry: %v", err)
	}
	if _, err := f.svc.Decide("unknown-client/client:rogue-1", "maybe", "", ""); !errors.Is(err, governance.ErrInvalid) {
		t.Fatalf("unknown decision: %v", err)
	}

	// CIDR blocks, unblocking, and bad values.
	if err := f.svc.Block(governance.Block{Kind: governance.BlockAddress, Value: "10.1.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	if !f.svc.IsBlocked("", "10.1.200.3:1", "") || !f.svc.IsBlocked("", "[::ffff:10.1.0.9]:1", "") || f.svc.IsBlocked("", "10.2.0.1:1", "") {
		t.Fatal("prefix block wrong")
	}
	if err := f.svc.Unblock(governance.BlockAddress, "10.1.0.0/16"); err != nil {
		t.Fatal(err)
	}
	if f.svc.IsBlocked("", "10.1.200.3:1", "") {
		t.Fatal("unblocked prefix still blocks")
	}
	for _, b := range []governance.Block{
		{Kind: governance.BlockAddress, Value: "not-an-ip"},
		{Kind: governance.BlockEK, Value: "abc"},
		{Kind: governance.BlockClientID, Value: ""},
		{Kind: "mac", Value: "x"},
	} {
		if err := f.svc.Block(b); !errors.Is(err, governance.ErrInvalid) {
			t.Errorf("Block(%+v) = %v", b, err)
		}
	}
	blocks, _, err := f.svc.Blocks("", 0)
	if err != nil || len(blocks) != 3 {
		t.Fatalf("block list %+v %v", blocks, err)
	}

	// Without an enroller, an enroll decision is refused.
	g := newFleet(t, nil)
	_ = g.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "x1"})
	if _, err := g.svc.Decide("unknown-client/client:x1", governance.DecisionEnroll, "", ""); !errors.Is(err, governance.ErrNoEnroller) {
		t.Fatalf("enroll without enroller: %v", err)
	}
}

func TestBlockListIsBounded(t *testing.T) {
	f := newFleet(t, func(c *governance.Config) { c.MaxBlocks = 2 })
	for i := range 2 {
		if err := f.svc.Block(governance.Block{Kind: governance.BlockClientID, Value: fmt.Sprint("c", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.svc.Block(governance.Block{Kind: governance.BlockClientID, Value: "c2"}); !errors.Is(err, governance.ErrFull) {
		t.Fatalf("third block: %v", err)
	}
	// Replacing an entry is not growth.
	if err := f.svc.Block(governance.Block{Kind: governance.BlockClientID, Value: "c1", Reason: "again"}); err != nil {
		t.Fatal(err)
	}
}

func TestTriageIsBoundedUnderFlood(t *testing.T) {
	const (
		maxPending = 64
		maxTriage  = 100
		identities = 5000
	)
	f := newFleet(t, func(c *governance.Config) { c.MaxPending, c.MaxTriage = maxPending, maxTriage })
	// Each identity tries once; a flush every 200 attempts (the flush
	// interval) cannot keep up with 200 new identities each time.
	for i := range identities {
		f.clock.Advance(time.Millisecond)
		err := f.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: fmt.Sprintf("flood-%05d", i), Remote: "192.0.2.1:1"})
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := f.svc.TriageStats(); st.Pending > maxPending {
			t.Fatalf("%d identities pending, bound is %d", st.Pending, maxPending)
		}
		if i%200 == 199 {
			if err := f.svc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	st, err := f.svc.TriageStats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != maxTriage {
		t.Fatalf("%d entries kept, want the bound %d", st.Entries, maxTriage)
	}
	// Every attempt is kept, evicted or counted as dropped: none is lost
	// silently.
	if got := st.Entries + st.Evicted + st.Dropped; got != identities {
		t.Fatalf("kept %d + evicted %d + dropped %d = %d, want %d", st.Entries, st.Evicted, st.Dropped, got, identities)
	}
	if st.Dropped == 0 || st.Evicted == 0 {
		t.Fatalf("flood neither dropped nor evicted: %+v", st)
	}
	// The newest entries are the ones kept (of each batch of 200 new
	// identities, the first maxPending), and listing agrees with the count.
	var all []governance.Shadow
	after := ""
	for {
		page, next, err := f.svc.Triage(governance.TriageFilter{After: after, Limit: 30})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		after = next
	}
	if len(all) != maxTriage || all[0].ClientID != fmt.Sprintf("flood-%05d", identities-200+maxPending-1) {
		t.Fatalf("listed %d entries, first %+v", len(all), all[0])
	}
	for i := 1; i < len(all); i++ {
		if all[i].LastSeen.After(all[i-1].LastSeen) {
			t.Fatal("triage not listed newest first")
		}
	}
	// The drops were reported.
	var reported bool
	for _, a := range f.alerts.of(governance.KindShadow, "") {
		reported = reported || a.Attrs["dropped"] != ""
	}
	if !reported {
		t.Fatal("drops never alerted")
	}

	// One identity hammering: a single entry whatever the count.
	g := newFleet(t, func(c *governance.Config) { c.MaxPending, c.MaxTriage = maxPending, maxTriage })
	for range 20000 {
		_ = g.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: "hammer", Remote: "192.0.2.1:1"})
	}
	if err := g.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	sh, err := g.svc.Shadow("unknown-client/client:hammer")
	if err != nil || sh.Count != 20000 {
		t.Fatalf("hammer entry %+v %v", sh, err)
	}
	if st, _ := g.svc.TriageStats(); st.Entries != 1 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A real broker consults the block list at CONNECT and reports refused
// clients into the triage list; mosquitto_pub is the independent client.
func TestBrokerConsultsBlockList(t *testing.T) {
	testenv.RequireBinaries(t, "mosquitto_pub")
	f := newFleet(t, func(c *governance.Config) { c.Now = nil }) // TLS needs the real clock
	dir := t.TempDir()
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "fleet.test"})
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := fleetCA.ServerTLS([]string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, fleetCA.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "sgt_good"
	b, err := broker.New(broker.Config{
		Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12},
		ClientCAs: fleetCA.Pool(), TrustDomain: "fleet.test", AllowBootstrap: true,
		BootstrapAuth: func(clientID, _ string, password []byte, _ *x509.Certificate) error {
			if blk, ok := f.svc.Blocked(clientID, "", ""); ok {
				return fmt.Errorf("blocked: %s", blk.Reason)
			}
			if string(password) != token {
				return errors.New("invalid enrollment token")
			}
			return nil
		},
		Events: func(ev broker.Event) {
			if ev.Kind == broker.Refused && ev.Identity.Bootstrap() {
				_ = f.svc.Observe(governance.Attempt{Kind: governance.AttemptUnknownClient, ClientID: ev.Identity.ClientID, Reason: ev.Reason})
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	_, port, _ := net.SplitHostPort(b.Addr().String())
	topics := wire.Topics{}
	publish := func(clientID, password string) error {
		cctx, ccancel := context.WithTimeout(ctx, 15*time.Second)
		defer ccancel()
		out, err := exec.CommandContext(cctx, "mosquitto_pub", "-h", "localhost", "-p", port, "--cafile", caFile,
			"-V", "mqttv311", "-i", clientID, "-u", clientID, "-P", password, "-q", "1",
			"-t", topics.EnrollUp(clientID, "request"), "-m", "hello").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}

	// An unknown client with a wrong token is refused and lands in triage.
	if err := publish("rogue-7", "guess"); err == nil {
		t.Fatal("wrong token accepted")
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	sh, err := f.svc.Shadow("unknown-client/client:rogue-7")
	if err != nil || sh.Count != 1 || !strings.Contains(sh.Reason, "invalid enrollment token") {
		t.Fatalf("triage entry %+v, %v", sh, err)
	}
	// With the token it gets in...
	if err := publish("rogue-7", token); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	// ...until the operator blocks it: then even the token does not help.
	if _, err := f.svc.Decide(sh.Key, governance.DecisionBlock, "alice", "stolen token"); err != nil {
		t.Fatal(err)
	}
	if err := publish("rogue-7", token); err == nil {
		t.Fatal("blocked client admitted")
	}
	if err := publish("gw-good", token); err != nil {
		t.Fatalf("another client refused: %v", err)
	}
	if err := f.svc.Flush(); err != nil {
		t.Fatal(err)
	}
	if sh, _ := f.svc.Shadow(sh.Key); sh.Count != 2 || !strings.Contains(sh.Reason, "blocked: stolen token") {
		t.Fatalf("blocked attempt not recorded: %+v", sh)
	}
	if err := f.svc.Unblock(governance.BlockClientID, "rogue-7"); err != nil {
		t.Fatal(err)
	}
	if err := publish("rogue-7", token); err != nil {
		t.Fatalf("unblocked client refused: %v", err)
	}
}

// Arbitrary bytes from clients go through the whole path (aggregate,
// flush, list) and come out clean, every accepted attempt counted.
func TestObserveArbitraryBytesEndToEnd(t *testing.T) {
	f := newFleet(t, nil)
	rnd := mrand.New(mrand.NewPCG(1, 2))
	junk := func() string {
		b := make([]byte, rnd.IntN(400))
		for i := range b {
			b[i] = byte(rnd.UintN(256))
		}
		return string(b)
	}
	kinds := []governance.AttemptKind{governance.AttemptForeignCert, governance.AttemptUnknownDevice, governance.AttemptUnknownClient, governance.AttemptUnknownEK}
	accepted := uint64(0)
	for i := range 400 {
		a := governance.Attempt{Kind: kinds[i%len(kinds)], ClientID: junk(), EKFingerprint: junk(), Remote: junk(), Reason: junk()}
		if i%3 == 0 {
			a.ClientID = "repeat" // some aggregate
		}
		if err := f.svc.Observe(a); err != nil {
			t.Fatal(err)
		}
		accepted++
		if i%50 == 49 {
			if err := f.svc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	list, _, err := f.svc.Triage(governance.TriageFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, sh := range list {
		total += sh.Count
		for _, s := range append([]string{sh.Key, sh.ClientID, sh.EKFingerprint, sh.Reason}, sh.Remotes...) {
			if !utf8.ValidString(s) || len(s) > 300 || strings.ContainsAny(s, "\x00\n\r\x1b") {
				t.Fatalf("unclean field %q", s)
			}
		}
		if len(sh.Remotes) > 8 {
			t.Fatalf("%d remotes kept", len(sh.Remotes))
		}
	}
	if total != accepted {
		t.Fatalf("counts add up to %d, %d attempts accepted", total, accepted)
	}
}
