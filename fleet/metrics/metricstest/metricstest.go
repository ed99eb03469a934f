// Package metricstest parses the Prometheus text exposition format
// (version 0.0.4) strictly, so tests can check what a /metrics endpoint
// writes is what a Prometheus server would accept, and read its values.
//
// Beyond the grammar it checks what a scraper relies on: one HELP and one
// TYPE per family, before its samples; a family's samples together; sample
// names that belong to the family's type; no repeated series; counters
// not negative; histogram buckets with increasing bounds, cumulative
// counts and a +Inf bucket equal to _count, with _sum present.
package metricstest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Family is a parsed metric family.
type Family struct {
	Name, Help, Type string
	Samples          []Sample
}

// Sample is one line of a family.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Value returns the value of the sample called name with exactly the given
// labels (pairs of name, value), and whether there is one.
func (f *Family) Value(name string, labels ...string) (float64, bool) {
	for _, s := range f.Samples {
		if s.Name != name || len(s.Labels) != len(labels)/2 {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if v, ok := s.Labels[labels[i]]; !ok || v != labels[i+1] {
				match = false
			}
		}
		if match {
			return s.Value, true
		}
	}
	return 0, false
}

// Parse reads an exposition and returns its families by name.
func Parse(r io.Reader) (map[string]*Family, error) {
	p := &parser{fams: map[string]*Family{}, seen: map[string]bool{}, closed: map[string]bool{},
		helped: map[string]bool{}, typed: map[string]bool{}}
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadString('\n')
		if err == io.EOF {
			if line != "" {
				return nil, fmt.Errorf("line %d: no final newline", n)
			}
			break
		}
		if err != nil {
			return nil, err
		}
		if err := p.line(strings.TrimSuffix(line, "\n")); err != nil {
			return nil, fmt.Errorf("line %d: %w: %q", n, err, line)
		}
	}
	for _, f := range p.fams {
		if err := checkFamily(f); err != nil {
			return nil, fmt.Errorf("family %s: %w", f.Name, err)
		}
	}
	return p.fams, nil
}

type parser struct {
	fams    map[string]*Family
	current string          // family whose lines are being read
	closed  map[string]bool // families whose lines ended
	seen    map[string]bool // series already written
	helped  map[string]bool // families with a HELP line
	typed   map[string]bool // families with a TYPE line
}

func (p *parser) family(name string) (*Family, error) {
	if name != p.current {
		if p.closed[name] {
			return nil, errors.New("family's lines are not together")
		}
		if p.current != "" {
			p.closed[p.current] = true
		}
		p.current = name
	}
	f := p.fams[name]
	if f == nil {
		f = &Family{Name: name, Type: "untyped"}
		p.fams[name] = f
	}
	return f, nil
}

func (p *parser) line(s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	if strings.HasPrefix(s, "#") {
		fields := strings.SplitN(strings.TrimPrefix(s, "#"), " ", 4)
		if len(fields) < 3 || fields[0] != "" || (fields[1] != "HELP" && fields[1] != "TYPE") {
			return nil // a plain comment
		}
		name := fields[2]
		if !validName(name) {
			return errors.New("bad metric name")
		}
		f, err := p.family(name)
		if err != nil {
			return err
		}
		rest := ""
		if len(fields) == 4 {
			rest = fields[3]
		}
		if fields[1] == "HELP" {
			if p.helped[name] {
				return errors.New("second HELP")
			}
			p.helped[name] = true
			f.Help, err = unescape(rest, false)
			return err
		}
		if p.typed[name] || len(f.Samples) > 0 {
			return errors.New("TYPE repeated or after samples")
		}
		p.typed[name] = true
		switch rest {
		case "counter", "gauge", "histogram", "summary", "untyped":
			f.Type = rest
		default:
			return errors.New("unknown type")
		}
		return nil
	}
	sm, err := parseSample(s)
	if err != nil {
		return err
	}
	fam := familyOf(sm.Name, p.fams, p.current)
	f, err := p.family(fam)
	if err != nil {
		return err
	}
	if err := belongs(f, sm); err != nil {
		return err
	}
	key := sm.Name + "{" + renderLabels(sm.Labels) + "}"
	if p.seen[key] {
		return errors.New("repeated series")
	}
	p.seen[key] = true
	f.Samples = append(f.Samples, sm)
	return nil
}

// familyOf names the family a sample belongs to: a histogram's or
// summary's suffixed samples belong to the family being read.
func familyOf(name string, fams map[string]*Family, current string) string {
	if f := fams[current]; f != nil && (f.Type == "histogram" || f.Type == "summary") {
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if name == current+suf {
				return current
			}
		}
	}
	return name
}

