package rotation

import (
	"bytes"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	bolt "go.etcd.io/bbolt"
)

type jobFixture struct {
	svc       *Service
	inv       *inventory.Store
	jobs      *Jobs
	now       time.Time
	mu        sync.Mutex
	sent      map[string]int
	connected map[string]bool
}

func newJobFixture(t *testing.T, n int) (*jobFixture, []string) {
	t.Helper()
	dir := t.TempDir()
	f := &jobFixture{now: time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC), sent: map[string]int{}, connected: map[string]bool{}}
	var err error
	if f.inv, err = inventory.Open(filepath.Join(dir, "inventory.db"), inventory.WithNoSync()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.inv.Close() })
	if f.jobs, err = openJobs(t, filepath.Join(dir, "rotations.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.jobs.Close() })
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%032x", i+1)
		f.connected[ids[i]] = true
		if err := f.inv.PutDevice(t.Context(), &inventory.Device{ID: ids[i], EKFingerprint: fmt.Sprintf("%064x", i+1), State: inventory.StateActive, CertSerial: "01"}); err != nil {
			t.Fatal(err)
		}
	}
	f.svc = &Service{cfg: Config{Inventory: f.inv, Jobs: f.jobs, Now: func() time.Time { return f.now },
		Connected: func(id string) bool { f.mu.Lock(); defer f.mu.Unlock(); return f.connected[id] },
		Send:      func(id, _ string, _ []byte) error { f.mu.Lock(); f.sent[id]++; f.mu.Unlock(); return nil }}, log: slog.New(slog.DiscardHandler)}
	return f, ids
}

func (f *jobFixture) progress(t *testing.T, id string) Progress {
	t.Helper()
	j, err := f.svc.Job(id)
	if err != nil {
		t.Fatal(err)
	}
	return j.Progress()
}

