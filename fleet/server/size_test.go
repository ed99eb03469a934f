package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxWiringLines bounds the lines of fleet/server's non-test Go source.
// The composition root builds the fleet's parts and wires them together;
// a service, its store and its logic live beside their domain, with the
// small interfaces they need of the rest (issue 17: about 2,880 lines
// before the services moved out, about 1,440 after).
const maxWiringLines = 1500

// TestWiringSize fails when fleet/server's non-test source grows past
// maxWiringLines: move the new service next to its domain and call its
// constructor from here instead.
func TestWiringSize(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	lines, counted := 0, 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines += bytes.Count(b, []byte("\n"))
		counted++
	}
	if counted < 5 || lines < 500 {
		t.Fatalf("counted %d lines in %d files: too little to be fleet/server", lines, counted)
	}
	t.Logf("fleet/server: %d lines of non-test Go source in %d files (bound %d)", lines, counted, maxWiringLines)
	if lines > maxWiringLines {
		t.Errorf("fleet/server has %d lines of non-test Go source, past its bound of %d (maxWiringLines): "+
			"fleet/server is wiring only; put the new service beside its domain (fleet/<domain>) "+
			"with the small interfaces it needs, and call its constructor from New", lines, maxWiringLines)
	}
}
