package rotation

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
	bolt "go.etcd.io/bbolt"
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

// Job is a forced rotation.
type Job struct {
	ID       string      `json:"id"`
	Created  time.Time   `json:"created"`
	By       string      `json:"by,omitempty"`
	Reason   string      `json:"reason,omitempty"`
	Selector Selector    `json:"selector"`
	Rate     float64     `json:"rate"` // rotation requests per second
	State    string      `json:"state"`
	Finished time.Time   `json:"finished,omitzero"`
	Devices  []JobDevice `json:"devices"`
}

// Progress summarizes a job.
type Progress struct {
	Total, Sent, Renewed, Waiting int
}

// Progress counts the job's devices by step.
func (j *Job) Progress() Progress {
	p := Progress{Total: len(j.Devices)}
	for _, d := range j.Devices {
		switch {
		case !d.DoneAt.IsZero():
			p.Renewed++
		case !d.Sent.IsZero():
			p.Sent++
		default:
			p.Waiting++
		}
	}
	return p
}

// Jobs persists rotation jobs (bbolt) so a restarted fleet resumes them.
type Jobs struct {
	db *bolt.DB
}

var bucketJobs = []byte("jobs")

// OpenJobs opens the job file.
func OpenJobs(path string) (*Jobs, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("rotation: open jobs: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucketJobs); return err })
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Jobs{db: db}, nil
}

// Close closes the file.
func (j *Jobs) Close() error { return j.db.Close() }

func (j *Jobs) put(job *Job) error {
	b, err := json.Marshal(job)
	if err != nil {
		return err
	}
	return j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketJobs).Put([]byte(job.ID), b) })
}

// ErrNotFound is returned for an unknown job.
var ErrNotFound = errors.New("rotation: no such job")

// Get returns a job.
func (j *Jobs) Get(id string) (*Job, error) {
	var job *Job
	err := j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketJobs).Get([]byte(id))
		if v == nil {
			return ErrNotFound
		}
		job = &Job{}
		return json.Unmarshal(v, job)
	})
	return job, err
}

// List returns every job, oldest first.
func (j *Jobs) List() ([]Job, error) {
	var out []Job
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(_, v []byte) error {
			var job Job
			if err := json.Unmarshal(v, &job); err != nil {
				return err
			}
			out = append(out, job)
			return nil
		})
	})
	return out, err
}

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
	after := ""
	for {
		devs, next, err := s.cfg.Inventory.ListDevices(inventory.Filter{State: inventory.StateActive, After: after, Limit: 1000})
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
		return nil, errors.New("rotation: no active device matches")
	}
	if err := s.cfg.Jobs.put(job); err != nil {
		return nil, err
	}
	s.log.Info("rotation job started", "job", job.ID, "devices", len(job.Devices), "rate", rate, "by", by, "reason", reason)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return job, nil
}

// Job returns a job with its progress.
func (s *Service) Job(id string) (*Job, error) { return s.cfg.Jobs.Get(id) }

// Jobs lists every job.
func (s *Service) Jobs() ([]Job, error) { return s.cfg.Jobs.List() }

// Cancel stops a running job.
func (s *Service) Cancel(id string) error {
	job, err := s.cfg.Jobs.Get(id)
	if err != nil {
		return err
	}
	if job.State == JobRunning {
		job.State, job.Finished = JobCancelled, s.cfg.Now().UTC()
	}
	return s.cfg.Jobs.put(job)
}

// resend is how long a device that was asked may take before it is asked
// again.
const resend = time.Minute

// step advances every running job: it notes renewed devices and, when
// send is set (once a second), asks the next ones, at most Rate a step.
func (s *Service) step(send bool) {
	jobs, err := s.cfg.Jobs.List()
	if err != nil {
		s.log.Warn("rotation jobs unreadable", "err", err)
		return
	}
	now := s.cfg.Now().UTC()
	for i := range jobs {
		job := &jobs[i]
		if job.State != JobRunning {
			continue
		}
		budget := max(1, int(job.Rate))
		changed, remaining := false, 0
		for k := range job.Devices {
			jd := &job.Devices[k]
			if !jd.DoneAt.IsZero() {
				continue
			}
			d, err := s.cfg.Inventory.Device(jd.ID)
			if err != nil || d.State != inventory.StateActive {
				jd.DoneAt, changed = now, true // gone or no longer active: nothing to rotate
				continue
			}
			if d.CertSerial != jd.From {
				jd.DoneAt, changed = now, true
				continue
			}
			remaining++
			if !send || budget == 0 || (!jd.Sent.IsZero() && now.Sub(jd.Sent) < resend) {
				continue
			}
			if s.cfg.Connected != nil && !s.cfg.Connected(jd.ID) {
				continue
			}
			b, err := wire.Encode(wire.TypeRotate, nil, now, &wire.Rotate{Reason: job.Reason, Job: job.ID})
			if err == nil {
				err = s.cfg.Send(jd.ID, "cert", b)
			}
			if err != nil {
				continue
			}
			jd.Sent, jd.Attempts, changed = now, jd.Attempts+1, true
			budget--
		}
		if remaining == 0 {
			job.State, job.Finished, changed = JobDone, now, true
			s.log.Info("rotation job done", "job", job.ID, "devices", len(job.Devices))
		}
		if changed {
			if err := s.cfg.Jobs.put(job); err != nil {
				s.log.Warn("saving rotation job failed", "job", job.ID, "err", err)
			}
		}
	}
}
