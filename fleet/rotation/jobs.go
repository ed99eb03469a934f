package rotation

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Job states.
const (
	JobRunning   = "running"
	JobDone      = "done"
	JobCancelled = "cancelled"
)

// Selector chooses the devices of a rotation job; exactly one way.
type Selector struct {
	DeviceIDs []string `json:"device_ids,omitempty"`
	Group     string   `json:"group,omitempty"`
	Model     string   `json:"model,omitempty"`
	All       bool     `json:"all,omitempty"`
}

// Validate checks that the selector names one set of devices.
func (s *Selector) Validate() error {
	n := 0
	for _, set := range []bool{len(s.DeviceIDs) > 0, s.Group != "", s.Model != "", s.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("rotation: choose exactly one of device_ids, group, model or all")
	}
	for _, id := range s.DeviceIDs {
		if !wire.ValidID(id) {
			return fmt.Errorf("rotation: invalid device ID %q", id)
		}
	}
	return nil
}

func (s *Selector) matches(d *inventory.Device) bool {
	switch {
	case s.All:
		return true
	case s.Group != "":
		return d.Group == s.Group
	case s.Model != "":
		return d.Model == s.Model
	}
	for _, id := range s.DeviceIDs {
		if id == d.ID {
			return true
		}
	}
	return false
}

// JobDevice is one device's progress in a job.
type JobDevice struct {
	ID       string    `json:"id"`
	From     string    `json:"from"` // certificate serial when the job started
	Sent     time.Time `json:"sent,omitzero"`
	Attempts int       `json:"attempts,omitempty"`
	DoneAt   time.Time `json:"done_at,omitzero"`
}

// InlineDevices is the largest job whose devices Service.Job, Service.Start
// and Jobs.Get list in Job.Devices; a larger job's devices are paged with
// Service.JobDevices, and its Progress holds the counts.
const InlineDevices = 1000

