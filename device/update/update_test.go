package update_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestCommit takes an update through every phase of a successful install
// and checks what the device and the fleet see afterwards.
func TestCommit(t *testing.T) {
	e := newEnv(t)
	eng := e.engine()
	img := image("v2", 300<<10)
	m, b := release("2.0.0", 3, img)
	rep := e.run(eng, "u1", m, b, e.srv.put("/v2.img", img))

	want := phaseList(update.PhaseAnnounced, update.PhaseDownloading, update.PhaseVerifying, update.PhaseInstalling,
		update.PhaseSwitching, update.PhaseRebooting, update.PhaseHealth, update.PhaseCommitting, update.PhaseAdvancingFloor, update.PhaseCommitted)
	if got := phaseList(e.rep.phases("u1")...); got != want {
		t.Fatalf("phases reported:\n got %s\nwant %s", got, want)
	}
	if rep.Phase != update.PhaseCommitted || rep.Reason != wire.ReasonOK || rep.Running != "2.0.0" || rep.Slot != "b" ||
		rep.Version != "2.0.0" || rep.Name != "gw-firmware" || rep.Message != "" {
		t.Fatalf("final report: %+v", rep)
	}
	if s := e.state(); s.Active != "b" || s.Booted != "b" || s.Pending != "" || s.Boot != 2 {
		t.Fatalf("boot record: %+v", s)
	}
	if got, _ := os.ReadFile(e.fb.Image("b")); !bytes.Equal(got, img) {
		t.Fatal("slot b does not hold the image")
	}
	if v, _ := e.counter.SecurityVersion(); v != 3 {
		t.Fatalf("anti-rollback counter %d, want 3", v)
	}
	st, err := eng.Status(context.Background())
	if err != nil || st.Slot != "b" || st.Version != "2.0.0" || st.Update.Phase != string(update.PhaseCommitted) {
		t.Fatalf("status: %+v, %v", st, err)
	}
	if q, _ := e.store.UnreportedUpdates(); len(q) != 0 {
		t.Fatalf("acknowledged report still queued: %+v", q)
	}
	if files, _ := filepath.Glob(filepath.Join(e.dir, "work", "*")); len(files) != 0 {
		t.Fatalf("downloads left behind: %v", files)
	}

	// A second update goes the other way, into slot a.
	img3 := image("v3", 1000)
	m, b = release("3.0.0", 3, img3)
	rep = e.run(eng, "u2", m, b, e.srv.put("/v3.img", img3))
	if rep.Phase != update.PhaseCommitted || rep.Running != "3.0.0" || rep.Slot != "a" {
		t.Fatalf("second update: %+v", rep)
	}
	if got, _ := os.ReadFile(e.fb.Image("a")); !bytes.Equal(got, img3) {
		t.Fatal("slot a does not hold the second image")
	}
}

