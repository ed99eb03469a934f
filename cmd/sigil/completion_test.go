package main

import (
	"bytes"
	"io"
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
	if got := complete("sigil", "de"); !slices.Equal(got, []string{"devices"}) {
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

// TestEverySubcommandHelp runs every command and subcommand of the usage
// text with --help and -h: each answers exit 0 with its usage on stdout
// (its usage lines and, when it has flags, its flags) and nothing on
// stderr, before doing anything else. A flag defined twice (a command's own
// and the shared API flags) panics here rather than in an operator's
// terminal.
func TestEverySubcommandHelp(t *testing.T) {
	t.Chdir(t.TempDir()) // nothing a command might write lands in the source tree
	tree := commandTree(usage)
	if len(tree) < 20 {
		t.Fatalf("the usage text names only %d commands", len(tree))
	}
	for cmd, subs := range tree {
		for _, sub := range append([]string{""}, subs...) {
			for _, help := range []string{"--help", "-h"} {
				args := []string{cmd}
				if sub != "" {
					args = append(args, sub)
				}
				args = append(args, help)
				var out, errb bytes.Buffer
				code := -1
				func() {
					defer func() {
						if r := recover(); r != nil {
							t.Errorf("sigil %s: panic: %v", strings.Join(args, " "), r)
						}
					}()
					code = run(args, &out, &errb)
				}()
				if code != exitOK || !strings.Contains(out.String(), "sigil "+cmd) || errb.Len() != 0 {
					t.Errorf("sigil %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out.String(), errb.String())
				}
			}
		}
	}
}

// TestHelpListsFlags: a subcommand's help names its own flags and the
// shared API flags, never a token taken from the environment.
func TestHelpListsFlags(t *testing.T) {
	t.Setenv("SIGIL_TOKEN", "sga_a-secret-from-the-environment")
	var out bytes.Buffer
	if code := run([]string{"audit", "verify", "--help"}, &out, io.Discard); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"sigil audit verify FILE|-", "-key", "-data-dir"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("sigil audit verify --help lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "a-secret-from-the-environment") {
		t.Errorf("help shows the token from the environment:\n%s", out.String())
	}
	out.Reset()
	if code := run([]string{"users", "passwd", "-h"}, &out, io.Discard); code != exitOK || !strings.Contains(out.String(), "-stdin") {
		t.Errorf("sigil users passwd -h: exit %d\n%s", code, out.String())
	}
	// A bad flag is still a usage error (exit 2), on stderr.
	var errb bytes.Buffer
	if code := run([]string{"devices", "list", "--nope"}, io.Discard, &errb); code != exitUsage || !strings.Contains(errb.String(), "--help") {
		t.Errorf("a bad flag: exit %d, %s", code, errb.String())
	}
}
