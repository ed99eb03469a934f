package update_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// The tests' stand-in for firmware/verify: a JSON manifest "signed" with
// an HMAC key. It makes the same kinds of refusal (signature, expiry,
// model) so the engine's handling of each can be checked.

var (
	testKey   = []byte("release key of the tests")
	testModel = "gw-1"
	testNow   = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

type testManifest struct {
	Name            string    `json:"name"`
	Version         string    `json:"version"`
	SecurityVersion uint64    `json:"security_version"`
	Size            int64     `json:"size"`
	SHA256          string    `json:"sha256"`
	Model           string    `json:"model"`
	Expires         time.Time `json:"expires"`
	BlockSize       int64     `json:"block_size,omitempty"`
	IndexSHA256     string    `json:"index_sha256,omitempty"`
}

// release returns a signed manifest and bundle for img.
func release(version string, sv uint64, img []byte) (manifest, bundle []byte) {
	d := sha256.Sum256(img)
	return sign(testManifest{Name: "gw-firmware", Version: version, SecurityVersion: sv, Size: int64(len(img)),
		SHA256: hex.EncodeToString(d[:]), Model: testModel, Expires: testNow.Add(24 * time.Hour)})
}

func sign(m testManifest) (manifest, bundle []byte) {
	manifest, _ = json.Marshal(m)
	mac := hmac.New(sha256.New, testKey)
	mac.Write(manifest)
	return manifest, []byte(hex.EncodeToString(mac.Sum(nil)))
}

func testVerifier() update.Verifier {
	return update.VerifierFunc(func(manifest, bundle []byte) (*update.Release, error) {
		mac := hmac.New(sha256.New, testKey)
		mac.Write(manifest)
		want := hex.EncodeToString(mac.Sum(nil))
		if !hmac.Equal([]byte(want), bundle) {
			return nil, wire.Refuse(wire.ReasonFirmwareSignature, "bad signature", nil)
		}
		var m testManifest
		if err := json.Unmarshal(manifest, &m); err != nil {
			return nil, wire.Refuse(wire.ReasonFirmwareSignature, "manifest does not parse", err)
		}
		if !testNow.Before(m.Expires) {
			return nil, wire.Refuse(wire.ReasonFirmwareExpired, "release metadata expired", nil)
		}
		if m.Model != testModel {
			return nil, wire.Refuse(wire.ReasonFirmwareModel, "built for "+m.Model, nil)
		}
		d, err := hex.DecodeString(m.SHA256)
		if err != nil {
			return nil, wire.Refuse(wire.ReasonFirmwareSignature, "bad digest", err)
		}
		ix, _ := hex.DecodeString(m.IndexSHA256)
		return &update.Release{Name: m.Name, Version: m.Version, SecurityVersion: m.SecurityVersion, Size: m.Size, SHA256: d,
			BlockSize: m.BlockSize, IndexSHA256: ix}, nil
	})
}

// memCounter is an anti-rollback counter with the TPM counter's rule: it
// only goes up.
type memCounter struct {
	mu sync.Mutex
	v  uint64
}

func (c *memCounter) SecurityVersion() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.v, nil
}

func (c *memCounter) AdvanceSecurityVersion(to uint64) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.v = max(c.v, to)
	return c.v, nil
}

// recorder is a Reporter that keeps every report; it refuses them while
// fail is set.
type recorder struct {
	mu      sync.Mutex
	reports []update.Report
	fail    bool
	final   chan update.Report
}

func newRecorder() *recorder { return &recorder{final: make(chan update.Report, 16)} }

func (r *recorder) Report(_ context.Context, rep update.Report) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("fleet unreachable")
	}
	r.reports = append(r.reports, rep)
	if rep.Final {
		r.final <- rep
	}
	return nil
}

func (r *recorder) setFail(b bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = b
}

// phases returns the phases reported for id, in order, without repeats
// of the same phase in a row.
func (r *recorder) phases(id string) []update.Phase {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []update.Phase
	for _, rep := range r.reports {
		if rep.ID == id && (len(out) == 0 || out[len(out)-1] != rep.Phase) {
			out = append(out, rep.Phase)
		}
	}
	return out
}

func (r *recorder) finals() []update.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []update.Report
	for _, rep := range r.reports {
		if rep.Final {
			out = append(out, rep)
		}
	}
	return out
}

// imageServer serves images over HTTPS with Range support (net/http's
// ServeContent). cut makes the next request for a path end after n bytes,
// with the connection dropped.
type imageServer struct {
	*httptest.Server
	mu       sync.Mutex
	images   map[string][]byte
	etags    map[string]string   // path -> ETag, computed once (as the fleet's, from the digest)
	requests map[string][]string // path -> Range header of each request
	ifRanges map[string][]string // path -> If-Range header of each request
	cut      map[string]int
	onCut    func() // called after a cut response's bytes were flushed
}

func newImageServer(t testing.TB) *imageServer {
	s := &imageServer{images: map[string][]byte{}, etags: map[string]string{}, requests: map[string][]string{}, ifRanges: map[string][]string{}, cut: map[string]int{}}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *imageServer) put(path string, img []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.images[path] = img
	s.etags[path] = etag(img)
	return s.URL + path
}

