package test

import (
	"go/ast"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sleepNote marks a time.Sleep in a test that is not a wait: the comment
// on its line, or alone on the line above, says why (a real clock that
// must pass for what is tested, a pace a test imposes on purpose).
const sleepNote = "// sleep:"

// TestSleepsAreNotWaits fails for a time.Sleep in a test file that may be
// waiting for something to happen: tests wait for the condition (poll it
// with internal/wait, or take it from a channel), not for time. A sleep
// passes when it runs in a synctest bubble — written in the function given
// to synctest.Test, where it moves the fake clock once every goroutine of
// the bubble is blocked — or when a "// sleep: why" comment explains it.
func TestSleepsAreNotWaits(t *testing.T) {
	fset, files := parseTree(t)
	n := 0
	for _, f := range files {
		if !strings.HasSuffix(f.path, "_test.go") {
			continue
		}
		var lines []string
		var bubbles []ast.Node // the functions given to synctest.Test
		ast.Inspect(f.file, func(node ast.Node) bool {
			call, ok := node.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch name, x := callee(call); {
			case x == "synctest" && name == "Test" && len(call.Args) == 2:
				bubbles = append(bubbles, call.Args[1])
			case x == "time" && name == "Sleep":
				n++
				for _, b := range bubbles {
					if b.Pos() <= call.Pos() && call.End() <= b.End() {
						return true
					}
				}
				if lines == nil {
					b, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(f.path)))
					if err != nil {
						t.Fatal(err)
					}
					lines = strings.Split(string(b), "\n")
				}
				if !noted(lines, fset.Position(call.Pos()).Line) {
					t.Errorf("%s: time.Sleep in a test: wait for the condition instead (internal/wait, a channel, testing/synctest), "+
						"or say why it is no wait with a %q comment", fset.Position(call.Pos()), sleepNote+" why")
				}
			}
			return true
		})
	}
	if n < 20 {
		t.Fatalf("found only %d time.Sleep calls in tests: the test no longer recognizes them", n)
	}
}

// noted reports whether line (1-based) of a file, or the line above it
// when that holds only a comment, carries a sleep note with a reason.
func noted(lines []string, line int) bool {
	has := func(s string) bool {
		_, why, ok := strings.Cut(s, sleepNote)
		return ok && strings.TrimSpace(why) != ""
	}
	if line-1 < len(lines) && has(lines[line-1]) {
		return true
	}
	return line >= 2 && strings.HasPrefix(strings.TrimSpace(lines[line-2]), "//") && has(lines[line-2])
}
