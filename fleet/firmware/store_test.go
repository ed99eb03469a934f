package firmware_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/internal/clocktest"
)

var t0 = time.Date(2027, 3, 1, 9, 0, 0, 0, time.UTC)

// entry is one audit record.
type entry struct{ actor, action, target, outcome, reason string }

// auditLog keeps records in memory; fail makes it refuse.
type auditLog struct {
	mu      sync.Mutex
	entries []entry
	fail    error
}

func (a *auditLog) Record(_ context.Context, actor, action, target, outcome, reason string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return a.fail
	}
	a.entries = append(a.entries, entry{actor, action, target, outcome, reason})
	return nil
}

func (a *auditLog) last() entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.entries) == 0 {
		return entry{}
	}
	return a.entries[len(a.entries)-1]
}

// release builds an image, its manifest and the bundles of the signers.
type release struct {
	image    []byte
	manifest []byte
	bundles  [][]byte
}

func makeRelease(t testing.TB, version string, expires time.Time, image []byte, ss ...*sign.Signer) release {
	t.Helper()
	m := &manifest.Manifest{
		Name: "gateway-os", Version: version, SecurityVersion: 5, Models: []string{"gw-100"},
		Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: expires,
	}
	raw, bundles := signtest.Release(t, m, ss...)
	return release{image: image, manifest: raw, bundles: bundles}
}

func image(n int, seed string) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s block %d\n", seed, i)
	}
	return b.Bytes()[:n]
}

type fixture struct {
	approvals int
	store     *firmware.Store
	dir       string
	clock     *clocktest.Clock
	audit     *auditLog
	keys      []*sign.Signer
	trust     *verify.TrustSet
}

func newFixture(t *testing.T, approvals, threshold, nkeys int) *fixture {
	t.Helper()
	f := &fixture{approvals: approvals, dir: t.TempDir(), clock: clocktest.New(t0), audit: &auditLog{}}
	for range nkeys {
		f.keys = append(f.keys, signtest.Signer(t))
	}
	f.trust = signtest.Trust(t, 1, threshold, f.keys...)
	f.open(t, f.trust)
	return f
}

func (f *fixture) open(t *testing.T, trust *verify.TrustSet) {
	t.Helper()
	s, err := openBackend(t, firmware.Config{Dir: f.dir, Trust: trust, Approvals: f.approvals, Now: f.clock.Now, Auditor: f.audit})
	if err != nil {
		t.Fatal(err)
	}
	f.store = s
	t.Cleanup(func() { s.Close() })
}

