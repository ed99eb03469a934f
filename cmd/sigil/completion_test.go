package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCompletionBash sources the generated script in a real bash and asks
// it to complete, as bash does on TAB.
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("bash not found (CI=true requires it)")
		}
		t.Skip("bash not installed")
	}
	var script bytes.Buffer
	if err := cmdCompletion([]string{"bash"}, &script); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "sigil.bash")
	os.WriteFile(file, script.Bytes(), 0o644)
	complete := func(words ...string) []string {
		t.Helper()
		args := append([]string{"-c", `source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _sigil; printf '%s\n' "${COMPREPLY[@]}"`, file}, words...)
		cmd := exec.Command(bash, args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	if got := complete("sigil", "de"); !slices.Equal(got, []string{"demo", "devices"}) {
		t.Errorf("sigil de<TAB>: %v", got)
	}
	if got := complete("sigil", "ca", ""); !slices.Equal(got, []string{"activate", "prepare", "retire", "status"}) {
		t.Errorf("sigil ca <TAB>: %v", got)
	}
	if got := complete("sigil", "audit", "v"); !slices.Equal(got, []string{"verify"}) {
		t.Errorf("sigil audit v<TAB>: %v", got)
	}
	if got := complete("sigil", "devices", "list", "--d"); !slices.Equal(got, []string{"--data-dir"}) {
		t.Errorf("sigil devices list --d<TAB>: %v", got)
	}
	if err := cmdCompletion([]string{"fish"}, &script); err == nil {
		t.Error("an unknown shell was accepted")
	}
}

// TestEverySubcommandParsesFlags runs each command's flag set with --help:
// a flag defined twice (a command's own and the shared API flags) panics
// here rather than in an operator's terminal.
func TestEverySubcommandParsesFlags(t *testing.T) {
	t.Chdir(t.TempDir()) // nothing a command might write lands in the source tree
	for cmd, subs := range commandTree(usage) {
		if cmd == "serve" || cmd == "demo" || cmd == "bench" || cmd == "sim-device" || cmd == "completion" || cmd == "version" {
			continue
		}
		if len(subs) == 0 {
			subs = []string{""}
		}
		for _, sub := range subs {
			// --help first: commands stop at it (or at the missing
			// positional argument) before doing anything.
			args := []string{cmd}
			if sub != "" {
				args = append(args, sub)
			}
			var out, errb bytes.Buffer
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("sigil %s %s: panic: %v", cmd, sub, r)
					}
				}()
				run(append(args, "--help"), &out, &errb)
			}()
		}
	}
}
