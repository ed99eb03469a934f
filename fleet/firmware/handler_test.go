package firmware_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/internal/pkitest"
)

// pki is a small CA (pkitest) with a server certificate, to run the
// handler behind a real mTLS listener.
type pki struct {
	*pkitest.CA
	server tls.Certificate
}

func newPKI(t *testing.T) *pki {
	ca := pkitest.NewCA(t, "test fleet CA")
	return &pki{CA: ca, server: ca.Server(t, "fleet")}
}

// httpClient trusts the CA and presents certs.
func (p *pki) httpClient(certs ...tls.Certificate) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.Pool, Certificates: certs}}}
}

// serve runs the store's handler on an mTLS listener that verifies client
// certificates when given, as the fleet's device listener does.
func serve(t *testing.T, p *pki, h http.Handler) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(firmware.DownloadPrefix, h)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.Pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// approvedRelease uploads and approves a release and returns it.
func approvedRelease(t *testing.T, f *fixture, version string, img []byte) *firmware.Release {
	t.Helper()
	ctx := context.Background()
	rel := makeRelease(t, version, t0.Add(24*time.Hour), img, f.keys[0])
	r, err := f.store.Upload(ctx, "alice", rel.manifest, rel.bundles, bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "carol"}[:f.approvals] {
		if r, err = f.store.Approve(ctx, who, r.ID); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func get(t *testing.T, c *http.Client, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestDownloadNeedsIdentityAndAuthorization: the URL alone grants nothing.
func TestDownloadNeedsIdentityAndAuthorization(t *testing.T) {
	f := newFixture(t, 1, 1, 1)
	p := newPKI(t)
	img := image(50_000, "dl")
	r := approvedRelease(t, f, "1.0.0", img)
	pending := makeRelease(t, "1.1.0", t0.Add(time.Hour), image(1000, "pending"), f.keys[0])
	pr, err := f.store.Upload(context.Background(), "alice", pending.manifest, pending.bundles, bytes.NewReader(pending.image))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var asked []string
	authorize := func(req *http.Request, digest string) error {
		cn := req.TLS.VerifiedChains[0][0].Subject.CommonName
		mu.Lock()
		asked = append(asked, cn+" "+digest)
		mu.Unlock()
		if cn != "dev-1" {
			return errors.New("not a campaign target")
		}
		return nil
	}
	srv := serve(t, p, f.store.Handler(authorize))
	url := srv.URL + firmware.DownloadPrefix + r.ImageDigest()
	dev1 := p.httpClient(p.Client(t, "dev-1"))
	dev2 := p.httpClient(p.Client(t, "dev-2"))

	if resp, _ := get(t, p.httpClient(), url); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no client certificate: %s", resp.Status)
	}
	if resp, body := get(t, dev2, url); resp.StatusCode != http.StatusForbidden || bytes.Contains(body, img[:100]) {
		t.Errorf("device not authorized: %s", resp.Status)
	}
	resp, body := get(t, dev1, url)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, img) {
		t.Fatalf("authorized device: %s, %d bytes", resp.Status, len(body))
	}
	if resp.Header.Get("ETag") != `"`+r.ImageDigest()+`"` || resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("headers %v", resp.Header)
	}
	if err := verify.Image(bytes.NewReader(body), r.Manifest); err != nil {
		t.Fatal(err)
	}
	// An image of a release that is not approved is not served, even to an
	// authorized device.
	if resp, _ := get(t, dev1, srv.URL+firmware.DownloadPrefix+pr.ImageDigest()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unapproved release's image: %s", resp.Status)
	}
	for _, path := range []string{"nothex", strings.ToUpper(r.ImageDigest()), r.ImageDigest() + "/x", "../" + firmware.DBFile} {
		if resp, _ := get(t, dev1, srv.URL+firmware.DownloadPrefix+path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("path %q: %s", path, resp.Status)
		}
	}
	post, err := dev1.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", post.Status)
	}
	// A nil callback authorizes nobody.
	closed := serve(t, p, f.store.Handler(nil))
	if resp, _ := get(t, dev1, closed.URL+firmware.DownloadPrefix+r.ImageDigest()); resp.StatusCode != http.StatusForbidden {
		t.Errorf("nil authorize: %s", resp.Status)
	}
	mu.Lock()
	if len(asked) == 0 || asked[0] != "dev-2 "+r.ImageDigest() {
		t.Errorf("authorize saw %q", asked)
	}
	mu.Unlock()

	// Withdrawing the release stops the downloads.
	if _, err := f.store.Withdraw(context.Background(), "dave", r.ID, "recall"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(t, dev1, url); resp.StatusCode != http.StatusNotFound {
		t.Errorf("withdrawn release's image: %s", resp.Status)
	}
}

// TestDownloadResume: a download cut off midway resumes from where it
// stopped with a range request, and the joined image verifies.
func TestDownloadResume(t *testing.T) {
	f := newFixture(t, 1, 1, 1)
	p := newPKI(t)
	img := image(300_000, "resume")
	r := approvedRelease(t, f, "2.0.0", img)
	srv := serve(t, p, f.store.Handler(func(*http.Request, string) error { return nil }))
	url := srv.URL + firmware.DownloadPrefix + r.ImageDigest()
	dev := p.httpClient(p.Client(t, "dev-1"))

	// The first attempt stops after 100 000 bytes (connection lost).
	resp, err := dev.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	etag := resp.Header.Get("ETag")
	part := make([]byte, 100_000)
	if _, err := io.ReadFull(resp.Body, part); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	resp2, rest := get(t, dev, url, "Range", fmt.Sprintf("bytes=%d-", len(part)), "If-Range", etag)
	if resp2.StatusCode != http.StatusPartialContent {
		t.Fatalf("resume: %s", resp2.Status)
	}
	if want := fmt.Sprintf("bytes %d-%d/%d", len(part), len(img)-1, len(img)); resp2.Header.Get("Content-Range") != want {
		t.Errorf("Content-Range %q, want %q", resp2.Header.Get("Content-Range"), want)
	}
	joined := append(part, rest...)
	if err := verify.Image(bytes.NewReader(joined), r.Manifest); err != nil {
		t.Fatalf("resumed image: %v", err)
	}

	// A stale validator (another image) gets the whole image, not a
	// mismatched tail.
	resp3, all := get(t, dev, url, "Range", "bytes=100000-", "If-Range", `"0000"`)
	if resp3.StatusCode != http.StatusOK || !bytes.Equal(all, img) {
		t.Fatalf("If-Range mismatch: %s, %d bytes", resp3.Status, len(all))
	}
	// Only the first part is not the image: the device's check says so.
	if err := verify.Image(bytes.NewReader(part), r.Manifest); !errors.Is(err, verify.ErrImage) {
		t.Fatalf("partial image accepted: %v", err)
	}
}