func (f *fixture) imageFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(f.dir, firmware.ImagesDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestUploadStoresVerifiedRelease(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	rel := makeRelease(t, "1.0.0", t0.Add(30*24*time.Hour), image(10000, "v1"), f.keys[0])
	r, err := f.store.Upload(context.Background(), "alice", rel.manifest, rel.bundles, bytes.NewReader(rel.image))
	if err != nil {
		t.Fatal(err)
	}
	if r.State != firmware.StateUploaded || r.UploadedBy != "alice" || !r.UploadedAt.Equal(t0) || len(r.Signers) != 1 || r.Signers[0] != f.keys[0].KeyID() {
		t.Fatalf("release %+v", r)
	}
	got, err := os.ReadFile(filepath.Join(f.dir, firmware.ImagesDir, r.ImageDigest()))
	if err != nil || !bytes.Equal(got, rel.image) {
		t.Fatalf("stored image differs (%v)", err)
	}
	if e := f.audit.last(); e != (entry{"alice", firmware.ActionUpload, r.ID, firmware.OutcomeOK, e.reason}) {
		t.Fatalf("audit %+v", e)
	}
	// The signed bytes come back exactly, after a restart too.
	f.store.Close()
	f.open(t, f.trust)
	again, err := f.store.Release(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.ManifestJSON, rel.manifest) || !bytes.Equal(again.Bundles[0], rel.bundles[0]) || again.Manifest.Version != "1.0.0" {
		t.Fatal("release changed across a restart")
	}
	if _, err := verify.Release(again.ManifestJSON, again.Bundles, f.trust, t0, "gw-100"); err != nil {
		t.Fatalf("what the store hands out does not verify on a device: %v", err)
	}
}

// TestUploadRefusals: nothing unsigned, badly signed, expired or
// mismatched is stored, and every refusal is audited.
func TestUploadRefusals(t *testing.T) {
	f := newFixture(t, 2, 2, 3)
	untrusted := signtest.Signer(t)
	img := image(5000, "v2")
	exp := t0.Add(time.Hour)
	good := makeRelease(t, "2.0.0", exp, img, f.keys[0], f.keys[1])
	tamperedImage := append([]byte(nil), img...)
	tamperedImage[100] ^= 1
	for _, c := range []struct {
		name  string
		rel   release
		image []byte
		want  error
	}{
		{"unsigned", makeRelease(t, "2.0.0", exp, img), img, verify.ErrSignature},
		{"below threshold", makeRelease(t, "2.0.0", exp, img, f.keys[0]), img, verify.ErrSignature},
		{"same key twice", makeRelease(t, "2.0.0", exp, img, f.keys[0], f.keys[0]), img, verify.ErrSignature},
		{"untrusted key", makeRelease(t, "2.0.0", exp, img, f.keys[0], untrusted), img, verify.ErrSignature},
		{"expired", makeRelease(t, "2.0.0", t0, img, f.keys[0], f.keys[1]), img, verify.ErrExpired},
		{"tampered image", good, tamperedImage, verify.ErrImage},
		{"truncated image", good, img[:len(img)-1], verify.ErrImage},
		{"no image", good, nil, firmware.ErrNoImage},
		{"tampered manifest", release{bytes.Replace(good.manifest, []byte(`"security_version":5`), []byte(`"security_version":6`), 1), nil, good.bundles}, img, verify.ErrSignature},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r io.Reader
			if c.image != nil {
				r = bytes.NewReader(c.image)
			}
			_, err := f.store.Upload(context.Background(), "alice", c.rel.manifest, c.rel.bundles, r)
			if !errors.Is(err, c.want) {
				t.Fatalf("Upload = %v, want %v", err, c.want)
			}
			if e := f.audit.last(); e.action != firmware.ActionUpload || e.outcome != firmware.OutcomeDenied || e.actor != "alice" {
				t.Errorf("refusal not audited: %+v", e)
			}
		})
	}
	if rs, _ := f.store.List(t.Context()); len(rs) != 0 {
		t.Fatalf("refused uploads left %d records", len(rs))
	}
	if names := f.imageFiles(t); len(names) != 0 {
		t.Fatalf("refused uploads left files: %v", names)
	}
	if _, err := f.store.Upload(context.Background(), "alice", good.manifest, good.bundles, bytes.NewReader(img)); err != nil {
		t.Fatalf("the good release: %v", err)
	}
	if _, err := f.store.Upload(context.Background(), "bob", good.manifest, good.bundles, bytes.NewReader(img)); !errors.Is(err, firmware.ErrExists) {
		t.Fatalf("second upload: %v", err)
	}
}

