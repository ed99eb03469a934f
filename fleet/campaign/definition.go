package campaign

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Limits on a definition.
const (
	MaxWaves    = 1000      // waves in one campaign
	MaxTargets  = 1_000_000 // devices in one campaign
	MaxWindows  = 32        // maintenance windows in one definition
	MaxRetries  = 10        // Definition.Retries
	maxLabel    = 128       // names, releases, groups, models, tags, actors
	maxVersion  = 64        // a reported running version
	maxWhy      = 1024      // a justification
	minTimeout  = time.Second
	maxTimeout  = 30 * 24 * time.Hour
	maxInFlight = MaxTargets
)

// Defaults for the zero values of a Definition.
const (
	DefaultCanary        = 1
	DefaultGrowth        = 2.0
	DefaultDeviceTimeout = time.Hour
)

// Action is what a campaign does when a wave trips its failure threshold.
type Action string

// Failure actions.
const (
	ActionPause Action = "pause" // stop announcing until an operator resumes or aborts
	ActionAbort Action = "abort" // end the campaign
)

// Definition says what a campaign installs, on which devices, and how
// carefully. Zero values take the defaults their comments state.
type Definition struct {
	// Name is a label for people; optional.
	Name string `json:"name,omitempty"`
	// Release is the release ID the campaign announces (fleet/firmware's).
	Release string `json:"release"`
	// Targets selects the devices. It must be empty for a rollback
	// campaign, whose devices are those that committed the campaign it
	// rolls back.
	Targets Selector `json:"targets"`
	// Waves splits the devices, in the order Targets resolved them, into
	// waves announced one after the other.
	Waves Waves `json:"waves"`
	// SuccessThreshold is the fraction of a wave's devices that must
	// commit before the next wave opens, in (0, 1]; 0 means 1 (all).
	SuccessThreshold float64 `json:"success_threshold,omitempty"`
	// FailureThreshold is the fraction of a wave's devices that may fail
	// (failed, rolled back or timed out), in [0, 1]: one failure more trips
	// OnFailure. 0 means that any failure trips it. A wave that can no
	// longer reach SuccessThreshold trips it as well.
	FailureThreshold float64 `json:"failure_threshold,omitempty"`
	// OnFailure is what a tripped wave does; "" means ActionPause.
	OnFailure Action `json:"on_failure,omitempty"`
	// DeviceTimeout is how long a device has, from its announcement, to
	// report committed, failed or rolled back; after it the device counts
	// as failed with wire.ReasonFirmwareTimeout. 0 means
	// DefaultDeviceTimeout.
	DeviceTimeout config.Duration `json:"device_timeout,omitempty"`
	// Retries is how many more times a device that timed out without
	// reporting anything after its announcement is announced again
	// (0 to MaxRetries; default 0: it times out).
	Retries int `json:"retries,omitempty"`
	// MaxInFlight bounds the devices announced and not yet finished at
	// any moment; 0 means no bound.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// Windows are the maintenance windows: devices are announced only
	// while one is open. None means always.
	Windows []Window `json:"windows,omitempty"`
	// RollbackOf is the campaign this one rolls back; Manager.Rollback
	// sets it.
	RollbackOf string `json:"rollback_of,omitempty"`
}

// Selector chooses a campaign's devices. The fields that are set all
// apply (a device must match every one); at least one must be set.
// Targets resolves it.
type Selector struct {
	Group     string   `json:"group,omitempty"`
	Model     string   `json:"model,omitempty"`
	Tags      []string `json:"tags,omitempty"` // the device carries every tag
	DeviceIDs []string `json:"device_ids,omitempty"`
}

func (s *Selector) empty() bool {
	return s.Group == "" && s.Model == "" && len(s.Tags) == 0 && len(s.DeviceIDs) == 0
}

// Waves sizes the waves: either a canary and a growth factor, or explicit
// sizes. A last wave smaller than planned takes the devices left.
type Waves struct {
	// Canary is the size of the first wave; 0 means DefaultCanary.
	Canary int `json:"canary,omitempty"`
	// Growth multiplies each wave's size to give the next one's, rounded
	// up (1 keeps the size); 0 means DefaultGrowth.
	Growth float64 `json:"growth,omitempty"`
	// Sizes lists the waves' sizes; the last one repeats until every
	// device has a wave. It excludes Canary and Growth.
	Sizes []int `json:"sizes,omitempty"`
}

// Window is a daily maintenance window in a time zone.
type Window struct {
	// Days on which the window opens: "mon" … "sun"; none means every
	// day. A window open across midnight belongs to the day it opened.
	Days []string `json:"days,omitempty"`
	// Start and End are local times "HH:MM". An End at or before Start
	// is on the next day (Start == End is a 24-hour window).
	Start string `json:"start"`
	End   string `json:"end"`
	// Location is an IANA time zone name such as "Europe/Berlin"; ""
	// means UTC.
	Location string `json:"location,omitempty"`
}

