package campaign

import (
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// State is a campaign's state.
type State string

// Campaign states: draft → (scheduled →) running ⇄ paused → completed or
// aborted.
const (
	StateDraft     State = "draft"     // created; nothing announced
	StateScheduled State = "scheduled" // started with a start time still to come
	StateRunning   State = "running"   // announcing wave after wave
	StatePaused    State = "paused"    // by an operator or a tripped wave; devices in flight still report
	StateCompleted State = "completed" // every device finished
	StateAborted   State = "aborted"   // ended by an operator or a tripped wave
)

// Step is where a device is in a campaign.
type Step string

// Device steps. A device moves forward only: pending → announced →
// downloading → verifying → installing → switching → health → committed,
// or, from any step after pending, to failed, rolled_back or timed_out.
// A device that finished (committed, failed, rolled_back, timed_out) stays
// so, except that a device that timed_out may still report how it
// finished (Device.Late).
const (
	StepPending     Step = "pending"     // not announced yet, or waiting to be announced again
	StepAnnounced   Step = "announced"   // announcement queued for the device
	StepDownloading Step = "downloading" // reported by the device from here on
	StepVerifying   Step = "verifying"
	StepInstalling  Step = "installing"
	StepSwitching   Step = "switching"
	StepHealth      Step = "health"
	StepCommitted   Step = "committed"   // running the release
	StepFailed      Step = "failed"      // failed before switching; the reason says why
	StepRolledBack  Step = "rolled_back" // the new image failed its health check; back on the old one
	StepTimedOut    Step = "timed_out"   // did not finish within the device timeout (wire.ReasonFirmwareTimeout)
)

// rank orders the steps a device moves through; finished steps share the
// highest rank.
func (s Step) rank() int {
	switch s {
	case StepPending:
		return 0
	case StepAnnounced:
		return 1
	case StepDownloading:
		return 2
	case StepVerifying:
		return 3
	case StepInstalling:
		return 4
	case StepSwitching:
		return 5
	case StepHealth:
		return 6
	case StepCommitted, StepFailed, StepRolledBack, StepTimedOut:
		return 7
	}
	return -1
}

// Finished reports whether the device is done with the campaign.
func (s Step) Finished() bool { return s.rank() == 7 }

// InFlight reports whether the device was announced and has not finished.
func (s Step) InFlight() bool { r := s.rank(); return r >= 1 && r <= 6 }

// reportable reports whether a device may report s.
func (s Step) reportable() bool { r := s.rank(); return r >= 1 && s != StepTimedOut }

// Counts counts devices by step.
type Counts struct {
	Pending     int `json:"pending"`
	Announced   int `json:"announced"`
	Downloading int `json:"downloading"`
	Verifying   int `json:"verifying"`
	Installing  int `json:"installing"`
	Switching   int `json:"switching"`
	Health      int `json:"health"`
	Committed   int `json:"committed"`
	Failed      int `json:"failed"`
	RolledBack  int `json:"rolled_back"`
	TimedOut    int `json:"timed_out"`
}

func (c *Counts) add(s Step, n int) {
	switch s {
	case StepPending:
		c.Pending += n
	case StepAnnounced:
		c.Announced += n
	case StepDownloading:
		c.Downloading += n
	case StepVerifying:
		c.Verifying += n
	case StepInstalling:
		c.Installing += n
	case StepSwitching:
		c.Switching += n
	case StepHealth:
		c.Health += n
	case StepCommitted:
		c.Committed += n
	case StepFailed:
		c.Failed += n
	case StepRolledBack:
		c.RolledBack += n
	case StepTimedOut:
		c.TimedOut += n
	}
}

// InFlight counts the devices announced and not finished.
func (c Counts) InFlight() int {
	return c.Announced + c.Downloading + c.Verifying + c.Installing + c.Switching + c.Health
}

// Failures counts the devices that failed, rolled back or timed out.
func (c Counts) Failures() int { return c.Failed + c.RolledBack + c.TimedOut }

// Finished counts the devices done with the campaign.
func (c Counts) Finished() int { return c.Committed + c.Failures() }

// Campaign is a campaign's definition and progress.
type Campaign struct {
	ID         string     `json:"id"`
	Definition Definition `json:"definition"` // with defaults applied
	State      State      `json:"state"`
	Created    time.Time  `json:"created"`
	CreatedBy  string     `json:"created_by"`
	// StartAt is when a scheduled campaign starts.
	StartAt  time.Time `json:"start_at,omitzero"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Changed, ChangedBy and Why describe the last state change: who
	// ("system" for an automatic one) and why.
	Changed   time.Time `json:"changed,omitzero"`
	ChangedBy string    `json:"changed_by,omitempty"`
	Why       string    `json:"why,omitempty"`
	// Wave is the newest open wave, counted from 1; 0 before the start.
	Wave int `json:"wave"`
	// Waves lists every wave's progress (Manager.Get only).
	Waves []Wave `json:"waves,omitempty"`
	Total int    `json:"total"`
	// Counts counts the devices by step.
	Counts Counts `json:"counts"`
	// InWindow reports whether a maintenance window was open when the
	// campaign was read.
	InWindow bool `json:"in_window"`
	// ClaimedFetchedBytes sums the devices' ClaimedFetchedBytes.
	ClaimedFetchedBytes int64 `json:"claimed_fetched_bytes,omitempty"`
}

// Wave is one wave's progress.
type Wave struct {
	Number int `json:"number"` // from 1; wave 1 is the canary
	Size   int `json:"size"`
	// Need is how many devices must commit for the next wave to open.
	Need int `json:"need"`
	// MaxFailures is how many devices may fail before the wave trips the
	// failure action.
	MaxFailures int       `json:"max_failures"`
	Opened      time.Time `json:"opened,omitzero"`
	// Tripped reports that the wave tripped the failure action. Once an
	// operator resumes, the campaign moves on when all its devices have
	// finished, whatever their outcome.
	Tripped bool   `json:"tripped,omitempty"`
	Counts  Counts `json:"counts"`
}

// Device is one device's progress in a campaign.
type Device struct {
	ID   string `json:"id"`
	Wave int    `json:"wave"` // from 1
	Step Step   `json:"step"`
	// Reason says why a device failed, rolled back or timed out.
	Reason wire.Reason `json:"reason,omitempty"`
	// Attempts counts the announcements queued for the device.
	Attempts  int       `json:"attempts,omitempty"`
	Announced time.Time `json:"announced,omitzero"` // the last one
	// Deadline is when a device in flight times out.
	Deadline time.Time `json:"deadline,omitzero"`
	// RetryAt is when a pending device is announced again (if a window is
	// open and the campaign running).
	RetryAt time.Time `json:"retry_at,omitzero"`
	// Updated is when the fleet last changed the record; Reported is the
	// time the device put in its last report.
	Updated  time.Time `json:"updated,omitzero"`
	Reported time.Time `json:"reported,omitzero"`
	// RunningVersion is the version the device last said it runs.
	RunningVersion string `json:"running_version,omitempty"`
	// Late reports that the device said how it finished after it had
	// timed out or been set to be announced again.
	Late bool `json:"late,omitempty"`
	// ClaimedFetchedBytes is what the device last said it downloaded for
	// the update (image ranges and block index): against the release's
	// image size, the saving of an adaptive update. The device's claim,
	// not measured by the fleet.
	ClaimedFetchedBytes int64 `json:"claimed_fetched_bytes,omitempty"`
}

// Assignment is a campaign in which a device is in flight.
type Assignment struct {
	Campaign string `json:"campaign"`
	Release  string `json:"release"`
	Step     Step   `json:"step"`
	Attempt  int    `json:"attempt"`
}