func (s *imageServer) cutNext(path string, n int, then func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cut[path], s.onCut = n, then
}

func (s *imageServer) rangesOf(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests[path]...)
}

func (s *imageServer) ifRangesOf(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ifRanges[path]...)
}

// etag is the ETag the image server gives img, as the fleet does: its
// digest.
func etag(img []byte) string {
	d := sha256.Sum256(img)
	return `"` + hex.EncodeToString(d[:]) + `"`
}

func (s *imageServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	img, ok := s.images[r.URL.Path]
	tag := s.etags[r.URL.Path]
	s.requests[r.URL.Path] = append(s.requests[r.URL.Path], r.Header.Get("Range"))
	s.ifRanges[r.URL.Path] = append(s.ifRanges[r.URL.Path], r.Header.Get("If-Range"))
	n, cut := s.cut[r.URL.Path]
	delete(s.cut, r.URL.Path)
	onCut := s.onCut
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", tag)
	if first, last, ok := parseRange(r.Header.Get("Range"), len(img)); cut && ok {
		// A range response cut after n bytes.
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(img)))
		w.Header().Set("Content-Length", strconv.Itoa(last-first+1))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(img[first : first+n])
		w.(http.Flusher).Flush()
		if onCut != nil {
			onCut()
		}
		panic(http.ErrAbortHandler)
	}
	if cut {
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		w.WriteHeader(http.StatusOK)
		w.Write(img[:n])
		w.(http.Flusher).Flush()
		if onCut != nil {
			onCut()
		}
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(img))
}

// env is a device: a state store, a file A/B backend and an engine config.
type env struct {
	t       testing.TB
	dir     string
	store   *state.Store
	fb      *update.FileBackend
	counter *memCounter
	rep     *recorder
	srv     *imageServer
}

// unhealthy fails the health check of images that contain "unhealthy".
func unhealthy(_ context.Context, slot, image string) error {
	b, err := os.ReadFile(image)
	if err != nil {
		return err
	}
	if bytes.Contains(b, []byte("unhealthy")) {
		return fmt.Errorf("slot %s: service did not start", slot)
	}
	return nil
}

func newEnv(t testing.TB) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := state.Open(filepath.Join(dir, "state.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fb, err := update.NewFile(update.FileConfig{Dir: filepath.Join(dir, "slots"), Health: unhealthy})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, dir: dir, store: st, fb: fb, counter: &memCounter{}, rep: newRecorder(), srv: newImageServer(t)}
}

func (e *env) config() update.Config {
	return update.Config{
		Store:      e.store,
		Backend:    e.fb,
		Verifier:   testVerifier(),
		Counter:    e.counter,
		Dir:        filepath.Join(e.dir, "work"),
		Version:    "1.0.0",
		Reporter:   e.rep,
		Fetcher:    fetcher(e.srv.Server),
		Now:        func() time.Time { return testNow },
		RetryDelay: time.Millisecond,
	}
}

func (e *env) engine(mod ...func(*update.Config)) *update.Engine {
	e.t.Helper()
	cfg := e.config()
	for _, m := range mod {
		m(&cfg)
	}
	eng, err := update.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return eng
}

// run announces and carries out an update to the end.
func (e *env) run(eng *update.Engine, id string, manifest, bundle []byte, url string) update.Report {
	e.t.Helper()
	if err := eng.Announce(update.Announcement{ID: id, Manifest: manifest, Bundle: bundle, URL: url}); err != nil {
		e.t.Fatal(err)
	}
	if err := eng.Resume(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	return e.final(id)
}

// final returns the one final report of id.
func (e *env) final(id string) update.Report {
	e.t.Helper()
	var got []update.Report
	for _, r := range e.rep.finals() {
		if r.ID == id {
			got = append(got, r)
		}
	}
	if len(got) != 1 {
		e.t.Fatalf("final reports of %s: %+v", id, got)
	}
	return got[0]
}

// state returns the backend's boot record.
func (e *env) state() update.FileState {
	e.t.Helper()
	s, err := e.fb.State()
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func image(label string, n int) []byte {
	b := bytes.Repeat([]byte(label+"|"), n/(len(label)+1)+1)
	return b[:n]
}

func phaseList(ps ...update.Phase) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ",")
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// fetcher returns a download client that trusts srv's certificate.
func fetcher(srv *httptest.Server) *fetch.Client {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return fetch.New(fetch.Config{TLS: &tls.Config{RootCAs: pool}})
}

// newPlainServer serves img whole to every request, ignoring Range.
func newPlainServer(t *testing.T, img []byte) *httptest.Server {
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		w.Write(img)
	}))
	t.Cleanup(s.Close)
	return s
}

// parseRange reads a bounded "bytes=A-B" Range header.
func parseRange(h string, size int) (first, last int, ok bool) {
	a, b, found := strings.Cut(strings.TrimPrefix(h, "bytes="), "-")
	first, err1 := strconv.Atoi(a)
	last, err2 := strconv.Atoi(b)
	if !found || err1 != nil || err2 != nil || first > last || last >= size {
		return 0, 0, false
	}
	return first, last, true
}