// ErrInvalid wraps every reason a definition is refused; Validate joins
// them.
var ErrInvalid = errors.New("campaign: invalid definition")

// Validate reports every problem of the definition at once (errors.Join),
// each wrapping ErrInvalid; nil means Manager.Create accepts it.
func (d *Definition) Validate() error {
	_, err := compile(d)
	return err
}

// compiled is a validated definition with its defaults applied and its
// windows parsed. It does not know the devices yet; plan sizes the waves.
type compiled struct {
	def     Definition
	timeout time.Duration
	windows []window
}

func compile(d *Definition) (*compiled, error) {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...))
	}
	c := &compiled{def: *d}
	def := &c.def
	if len(def.Name) > maxLabel || !printable(def.Name) {
		bad("name must be at most %d printable characters", maxLabel)
	}
	switch {
	case def.Release == "":
		bad("release is required")
	case !token(def.Release):
		bad("release %q must be 1 to %d printable characters without spaces", clip(def.Release), maxLabel)
	}
	checkSelector(&def.Targets, def.RollbackOf != "", bad)
	if def.RollbackOf != "" && !wire.ValidID(def.RollbackOf) {
		bad("rollback_of %q is not a campaign ID", clip(def.RollbackOf))
	}
	checkWaves(&def.Waves, bad)
	switch st := def.SuccessThreshold; {
	case math.IsNaN(st) || st < 0 || st > 1:
		bad("success_threshold %v is not a fraction in (0, 1]", st)
	case st == 0:
		def.SuccessThreshold = 1
	}
	if ft := def.FailureThreshold; math.IsNaN(ft) || ft < 0 || ft > 1 {
		bad("failure_threshold %v is not a fraction in [0, 1]", ft)
	}
	switch def.OnFailure {
	case "":
		def.OnFailure = ActionPause
	case ActionPause, ActionAbort:
	default:
		bad("on_failure %q is neither %q nor %q", clip(string(def.OnFailure)), ActionPause, ActionAbort)
	}
	c.timeout = time.Duration(def.DeviceTimeout)
	switch {
	case c.timeout == 0:
		c.timeout = DefaultDeviceTimeout
		def.DeviceTimeout = config.Duration(c.timeout)
	case c.timeout < minTimeout || c.timeout > maxTimeout:
		bad("device_timeout %v is outside %v to %v", c.timeout, minTimeout, maxTimeout)
	}
	if def.Retries < 0 || def.Retries > MaxRetries {
		bad("retries %d is outside 0 to %d", def.Retries, MaxRetries)
	}
	if def.MaxInFlight < 0 || def.MaxInFlight > maxInFlight {
		bad("max_in_flight %d is outside 0 (no bound) to %d", def.MaxInFlight, maxInFlight)
	}
	if len(def.Windows) > MaxWindows {
		bad("at most %d windows", MaxWindows)
	} else {
		for i := range def.Windows {
			w, err := parseWindow(&def.Windows[i])
			if err != nil {
				bad("window %d: %v", i+1, err)
				continue
			}
			c.windows = append(c.windows, w)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

func checkSelector(s *Selector, rollback bool, bad func(string, ...any)) {
	if rollback {
		if !s.empty() {
			bad("targets must be empty for a rollback campaign: it targets the devices that committed the campaign it rolls back")
		}
		return
	}
	if s.empty() {
		bad("targets: set at least one of group, model, tags or device_ids")
	}
	if s.Group != "" && !token(s.Group) {
		bad("targets: group %q must be 1 to %d printable characters without spaces", clip(s.Group), maxLabel)
	}
	if s.Model != "" && !token(s.Model) {
		bad("targets: model %q must be 1 to %d printable characters without spaces", clip(s.Model), maxLabel)
	}
	for _, tag := range s.Tags {
		if !token(tag) {
			bad("targets: tag %q must be 1 to %d printable characters without spaces", clip(tag), maxLabel)
		}
	}
	if len(s.DeviceIDs) > MaxTargets {
		bad("targets: at most %d device IDs", MaxTargets)
		return
	}
	seen := make(map[string]bool, len(s.DeviceIDs))
	for _, id := range s.DeviceIDs {
		switch {
		case !wire.ValidID(id):
			bad("targets: %q is not a device ID", clip(id))
		case seen[id]:
			bad("targets: device %s is listed twice", id)
		}
		seen[id] = true
	}
}

func checkWaves(w *Waves, bad func(string, ...any)) {
	if len(w.Sizes) > 0 {
		if w.Canary != 0 || w.Growth != 0 {
			bad("waves: give either sizes or canary and growth, not both")
		}
		if len(w.Sizes) > MaxWaves {
			bad("waves: at most %d sizes", MaxWaves)
		}
		for i, n := range w.Sizes {
			if n < 1 || n > MaxTargets {
				bad("waves: size %d of wave %d is outside 1 to %d", n, i+1, MaxTargets)
			}
		}
		return
	}
	switch {
	case w.Canary == 0:
		w.Canary = DefaultCanary
	case w.Canary < 0 || w.Canary > MaxTargets:
		bad("waves: canary %d is outside 1 to %d", w.Canary, MaxTargets)
	}
	switch g := w.Growth; {
	case g == 0:
		w.Growth = DefaultGrowth
	case math.IsNaN(g) || g < 1 || g > 1000:
		bad("waves: growth %v is outside 1 to 1000", g)
	}
}

// plan returns the sizes of the waves for n devices, or an error if
// there would be more than MaxWaves.
func (c *compiled) plan(n int) ([]int, error) {
	w := &c.def.Waves
	var sizes []int
	size := w.Canary
	for left := n; left > 0; {
		if len(sizes) == MaxWaves {
			return nil, fmt.Errorf("%w: waves: %d devices would need more than %d waves; use larger sizes or growth", ErrInvalid, n, MaxWaves)
		}
		if len(w.Sizes) > 0 {
			size = w.Sizes[min(len(sizes), len(w.Sizes)-1)]
		} else if len(sizes) > 0 {
			next := math.Ceil(float64(size) * w.Growth)
			size = int(min(next, float64(n)))
		}
		take := min(size, left)
		sizes = append(sizes, take)
		left -= take
	}
	return sizes, nil
}

// need is how many of a wave of size devices must commit for the next
// wave to open.
func (c *compiled) need(size int) int {
	return max(1, int(math.Ceil(c.def.SuccessThreshold*float64(size)-1e-9)))
}

// allowed is how many of a wave of size devices may fail before it trips.
func (c *compiled) allowed(size int) int {
	return int(math.Floor(c.def.FailureThreshold*float64(size) + 1e-9))
}

// open reports whether a maintenance window is open at t (always, when
// there are none).
func (c *compiled) open(t time.Time) bool {
	if len(c.windows) == 0 {
		return true
	}
	for i := range c.windows {
		if c.windows[i].open(t) {
			return true
		}
	}
	return false
}

// window is a parsed Window.
type window struct {
	days       uint8 // bit per time.Weekday; 0 means every day
	start, end int   // minutes after local midnight
	loc        *time.Location
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

func parseWindow(w *Window) (window, error) {
	var out window
	var errs []error
	for _, d := range w.Days {
		wd, ok := dayNames[strings.ToLower(d)]
		if !ok {
			errs = append(errs, fmt.Errorf("day %q is not one of mon, tue, wed, thu, fri, sat, sun", clip(d)))
			continue
		}
		out.days |= 1 << wd
	}
	var err error
	if out.start, err = parseClock(w.Start); err != nil {
		errs = append(errs, fmt.Errorf("start: %w", err))
	}
	if out.end, err = parseClock(w.End); err != nil {
		errs = append(errs, fmt.Errorf("end: %w", err))
	}
	switch w.Location {
	case "", "UTC":
		out.loc = time.UTC
	case "Local":
		errs = append(errs, errors.New(`location "Local" depends on the fleet machine; name a time zone`))
	default:
		if out.loc, err = time.LoadLocation(w.Location); err != nil {
			errs = append(errs, fmt.Errorf("location %q is not a known time zone", clip(w.Location)))
		}
	}
	return out, errors.Join(errs...)
}

// parseClock parses "HH:MM" into minutes after midnight.
func parseClock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil || len(s) != 5 {
		return 0, fmt.Errorf("%q is not a time of day HH:MM", clip(s))
	}
	return t.Hour()*60 + t.Minute(), nil
}

// open reports whether the window is open at t: it checks the window that
// opened on t's local day and the one that opened the day before (which
// may run past midnight).
func (w *window) open(t time.Time) bool {
	local := t.In(w.loc)
	for back := 0; back <= 1; back++ {
		y, m, d := local.AddDate(0, 0, -back).Date()
		start := time.Date(y, m, d, w.start/60, w.start%60, 0, 0, w.loc)
		endDay := d
		if w.end <= w.start {
			endDay++
		}
		end := time.Date(y, m, endDay, w.end/60, w.end%60, 0, 0, w.loc)
		if w.days != 0 && w.days&(1<<start.Weekday()) == 0 {
			continue
		}
		if !t.Before(start) && t.Before(end) {
			return true
		}
	}
	return false
}

// printable reports whether s holds only printable ASCII.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// token reports whether s is 1 to maxLabel printable ASCII characters
// without spaces.
func token(s string) bool {
	return s != "" && len(s) <= maxLabel && printable(s) && !strings.Contains(s, " ")
}

// clip shortens untrusted text quoted in an error.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
