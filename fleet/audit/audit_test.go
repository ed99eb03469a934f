package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/clocktest"
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newClock() *clocktest.Clock { return clocktest.New(time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)) }

func openLog(t testing.TB, path string, key *ecdsa.PrivateKey, now func() time.Time) *Log {
	t.Helper()
	cfg := Config{Path: path, Now: now, NoSync: true}
	if key != nil {
		cfg.Signer = key
	}
	l, err := openBackend(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func record(t testing.TB, l *Log, e Entry) Entry {
	t.Helper()
	got, err := l.Append(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// sample returns varied entries: every actor kind and outcome, details,
// request IDs, non-ASCII text.
func sample(i int) Entry {
	actors := []Actor{User("alice"), Token("tok-1"), Device(fmt.Sprintf("%032x", i)), System("rotation")}
	e := New(actors[i%4], []string{"device.revoke", "token.create", "attest.verdict", "rotation.job.start"}[i%4], fmt.Sprintf("dev-%d", i)).Request(fmt.Sprintf("req-%d", i))
	switch i % 3 {
	case 1:
		e = e.Deny("role viewer may not revoke")
	case 2:
		e = e.Fail(errors.New("inventory: écrire: disk full <&>"))
	}
	if i%2 == 0 {
		e = e.With("serial", fmt.Sprintf("%x", i*7919)).With("note", "Grüße \"quoted\"\n")
	}
	return e
}

func exportAll(t testing.TB, l *Log) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := l.Export(t.Context(), &b, 0, 0); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestChainVerifies(t *testing.T) {
	key := newKey(t)
	clk := newClock()
	l := openLog(t, filepath.Join(t.TempDir(), File), key, clk.Now)
	var stored []Entry
	for i := range 25 {
		stored = append(stored, record(t, l, sample(i)))
		clk.Advance(time.Second)
		if i == 9 || i == 19 {
			if _, err := l.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, e := range stored {
		if e.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, e.Seq)
		}
		if i > 0 && e.Prev != stored[i-1].Hash || i == 0 && !e.Prev.IsZero() {
			t.Fatalf("entry %d does not link to its predecessor", e.Seq)
		}
		if got, err := l.Get(t.Context(), e.Seq); err != nil || got.Hash != e.Hash || got.Target != e.Target {
			t.Fatalf("Get(%d) = %+v, %v; want %+v", e.Seq, got, err, e)
		}
	}
	exp := exportAll(t, l)
	rep, err := Verify(bytes.NewReader(exp), &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	seq, head := l.Head()
	want := Report{First: 1, Last: 25, Entries: 25, Head: head, Checkpoints: 2, Unsigned: 5}
	cp := rep.Checkpoint
	rep.Checkpoint = Checkpoint{}
	if !reflect.DeepEqual(rep, want) || seq != 25 {
		t.Fatalf("report %+v, want %+v (head seq %d)", rep, want, seq)
	}
	if cp.Seq != 20 || cp.Head != stored[19].Hash {
		t.Fatalf("last checkpoint %d %s, want 20 %s", cp.Seq, cp.Head, stored[19].Hash)
	}
	// The live store verifies the same way.
	srep, err := l.VerifyStore(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srep.Checkpoint = Checkpoint{}
	if !reflect.DeepEqual(srep, want) {
		t.Fatalf("store report %+v, want %+v", srep, want)
	}
	// A partial export verifies from its first entry.
	var part bytes.Buffer
	if err := l.Export(t.Context(), &part, 8, 12); err != nil {
		t.Fatal(err)
	}
	prep, err := Verify(&part, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if prep.First != 8 || prep.Last != 12 || prep.Entries != 5 || prep.Checkpoints != 1 || prep.Unsigned != 2 || prep.Head != stored[11].Hash {
		t.Fatalf("partial report %+v", prep)
	}
}

func TestEmptyLog(t *testing.T) {
	key := newKey(t)
	l := openLog(t, filepath.Join(t.TempDir(), File), key, nil)
	if _, err := l.Checkpoint(context.Background()); !errors.Is(err, ErrEmpty) {
		t.Fatalf("checkpoint of an empty log: %v, want ErrEmpty", err)
	}
	rep, err := Verify(bytes.NewReader(exportAll(t, l)), &key.PublicKey)
	if err != nil || !reflect.DeepEqual(rep, Report{}) {
		t.Fatalf("empty export: %+v, %v", rep, err)
	}
	if _, err := l.Get(t.Context(), 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get on an empty log: %v", err)
	}
}

func TestRestartContinuesChain(t *testing.T) {
	key := newKey(t)
	path := filepath.Join(t.TempDir(), File)
	clk := newClock()
	l, err := openBackend(t, Config{Path: path, Signer: key, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		record(t, l, sample(i))
	}
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	last := record(t, l, sample(5))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), sample(6)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}

	// The clock went back while the fleet was down: times must not.
	clk.Advance(-time.Hour)
	l = openLog(t, path, key, clk.Now)
	if seq, head := l.Head(); seq != 6 || head != last.Hash {
		t.Fatalf("head after reopen %d %s, want 6 %s", seq, head, last.Hash)
	}
	if got, ok := l.LastCheckpoint(); !ok || got.Seq != cp.Seq || got.Head != cp.Head {
		t.Fatalf("last checkpoint after reopen %+v, want %+v", got, cp)
	}
	next := record(t, l, sample(6))
	if next.Seq != 7 || next.Prev != last.Hash {
		t.Fatalf("entry after restart: seq %d prev %s, want 7 %s", next.Seq, next.Prev, last.Hash)
	}
	if next.Time.Before(last.Time) {
		t.Fatalf("entry after restart at %v, before the previous one at %v", next.Time, last.Time)
	}
	rep, err := Verify(bytes.NewReader(exportAll(t, l)), &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Last != 7 || rep.Checkpoints != 1 || rep.Unsigned != 2 {
		t.Fatalf("report %+v", rep)
	}
}

// appendConcurrently records, from workers goroutines on each of logs,
// each entries per goroutine (targets "log/worker/i"), and has each
// goroutine checkpoint after every checkpointEvery of its entries; it
// fails t on any error.
func appendConcurrently(t *testing.T, logs []*Log, workers, each, checkpointEvery int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(logs)*workers*each)
	for r, l := range logs {
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					e := New(User(fmt.Sprintf("user-%d", w)), "device.tag", fmt.Sprintf("%d/%d/%d", r, w, i))
					if err := l.Record(context.Background(), e); err != nil {
						errs <- err
					}
					if i%checkpointEvery == 0 {
						if _, err := l.Checkpoint(context.Background()); err != nil && !errors.Is(err, ErrEmpty) {
							errs <- err
						}
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestConcurrentAppendsKeepOneChain(t *testing.T) {
	key := newKey(t)
	l := openLog(t, filepath.Join(t.TempDir(), File), key, nil)
	const workers, each = 8, 60
	appendConcurrently(t, []*Log{l}, workers, each, 20)
	rep, err := l.VerifyStore(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Entries != workers*each || rep.Last != workers*each {
		t.Fatalf("report %+v, want %d entries", rep, workers*each)
	}
	// Every append is there exactly once.
	seen := map[string]int{}
	for seq := uint64(1); seq <= rep.Last; seq++ {
		e, err := l.Get(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		seen[e.Target]++
	}
	for w := range workers {
		for i := range each {
			if n := seen[fmt.Sprintf("0/%d/%d", w, i)]; n != 1 {
				t.Fatalf("append %d/%d stored %d times", w, i, n)
			}
		}
	}
	if _, err := Verify(bytes.NewReader(exportAll(t, l)), &key.PublicKey); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d appends in %d transactions", workers*each, l.commits)
}

// TestCanceledAppends cancels appends at random points while others go on:
// those that fail are not in the log, those that succeed are, and the log
// keeps one chain.
func TestCanceledAppends(t *testing.T) {
	key := newKey(t)
	l := openLog(t, filepath.Join(t.TempDir(), File), key, nil)
	if _, err := l.Append(canceled(), sample(0)); !errors.Is(err, context.Canceled) {
		t.Fatalf("append with a canceled context: %v", err)
	}
	var mu sync.Mutex
	ok := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 50 {
				ctx, cancel := context.WithCancel(context.Background())
				target := fmt.Sprintf("%d/%d", w, i)
				if i%2 == 1 {
					go cancel()
				}
				_, err := l.Append(ctx, New(System("test"), "test.append", target))
				cancel()
				if err != nil && !errors.Is(err, context.Canceled) {
					t.Error(err)
				}
				mu.Lock()
				ok[target] = err == nil
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	rep, err := l.VerifyStore(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for seq := uint64(1); seq <= rep.Last; seq++ {
		e, err := l.Get(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		stored[e.Target] = true
	}
	for target, succeeded := range ok {
		if succeeded != stored[target] {
			t.Fatalf("append %s: returned success %v, stored %v", target, succeeded, stored[target])
		}
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestAppendRefusesBadEntries(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), File), newKey(t), nil)
	good := New(User("alice"), "device.revoke", "dev-1")
	cases := map[string]Entry{
		"no actor kind":     {Actor: Actor{ID: "x"}, Action: "device.revoke", Outcome: OK},
		"unknown kind":      {Actor: Actor{Kind: "robot", ID: "x"}, Action: "device.revoke", Outcome: OK},
		"empty actor ID":    New(User(""), "device.revoke", ""),
		"control in ID":     New(User("al\x00ice"), "device.revoke", ""),
		"undotted action":   New(User("alice"), "revoke", ""),
		"uppercase action":  New(User("alice"), "Device.Revoke", ""),
		"empty word":        New(User("alice"), "device..revoke", ""),
		"no outcome":        {Actor: User("alice"), Action: "device.revoke"},
		"bad outcome":       {Actor: User("alice"), Action: "device.revoke", Outcome: "maybe"},
		"target newline":    {Actor: User("alice"), Action: "device.revoke", Target: "a\nb", Outcome: OK},
		"long target":       {Actor: User("alice"), Action: "device.revoke", Target: strings.Repeat("x", MaxID+1), Outcome: OK},
		"invalid UTF-8":     {Actor: User("alice"), Action: "device.revoke", Outcome: OK, Details: map[string]string{"note": "\xff"}},
		"bad detail key":    good.With("Note", "x"),
		"long detail":       {Actor: User("alice"), Action: "device.revoke", Outcome: OK, Details: map[string]string{"note": strings.Repeat("x", MaxValue+1)}},
		"long request ID":   good.Request(strings.Repeat("r", MaxRequest+1)),
		"reason not UTF-8":  {Actor: User("alice"), Action: "device.revoke", Outcome: Denied, Reason: "\xc3"},
		"too many details":  manyDetails(good, MaxDetails+1),
		"long reason (raw)": {Actor: User("alice"), Action: "device.revoke", Outcome: Denied, Reason: strings.Repeat("x", MaxReason+1)},
	}
	for name, e := range cases {
		if _, err := l.Append(context.Background(), e); err == nil || !strings.HasPrefix(err.Error(), "audit: ") {
			t.Errorf("%s: append returned %v, want an audit error", name, err)
		}
	}
	if seq, _ := l.Head(); seq != 0 {
		t.Fatalf("refused entries were stored: head %d", seq)
	}
	// The helpers clip long reasons (and targets and details, fit_test.go)
	// instead of refusing them.
	e := record(t, l, good.Fail(errors.New(strings.Repeat("é", MaxReason))))
	if len(e.Reason) > MaxReason || e.Outcome != Failed {
		t.Fatalf("Fail did not clip: %d bytes, outcome %s", len(e.Reason), e.Outcome)
	}
	// The caller's sequence, time and hashes are ignored.
	forged := good
	forged.Seq, forged.Time, forged.Prev, forged.Hash = 99, time.Unix(1, 0), Hash{1}, Hash{2}
	e = record(t, l, forged)
	if e.Seq != 2 || e.Prev == (Hash{1}) || e.Hash != e.ComputeHash() || e.Time.Equal(time.Unix(1, 0)) {
		t.Fatalf("log kept caller's fields: %+v", e)
	}
}

func manyDetails(e Entry, n int) Entry {
	for i := range n {
		e = e.With(fmt.Sprintf("k%d", i), "v")
	}
	return e
}

func TestEntryHelpers(t *testing.T) {
	base := New(Token("tok-9"), "secret.put", "db-password").Request("r1")
	a := base.With("version", "3")
	b := base.With("version", "4")
	if base.Details != nil || a.Details["version"] != "3" || b.Details["version"] != "4" {
		t.Fatalf("With shares maps: base %v a %v b %v", base.Details, a.Details, b.Details)
	}
	if e := base.Fail(nil); e.Outcome != OK || e.Reason != "" {
		t.Fatalf("Fail(nil) changed the entry: %+v", e)
	}
	if e := base.Deny("needs approval"); e.Outcome != Denied || e.Reason != "needs approval" {
		t.Fatalf("Deny: %+v", e)
	}
	if got := Device("abc").String(); got != "device:abc" {
		t.Fatalf("Actor.String = %q", got)
	}
}

func TestOpenRefusesNonP256Signer(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Path: filepath.Join(t.TempDir(), File), Signer: k}); err == nil {
		t.Fatal("P-384 signer accepted")
	}
	if _, err := Verify(strings.NewReader(""), &k.PublicKey); err == nil {
		t.Fatal("Verify accepted a P-384 key")
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	openLog(t, path, nil, nil)
	if _, err := Open(Config{Path: path}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

func TestNoSigner(t *testing.T) {
	l := openLog(t, filepath.Join(t.TempDir(), File), nil, nil)
	record(t, l, sample(1))
	if _, err := l.Checkpoint(context.Background()); !errors.Is(err, ErrNoSigner) {
		t.Fatalf("checkpoint without signer: %v", err)
	}
	if err := l.Run(context.Background()); !errors.Is(err, ErrNoSigner) {
		t.Fatalf("Run without signer: %v", err)
	}
	// The chain still verifies against a key (no checkpoints to check).
	rep, err := l.VerifyStore(t.Context(), &newKey(t).PublicKey)
	if err != nil || rep.Unsigned != 1 {
		t.Fatalf("VerifyStore: %+v, %v", rep, err)
	}
}

// TestLongLines checks an entry at every size limit exports and verifies
// (a line far longer than bufio's buffer), and an overlong line is refused.
func TestLongLines(t *testing.T) {
	key := newKey(t)
	l := openLog(t, filepath.Join(t.TempDir(), File), key, nil)
	big := New(User(strings.Repeat("u", MaxID)), "device."+strings.Repeat("a", MaxAction-7), strings.Repeat("t", MaxID)).
		Deny(strings.Repeat("\"", MaxReason)).Request(strings.Repeat("r", MaxRequest))
	for i := range MaxDetails {
		big = big.With(fmt.Sprintf("%s%02d", strings.Repeat("k", MaxKey-2), i), strings.Repeat("<", MaxValue))
	}
	record(t, l, big)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	exp := exportAll(t, l)
	if n := bytes.IndexByte(exp[bytes.IndexByte(exp, '\n')+1:], '\n'); n < 100_000 {
		t.Fatalf("the entry's line is %d bytes: not a long line", n)
	}
	if rep, err := Verify(bytes.NewReader(exp), &key.PublicKey); err != nil || rep.Entries != 1 || rep.Checkpoints != 1 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	long := append(bytes.Clone(exp), bytes.Repeat([]byte("x"), maxLine+1)...)
	long = append(long, '\n')
	_, err := Verify(bytes.NewReader(long), &key.PublicKey)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Err != ErrMalformed || ve.Line != 4 {
		t.Fatalf("overlong line: %v", err)
	}
}