// TestRefusals checks each way a release is refused before anything is
// installed: the device keeps running the old image, the other slot is not
// touched, the reason reaches the fleet, and no download is left behind.
func TestRefusals(t *testing.T) {
	img := image("v2", 5000)
	good := func() testManifest {
		m, _ := release("2.0.0", 5, img)
		return mustManifest(t, m)
	}
	for _, c := range []struct {
		name   string
		setup  func(e *env) (manifest, bundle []byte, url string)
		reason wire.Reason
	}{
		{"untrusted signature", func(e *env) ([]byte, []byte, string) {
			m, _ := sign(good())
			return m, []byte("00"), e.srv.put("/i", img)
		}, wire.ReasonFirmwareSignature},
		{"tampered manifest", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			return bytes.Replace(m, []byte(`"2.0.0"`), []byte(`"2.0.1"`), 1), b, e.srv.put("/i", img)
		}, wire.ReasonFirmwareSignature},
		{"expired", func(e *env) ([]byte, []byte, string) {
			g := good()
			g.Expires = testNow.Add(-time.Second)
			m, b := sign(g)
			return m, b, e.srv.put("/i", img)
		}, wire.ReasonFirmwareExpired},
		{"other model", func(e *env) ([]byte, []byte, string) {
			g := good()
			g.Model = "gw-2"
			m, b := sign(g)
			return m, b, e.srv.put("/i", img)
		}, wire.ReasonFirmwareModel},
		{"security version below the counter", func(e *env) ([]byte, []byte, string) {
			e.counter.AdvanceSecurityVersion(6)
			m, b := sign(good())
			return m, b, e.srv.put("/i", img)
		}, wire.ReasonFirmwareRollback},
		{"security version jumps too far", func(e *env) ([]byte, []byte, string) {
			g := good()
			g.SecurityVersion = update.DefaultMaxSecurityStep + 1
			m, b := sign(g)
			return m, b, e.srv.put("/i", img)
		}, wire.ReasonFirmwareInstall},
		{"image with another digest", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			other := bytes.Clone(img)
			other[100] ^= 1
			return m, b, e.srv.put("/i", other)
		}, wire.ReasonFirmwareDigest},
		{"valid signature over another image", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			return m, b, e.srv.put("/i", image("v9", len(img)))
		}, wire.ReasonFirmwareDigest},
		{"image larger than the manifest", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			return m, b, e.srv.put("/i", append(bytes.Clone(img), "more"...))
		}, wire.ReasonFirmwareDigest},
		{"image shorter than the manifest", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			return m, b, e.srv.put("/i", img[:len(img)-1])
		}, wire.ReasonFirmwareDownload},
		{"image not found", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			return m, b, e.srv.URL + "/missing"
		}, wire.ReasonFirmwareDownload},
		{"plain http", func(e *env) ([]byte, []byte, string) {
			m, b := sign(good())
			return m, b, strings.Replace(e.srv.put("/i", img), "https://", "http://", 1)
		}, wire.ReasonFirmwareDownload},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			m, b, url := c.setup(e)
			before, _ := e.counter.SecurityVersion()
			rep := e.run(e.engine(), "u1", m, b, url)
			if rep.Phase != update.PhaseFailed || rep.Reason != c.reason {
				t.Fatalf("got %s/%s (%q), want failed/%s", rep.Phase, rep.Reason, rep.Message, c.reason)
			}
			if rep.Running != "1.0.0" || rep.Slot != "a" {
				t.Fatalf("running %q in slot %q, want 1.0.0 in a", rep.Running, rep.Slot)
			}
			if s := e.state(); s.Booted != "a" || s.Active != "a" || s.Pending != "" {
				t.Fatalf("boot record changed: %+v", s)
			}
			if _, err := os.Stat(e.fb.Image("b")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("slot b written: %v", err)
			}
			if after, _ := e.counter.SecurityVersion(); after != before {
				t.Fatalf("counter moved from %d to %d", before, after)
			}
			if files, _ := filepath.Glob(filepath.Join(e.dir, "work", "*")); len(files) != 0 {
				t.Fatalf("downloads left behind: %v", files)
			}
		})
	}
}

