package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/internal/clocktest"
)

// host is the console's host name in these tests; requests carry it as
// Host and (for posts) as their Origin.
const host = "fleet.test"

// caRotation drives the real CA's generations for the API's CA routes
// (fleet/server does the same plus pushing bundles to devices).
type caRotation struct{ ca *ca.CA }

func (r caRotation) PrepareCA(string) (ca.Generation, error) { return r.ca.Prepare() }
func (r caRotation) ActivateCA(string, float64) (ca.Generation, *rotation.Job, error) {
	g, err := r.ca.Activate()
	return g, nil, err
}
func (r caRotation) RetireCA(string) ([]ca.Generation, error) { return r.ca.Retire() }

// deliveries is a secrets service that only reports delivery states: the
// console reads nothing else from it.
type deliveries map[string][]api.DeviceSecret

func (d deliveries) DeviceSecrets(id string) ([]api.DeviceSecret, error) { return d[id], nil }

// fixture is a console over the real stores and services the fleet uses
// (inventory, operators, attestation history, policies, CA, enrollment,
// rotation) behind the real API handler.
type fixture struct {
	t       testing.TB
	clock   *clocktest.Clock
	auth    *auth.Service
	inv     *inventory.Store
	hist    *attest.History
	pol     *policy.Store
	ca      *ca.CA
	secrets deliveries
	api     http.Handler
	console *console.Console
	sent    chan string // device IDs the fleet sent a message to
}