// Job is a forced rotation.
type Job struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	By       string    `json:"by,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Selector Selector  `json:"selector"`
	Rate     float64   `json:"rate"` // rotation requests per second
	State    string    `json:"state"`
	Finished time.Time `json:"finished,omitzero"`
	// Devices is filled for jobs of at most InlineDevices devices, and
	// empty (omitted) for larger ones.
	Devices []JobDevice `json:"devices,omitempty"`

	counts Progress // kept by the store; Waiting is derived
}

// Progress summarizes a job.
type Progress struct {
	Total, Sent, Renewed, Waiting int
}

// Progress counts the job's devices by step: asked and not yet renewed
// (Sent), renewed or no longer to be rotated (Renewed), not asked yet
// (Waiting).
func (j *Job) Progress() Progress {
	if j.counts.Total == 0 && len(j.Devices) > 0 {
		p := Progress{Total: len(j.Devices)}
		for _, d := range j.Devices {
			switch {
			case !d.DoneAt.IsZero():
				p.Renewed++
			case !d.Sent.IsZero():
				p.Sent++
			}
		}
		p.Waiting = p.Total - p.Sent - p.Renewed
		return p
	}
	p := j.counts
	p.Waiting = p.Total - p.Sent - p.Renewed
	return p
}

// Jobs persists rotation jobs so a restarted fleet resumes them: in a
// bbolt file (OpenJobs) or in PostgreSQL (OpenJobsPostgres), where
// several replicas share them.
//
// Layout: bucket "jobs" maps a job ID to its header (the Job without its
// devices, with the counts); bucket "running" holds the IDs of running
// jobs; bucket "devices" holds one sub-bucket per job mapping a device ID
// to its JobDevice; bucket "queue" holds one sub-bucket per job whose keys
// are a device's next send time (8 bytes, big-endian Unix nanoseconds; 0
// for never asked) followed by its ID, for the devices not yet renewed. A
// step reads the front of the queue and writes only what it touched; a
// renewal looks its device up by key in each running job. In PostgreSQL
// the same buckets are rows of the table JobsTable (fleet/storage/kv).
type Jobs struct {
	db kv.DB // group commit (Write) for the per-renewal marks
	// shared: replicas share the jobs (PostgreSQL), so the queue's times
	// are the database's clock (kv.Now), not each replica's.
	shared bool
}

// JobsFile is the jobs' bbolt file in the fleet's data directory.
const JobsFile = "rotations.db"

// JobsTable is the PostgreSQL table holding the jobs' buckets
// (kv.Postgres).
const JobsTable = "rotation_kv"

// JobsBuckets are the jobs' buckets, in the bbolt file and in PostgreSQL
// (with the buckets nested in them): what sigil migrate copies.
var JobsBuckets = [][]byte{bucketJobs, bucketRunning, bucketDevices, bucketQueue}

// migrations are the jobs' tables in PostgreSQL (component "rotation" in
// schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

var (
	bucketJobs    = []byte("jobs")
	bucketRunning = []byte("running")
	bucketDevices = []byte("devices")
	bucketQueue   = []byte("queue")
)

// header is a job as stored in bucketJobs.
type header struct {
	*Job
	Total   int `json:"total"`
	Sent    int `json:"sent_count"`
	Renewed int `json:"renewed"`
}

// devRecord is a job's device as stored, with its queue position.
type devRecord struct {
	JobDevice
	Due int64 `json:"due,omitempty"` // queue key time; meaningful while not done
}

// OpenJobs opens the job file. Jobs written by earlier versions (one record
// with every device) are converted.
func OpenJobs(path string) (*Jobs, error) {
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: JobsBuckets}, boltdb.Options{Name: "rotation: jobs"})
	if err != nil {
		return nil, err
	}
	return start(context.Background(), kv.Bolt(db), path)
}

// OpenJobsPostgres opens the jobs in the PostgreSQL database db, bringing
// its tables up to date first. Replicas sharing db share the jobs: a
// step claims the devices it asks (Service.Run on every replica asks each
// device once), and writes run one at a time across them
// (kv.Options.Serialized). Close leaves db open.
func OpenJobsPostgres(ctx context.Context, db *postgres.DB) (*Jobs, error) {
	k, err := kv.PostgresMigrated(ctx, db, "rotation", migrations, JobsTable, kv.Options{Serialized: true})
	if err != nil {
		return nil, err
	}
	j, err := start(ctx, k, "database")
	if err != nil {
		return nil, err
	}
	j.shared = true
	return j, nil
}

// start converts the jobs of earlier versions and returns the store.
func start(ctx context.Context, db kv.DB, where string) (*Jobs, error) {
	if err := db.Update(ctx, migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("rotation: jobs: initialize %s: %w", where, err)
	}
	return &Jobs{db: db}, nil
}

// migrate converts jobs stored with their devices inline.
func migrate(tx kv.Tx) error {
	var old []*Job
	err := tx.Bucket(bucketJobs).ForEach(func(_, v []byte) error {
		job := &Job{}
		if err := json.Unmarshal(v, job); err != nil {
			return err
		}
		if len(job.Devices) > 0 && empty(tx.Bucket(bucketDevices).Bucket([]byte(job.ID))) {
			old = append(old, job)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, job := range old {
		if err := create(tx, job); err != nil {
			return err
		}
	}
	return nil
}

// empty reports whether b is missing or holds no key (PostgreSQL has no
// empty buckets: a missing one reads as empty).
func empty(b kv.Bucket) bool {
	if b == nil {
		return true
	}
	k, _ := b.Cursor().First()
	return k == nil
}

// Close closes the file (a PostgreSQL store leaves its database open).
func (j *Jobs) Close() error { return j.db.Close() }

func dueKey(due int64, id string) []byte {
	k := make([]byte, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(due))
	copy(k[8:], id)
	return k
}

// create stores a job with its devices (and their progress as given).
func create(tx kv.Tx, job *Job) error {
	devs, err := tx.Bucket(bucketDevices).CreateBucketIfNotExists([]byte(job.ID))
	if err != nil {
		return err
	}
	queue, err := tx.Bucket(bucketQueue).CreateBucketIfNotExists([]byte(job.ID))
	if err != nil {
		return err
	}
	h := header{Job: job, Total: len(job.Devices)}
	for _, d := range job.Devices {
		r := devRecord{JobDevice: d}
		switch {
		case !d.DoneAt.IsZero():
			h.Renewed++
		case !d.Sent.IsZero():
			h.Sent++
			r.Due = d.Sent.Add(resend).UnixNano()
		}
		if d.DoneAt.IsZero() {
			if err := queue.Put(dueKey(r.Due, d.ID), nil); err != nil {
				return err
			}
		}
		if err := putDev(devs, &r); err != nil {
			return err
		}
	}
	return putHeader(tx, &h)
}

func putDev(b kv.Bucket, r *devRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put([]byte(r.ID), v)
}

func getDev(b kv.Bucket, id string) (*devRecord, error) {
	v := b.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	r := &devRecord{}
	return r, json.Unmarshal(v, r)
}

func putHeader(tx kv.Tx, h *header) error {
	devices := h.Devices
	h.Devices = nil
	v, err := json.Marshal(h)
	h.Devices = devices
	if err != nil {
		return err
	}
	if h.State == JobRunning {
		err = tx.Bucket(bucketRunning).Put([]byte(h.ID), nil)
	} else {
		err = tx.Bucket(bucketRunning).Delete([]byte(h.ID))
	}
	if err != nil {
		return err
	}
	return tx.Bucket(bucketJobs).Put([]byte(h.ID), v)
}

func getHeader(tx kv.Tx, id string) (*header, error) {
	v := tx.Bucket(bucketJobs).Get([]byte(id))
	if v == nil {
		return nil, ErrNotFound
	}
	h := &header{Job: &Job{}}
	if err := json.Unmarshal(v, h); err != nil {
		return nil, err
	}
	h.Devices = nil
	h.counts = Progress{Total: h.Total, Sent: h.Sent, Renewed: h.Renewed}
	return h, nil
}

// ErrNotFound is returned for an unknown job.
var ErrNotFound = errors.New("rotation: no such job")

// Get returns a job with its counts, and its devices if it has at most
// InlineDevices.
func (j *Jobs) Get(ctx context.Context, id string) (*Job, error) {
	var job *Job
	err := j.db.View(ctx, func(tx kv.Tx) error {
		h, err := getHeader(tx, id)
		if err != nil {
			return err
		}
		job = h.Job
		if h.Total > InlineDevices {
			return nil
		}
		devs := tx.Bucket(bucketDevices).Bucket([]byte(id))
		if devs == nil {
			return nil
		}
		return devs.ForEach(func(_, v []byte) error {
			var r devRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			job.Devices = append(job.Devices, r.JobDevice)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return job, nil
}

// Devices returns up to limit devices of a job in ID order, starting after
// the ID after, and the ID to continue after ("" at the end).
func (j *Jobs) Devices(ctx context.Context, id, after string, limit int) ([]JobDevice, string, error) {
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	var out []JobDevice
	next := ""
	err := j.db.View(ctx, func(tx kv.Tx) error {
		if tx.Bucket(bucketJobs).Get([]byte(id)) == nil {
			return ErrNotFound
		}
		devs := tx.Bucket(bucketDevices).Bucket([]byte(id))
		if devs == nil {
			return nil
		}
		c := devs.Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			if len(out) == limit {
				next = out[len(out)-1].ID
				return nil
			}
			var r devRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r.JobDevice)
		}
		return nil
	})
	return out, next, err
}

// List returns every job with its counts, without devices, oldest ID
// first.
func (j *Jobs) List(ctx context.Context) ([]Job, error) {
	var out []Job
	err := j.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, _ []byte) error {
			h, err := getHeader(tx, string(k))
			if err != nil {
				return err
			}
			out = append(out, *h.Job)
			return nil
		})
	})
	return out, err
}

// running returns the IDs of the running jobs.
func (j *Jobs) running(ctx context.Context) ([]string, error) {
	var ids []string
	err := j.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketRunning).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	return ids, err
}

// cancel ends a running job.
func (j *Jobs) cancel(ctx context.Context, id string, now time.Time) error {
	return j.db.Update(ctx, func(tx kv.Tx) error {
		h, err := getHeader(tx, id)
		if err != nil {
			return err
		}
		if h.State != JobRunning {
			return nil
		}
		h.State, h.Finished = JobCancelled, now
		return putHeader(tx, h)
	})
}

// outcome is what a step did with one device.
type outcome int

const (
	outcomeSent     outcome = iota // asked to rotate
	outcomeDone                    // renewed or no longer to be rotated
	outcomeDeferred                // unreachable: try again after resend
	outcomeUnasked                 // claimed by due, not reached by the step's budget
)

// candidate is a device due to be asked.
type candidate struct {
	rec     devRecord
	outcome outcome
}

// due returns the job's header and, if it is running, claims up to its
// rate plus scanSlack of its devices whose send time has come, front of
// the queue first: they move back in the queue by claimFor, so that a
// step running at the same time (another replica's) passes over them,
// until record writes what was done with each. A claimed device whose
// step ends without recording it is asked after claimFor. It returns the
// time it compared and claimed with, which record must be given: the
// database's clock in PostgreSQL (kv.Now), where replicas whose clocks
// differ share the queue; else local, the caller's.
func (j *Jobs) due(ctx context.Context, id string, local time.Time) (*header, []candidate, time.Time, error) {
	var h *header
	var out []candidate
	now := local
	err := j.db.Update(ctx, func(tx kv.Tx) error {
		out = out[:0]
		var err error
		if now, err = j.clock(tx, local); err != nil {
			return err
		}
		if h, err = getHeader(tx, id); err != nil || h.State != JobRunning {
			return err
		}
		devs, queue := tx.Bucket(bucketDevices).Bucket([]byte(id)), tx.Bucket(bucketQueue).Bucket([]byte(id))
		if devs == nil || queue == nil {
			return nil
		}
		limit := max(1, int(h.Rate)) + scanSlack
		end := dueKey(now.UnixNano(), "\xff")
		c := queue.Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit && bytes.Compare(k, end) <= 0; k, _ = c.Next() {
			r, err := getDev(devs, string(k[8:]))
			if err != nil {
				return err
			}
			if r != nil && r.DoneAt.IsZero() {
				out = append(out, candidate{rec: *r})
			}
		}
		claimed := now.Add(claimFor).UnixNano()
		for _, c := range out {
			r := c.rec
			if err := queue.Delete(dueKey(r.Due, r.ID)); err != nil {
				return err
			}
			r.Due = claimed
			if err := queue.Put(dueKey(r.Due, r.ID), nil); err != nil {
				return err
			}
			if err := putDev(devs, &r); err != nil {
				return err
			}
		}
		return nil
	})
	return h, out, now, err
}

// clock returns the database's clock in tx (kv.Now) when replicas share
// the jobs, else local (bbolt: one process, the caller's clock).
func (j *Jobs) clock(tx kv.Tx, local time.Time) (time.Time, error) {
	if !j.shared {
		return local, nil
	}
	now, ok, err := kv.Now(tx)
	if err != nil || !ok {
		return local, err
	}
	return now, nil
}

// record applies a step's outcomes to a job and reports whether the job
// is now done. Devices renewed since due read them are left alone. now is
// the time due returned.
func (j *Jobs) record(ctx context.Context, id string, now time.Time, cands []candidate) (done bool, err error) {
	err = j.db.Update(ctx, func(tx kv.Tx) error {
		done = false
		h, err := getHeader(tx, id)
		if err != nil || h.State != JobRunning {
			return err
		}
		devs, queue := tx.Bucket(bucketDevices).Bucket([]byte(id)), tx.Bucket(bucketQueue).Bucket([]byte(id))
		for i := range cands {
			c := &cands[i]
			r, err := getDev(devs, c.rec.ID)
			if err != nil {
				return err
			}
			if r == nil || !r.DoneAt.IsZero() {
				continue
			}
			if c.outcome == outcomeUnasked {
				// Claimed and not asked: back to its place, unless it
				// moved meanwhile (reachable).
				if r.Due != now.Add(claimFor).UnixNano() {
					continue
				}
				if err := queue.Delete(dueKey(r.Due, r.ID)); err != nil {
					return err
				}
				r.Due = c.rec.Due
				if err := queue.Put(dueKey(r.Due, r.ID), nil); err != nil {
					return err
				}
				if err := putDev(devs, r); err != nil {
					return err
				}
				continue
			}
			if err := queue.Delete(dueKey(r.Due, r.ID)); err != nil {
				return err
			}
			wasSent := !r.Sent.IsZero()
			switch c.outcome {
			case outcomeDone:
				r.DoneAt = now
				h.Renewed++
				if wasSent {
					h.Sent--
				}
			case outcomeSent:
				r.Sent, r.Attempts = now, r.Attempts+1
				if !wasSent {
					h.Sent++
				}
				r.Due = now.Add(resend).UnixNano()
			case outcomeDeferred:
				r.Due = now.Add(resend).UnixNano()
			}
			if r.DoneAt.IsZero() {
				if err := queue.Put(dueKey(r.Due, r.ID), nil); err != nil {
					return err
				}
			}
			if err := putDev(devs, r); err != nil {
				return err
			}
		}
		if h.Renewed >= h.Total {
			h.State, h.Finished, done = JobDone, now, true
		}
		return putHeader(tx, h)
	})
	return done, err
}

// jobsOf returns the running jobs in which the device is not done yet,
// with its record in each, and the time it read them at (clock).
func (j *Jobs) jobsOf(ctx context.Context, deviceID string, local time.Time) (map[string]devRecord, time.Time, error) {
	var out map[string]devRecord
	now := local
	err := j.db.View(ctx, func(tx kv.Tx) error {
		var err error
		if now, err = j.clock(tx, local); err != nil {
			return err
		}
		return tx.Bucket(bucketRunning).ForEach(func(k, _ []byte) error {
			devs := tx.Bucket(bucketDevices).Bucket(k)
			if devs == nil {
				return nil
			}
			r, err := getDev(devs, deviceID)
			if err != nil || r == nil || !r.DoneAt.IsZero() {
				return err
			}
			if out == nil {
				out = map[string]devRecord{}
			}
			out[string(k)] = *r
			return nil
		})
	})
	return out, now, err
}

// renewed marks the device renewed in every running job that still waits
// for it (one write, none if no running job holds it), and returns the
// jobs that are done with it.
func (j *Jobs) renewed(ctx context.Context, deviceID string, now time.Time) ([]string, error) {
	in, _, err := j.jobsOf(ctx, deviceID, now)
	if err != nil || len(in) == 0 {
		return nil, err
	}
	var finished []string
	err = j.db.Write(ctx, func(tx kv.Tx) error {
		finished = finished[:0]
		for id := range in {
			h, err := getHeader(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if h.State != JobRunning {
				continue
			}
			devs, queue := tx.Bucket(bucketDevices).Bucket([]byte(id)), tx.Bucket(bucketQueue).Bucket([]byte(id))
			r, err := getDev(devs, deviceID)
			if err != nil {
				return err
			}
			if r == nil || !r.DoneAt.IsZero() {
				continue
			}
			if err := queue.Delete(dueKey(r.Due, r.ID)); err != nil {
				return err
			}
			if !r.Sent.IsZero() {
				h.Sent--
			}
			r.DoneAt = now
			h.Renewed++
			if err := putDev(devs, r); err != nil {
				return err
			}
			if h.Renewed >= h.Total {
				h.State, h.Finished = JobDone, now
				finished = append(finished, id)
			}
			if err := putHeader(tx, h); err != nil {
				return err
			}
		}
		return nil
	})
	return finished, err
}

// reachable moves the device to the front of the queue in every running
// job that deferred it as unreachable: it is asked at the next step, or
// when its resend time comes if it was asked already. Its times are the
// database's clock on PostgreSQL, local (the caller's) on bbolt.
func (j *Jobs) reachable(ctx context.Context, deviceID string, local time.Time) error {
	in, now, err := j.jobsOf(ctx, deviceID, local)
	if err != nil || len(in) == 0 {
		return err
	}
	move := false
	for _, r := range in {
		if r.Due > natural(&r.JobDevice) && r.Due > now.UnixNano() {
			move = true
		}
	}
	if !move {
		return nil
	}
	// Devices reconnect together (a restarted fleet, a broker that came
	// back): their writes share a transaction. The function reads what it
	// changes, so a batch may run it again.
	return j.db.Write(ctx, func(tx kv.Tx) error {
		now, err := j.clock(tx, local)
		if err != nil {
			return err
		}
		for id := range in {
			devs, queue := tx.Bucket(bucketDevices).Bucket([]byte(id)), tx.Bucket(bucketQueue).Bucket([]byte(id))
			if devs == nil || queue == nil {
				continue
			}
			r, err := getDev(devs, deviceID)
			if err != nil {
				return err
			}
			if r == nil || !r.DoneAt.IsZero() {
				continue
			}
			due := natural(&r.JobDevice)
			if r.Due <= due || r.Due <= now.UnixNano() {
				continue
			}
			if err := queue.Delete(dueKey(r.Due, r.ID)); err != nil {
				return err
			}
			r.Due = due
			if err := queue.Put(dueKey(r.Due, r.ID), nil); err != nil {
				return err
			}
			if err := putDev(devs, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// natural is when a device is next to be asked if it is reachable: at
// once if it was never asked, else resend after it was.
func natural(d *JobDevice) int64 {
	if d.Sent.IsZero() {
		return 0
	}
	return d.Sent.Add(resend).UnixNano()
}

// ErrNoMatch is returned by Start when the selector matches no active
// device.
var ErrNoMatch = errors.New("rotation: no active device matches")

// Start creates a forced rotation job over the active devices sel selects.
func (s *Service) Start(sel Selector, rate float64, reason, by string) (*Job, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	if rate <= 0 {
		rate = 10
	}
	if rate > 10000 {
		return nil, errors.New("rotation: rate is at most 10000 per second")
	}
	idb := make([]byte, 8)
	rand.Read(idb)
	job := &Job{ID: "rot_" + hex.EncodeToString(idb), Created: s.cfg.Now().UTC(), By: by, Reason: reason, Selector: sel, Rate: rate, State: JobRunning}
	if len(sel.DeviceIDs) > 0 {
		// Named devices: look each up rather than scan the fleet.
		for _, id := range slices.Compact(slices.Sorted(slices.Values(sel.DeviceIDs))) {
			d, err := s.cfg.Inventory.Device(context.TODO(), id)
			if errors.Is(err, inventory.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if d.State == inventory.StateActive {
				job.Devices = append(job.Devices, JobDevice{ID: d.ID, From: d.CertSerial})
			}
		}
	}
	after := ""
	for len(sel.DeviceIDs) == 0 {
		devs, next, err := s.cfg.Inventory.ListDevices(context.TODO(), inventory.Filter{State: inventory.StateActive, After: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		for i := range devs {
			if sel.matches(&devs[i]) {
				job.Devices = append(job.Devices, JobDevice{ID: devs[i].ID, From: devs[i].CertSerial})
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(job.Devices) == 0 {
		return nil, ErrNoMatch
	}
	if err := s.cfg.Jobs.db.Update(context.TODO(), func(tx kv.Tx) error { return create(tx, job) }); err != nil {
		return nil, fmt.Errorf("rotation: saving the job: %w", err)
	}
	n := len(job.Devices)
	job.counts = Progress{Total: n}
	if n > InlineDevices {
		job.Devices = nil
	}
	s.log.Info("rotation job started", "job", job.ID, "devices", n, "rate", rate, "by", by, "reason", reason)
	return job, nil
}

// Job returns a job with its progress; see InlineDevices.
func (s *Service) Job(id string) (*Job, error) { return s.cfg.Jobs.Get(context.TODO(), id) }

// JobDevices pages through a job's devices; see Jobs.Devices.
func (s *Service) JobDevices(id, after string, limit int) ([]JobDevice, string, error) {
	return s.cfg.Jobs.Devices(context.TODO(), id, after, limit)
}

// Jobs lists every job with its progress, without devices.
func (s *Service) Jobs() ([]Job, error) { return s.cfg.Jobs.List(context.TODO()) }

// Cancel stops a running job.
func (s *Service) Cancel(id string) error {
	return s.cfg.Jobs.cancel(context.TODO(), id, s.cfg.Now().UTC())
}

// resend is how long a device that was asked may take before it is asked
// again; a device that was not reachable is tried again after as long,
// or as soon as it connects.
const resend = time.Minute

// claimFor is how long a step's claim on the devices it read holds
// (due): long enough for a step to ask its rate of them and record it,
// short enough that the devices a step claimed and never recorded (its
// replica died between due and record) are asked by another replica's
// step soon, not after resend.
const claimFor = 15 * time.Second

// step advances every running job by one tick: it asks up to Rate devices
// from the front of the job's queue whose time has come. Before asking a
// device it checks the inventory: a device gone, no longer active or on
// another certificate than when the job started is done (renewals are
// otherwise counted as Renew issues them). A device not connected, or
// whose message could not be sent, is tried again after resend or when it
// connects. The work is bounded by the rate, not the job's size. Under a
// lease (Config.Leases) the step's writes are fenced: once another
// replica took the lease over, its claims and records are refused and it
// returns the error (lease.ErrLost); other failures are logged.
func (s *Service) step(ctx context.Context) error {
	ids, err := s.cfg.Jobs.running(ctx)
	if err != nil {
		s.log.Warn("rotation jobs unreadable", "err", err)
		return nil
	}
	now := s.cfg.Now().UTC()
	for _, id := range ids {
		if err := s.stepJob(ctx, id, now); errors.Is(err, lease.ErrLost) {
			s.log.Warn("rotation jobs: the lease was taken over; this replica stops stepping them", "err", err)
			return err
		}
	}
	return nil
}

// scanSlack is how many unreachable or finished devices a step may pass
// over in addition to its rate.
const scanSlack = 256

func (s *Service) stepJob(ctx context.Context, id string, local time.Time) error {
	h, cands, now, err := s.cfg.Jobs.due(ctx, id, local)
	if err == nil && h.State == JobRunning {
		cands = s.ask(ctx, h.Job, local, max(1, int(h.Rate)), cands)
	}
	if err != nil {
		s.log.Warn("rotation job unreadable", "job", id, "err", err)
		return err
	}
	if h.State != JobRunning || len(cands) == 0 && h.Renewed < h.Total {
		return nil
	}
	done, err := s.cfg.Jobs.record(ctx, id, now, cands)
	if err != nil {
		s.log.Warn("saving rotation job failed", "job", id, "err", err)
		return err
	}
	if done {
		s.log.Info("rotation job done", "job", id, "devices", h.Total)
	}
	return nil
}

// ask sends the rotate message to up to budget of the candidates and
// returns them with their outcomes (outcomeUnasked for those past the
// budget).
func (s *Service) ask(ctx context.Context, job *Job, now time.Time, budget int, cands []candidate) []candidate {
	out := cands[:0]
	for _, c := range cands {
		if budget == 0 {
			c.outcome = outcomeUnasked
			out = append(out, c)
			continue
		}
		d, err := s.cfg.Inventory.Device(ctx, c.rec.ID)
		switch {
		case err != nil || d.State != inventory.StateActive || d.CertSerial != c.rec.From:
			c.outcome = outcomeDone // gone, no longer active, or renewed: nothing to rotate
		case s.cfg.Connected != nil && !s.cfg.Connected(c.rec.ID):
			c.outcome = outcomeDeferred
		default:
			b, err := wire.Encode(wire.TypeRotate, nil, now, &wire.Rotate{Reason: job.Reason, Job: job.ID})
			if err == nil {
				err = s.cfg.Send(c.rec.ID, "cert", b)
			}
			if err != nil {
				c.outcome = outcomeDeferred
			} else {
				c.outcome = outcomeSent
				budget--
			}
		}
		out = append(out, c)
	}
	return out
}
