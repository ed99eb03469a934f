package exposure

import (
	"bytes"
	"errors"
	"fmt"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/package-url/packageurl-go"
	spdxjson "github.com/spdx/tools-golang/json"

	"github.com/sigil-iot/sigil/firmware/manifest"
)

// Bounds on an SBOM.
const (
	MaxSBOMSize   = 16 << 20 // bytes of an SBOM file
	MaxComponents = 20000    // components listed, nested ones included
	maxDepth      = 32       // nesting of components
)

// Errors. Compare with errors.Is.
var (
	// ErrSBOM wraps every error of ParseSBOM: the file is not a CycloneDX
	// JSON SBOM this package reads.
	ErrSBOM = errors.New("exposure: invalid SBOM")
	// ErrAdvisory wraps every error of ParseOSV.
	ErrAdvisory = errors.New("exposure: invalid OSV advisory")
	// ErrQuery is returned for a package URL or version range that does not
	// parse.
	ErrQuery = errors.New("exposure: invalid query")
)

// Component is one software component of a release.
type Component struct {
	// PURL is the component's package URL as the SBOM gives it, version
	// included (pkg:TYPE/NAMESPACE/NAME@VERSION).
	PURL    string `json:"purl"`
	Name    string `json:"name"`
	Version string `json:"version"`
}

// ParseSBOM reads a CycloneDX JSON SBOM (any 1.x specification version)
// and returns its components with a valid package URL, nested ones and the
// metadata's component included, in document order. Components without a
// package URL cannot be matched to advisories and are left out.
func ParseSBOM(b []byte) ([]Component, error) {
	if len(b) > MaxSBOMSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrSBOM, len(b), MaxSBOMSize)
	}
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(b), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSBOM, err)
	}
	if bom.BOMFormat != cdx.BOMFormat || bom.SpecVersion == 0 {
		return nil, fmt.Errorf("%w: not a CycloneDX 1.x document (bomFormat %q)", ErrSBOM, bom.BOMFormat)
	}
	var out []Component
	var walk func(cs []cdx.Component, depth int) error
	add := func(c *cdx.Component) error {
		if c.PackageURL == "" {
			return nil
		}
		p, err := packageurl.FromString(c.PackageURL)
		if err != nil {
			return fmt.Errorf("%w: component %q: %w", ErrSBOM, c.Name, err)
		}
		v := p.Version
		if v == "" {
			v = c.Version
		}
		if len(out) == MaxComponents {
			return fmt.Errorf("%w: more than %d components", ErrSBOM, MaxComponents)
		}
		out = append(out, Component{PURL: c.PackageURL, Name: c.Name, Version: v})
		return nil
	}
	walk = func(cs []cdx.Component, depth int) error {
		if depth > maxDepth {
			return fmt.Errorf("%w: components nested more than %d deep", ErrSBOM, maxDepth)
		}
		for i := range cs {
			if err := add(&cs[i]); err != nil {
				return err
			}
			if cs[i].Components != nil {
				if err := walk(*cs[i].Components, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if bom.Metadata != nil && bom.Metadata.Component != nil {
		if err := walk([]cdx.Component{*bom.Metadata.Component}, 0); err != nil {
			return nil, err
		}
	}
	if bom.Components != nil {
		if err := walk(*bom.Components, 0); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ParseSPDX reads an SPDX 2.x JSON document (SPDX's Go tools) and returns
// its packages that name a package URL (an external reference of type
// "purl"), in document order, as ParseSBOM does for CycloneDX. Every error
// wraps ErrSBOM.
func ParseSPDX(b []byte) ([]Component, error) {
	if len(b) > MaxSBOMSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrSBOM, len(b), MaxSBOMSize)
	}
	doc, err := spdxjson.Read(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSBOM, err)
	}
	var out []Component
	for _, p := range doc.Packages {
		if p == nil {
			continue
		}
		for _, ref := range p.PackageExternalReferences {
			if ref == nil || ref.RefType != "purl" {
				continue
			}
			q, err := packageurl.FromString(ref.Locator)
			if err != nil {
				return nil, fmt.Errorf("%w: package %q: %w", ErrSBOM, p.PackageName, err)
			}
			v := q.Version
			if v == "" {
				v = p.PackageVersion
			}
			if len(out) == MaxComponents {
				return nil, fmt.Errorf("%w: more than %d components", ErrSBOM, MaxComponents)
			}
			out = append(out, Component{PURL: ref.Locator, Name: p.PackageName, Version: v})
		}
	}
	return out, nil
}

// parse reads an SBOM in a manifest's format.
func parse(format string, b []byte) ([]Component, error) {
	switch format {
	case manifest.SBOMCycloneDX:
		return ParseSBOM(b)
	case manifest.SBOMSPDX:
		return ParseSPDX(b)
	}
	return nil, fmt.Errorf("%w: format %q", ErrSBOM, format)
}