func newFixture(t testing.TB, mod func(*console.Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, clock: clocktest.New(time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)), secrets: deliveries{}, sent: make(chan string, 100)}
	var err error
	if f.auth, err = auth.Open(auth.Config{Path: filepath.Join(dir, "operators.db"), NoSync: true, Now: f.clock.Now,
		Params: auth.Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.auth.Close() })
	if f.inv, err = inventory.Open(filepath.Join(dir, "inventory.db"), inventory.WithNoSync(), inventory.WithClock(f.clock.Now)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.inv.Close() })
	if f.hist, err = attest.OpenHistory(filepath.Join(dir, "attestations.db"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.hist.Close() })
	if f.pol, err = policy.Open(filepath.Join(dir, "policies.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.pol.Close() })
	if f.ca, err = ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "sigil.test"}); err != nil {
		t.Fatal(err)
	}
	send := func(id, _ string, _ []byte) error {
		select {
		case f.sent <- id:
		default:
		}
		return nil
	}
	att, err := attest.New(attest.Config{Inventory: f.inv, History: f.hist, Policies: f.pol, Send: send, Disconnect: func(string) {}, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := rotation.OpenJobs(filepath.Join(dir, "rotations.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { jobs.Close() })
	rot, err := rotation.New(rotation.Config{CA: f.ca, Inventory: f.inv, Attest: att, Jobs: jobs, Send: send, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	enr, err := enroll.New(enroll.Config{CA: f.ca, Inventory: f.inv, Trust: &verifier.EKTrust{}, Send: send, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.api = api.New(api.Config{
		Inventory: f.inv, Approver: enr, Attestation: att, Policies: f.pol, Rotation: rot, CA: f.ca, CARotation: caRotation{f.ca},
		Auth: f.auth, Quarantiner: governance.InventoryQuarantiner{Inventory: f.inv, Now: f.clock.Now},
		Now: f.clock.Now,
	})
	cfg := console.Config{Auth: f.auth, API: f.api, Inventory: f.inv, Attestations: att, Policies: f.pol,
		Secrets: f.secrets, CA: f.ca, Now: f.clock.Now}
	if mod != nil {
		mod(&cfg)
	}
	if f.console, err = console.New(cfg); err != nil {
		t.Fatal(err)
	}
	return f
}

// devID is a device ID like the fleet's (64 hex digits).
func devID(i int) string { return fmt.Sprintf("%064x", 0xd000+i) }

// ekFP is an EK fingerprint.
func ekFP(i int) string { return fmt.Sprintf("%064x", 0xe000+i) }

// addDevice stores a device; mod adjusts it first.
func (f *fixture) addDevice(i int, state inventory.State, mod func(*inventory.Device)) *inventory.Device {
	f.t.Helper()
	d := &inventory.Device{ID: devID(i), EKFingerprint: ekFP(i), State: state, Model: "gw-1", Serial: fmt.Sprintf("SN-%04d", i),
		TrustPath: inventory.TrustEKCA, FirstSeen: f.clock.Now().Add(-48 * time.Hour), LastSeen: f.clock.Now().Add(-time.Minute)}
	if state == inventory.StateActive || state == inventory.StateQuarantined {
		d.CertSerial = fmt.Sprintf("%x", 0xc000+i)
		d.CertExpiry = f.clock.Now().Add(20 * 24 * time.Hour)
		d.EnrolledAt = d.FirstSeen
	}
	if mod != nil {
		mod(d)
	}
	if err := f.inv.PutDevice(context.Background(), d); err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fixture) device(id string) *inventory.Device {
	f.t.Helper()
	d, err := f.inv.Device(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// session is a logged-in browser.
type session struct {
	f      *fixture
	user   string
	cookie *http.Cookie
	csrf   string
}

// login creates a user with the role and logs them in.
func (f *fixture) login(name string, role auth.Role) *session {
	f.t.Helper()
	pw := "password of " + name
	if _, err := f.auth.CreateUser(context.Background(), name, pw, role); err != nil {
		f.t.Fatal(err)
	}
	sess, err := f.auth.Login(context.Background(), name, pw, "192.0.2.10")
	if err != nil {
		f.t.Fatal(err)
	}
	return &session{f: f, user: name, cookie: f.auth.Cookie(sess), csrf: sess.CSRFToken}
}

// serve runs a request through the console.
func (f *fixture) serve(r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	f.console.ServeHTTP(w, r)
	return w
}

func newRequest(method, path string, body io.Reader) *http.Request {
	r := httptest.NewRequest(method, "https://"+host+path, body)
	r.RemoteAddr = "192.0.2.10:40000"
	return r
}

// get fetches a page as a browser would; s may be nil (no session).
func (f *fixture) get(s *session, path string) *httptest.ResponseRecorder {
	r := newRequest(http.MethodGet, path, nil)
	if s != nil {
		r.AddCookie(s.cookie)
	}
	return f.serve(r)
}

// post submits a form from the console's own page, with the session's
// CSRF token.
func (s *session) post(path string, form url.Values) *httptest.ResponseRecorder {
	if form == nil {
		form = url.Values{}
	}
	form.Set(auth.CSRFField, s.csrf)
	return s.postRaw(path, form)
}

// postRaw submits the form as it is (no CSRF token added).
func (s *session) postRaw(path string, form url.Values) *httptest.ResponseRecorder {
	r := newRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", "https://"+host)
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	if s != nil {
		r.AddCookie(s.cookie)
	}
	return s.f.serve(r)
}

func (s *session) get(path string) *httptest.ResponseRecorder { return s.f.get(s, path) }

// body returns the answer's body, failing unless the status is want.
func body(t testing.TB, w *httptest.ResponseRecorder, want int) string {
	t.Helper()
	if w.Code != want {
		t.Fatalf("status %d, want %d; body:\n%s", w.Code, want, w.Body.String())
	}
	return w.Body.String()
}

// redirect checks a 303 and returns its target.
func redirect(t testing.TB, w *httptest.ResponseRecorder) string {
	t.Helper()
	if w.Code != http.StatusSeeOther {
		t.Fatalf("status %d, want 303; body:\n%s", w.Code, w.Body.String())
	}
	return w.Header().Get("Location")
}

func mustContain(t testing.TB, page string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(page, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

func mustNotContain(t testing.TB, page string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(page, b) {
			t.Errorf("page contains %q", b)
		}
	}
}