// TestContentAddressedImages: a re-signed manifest (later expiry) of the
// same image is a new release that shares the stored image.
func TestContentAddressedImages(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	img := image(3000, "shared")
	a := makeRelease(t, "3.0.0", t0.Add(time.Hour), img, f.keys[0])
	b := makeRelease(t, "3.0.0", t0.Add(48*time.Hour), img, f.keys[0])
	ra, err := f.store.Upload(context.Background(), "alice", a.manifest, a.bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := f.store.Upload(context.Background(), "alice", b.manifest, b.bundles, nil)
	if err != nil {
		t.Fatalf("re-signed release without re-uploading the image: %v", err)
	}
	if ra.ID == rb.ID || ra.ImageDigest() != rb.ImageDigest() {
		t.Fatalf("IDs %s %s, images %s %s", ra.ID, rb.ID, ra.ImageDigest(), rb.ImageDigest())
	}
	if names := f.imageFiles(t); len(names) != 1 || names[0] != ra.ImageDigest() {
		t.Fatalf("image files %v", names)
	}
}

func TestTwoPersonRule(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	ctx := context.Background()
	rel := makeRelease(t, "4.0.0", t0.Add(24*time.Hour), image(2000, "v4"), f.keys[0])
	r, err := f.store.Upload(ctx, "alice", rel.manifest, rel.bundles, bytes.NewReader(rel.image))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Approve(ctx, "alice", r.ID); !errors.Is(err, firmware.ErrSelfApproval) {
		t.Fatalf("uploader approving: %v", err)
	}
	if e := f.audit.last(); e.actor != "alice" || e.action != firmware.ActionApprove || e.outcome != firmware.OutcomeDenied {
		t.Fatalf("self-approval not audited as denied: %+v", e)
	}
	f.clock.Set(t0.Add(time.Minute))
	r, err = f.store.Approve(ctx, "bob", r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != firmware.StateUploaded {
		t.Fatalf("one of two approvals made it %s", r.State)
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, f.clock.Now()); !errors.Is(err, firmware.ErrNotApproved) {
		t.Fatalf("half-approved release offerable: %v", err)
	}
	if _, err := f.store.Approve(ctx, "bob", r.ID); !errors.Is(err, firmware.ErrAlreadyApproved) {
		t.Fatalf("bob approving twice: %v", err)
	}
	f.clock.Set(t0.Add(2 * time.Minute))
	r, err = f.store.Approve(ctx, "carol", r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != firmware.StateApproved || len(r.Approvals) != 2 ||
		r.Approvals[0] != (firmware.Approval{By: "bob", At: t0.Add(time.Minute)}) ||
		r.Approvals[1] != (firmware.Approval{By: "carol", At: t0.Add(2 * time.Minute)}) || !r.ApprovedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("approvals %+v, state %s", r.Approvals, r.State)
	}
	if e := f.audit.last(); e != (entry{"carol", firmware.ActionApprove, r.ID, firmware.OutcomeOK, e.reason}) {
		t.Fatalf("approval not audited: %+v", e)
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, f.clock.Now()); err != nil {
		t.Fatalf("approved release not offerable: %v", err)
	}
	if _, err := f.store.Approve(ctx, "dave", r.ID); !errors.Is(err, firmware.ErrInvalid) {
		t.Fatalf("approving an approved release: %v", err)
	}
}

func TestOfferable(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	ctx := context.Background()
	exp := t0.Add(24 * time.Hour)
	rel := makeRelease(t, "5.0.0", exp, image(2000, "v5"), f.keys[0])
	r, err := f.store.Upload(ctx, "alice", rel.manifest, rel.bundles, bytes.NewReader(rel.image))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, t0); !errors.Is(err, firmware.ErrNotApproved) {
		t.Fatalf("unapproved: %v", err)
	}
	for _, who := range []string{"bob", "carol"} {
		if _, err := f.store.Approve(ctx, who, r.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, exp.Add(-time.Second)); err != nil {
		t.Fatalf("approved: %v", err)
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, exp); !errors.Is(err, verify.ErrExpired) {
		t.Fatalf("expired: %v", err)
	}
	if _, err := f.store.Offerable(t.Context(), "0123456789abcdef0123456789abcdef", t0); !errors.Is(err, firmware.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}

	// The fleet rotates its release keys: releases signed only by the
	// removed key are no longer offered.
	if err := f.store.SetTrust(signtest.Trust(t, 1, 1, signtest.Signer(t))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, t0); !errors.Is(err, verify.ErrSignature) {
		t.Fatalf("after rotation: %v", err)
	}
	if err := f.store.SetTrust(f.trust); err != nil {
		t.Fatal(err)
	}

	if _, err := f.store.Withdraw(ctx, "dave", r.ID, "bricks gw-100 rev B"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Offerable(t.Context(), r.ID, t0); !errors.Is(err, firmware.ErrWithdrawn) {
		t.Fatalf("withdrawn: %v", err)
	}
	got, _ := f.store.Release(t.Context(), r.ID)
	if got.WithdrawnBy != "dave" || got.WithdrawReason != "bricks gw-100 rev B" || !got.WithdrawnAt.Equal(t0) {
		t.Fatalf("withdrawal not recorded: %+v", got)
	}
	if _, err := f.store.Withdraw(ctx, "dave", r.ID, ""); !errors.Is(err, firmware.ErrWithdrawn) {
		t.Fatalf("second withdrawal: %v", err)
	}
	if _, err := f.store.Approve(ctx, "erin", r.ID); !errors.Is(err, firmware.ErrWithdrawn) {
		t.Fatalf("approving a withdrawn release: %v", err)
	}
}

// TestAuditFailureChangesNothing: an approval the audit log cannot record
// does not happen.
func TestAuditFailureChangesNothing(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	ctx := context.Background()
	rel := makeRelease(t, "6.0.0", t0.Add(time.Hour), image(100, "v6"), f.keys[0])
	r, err := f.store.Upload(ctx, "alice", rel.manifest, rel.bundles, bytes.NewReader(rel.image))
	if err != nil {
		t.Fatal(err)
	}
	f.audit.mu.Lock()
	f.audit.fail = errors.New("disk full")
	f.audit.mu.Unlock()
	if _, err := f.store.Approve(ctx, "bob", r.ID); !errors.Is(err, firmware.ErrAudit) {
		t.Fatalf("Approve = %v, want ErrAudit", err)
	}
	got, _ := f.store.Release(t.Context(), r.ID)
	if len(got.Approvals) != 0 {
		t.Fatalf("unaudited approval stored: %+v", got.Approvals)
	}
	other := makeRelease(t, "6.0.1", t0.Add(time.Hour), image(100, "v6.1"), f.keys[0])
	if _, err := f.store.Upload(ctx, "alice", other.manifest, other.bundles, bytes.NewReader(other.image)); !errors.Is(err, firmware.ErrAudit) {
		t.Fatalf("Upload = %v, want ErrAudit", err)
	}
	if _, err := f.store.Release(t.Context(), firmware.ReleaseID(other.manifest)); !errors.Is(err, firmware.ErrNotFound) {
		t.Fatalf("unaudited upload stored: %v", err)
	}
}

// TestLeftoverTempFilesRemoved: a crash during an image write leaves a
// temporary file; the next Open removes it and keeps complete images.
func TestLeftoverTempFilesRemoved(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	rel := makeRelease(t, "7.0.0", t0.Add(time.Hour), image(100, "v7"), f.keys[0])
	r, err := f.store.Upload(context.Background(), "alice", rel.manifest, rel.bundles, bytes.NewReader(rel.image))
	if err != nil {
		t.Fatal(err)
	}
	f.store.Close()
	if err := os.WriteFile(filepath.Join(f.dir, firmware.ImagesDir, ".tmp-123"), []byte("half an ima"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.open(t, f.trust)
	if names := f.imageFiles(t); len(names) != 1 || names[0] != r.ImageDigest() {
		t.Fatalf("images after restart: %v", names)
	}
}

func TestInvalidActor(t *testing.T) {
	f := newFixture(t, 2, 1, 1)
	rel := makeRelease(t, "8.0.0", t0.Add(time.Hour), image(100, "v8"), f.keys[0])
	for _, actor := range []string{"", "a\nb", strings.Repeat("x", 300)} {
		if _, err := f.store.Upload(context.Background(), actor, rel.manifest, rel.bundles, bytes.NewReader(rel.image)); !errors.Is(err, firmware.ErrInvalid) {
			t.Errorf("actor %q: %v", actor, err)
		}
	}
}