func mustManifest(t *testing.T, b []byte) testManifest {
	t.Helper()
	var m testManifest
	if err := jsonUnmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestHealthFailureRollsBack installs an image that fails its health check:
// the device goes back to the old slot, reports the old version as running,
// and the anti-rollback counter stays where it was.
func TestHealthFailureRollsBack(t *testing.T) {
	e := newEnv(t)
	eng := e.engine()
	img := image("v2-unhealthy", 4000)
	m, b := release("2.0.0", 4, img)
	rep := e.run(eng, "u1", m, b, e.srv.put("/v2.img", img))
	want := phaseList(update.PhaseAnnounced, update.PhaseDownloading, update.PhaseVerifying, update.PhaseInstalling,
		update.PhaseSwitching, update.PhaseRebooting, update.PhaseHealth, update.PhaseRollingBack, update.PhaseRolledBack)
	if got := phaseList(e.rep.phases("u1")...); got != want {
		t.Fatalf("phases reported:\n got %s\nwant %s", got, want)
	}
	if rep.Reason != wire.ReasonFirmwareHealth || rep.Running != "1.0.0" || rep.Slot != "a" || rep.Version != "2.0.0" {
		t.Fatalf("final report: %+v", rep)
	}
	if s := e.state(); s.Active != "a" || s.Booted != "a" || s.Pending != "" || s.Boot != 3 {
		t.Fatalf("boot record: %+v", s)
	}
	if v, _ := e.counter.SecurityVersion(); v != 0 {
		t.Fatalf("counter advanced to %d by a rolled-back release", v)
	}
	st, err := eng.Status(context.Background())
	if err != nil || st.Version != "1.0.0" || st.Slot != "a" {
		t.Fatalf("status: %+v, %v", st, err)
	}

	// After a committed update, a failed one falls back to that one: the
	// running version reported is the committed one, not the factory's.
	good := image("v3", 4000)
	m, b = release("3.0.0", 4, good)
	if rep := e.run(eng, "u2", m, b, e.srv.put("/v3.img", good)); rep.Phase != update.PhaseCommitted || rep.Slot != "b" {
		t.Fatalf("u2: %+v", rep)
	}
	bad := image("v4-unhealthy", 4000)
	m, b = release("4.0.0", 5, bad)
	rep = e.run(eng, "u3", m, b, e.srv.put("/v4.img", bad))
	if rep.Phase != update.PhaseRolledBack || rep.Running != "3.0.0" || rep.Slot != "b" {
		t.Fatalf("u3: %+v", rep)
	}
	if v, _ := e.counter.SecurityVersion(); v != 4 {
		t.Fatalf("counter %d, want 4 (u2's)", v)
	}
}

// TestBootLoaderFallback: the new slot never comes up (the board resets
// during its first boot and the boot loader boots the old slot). The
// engine must report the old version as running.
func TestBootLoaderFallback(t *testing.T) {
	e := newEnv(t)
	img := image("v2", 4000)
	m, b := release("2.0.0", 1, img)
	// Power is lost as soon as the switch is recorded: the try-once boot
	// of slot b is used up by a boot that never reaches sigild.
	eng := e.engine(func(c *update.Config) {
		c.Persisted = func(p update.Phase) {
			if p == update.PhaseRebooting {
				ctx := context.Background()
				e.fb.Reboot(ctx) // boots b once...
				e.fb.Reboot(ctx) // ...which dies; the boot loader falls back to a
			}
		}
	})
	rep := e.run(eng, "u1", m, b, e.srv.put("/v2.img", img))
	if rep.Phase != update.PhaseRolledBack || rep.Reason != wire.ReasonFirmwareHealth || rep.Running != "1.0.0" || rep.Slot != "a" {
		t.Fatalf("final report: %+v", rep)
	}
	if !strings.Contains(rep.Message, "fell back") {
		t.Fatalf("message %q does not say the boot loader fell back", rep.Message)
	}
}

// TestTruncatedDownloadResumes cuts the connection halfway, stops the
// engine, and starts a new one on the same state: it resumes with a Range
// request from where the partial file ends, and the update commits.
func TestTruncatedDownloadResumes(t *testing.T) {
	e := newEnv(t)
	img := image("v2", 256<<10)
	m, b := release("2.0.0", 1, img)
	url := e.srv.put("/v2.img", img)
	e.srv.cutNext("/v2.img", 100<<10, nil)

	ctx, cancel := context.WithCancel(context.Background())
	eng := e.engine(func(c *update.Config) { c.RetryDelay = time.Hour })
	if err := eng.Announce(update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: url}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- eng.Resume(ctx) }()
	// The first attempt fails; the engine then waits an hour to retry.
	wait.For(t, "the first attempt to fail", func() bool {
		u, err := e.store.Update()
		return err == nil && u.Attempts == 1
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Resume: %v", err)
	}
	part, err := os.Stat(filepath.Join(e.dir, "work", "u1.part"))
	if err != nil || part.Size() == 0 || part.Size() >= int64(len(img)) {
		t.Fatalf("partial download: %v %v", part, err)
	}

	// A new engine (a restarted sigild) resumes the download.
	if err := e.engine().Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rep := e.final("u1"); rep.Phase != update.PhaseCommitted {
		t.Fatalf("final report: %+v", rep)
	}
	ranges := e.srv.rangesOf("/v2.img")
	want := "bytes=" + itoa(part.Size()) + "-"
	if len(ranges) != 2 || ranges[0] != "" || ranges[1] != want {
		t.Fatalf("requests' Range headers %q, want [\"\" %q]", ranges, want)
	}
	if ifr := e.srv.ifRangesOf("/v2.img"); ifr[1] != etag(img) {
		t.Fatalf("resume's If-Range %q, want the first response's ETag %q", ifr[1], etag(img))
	}
	if got, _ := os.ReadFile(e.fb.Image("b")); !bytes.Equal(got, img) {
		t.Fatal("resumed image differs")
	}
}

// TestChangedImageStartsOver: the partial download left by an earlier run
// came from another image (the server's file was replaced since). The
// resume's If-Range no longer matches, the server sends the whole image,
// and the update commits with it instead of splicing two images. A kept
// validator torn by a crash resumes unconditionally rather than failing.
func TestChangedImageStartsOver(t *testing.T) {
	img := image("v2", 64<<10)
	for _, c := range []struct {
		name, validator string
		part            []byte
		wantIfRange     string
		wantRequests    int
	}{
		{"replaced image", `"the image before"`, image("v2-old", 20<<10), `"the image before"`, 1},
		{"torn validator", "\x00\x00\x00", img[:20<<10], "", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			m, b := release("2.0.0", 1, img)
			url := e.srv.put("/v2.img", img)
			work := filepath.Join(e.dir, "work")
			if err := os.MkdirAll(work, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(work, "u1.part"), c.part, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(work, "u1.validator"), []byte(c.validator), 0o600); err != nil {
				t.Fatal(err)
			}
			if rep := e.run(e.engine(), "u1", m, b, url); rep.Phase != update.PhaseCommitted {
				t.Fatalf("final report: %+v", rep)
			}
			if got, _ := os.ReadFile(e.fb.Image("b")); !bytes.Equal(got, img) {
				t.Fatal("installed image differs")
			}
			ranges, ifr := e.srv.rangesOf("/v2.img"), e.srv.ifRangesOf("/v2.img")
			if len(ranges) != c.wantRequests || ranges[0] != "bytes=20480-" || ifr[0] != c.wantIfRange {
				t.Fatalf("requests: Range %q, If-Range %q", ranges, ifr)
			}
			if files, _ := filepath.Glob(filepath.Join(work, "*")); len(files) != 0 {
				t.Fatalf("left in the download directory: %v", files)
			}
		})
	}
}

