package update_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Environment of the child process of TestKillAtEveryPhase.
const (
	envChild    = "SIGIL_UPDATE_TEST_CHILD" // "1" in the child
	envRoot     = "SIGIL_UPDATE_TEST_ROOT"  // device directory
	envTPM      = "SIGIL_UPDATE_TEST_TPM"   // swtpm URI
	envKillAt   = "SIGIL_UPDATE_TEST_KILL"  // phase at which the child SIGKILLs itself
	envURL      = "SIGIL_UPDATE_TEST_URL"   // image URL
	envManifest = "SIGIL_UPDATE_TEST_MANIFEST"
	envKillStep = "SIGIL_UPDATE_TEST_KILL_STEP" // adaptive step at which the child SIGKILLs itself
)

// device is what a sigild process opens: the same in the child and in the
// parent that takes over after the kill.
type device struct {
	store *state.Store
	fb    *update.FileBackend
	tpm   *tpm.TPM
	cfg   update.Config
}

func openDevice(root, tpmURI string) (*device, error) {
	st, err := state.Open(filepath.Join(root, "state.db"), state.Options{})
	if err != nil {
		return nil, err
	}
	fb, err := update.NewFile(update.FileConfig{Dir: filepath.Join(root, "slots"), Health: unhealthy})
	if err != nil {
		st.Close()
		return nil, err
	}
	tp, err := tpm.Open(tpmURI)
	if err != nil {
		st.Close()
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(root, "ca.pem"))
	if err != nil {
		st.Close()
		tp.Close()
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := fetch.New(fetch.Config{TLS: &tls.Config{RootCAs: pool}})
	return &device{store: st, fb: fb, tpm: tp, cfg: update.Config{
		Store: st, Backend: fb, Verifier: testVerifier(), Counter: tp, Measurer: tp,
		Dir: filepath.Join(root, "work"), Version: "1.0.0", Fetcher: client,
		Now: func() time.Time { return testNow }, RetryDelay: time.Millisecond,
	}}, nil
}

func (d *device) close() {
	d.store.Close()
	d.tpm.Close()
}

// killChild is the child process: it announces the update and carries it
// out, and SIGKILLs itself right after the phase named by envKillAt is
// recorded. It exits 3 if that never happens.
func killChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(4)
	}
	root := os.Getenv(envRoot)
	d, err := openDevice(root, os.Getenv(envTPM))
	if err != nil {
		fail(err)
	}
	killAt := update.Phase(os.Getenv(envKillAt))
	d.cfg.Persisted = func(p update.Phase) {
		if p == killAt {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	if step := os.Getenv(envKillStep); step != "" {
		d.cfg.AdaptiveStep = func(s string) {
			if s == step {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	eng, err := update.New(d.cfg)
	if err != nil {
		fail(err)
	}
	m, err := os.ReadFile(os.Getenv(envManifest))
	if err != nil {
		fail(err)
	}
	m, b, _ := bytes.Cut(m, []byte("\n"))
	if err := eng.Announce(update.Announcement{ID: "u1", Manifest: m, Bundle: b, URL: os.Getenv(envURL)}); err != nil {
		fail(err)
	}
	if err := eng.Resume(context.Background()); err != nil {
		fail(err)
	}
	os.Exit(3)
}

type killCase struct {
	image     string       // "healthy", "unhealthy" or "corrupt" (served image differs from the manifest)
	at        update.Phase // the child kills itself right after recording it
	powerLoss bool         // the device also restarts (the boot loader runs) before sigild resumes
	want      update.Phase
	reason    wire.Reason
	running   string
	slot      string
}

func (c killCase) name() string {
	n := c.image + "/" + string(c.at)
	if c.powerLoss {
		n += "+power-loss"
	}
	return n
}

func killCases() []killCase {
	var cases []killCase
	committed := killCase{want: update.PhaseCommitted, running: "2.0.0", slot: "b"}
	rolledBack := killCase{want: update.PhaseRolledBack, reason: wire.ReasonFirmwareHealth, running: "1.0.0", slot: "a"}
	add := func(image string, at update.Phase, powerLoss bool, outcome killCase) {
		c := outcome
		c.image, c.at, c.powerLoss = image, at, powerLoss
		cases = append(cases, c)
	}
	for _, at := range []update.Phase{update.PhaseAnnounced, update.PhaseDownloading, update.PhaseVerifying,
		update.PhaseInstalling, update.PhaseSwitching, update.PhaseRebooting, update.PhaseHealth,
		update.PhaseCommitting, update.PhaseAdvancingFloor, update.PhaseCommitted} {
		add("healthy", at, false, committed)
	}
	// Power lost once the new slot may be booting: before its commit, the
	// boot loader falls back to the old slot.
	add("healthy", update.PhaseSwitching, true, committed)
	add("healthy", update.PhaseRebooting, true, committed)
	add("healthy", update.PhaseHealth, true, rolledBack)
	add("healthy", update.PhaseCommitting, true, rolledBack)
	// Once the new slot is committed, it boots: the floor is raised after
	// the restart.
	add("healthy", update.PhaseAdvancingFloor, true, committed)
	add("healthy", update.PhaseCommitted, true, committed)
	for _, at := range []update.Phase{update.PhaseAnnounced, update.PhaseDownloading, update.PhaseVerifying,
		update.PhaseInstalling, update.PhaseSwitching, update.PhaseRebooting, update.PhaseHealth,
		update.PhaseRollingBack, update.PhaseRolledBack} {
		add("unhealthy", at, false, rolledBack)
	}
	for _, at := range []update.Phase{update.PhaseSwitching, update.PhaseRebooting, update.PhaseHealth,
		update.PhaseRollingBack, update.PhaseRolledBack} {
		add("unhealthy", at, true, rolledBack)
	}
	failed := killCase{want: update.PhaseFailed, reason: wire.ReasonFirmwareDigest, running: "1.0.0", slot: "a"}
	add("corrupt", update.PhaseVerifying, false, failed)
	add("corrupt", update.PhaseFailed, false, failed)
	return cases
}

// TestKillAtEveryPhase runs an update in a child process (this test binary
// again) that SIGKILLs itself right after recording a phase, optionally
// followed by a power loss (the boot loader runs again), then resumes in
// this process as a restarted sigild would, and checks the slot the device
// ends on, its boot record, the final report, the TPM anti-rollback counter
// and PCR 14 (extended exactly once, and only for a commit). All phases on
// the paths to committed, rolled_back and failed are covered.
func TestKillAtEveryPhase(t *testing.T) {
	if os.Getenv(envChild) == "1" {
		killChild()
		return
	}
	inst := newTPM(t)
	srv := newImageServer(t)
	healthy := image("v2", 200<<10)
	images := map[string][]byte{
		"healthy":   healthy,
		"unhealthy": image("v2-unhealthy", 200<<10),
		"corrupt":   healthy,
	}
	urls := map[string]string{
		"healthy":   srv.put("/healthy.img", images["healthy"]),
		"unhealthy": srv.put("/unhealthy.img", images["unhealthy"]),
		"corrupt":   srv.put("/corrupt.img", image("v2-evil", 200<<10)),
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	for _, c := range killCases() {
		t.Run(c.name(), func(t *testing.T) {
			root := t.TempDir()
			if err := os.WriteFile(filepath.Join(root, "ca.pem"), caPEM, 0o600); err != nil {
				t.Fatal(err)
			}
			m, b := release("2.0.0", 2, images[c.image])
			manifest := filepath.Join(root, "announcement")
			if err := os.WriteFile(manifest, append(append(m, '\n'), b...), 0o600); err != nil {
				t.Fatal(err)
			}
			counterBefore, pcrBefore := tpmState(t, inst.URI())

			cmd := exec.Command(os.Args[0], "-test.run=^TestKillAtEveryPhase$")
			cmd.Env = append(os.Environ(), envChild+"=1", envRoot+"="+root, envTPM+"="+inst.URI(),
				envKillAt+"="+string(c.at), envURL+"="+urls[c.image], envManifest+"="+manifest)
			out, err := cmd.CombinedOutput()
			if ee, ok := errors.AsType[*exec.ExitError](err); !ok || !killed(ee) {
				t.Fatalf("child was not killed at %s: %v\n%s", c.at, err, out)
			}

			d, err := openDevice(root, inst.URI())
			if err != nil {
				t.Fatal(err)
			}
			defer d.close()
			if c.powerLoss {
				if err := d.fb.Reboot(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			rep := resume(t, d)

			if rep.ID != "u1" || rep.Phase != c.want || rep.Reason != c.reason || rep.Running != c.running || rep.Slot != c.slot {
				t.Fatalf("final report %+v\nwant %s/%s running %s in slot %s", rep, c.want, c.reason, c.running, c.slot)
			}
			s, err := d.fb.State()
			if err != nil || s.Booted != c.slot || s.Active != c.slot || s.Pending != "" {
				t.Fatalf("boot record %+v, %v; want slot %s booted and active", s, err, c.slot)
			}
			counter, pcr := tpmState(t, inst.URI())
			digest := sha256.Sum256(images[c.image])
			if c.want == update.PhaseCommitted {
				if got, _ := os.ReadFile(d.fb.Image("b")); !bytes.Equal(got, images[c.image]) {
					t.Fatal("slot b does not hold the image")
				}
				if counter != max(counterBefore, 2) {
					t.Fatalf("counter %d, want %d", counter, max(counterBefore, 2))
				}
				if want := extended(pcrBefore, digest[:]); !bytes.Equal(pcr, want) {
					t.Fatalf("PCR 14 = %x, want one extension with the image digest (%x)", pcr, want)
				}
			} else {
				if counter != counterBefore {
					t.Fatalf("counter moved from %d to %d without a commit", counterBefore, counter)
				}
				if !bytes.Equal(pcr, pcrBefore) {
					t.Fatal("PCR 14 extended without a commit")
				}
			}
			if files, _ := filepath.Glob(filepath.Join(root, "work", "*")); len(files) != 0 {
				t.Fatalf("downloads left behind: %v", files)
			}
		})
	}
}

// TestKillDuringDownload kills the child (from outside, SIGKILL) while the
// image is streaming in; the restarted engine resumes the download from
// the bytes on disk.
func TestKillDuringDownload(t *testing.T) {
	if os.Getenv(envChild) == "1" {
		killChild()
		return
	}
	inst := newTPM(t)
	srv := newImageServer(t)
	img := image("v2", 512<<10)
	url := srv.put("/v2.img", img)
	root := t.TempDir()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(root, "ca.pem"), caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	m, b := release("2.0.0", 2, img)
	manifest := filepath.Join(root, "announcement")
	if err := os.WriteFile(manifest, append(append(m, '\n'), b...), 0o600); err != nil {
		t.Fatal(err)
	}
	part := filepath.Join(root, "work", "u1.part")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillDuringDownload$")
	cmd.Env = append(os.Environ(), envChild+"=1", envRoot+"="+root, envTPM+"="+inst.URI(),
		envURL+"="+url, envManifest+"="+manifest)
	started := make(chan *os.Process, 1)
	srv.cutNext("/v2.img", len(img)/2, func() {
		// Once some of the image is on disk, pull the plug (or after
		// wait.Timeout without it: the partial download check then fails).
		wait.Poll(wait.Timeout, func() bool {
			fi, err := os.Stat(part)
			return err == nil && fi.Size() > 0
		})
		(<-started).Kill()
	})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started <- cmd.Process
	err := cmd.Wait()
	if ee, ok := errors.AsType[*exec.ExitError](err); !ok || !killed(ee) {
		t.Fatalf("child was not killed: %v\n%s", err, out.String())
	}
	fi, err := os.Stat(part)
	if err != nil || fi.Size() == 0 || fi.Size() > int64(len(img)/2) {
		t.Fatalf("partial download after the kill: %v, %v", fi, err)
	}

	d, err := openDevice(root, inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if rep := resume(t, d); rep.Phase != update.PhaseCommitted || rep.Running != "2.0.0" {
		t.Fatalf("final report: %+v", rep)
	}
	ranges := srv.rangesOf("/v2.img")
	if want := fmt.Sprintf("bytes=%d-", fi.Size()); len(ranges) != 2 || ranges[1] != want {
		t.Fatalf("Range headers %q, want a second request with %q", ranges, want)
	}
	if got, _ := os.ReadFile(d.fb.Image("b")); !bytes.Equal(got, img) {
		t.Fatal("slot b does not hold the image")
	}
}

// TestKillAdaptive kills an adaptive update (SIGKILL, in a child process)
// right after each of its durable steps, and after the phases around it,
// then resumes it here: the update commits the right image, the blocks
// already in place are not fetched again, the anti-rollback counter and
// PCR 14 move exactly once.
func TestKillAdaptive(t *testing.T) {
	if os.Getenv(envChild) == "1" {
		killChild()
		return
	}
	inst := newTPM(t)
	srv := newImageServer(t)
	v1 := noise("v1", 64*testBlock)
	v2 := bytes.Clone(v1)
	for _, blk := range []int{5, 20, 40} { // three changed blocks: three ranges
		copy(v2[blk*testBlock+9:], "changed")
	}
	url := srv.put("/v2.img", v2)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	cases := []struct {
		step  string
		phase update.Phase
		// ranges the resumed engine asks for; the child asked for the others
		resumed int
	}{
		{phase: update.PhaseDownloading, resumed: 3},
		{step: update.StepIndex, resumed: 3},
		{step: update.StepLocal, resumed: 3},
		{step: update.StepRange, resumed: 2},
		{step: update.StepAssembled, resumed: 0},
		{phase: update.PhaseVerifying, resumed: 0},
		{phase: update.PhaseInstalling, resumed: 0},
	}
	for _, c := range cases {
		t.Run(c.step+string(c.phase), func(t *testing.T) {
			root := t.TempDir()
			if err := os.WriteFile(filepath.Join(root, "ca.pem"), caPEM, 0o600); err != nil {
				t.Fatal(err)
			}
			m, b, index := adaptiveRelease(t, "2.0.0", 2, v2)
			srv.put("/v2.img"+update.IndexSuffix, index)
			manifest := filepath.Join(root, "announcement")
			if err := os.WriteFile(manifest, append(append(m, '\n'), b...), 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := openDevice(root, inst.URI())
			if err != nil {
				t.Fatal(err)
			}
			err = os.WriteFile(d.fb.Image("a"), v1, 0o600)
			d.close()
			if err != nil {
				t.Fatal(err)
			}
			counterBefore, pcrBefore := tpmState(t, inst.URI())
			before := len(srv.rangesOf("/v2.img"))

			cmd := exec.Command(os.Args[0], "-test.run=^TestKillAdaptive$")
			cmd.Env = append(os.Environ(), envChild+"=1", envRoot+"="+root, envTPM+"="+inst.URI(),
				envKillAt+"="+string(c.phase), envKillStep+"="+c.step, envURL+"="+url, envManifest+"="+manifest)
			out, err := cmd.CombinedOutput()
			if ee, ok := errors.AsType[*exec.ExitError](err); !ok || !killed(ee) {
				t.Fatalf("child was not killed at %s%s: %v\n%s", c.step, c.phase, err, out)
			}
			mid := len(srv.rangesOf("/v2.img"))

			d, err = openDevice(root, inst.URI())
			if err != nil {
				t.Fatal(err)
			}
			defer d.close()
			rep := resume(t, d)
			if rep.Phase != update.PhaseCommitted || rep.Running != "2.0.0" || rep.Slot != "b" {
				t.Fatalf("final report %+v", rep)
			}
			if got, _ := os.ReadFile(d.fb.Image("b")); !bytes.Equal(got, v2) {
				t.Fatal("slot b does not hold the image")
			}
			ranges := srv.rangesOf("/v2.img")
			if mid-before != 3-c.resumed || len(ranges)-mid != c.resumed {
				t.Fatalf("range requests: %q before the kill, %q after; want %d after", ranges[before:mid], ranges[mid:], c.resumed)
			}
			for _, r := range ranges[before:] {
				if r == "" {
					t.Fatalf("a full download happened: %q", ranges[before:])
				}
			}
			counter, pcr := tpmState(t, inst.URI())
			digest := sha256.Sum256(v2)
			if counter != max(counterBefore, 2) {
				t.Fatalf("counter %d, want %d", counter, max(counterBefore, 2))
			}
			if want := extended(pcrBefore, digest[:]); !bytes.Equal(pcr, want) {
				t.Fatalf("PCR 14 = %x, want one extension with the image digest (%x)", pcr, want)
			}
			if files, _ := filepath.Glob(filepath.Join(root, "work", "*")); len(files) != 0 {
				t.Fatalf("downloads left behind: %v", files)
			}
		})
	}
}

// resume runs the engine on d as a restarted sigild does and returns the
// final report it sends.
func resume(t *testing.T, d *device) update.Report {
	t.Helper()
	rec := newRecorder()
	d.cfg.Reporter = rec
	eng, err := update.New(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	var rep update.Report
	select {
	case rep = <-rec.final:
	case <-time.After(60 * time.Second): // a safety net, not a timing assertion
		cancel()
		t.Fatal("no final report")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if q, err := d.store.UnreportedUpdates(); err != nil || len(q) != 0 {
		t.Fatalf("reports still queued: %+v, %v", q, err)
	}
	return rep
}

func killed(ee *exec.ExitError) bool {
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// tpmState reads the anti-rollback counter and PCR 14 through device/tpm
// (the TPM tests check device/tpm against tpm2-tools).
func tpmState(t *testing.T, uri string) (uint64, []byte) {
	t.Helper()
	tp, err := tpm.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	v, err := tp.SecurityVersion()
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := tp.ReadPCRs(wire.PCRSelection{Hash: wire.AlgSHA256, PCRs: []int{14}})
	if err != nil {
		t.Fatal(err)
	}
	return v, pcrs[0]
}
