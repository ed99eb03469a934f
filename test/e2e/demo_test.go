package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemoCommands runs the real `sigil-sim demo` and then every command it
// printed for people to try (its "  $ " lines), as a person pastes them
// into a shell while the demo serves: each must exit 0 (curl with
// --fail-with-body fails on an HTTP error). The demo once printed a
// `sigild secret get … --config <device>/sigild.json` naming a file it
// never wrote.
func TestDemoCommands(t *testing.T) {
	requireTools(t)
	sigil, sigild := buildBinaries(t)
	if filepath.Dir(sigil) != filepath.Dir(sigild) {
		t.Fatal("sigil and sigild are built into different directories")
	}
	// The demo is sigil-sim's; the commands it prints run the sigil and
	// sigild beside it, as make build leaves them in bin/.
	sim := filepath.Join(filepath.Dir(sigil), "sigil-sim")
	if out, err := exec.Command("go", "build", "-o", sim, "github.com/sigil-iot/sigil/cmd/sigil-sim").CombinedOutput(); err != nil {
		t.Fatalf("go build sigil-sim: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	demo := exec.CommandContext(ctx, sim, "demo", "--dir", filepath.Join(dir, "demo"), "--devices", "2",
		"--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0")
	demo.Cancel = func() error { return demo.Process.Signal(os.Interrupt) }
	demo.WaitDelay = 30 * time.Second
	logf, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		t.Fatal(err)
	}
	demo.Stderr = logf
	out, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	var printed strings.Builder
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("demo output:\n%s\ndemo log:\n%s", printed.String(), b)
		}
	}()
	var commands []string
	serving := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		printed.WriteString(line + "\n")
		if c, ok := strings.CutPrefix(line, "  $ "); ok {
			commands = append(commands, c)
		}
		if strings.HasPrefix(line, "Serving until interrupted") {
			serving = true
			break
		}
	}
	if !serving {
		demo.Wait()
		t.Fatalf("the demo stopped before serving")
	}
	kinds := map[string]bool{}
	for _, c := range commands {
		kinds[filepath.Base(strings.Fields(c)[0])] = true
	}
	for _, want := range []string{"sigil", "sigild", "curl", "tpm2_pcrextend"} {
		if !kinds[want] {
			t.Errorf("the demo printed no %s command: %q", want, commands)
		}
	}
	for _, c := range commands {
		if strings.ContainsAny(c, "<>") {
			t.Errorf("a printed command holds a placeholder: %s", c)
		}
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		cmd := exec.CommandContext(cctx, "sh", "-c", c)
		cmd.Dir = dir
		b, err := cmd.CombinedOutput()
		ccancel()
		if err != nil {
			t.Errorf("printed command failed: %s\n%v\n%s", c, err, b)
		}
	}

	demo.Process.Signal(os.Interrupt)
	go func() {
		for sc.Scan() { // drain the rest
		}
	}()
	if err := demo.Wait(); err != nil {
		t.Errorf("the demo did not stop cleanly on an interrupt: %v", err)
	}
}