func belongs(f *Family, s Sample) error {
	switch f.Type {
	case "histogram":
		switch s.Name {
		case f.Name + "_bucket":
			if _, ok := s.Labels["le"]; !ok {
				return errors.New("bucket without le")
			}
		case f.Name + "_sum", f.Name + "_count":
			if _, ok := s.Labels["le"]; ok {
				return errors.New("le outside a bucket")
			}
		default:
			return errors.New("sample name does not belong to the histogram")
		}
	case "counter":
		if s.Name != f.Name {
			return errors.New("sample name does not match the family")
		}
		if s.Value < 0 || math.IsNaN(s.Value) {
			return errors.New("counter negative or NaN")
		}
	default:
		if s.Name != f.Name {
			return errors.New("sample name does not match the family")
		}
	}
	return nil
}

func checkFamily(f *Family) error {
	if f.Type != "histogram" {
		return nil
	}
	type series struct {
		les              []float64
		counts           []float64
		count            float64
		hasCount, hasSum bool
	}
	all := map[string]*series{}
	get := func(labels map[string]string) *series {
		rest := map[string]string{}
		for k, v := range labels {
			if k != "le" {
				rest[k] = v
			}
		}
		k := renderLabels(rest)
		if all[k] == nil {
			all[k] = &series{}
		}
		return all[k]
	}
	for _, s := range f.Samples {
		sr := get(s.Labels)
		switch s.Name {
		case f.Name + "_bucket":
			le, err := parseValue(s.Labels["le"])
			if err != nil {
				return fmt.Errorf("le %q: %w", s.Labels["le"], err)
			}
			if n := len(sr.les); n > 0 && (le <= sr.les[n-1] || s.Value < sr.counts[n-1]) {
				return errors.New("buckets not increasing or not cumulative")
			}
			sr.les = append(sr.les, le)
			sr.counts = append(sr.counts, s.Value)
		case f.Name + "_count":
			sr.count, sr.hasCount = s.Value, true
		case f.Name + "_sum":
			sr.hasSum = true
		}
	}
	for k, sr := range all {
		n := len(sr.les)
		if n == 0 || !math.IsInf(sr.les[n-1], 1) {
			return fmt.Errorf("series {%s}: no +Inf bucket", k)
		}
		if !sr.hasCount || !sr.hasSum || sr.count != sr.counts[n-1] {
			return fmt.Errorf("series {%s}: _count or _sum missing, or _count differs from the +Inf bucket", k)
		}
	}
	return nil
}

func parseSample(s string) (Sample, error) {
	i := 0
	for i < len(s) && s[i] != '{' && s[i] != ' ' {
		i++
	}
	sm := Sample{Name: s[:i], Labels: map[string]string{}}
	if !validName(sm.Name) {
		return sm, errors.New("bad metric name")
	}
	s = s[i:]
	if strings.HasPrefix(s, "{") {
		s = s[1:]
		for {
			if strings.HasPrefix(s, "}") {
				s = s[1:]
				break
			}
			eq := strings.IndexByte(s, '=')
			if eq < 0 {
				return sm, errors.New("label without '='")
			}
			name := s[:eq]
			if !validLabel(name) {
				return sm, fmt.Errorf("bad label name %q", name)
			}
			if _, dup := sm.Labels[name]; dup {
				return sm, errors.New("repeated label")
			}
			s = s[eq+1:]
			if !strings.HasPrefix(s, `"`) {
				return sm, errors.New("label value not quoted")
			}
			end := closingQuote(s)
			if end < 0 {
				return sm, errors.New("unterminated label value")
			}
			v, err := unescape(s[1:end], true)
			if err != nil {
				return sm, err
			}
			sm.Labels[name] = v
			s = s[end+1:]
			if strings.HasPrefix(s, ",") {
				s = s[1:]
			} else if !strings.HasPrefix(s, "}") {
				return sm, errors.New("expected ',' or '}'")
			}
		}
	}
	if !strings.HasPrefix(s, " ") {
		return sm, errors.New("no space before the value")
	}
	fields := strings.Split(s[1:], " ")
	if len(fields) < 1 || len(fields) > 2 {
		return sm, errors.New("expected a value and an optional timestamp")
	}
	v, err := parseValue(fields[0])
	if err != nil {
		return sm, err
	}
	sm.Value = v
	if len(fields) == 2 {
		if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
			return sm, errors.New("bad timestamp")
		}
	}
	return sm, nil
}

func closingQuote(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

func unescape(s string, label bool) (string, error) {
	if !utf8.ValidString(s) {
		return "", errors.New("not UTF-8")
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\n' || (label && c == '"') {
			return "", errors.New("unescaped newline or quote")
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i == len(s) {
			return "", errors.New("trailing backslash")
		}
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case '"':
			if !label {
				return "", errors.New(`\" in HELP`)
			}
			b.WriteByte('"')
		default:
			return "", fmt.Errorf("unknown escape \\%c", s[i])
		}
	}
	return b.String(), nil
}

func parseValue(s string) (float64, error) {
	switch s {
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	if s == "" || strings.ContainsAny(s, "_xXpP") || strings.EqualFold(s, "inf") || strings.EqualFold(s, "infinity") {
		return 0, fmt.Errorf("bad value %q", s)
	}
	return strconv.ParseFloat(s, 64)
}

func renderLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + strconv.Quote(l[k]) + ",")
	}
	return b.String()
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func validLabel(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