// TestServerIgnoringRange: a server that answers a range request with the
// whole image must not produce a corrupt file.
func TestServerIgnoringRange(t *testing.T) {
	e := newEnv(t)
	img := image("v2", 64<<10)
	m, b := release("2.0.0", 1, img)
	// A stale partial file of the same update, and a server that will
	// ignore ranges (a plain handler without Range support).
	ignoring := newPlainServer(t, img)
	if err := os.MkdirAll(filepath.Join(e.dir, "work"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "work", "u1.part"), img[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	rep := e.run(e.engine(func(c *update.Config) { c.Fetcher = fetcher(ignoring) }), "u1", m, b, ignoring.URL+"/i")
	if rep.Phase != update.PhaseCommitted {
		t.Fatalf("final report: %+v", rep)
	}
	if got, _ := os.ReadFile(e.fb.Image("b")); !bytes.Equal(got, img) {
		t.Fatal("image differs")
	}
}

// TestFinalReportSurvivesRestart: the fleet is unreachable when the update
// finishes; a restarted engine sends the final report, once.
func TestFinalReportSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	e.rep.setFail(true)
	img := image("v2", 2000)
	m, b := release("2.0.0", 1, img)
	eng := e.engine()
	if err := eng.Announce(update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: e.srv.put("/v2.img", img)}); err != nil {
		t.Fatal(err)
	}
	if err := eng.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if q, err := e.store.UnreportedUpdates(); err != nil || len(q) != 1 || q[0].Phase != string(update.PhaseCommitted) {
		t.Fatalf("queue: %+v %v", q, err)
	}

	e.rep.setFail(false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.engine().Run(ctx) }()
	rep := <-e.rep.final
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if rep.ID != "u1" || rep.Phase != update.PhaseCommitted || rep.Running != "2.0.0" || rep.Slot != "b" {
		t.Fatalf("re-sent report: %+v", rep)
	}
	if q, _ := e.store.UnreportedUpdates(); len(q) != 0 {
		t.Fatalf("still queued: %+v", q)
	}
	if n := len(e.rep.finals()); n != 1 {
		t.Fatalf("%d final reports", n)
	}
}