// TestJobSteps: a step asks at most Rate devices; renewals are counted as
// Renew reports them; a device no longer active is done when the step
// reaches it; an unreachable device is asked once it connects; the job is
// done when every device is.
func TestJobSteps(t *testing.T) {
	f, ids := newJobFixture(t, 5)
	f.connected[ids[4]] = false
	job, err := f.svc.Start(Selector{All: true}, 2, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	if p := job.Progress(); p != (Progress{Total: 5, Waiting: 5}) || len(job.Devices) != 5 {
		t.Fatalf("started: %+v, %d devices", p, len(job.Devices))
	}
	f.svc.step(t.Context())
	if p := f.progress(t, job.ID); p.Sent != 2 || p.Waiting != 3 || len(f.sent) != 2 {
		t.Fatalf("after one step at rate 2: %+v, sent to %v", p, f.sent)
	}
	// ids[0] renews; ids[3] is decommissioned.
	if done, err := f.jobs.renewed(t.Context(), ids[0], f.now); err != nil || len(done) != 0 {
		t.Fatalf("renewed: %v %v", done, err)
	}
	if err := f.inv.Update(t.Context(), ids[3], func(d *inventory.Device) error { d.State = inventory.StateDecommissioned; return nil }); err != nil {
		t.Fatal(err)
	}
	if p := f.progress(t, job.ID); p != (Progress{Total: 5, Sent: 1, Renewed: 1, Waiting: 3}) {
		t.Fatalf("after a renewal: %+v", p)
	}
	f.now = f.now.Add(time.Second)
	f.svc.step(t.Context()) // asks ids[2]; ids[3] done; ids[4] unreachable, deferred
	if p := f.progress(t, job.ID); p != (Progress{Total: 5, Sent: 2, Renewed: 2, Waiting: 1}) || f.sent[ids[3]] != 0 || f.sent[ids[4]] != 0 {
		t.Fatalf("second step: %+v, sent %v", p, f.sent)
	}
	f.now = f.now.Add(time.Second)
	f.svc.step(t.Context())
	if f.sent[ids[4]] != 0 || f.sent[ids[1]] != 1 {
		t.Fatalf("asked again before resend or while offline: %v", f.sent)
	}
	f.connected[ids[4]] = true
	f.svc.Connected(ids[4], "01")
	f.svc.step(t.Context())
	if f.sent[ids[4]] != 1 {
		t.Fatalf("not asked after connecting: %v", f.sent)
	}
	// ids[1] renewed through another path (the serial changed): seen at its resend.
	if err := f.inv.Update(t.Context(), ids[1], func(d *inventory.Device) error { d.CertSerial = "02"; return nil }); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(resend)
	f.svc.step(t.Context())
	if f.sent[ids[2]] != 2 || f.sent[ids[1]] != 1 {
		t.Fatalf("resend: %v", f.sent)
	}
	for _, id := range []string{ids[2], ids[4]} {
		if _, err := f.jobs.renewed(t.Context(), id, f.now); err != nil {
			t.Fatal(err)
		}
	}
	got, err := f.svc.Job(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != JobDone || got.Progress() != (Progress{Total: 5, Renewed: 5}) || got.Finished.IsZero() {
		t.Fatalf("job %+v %+v", got, got.Progress())
	}
	if ids, _ := f.jobs.running(t.Context()); len(ids) != 0 {
		t.Fatalf("still running: %v", ids)
	}
}

// TestDeadStepsClaimsExpire: a step that claimed devices and never
// recorded what it did with them (its replica was killed between the
// two) holds them for claimFor (15 s), not for resend (a minute):
// another replica's step asks them once the claim expired, so a job does not stall for a
// minute behind a dead replica.
func TestDeadStepsClaimsExpire(t *testing.T) {
	f, ids := newJobFixture(t, 3)
	job, err := f.svc.Start(Selector{All: true}, 1, "test", "tester")
	if err != nil {
		t.Fatal(err)
	}
	// The dead replica's step: it claimed every due device and died.
	if _, cands, _, err := f.jobs.due(t.Context(), job.ID, f.now); err != nil || len(cands) != 3 {
		t.Fatalf("claimed %d devices: %v", len(cands), err)
	}
	// While the claim holds, another step passes over them.
	f.now = f.now.Add(time.Second)
	f.svc.step(t.Context())
	if len(f.sent) != 0 {
		t.Fatalf("devices claimed by a running step were asked by another: %v", f.sent)
	}
	f.now = f.now.Add(20 * time.Second) // well before resend
	f.svc.step(t.Context())
	if p := f.progress(t, job.ID); p.Sent != 1 || len(f.sent) != 1 {
		t.Fatalf("after the dead step's claim expired: %+v, sent %v", p, f.sent)
	}
	for range 2 {
		f.now = f.now.Add(time.Second)
		f.svc.step(t.Context())
	}
	for _, id := range ids {
		if f.sent[id] != 1 {
			t.Fatalf("each device asked once after the claim expired: %v", f.sent)
		}
	}
}

// TestJobCancelAndPaging: a cancelled job asks no one; a job larger than
// InlineDevices lists no devices but pages them.
func TestJobCancelAndPaging(t *testing.T) {
	f, ids := newJobFixture(t, InlineDevices+1)
	job, err := f.svc.Start(Selector{All: true}, 10, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(job.Devices) != 0 || job.Progress().Total != len(ids) {
		t.Fatalf("large job: %d devices inline, %+v", len(job.Devices), job.Progress())
	}
	var all []JobDevice
	for after := ""; ; {
		page, next, err := f.svc.JobDevices(job.ID, after, 300)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		after = next
	}
	if len(all) != len(ids) || all[0].ID != ids[0] || all[len(all)-1].ID != ids[len(ids)-1] {
		t.Fatalf("paged %d devices", len(all))
	}
	if err := f.svc.Cancel(job.ID); err != nil {
		t.Fatal(err)
	}
	f.svc.step(t.Context())
	if len(f.sent) != 0 {
		t.Fatalf("a cancelled job asked %d devices", len(f.sent))
	}
	if jobs, err := f.svc.Jobs(); err != nil || len(jobs) != 1 || jobs[0].State != JobCancelled || jobs[0].Progress().Total != len(ids) {
		t.Fatalf("list: %+v %v", jobs, err)
	}
	if err := f.svc.Cancel("rot_nope"); err != ErrNotFound {
		t.Fatalf("cancel unknown: %v", err)
	}
}

// TestJobsMigrate: a job stored by an earlier version (devices inline)
// is converted on open and keeps its progress.
func TestJobsMigrate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotations.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	old := `{"id":"rot_old","created":"2026-01-01T00:00:00Z","selector":{"all":true},"rate":5,"state":"running","devices":[` +
		`{"id":"a1","from":"01","sent":"` + now.Format(time.RFC3339Nano) + `","attempts":1},{"id":"a2","from":"01","done_at":"` + now.Format(time.RFC3339Nano) + `"},{"id":"a3","from":"01"}]}`
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketJobs)
		if err != nil {
			return err
		}
		return b.Put([]byte("rot_old"), []byte(old))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := OpenJobs(path)
	if err != nil {
		t.Fatal(err)
	}
	defer jobs.Close()
	j, err := jobs.Get(t.Context(), "rot_old")
	if err != nil {
		t.Fatal(err)
	}
	if p := j.Progress(); p != (Progress{Total: 3, Sent: 1, Renewed: 1, Waiting: 1}) || len(j.Devices) != 3 {
		t.Fatalf("migrated: %+v, %d devices", p, len(j.Devices))
	}
	if done, err := jobs.renewed(t.Context(), "a1", now); err != nil || len(done) != 0 {
		t.Fatal(done, err)
	}
	if done, err := jobs.renewed(t.Context(), "a3", now); err != nil || len(done) != 1 {
		t.Fatal(done, err)
	}
}

// TestJobsFileLayout: in bbolt the jobs keep the layout earlier builds
// wrote and read (files written by them open unchanged): a job's devices
// and queue are bbolt buckets nested in "devices" and "queue", the queue's
// keys 8 bytes of big-endian send time then the device ID.
func TestJobsFileLayout(t *testing.T) {
	f, ids := newJobFixture(t, 3)
	path := filepath.Join(t.TempDir(), "rotations.db")
	jobs, err := OpenJobs(path)
	if err != nil {
		t.Fatal(err)
	}
	f.jobs, f.svc.cfg.Jobs = jobs, jobs
	job, err := f.svc.Start(Selector{All: true}, 1, "", "")
	if err != nil {
		t.Fatal(err)
	}
	f.svc.step(t.Context())
	jobs.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketJobs, bucketRunning} {
			if tx.Bucket(b).Get([]byte(job.ID)) == nil {
				t.Errorf("%s holds no %s", b, job.ID)
			}
		}
		devs := tx.Bucket(bucketDevices).Bucket([]byte(job.ID))
		queue := tx.Bucket(bucketQueue).Bucket([]byte(job.ID))
		if devs == nil || queue == nil {
			t.Fatal("the job's devices and queue are not nested bbolt buckets")
		}
		if devs.Stats().KeyN != 3 || devs.Get([]byte(ids[2])) == nil {
			t.Errorf("devices bucket: %d keys", devs.Stats().KeyN)
		}
		sent := f.now.Add(resend).UnixNano()
		for _, want := range [][]byte{dueKey(sent, ids[0]), dueKey(0, ids[1]), dueKey(0, ids[2])} {
			if k, _ := queue.Cursor().Seek(want); !bytes.Equal(k, want) {
				t.Errorf("queue lacks %x", want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
