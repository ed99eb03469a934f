package exposure

import (
	"fmt"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/ossf/osv-schema/bindings/go/osvschema"
	"github.com/package-url/packageurl-go"
	"google.golang.org/protobuf/encoding/protojson"
)

// Bounds on an advisory.
const (
	MaxAdvisorySize = 1 << 20 // bytes of an OSV JSON document
	maxAffected     = 1000    // affected packages
	maxEvents       = 1000    // events of one range, and versions listed
)

// Advisory is an OSV advisory, reduced to what matching needs.
type Advisory struct {
	ID        string     `json:"id"`
	Aliases   []string   `json:"aliases,omitempty"`
	Summary   string     `json:"summary,omitempty"`
	Published time.Time  `json:"published,omitzero"`
	Modified  time.Time  `json:"modified,omitzero"`
	Withdrawn time.Time  `json:"withdrawn,omitzero"`
	Affected  []Affected `json:"affected"`
}

// Affected is one package an advisory names: by package URL (without
// version), with the version ranges and versions it affects.
type Affected struct {
	PURL     string   `json:"purl"`
	Ranges   []Range  `json:"ranges,omitempty"`
	Versions []string `json:"versions,omitempty"`
}

// Range is one OSV range: its type (SEMVER or ECOSYSTEM; GIT ranges name
// commits and match no component version) and its events in order.
type Range struct {
	Type   string  `json:"type"`
	Events []Event `json:"events"`
}

// Event is one OSV range event; exactly one field is set.
type Event struct {
	Introduced   string `json:"introduced,omitempty"`
	Fixed        string `json:"fixed,omitempty"`
	LastAffected string `json:"last_affected,omitempty"`
}

// ParseOSV reads an OSV JSON advisory (the OSV schema's Go bindings).
// Affected packages without a package URL (only an ecosystem and a name)
// are left out: components are matched by package URL. Every error wraps
// ErrAdvisory.
func ParseOSV(b []byte) (*Advisory, error) {
	if len(b) > MaxAdvisorySize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrAdvisory, len(b), MaxAdvisorySize)
	}
	var v osvschema.Vulnerability
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAdvisory, err)
	}
	if v.GetId() == "" || len(v.GetId()) > 256 {
		return nil, fmt.Errorf("%w: no id", ErrAdvisory)
	}
	if len(v.GetAffected()) > maxAffected {
		return nil, fmt.Errorf("%w: %d affected packages, more than %d", ErrAdvisory, len(v.GetAffected()), maxAffected)
	}
	a := &Advisory{ID: v.GetId(), Aliases: v.GetAliases(), Summary: v.GetSummary()}
	if t := v.GetPublished(); t != nil {
		a.Published = t.AsTime()
	}
	if t := v.GetModified(); t != nil {
		a.Modified = t.AsTime()
	}
	if t := v.GetWithdrawn(); t != nil {
		a.Withdrawn = t.AsTime()
	}
	for i, af := range v.GetAffected() {
		raw := af.GetPackage().GetPurl()
		if raw == "" {
			continue
		}
		p, err := packageurl.FromString(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: affected[%d]: %w", ErrAdvisory, i, err)
		}
		if len(af.GetVersions()) > maxEvents {
			return nil, fmt.Errorf("%w: affected[%d]: more than %d versions", ErrAdvisory, i, maxEvents)
		}
		x := Affected{PURL: basePURL(p), Versions: af.GetVersions()}
		for j, r := range af.GetRanges() {
			if len(r.GetEvents()) > maxEvents {
				return nil, fmt.Errorf("%w: affected[%d].ranges[%d]: more than %d events", ErrAdvisory, i, j, maxEvents)
			}
			rg := Range{Type: r.GetType().String()}
			for _, e := range r.GetEvents() {
				rg.Events = append(rg.Events, Event{Introduced: e.GetIntroduced(), Fixed: e.GetFixed(), LastAffected: e.GetLastAffected()})
			}
			x.Ranges = append(x.Ranges, rg)
		}
		a.Affected = append(a.Affected, x)
	}
	return a, nil
}

// basePURL is p without version, qualifiers and subpath: the package, for
// comparing two package URLs.
func basePURL(p packageurl.PackageURL) string {
	return packageurl.NewPackageURL(p.Type, p.Namespace, p.Name, "", nil, "").ToString()
}

// Match reports whether the advisory affects component c, and the version
// that fixes it in the matching range ("" when none is known).
func (a *Advisory) Match(c Component) (affected bool, fixed string) {
	p, err := packageurl.FromString(c.PURL)
	if err != nil {
		return false, ""
	}
	base := basePURL(p)
	for _, af := range a.Affected {
		if af.PURL != base {
			continue
		}
		for _, v := range af.Versions {
			if v == c.Version {
				return true, ""
			}
		}
		for _, r := range af.Ranges {
			if ok, fix := r.contains(c.Version); ok {
				return true, fix
			}
		}
	}
	return false, ""
}

// contains reports whether version is in the range, walking its events in
// order: "introduced" opens an interval ("0" from the first version),
// "fixed" closes it before the version named, "last_affected" at it. Only
// SEMVER and ECOSYSTEM ranges of semantic versions compare.
func (r Range) contains(version string) (bool, string) {
	if r.Type != "SEMVER" && r.Type != "ECOSYSTEM" {
		return false, ""
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return false, ""
	}
	in := false
	for _, e := range r.Events {
		switch {
		case e.Introduced != "":
			if e.Introduced == "0" {
				in = true
				continue
			}
			if iv, err := semver.NewVersion(e.Introduced); err == nil && !v.LessThan(iv) {
				in = true
			}
		case e.Fixed != "" && in:
			if fv, err := semver.NewVersion(e.Fixed); err == nil {
				if v.LessThan(fv) {
					return true, e.Fixed
				}
				in = false
			}
		case e.LastAffected != "" && in:
			if lv, err := semver.NewVersion(e.LastAffected); err == nil {
				if !v.GreaterThan(lv) {
					return true, ""
				}
				in = false
			}
		}
	}
	return in, ""
}