// TestAnnounce covers duplicates, a second update while one is in flight,
// a repeated announcement of a finished update and malformed input.
func TestAnnounce(t *testing.T) {
	e := newEnv(t)
	eng := e.engine()
	img := image("v2", 2000)
	m, b := release("2.0.0", 1, img)
	a := update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: e.srv.put("/v2.img", img)}
	if err := eng.Announce(a); err != nil {
		t.Fatal(err)
	}
	if err := eng.Announce(a); err != nil {
		t.Fatalf("redelivered announcement: %v", err)
	}
	if err := eng.Announce(update.Announcement{ID: "u2", Manifest: m, Bundle: b, URL: a.URL}); !errors.Is(err, update.ErrBusy) {
		t.Fatalf("second update while busy: %v", err)
	}
	for _, bad := range []update.Announcement{
		{ID: "U/1", Manifest: m, URL: a.URL},
		{ID: "u3", URL: a.URL},
		{ID: "u3", Manifest: m},
		{ID: "u3", Manifest: make([]byte, update.MaxAnnouncement+1), URL: a.URL},
		{ID: "u3", Manifest: m, Bundle: make([]byte, update.MaxAnnouncement+1), URL: a.URL},
	} {
		if err := eng.Announce(bad); err == nil || !strings.HasPrefix(err.Error(), "update: ") {
			t.Fatalf("announcement %+v: %v", bad.ID, err)
		}
	}
	if err := eng.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(e.rep.finals()); n != 1 {
		t.Fatalf("%d final reports", n)
	}
	// The fleet announces it again (it lost the report): it is sent again,
	// and nothing is installed twice.
	if err := eng.Announce(a); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	<-e.rep.final // the first one, already there
	rep := <-e.rep.final
	cancel()
	<-done
	if rep.ID != "u1" || rep.Phase != update.PhaseCommitted {
		t.Fatalf("re-sent report: %+v", rep)
	}
	if s := e.state(); s.Boot != 2 {
		t.Fatalf("re-announcement rebooted the device: %+v", s)
	}
	// A new update is accepted once the last one is final.
	img3 := image("v3", 2000)
	m, b = release("3.0.0", 1, img3)
	if err := eng.Announce(update.Announcement{ID: "u2", Manifest: m, Bundle: b, URL: e.srv.put("/v3.img", img3)}); err != nil {
		t.Fatal(err)
	}
}

func TestNewChecksConfig(t *testing.T) {
	_, err := update.New(update.Config{})
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, field := range []string{"Store", "Backend", "Verifier", "Counter", "Dir"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
	e := newEnv(t)
	cfg := e.config()
	cfg.PCR = 24
	if _, err := update.New(cfg); err == nil {
		t.Fatal("PCR 24 accepted")
	}
}

// TestResumeUnknownPhase: a record this engine does not understand (from a
// newer sigild, or damaged) ends the update without touching the slots.
func TestResumeUnknownPhase(t *testing.T) {
	e := newEnv(t)
	if err := e.store.SaveUpdate(&state.Update{ID: "u1", Phase: "defragmenting"}); err != nil {
		t.Fatal(err)
	}
	if err := e.engine().Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep := e.final("u1")
	if rep.Phase != update.PhaseFailed || rep.Running != "1.0.0" || rep.Slot != "a" {
		t.Fatalf("%+v", rep)
	}
}
