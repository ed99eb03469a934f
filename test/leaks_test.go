package test

import (
	"go/ast"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"
)

// TestRunnersCheckLeaks fails for a package that has a long-running
// component — a method Run(ctx context.Context) error — and whose tests do
// not end with the goroutine-leak check: a TestMain that calls
// leaktest.Main or leaktest.Run (internal/leaktest). Commands (package
// main) are wiring and are left out.
func TestRunnersCheckLeaks(t *testing.T) {
	fset, files := parseTree(t)
	runners := map[string]string{} // directory -> a Run method's position
	checked := map[string]bool{}   // directory -> its TestMain checks for leaks
	for _, f := range files {
		dir := path.Dir(f.path)
		if strings.HasSuffix(f.path, "_test.go") {
			if mainChecksLeaks(f.file) {
				checked[dir] = true
			}
			continue
		}
		if f.file.Name.Name == "main" {
			continue
		}
		for _, d := range f.file.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && isRunMethod(fn) {
				runners[dir] = fset.Position(fn.Pos()).String()
			}
		}
	}
	if len(runners) < 15 {
		t.Fatalf("found only %d packages with a Run(ctx) method: the test no longer recognizes them", len(runners))
	}
	for _, dir := range slices.Sorted(maps.Keys(runners)) {
		if !checked[dir] {
			t.Errorf("%s: %s has a Run(ctx) method and its tests do not check for leaked goroutines: add func TestMain(m *testing.M) { leaktest.Main(m) }",
				runners[dir], dir)
		}
	}
}

// isRunMethod reports whether fn is a method Run(context.Context) error.
func isRunMethod(fn *ast.FuncDecl) bool {
	if fn.Recv == nil || fn.Name.Name != "Run" {
		return false
	}
	p, r := fn.Type.Params.List, fn.Type.Results
	if len(p) != 1 || len(p[0].Names) > 1 || r == nil || len(r.List) != 1 || !isIdent(r.List[0].Type, "error") {
		return false
	}
	sel, ok := p[0].Type.(*ast.SelectorExpr)
	return ok && isIdent(sel.X, "context") && sel.Sel.Name == "Context"
}

// mainChecksLeaks reports whether f declares a TestMain that calls
// leaktest.Main or leaktest.Run.
func mainChecksLeaks(f *ast.File) bool {
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || fn.Name.Name != "TestMain" || fn.Body == nil {
			continue
		}
		found := false
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			if c, ok := n.(*ast.CallExpr); ok {
				if name, x := callee(c); x == "leaktest" && (name == "Main" || name == "Run") {
					found = true
				}
			}
			return !found
		})
		if found {
			return true
		}
	}
	return false
}
