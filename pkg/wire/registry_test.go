package wire_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// typeConstants returns the exported constants named Type... declared in
// the package's source, by name, with their values. They are read from the
// source so that a message type added without a registry entry cannot go
// unnoticed.
func typeConstants(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if !id.IsExported() || !strings.HasPrefix(id.Name, "Type") {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("%s: %s is not a string literal; this test reads message types from the source", fset.Position(id.Pos()), id.Name)
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					out[id.Name] = v
				}
			}
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d Type constants", len(out))
	}
	return out
}

// TestEveryTypeRegistered fails for a message type constant without a
// registry entry, and for an entry without a constant.
func TestEveryTypeRegistered(t *testing.T) {
	consts := typeConstants(t)
	for name, typ := range consts {
		if _, ok := wire.Lookup(typ); !ok {
			t.Errorf("%s (%q) is not registered in wire.Messages", name, typ)
		}
	}
	values := map[string]bool{}
	for _, v := range consts {
		values[v] = true
	}
	for _, m := range wire.Messages() {
		if !values[m.Type] {
			t.Errorf("registered type %q has no Type constant", m.Type)
		}
	}
}

// TestRegistry checks each entry: a unique type, a topic the fleet and the
// device can name, a version this side speaks and a body that validates
// itself.
func TestRegistry(t *testing.T) {
	seen := map[string]bool{}
	tp := wire.Topics{}
	for _, m := range wire.Messages() {
		if seen[m.Type] {
			t.Errorf("%s registered twice", m.Type)
		}
		seen[m.Type] = true
		if m.Segment != wire.SegEnroll && m.Segment != wire.SegDevice || m.Dir != wire.Up && m.Dir != wire.Down {
			t.Errorf("%s: segment %q, direction %q", m.Type, m.Segment, m.Dir)
		}
		if _, err := tp.Parse("sigil/v1/" + m.Segment + "/x/" + m.Dir + "/" + m.Kind); err != nil {
			t.Errorf("%s: kind %q: %v", m.Type, m.Kind, err)
		}
		if m.Since < 1 || m.Since > wire.Version {
			t.Errorf("%s: since version %d", m.Type, m.Since)
		}
		a := m.New()
		if rv := reflect.ValueOf(a); rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
			t.Errorf("%s: New returns %#v, not a pointer to a struct", m.Type, a)
			continue
		}
		if _, ok := a.(wire.Validator); !ok {
			t.Errorf("%s: body %T does not implement wire.Validator", m.Type, a)
		}
		if got, ok := wire.Lookup(m.Type); !ok || got.Type != m.Type {
			t.Errorf("Lookup(%q) = %+v, %v", m.Type, got, ok)
		}
	}
	if _, ok := wire.Lookup("enroll.unknown"); ok {
		t.Error("Lookup found an unregistered type")
	}
	list := wire.Messages()
	list[0].Type = "changed"
	if wire.Messages()[0].Type == "changed" {
		t.Error("Messages hands out the registry itself")
	}
}

// TestRegistryMatchesProtocolDoc compares the registry with the message
// table of docs/PROTOCOL.md: every type, its topic segment, direction and
// kind.
func TestRegistryMatchesProtocolDoc(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z.]+)` \\| (enroll|dev) (up|down) `([a-z0-9_-]+)`")
	seg := map[string]string{"enroll": wire.SegEnroll, "dev": wire.SegDevice}
	var documented []string
	for _, r := range row.FindAllStringSubmatch(string(doc), -1) {
		typ := r[1]
		documented = append(documented, typ)
		m, ok := wire.Lookup(typ)
		if !ok {
			t.Errorf("docs/PROTOCOL.md documents %s, which is not registered", typ)
			continue
		}
		if m.Segment != seg[r[2]] || m.Dir != r[3] || m.Kind != r[4] {
			t.Errorf("docs/PROTOCOL.md: %s travels on %s %s %q; the registry says %s %s %q", typ, r[2], r[3], r[4], m.Segment, m.Dir, m.Kind)
		}
	}
	for _, m := range wire.Messages() {
		if !slices.Contains(documented, m.Type) {
			t.Errorf("%s is not in the message table of docs/PROTOCOL.md", m.Type)
		}
	}
}
