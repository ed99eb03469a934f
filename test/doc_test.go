package test

import (
	"encoding/json"
	"io"
	"os/exec"
	"testing"
)

// TestEveryPackageHasDoc fails for a package without a doc comment.
func TestEveryPackageHasDoc(t *testing.T) {
	cmd := exec.Command("go", "list", "-json", "github.com/sigil-iot/sigil/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(out)
	n := 0
	for {
		var p struct {
			ImportPath string
			Doc        string
			Name       string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
		if p.Doc == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("only %d packages listed", n)
	}
}
