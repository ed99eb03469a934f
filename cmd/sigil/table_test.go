package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// completer sources the completion script of the table in a real bash and
// asks it to complete, as bash does on TAB.
func completer(t *testing.T) func(words ...string) []string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("bash not found (CI=true requires it)")
		}
		t.Skip("bash not installed")
	}
	stdout, stderr, code := runCLI(t, "", "completion", "bash")
	if code != exitOK || stderr != "" {
		t.Fatalf("sigil completion bash: exit %d, %s", code, stderr)
	}
	file := filepath.Join(t.TempDir(), "sigil.bash")
	if err := os.WriteFile(file, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	return func(words ...string) []string {
		t.Helper()
		args := append([]string{"-c", `source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _sigil; printf '%s\n' "${COMPREPLY[@]}"`, file}, words...)
		out, err := exec.Command(bash, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return got
	}
}

// TestCompletionBash: the completion script completes every command word
// of the table, then the flags of the command typed.
func TestCompletionBash(t *testing.T) {
	complete := completer(t)
	for _, tc := range []struct {
		words []string
		want  []string
	}{
		{[]string{"sigil", "de"}, []string{"devices"}},
		{[]string{"sigil", "ca", ""}, []string{"activate", "prepare", "retire", "status"}},
		{[]string{"sigil", "audit", "v"}, []string{"verify"}},
		{[]string{"sigil", "alerts", "rules", ""}, []string{"delete", "list", "put"}},
		{[]string{"sigil", "devices", "list", "--d"}, []string{"--data-dir"}},
		{[]string{"sigil", "devices", "--st"}, []string{"--state"}},                            // devices runs devices list
		{[]string{"sigil", "secrets", "put", "db-password", "--pcr"}, []string{"--pcr-bound"}}, // after an argument
		{[]string{"sigil", "firmware", "keygen", "-"}, []string{"--alg", "--key", "--pub"}},    // offline: no API flags
		{[]string{"sigil", "devices", "show", ""}, nil},                                        // an argument: bash's default
	} {
		if got := complete(tc.words...); !slices.Equal(got, tc.want) {
			t.Errorf("%s<TAB>: %v, want %v", strings.Join(tc.words, " "), got, tc.want)
		}
	}
	// Every group of the table offers exactly its subcommands.
	commandTable().walk(nil, func(c *command, path []string) {
		if len(c.subs) == 0 {
			return
		}
		want := c.subNames()
		slices.Sort(want)
		words := append(append([]string{"sigil"}, path...), "")
		if got := complete(words...); !slices.Equal(got, want) {
			t.Errorf("%s<TAB>: %v, want %v", strings.Join(words, " "), got, want)
		}
	})
	if _, stderr, code := runCLI(t, "", "completion", "fish"); code != exitUsage || !strings.Contains(stderr, "bash or zsh") {
		t.Errorf("an unknown shell: exit %d, %s", code, stderr)
	}
	stdout, _, code := runCLI(t, "", "completion", "zsh")
	if code != exitOK || !strings.HasPrefix(stdout, "autoload -U +X bashcompinit && bashcompinit\n") || !strings.Contains(stdout, "complete -o default -F _sigil sigil") {
		t.Errorf("sigil completion zsh: exit %d\n%s", code, stdout)
	}
}

// TestEverySubcommandHelp runs every command of the table, groups
// included, with --help and -h: each answers exit 0 with its usage on
// stdout and nothing on stderr, before doing anything else, and the help
// of a command that runs names each of its flags. A flag defined twice (a
// command's own and the shared API flags) panics here rather than in an
// operator's terminal.
func TestEverySubcommandHelp(t *testing.T) {
	t.Chdir(t.TempDir()) // nothing a command might write lands in the source tree
	n := 0
	commandTable().walk(nil, func(c *command, path []string) {
		if len(path) == 0 {
			return
		}
		n++
		for _, help := range []string{"--help", "-h"} {
			args := append(slices.Clone(path), help)
			var out, errb bytes.Buffer
			code := -1
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("sigil %s: panic: %v", strings.Join(args, " "), r)
					}
				}()
				code = run(args, strings.NewReader(""), &out, &errb)
			}()
			name := "sigil " + strings.Join(path, " ")
			if code != exitOK || !strings.HasPrefix(out.String(), "usage:\n  "+name) || errb.Len() != 0 {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q", name, help, code, out.String(), errb.String())
			}
			if c.runs() {
				fs, _, _ := c.flagSet(path)
				fs.VisitAll(func(f *flag.Flag) {
					if !strings.Contains(out.String(), "  -"+f.Name) {
						t.Errorf("%s %s does not list -%s:\n%s", name, help, f.Name, out.String())
					}
				})
			}
		}
	})
	if n < 100 {
		t.Errorf("the table holds only %d commands", n)
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		stdout, stderr, code := runCLI(t, "", args...)
		if code != exitOK || !strings.HasPrefix(stdout, "usage: sigil COMMAND") || stderr != "" {
			t.Errorf("sigil %s: exit %d, stdout %q, stderr %q", args[0], code, stdout, stderr)
		}
	}
	stdout, stderr, code := runCLI(t, "")
	if code != exitUsage || stdout != "" || !strings.HasPrefix(stderr, "usage: sigil COMMAND") {
		t.Errorf("sigil alone: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, _, code = runCLI(t, "", "help", "devices", "cert")
	if code != exitOK || !strings.HasPrefix(stdout, "usage:\n  sigil devices cert ID [--pem]") {
		t.Errorf("sigil help devices cert: exit %d\n%s", code, stdout)
	}
	if _, stderr, code := runCLI(t, "", "help", "devices", "nope"); code != exitUsage || !strings.Contains(stderr, `no command "devices nope"`) {
		t.Errorf("sigil help devices nope: exit %d, %s", code, stderr)
	}
}

// TestHelpListsFlags: a subcommand's help names its own flags and the
// shared API flags, never a token taken from the environment.
func TestHelpListsFlags(t *testing.T) {
	t.Setenv("SIGIL_TOKEN", "sga_a-secret-from-the-environment")
	stdout, _, code := runCLI(t, "", "audit", "verify", "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"sigil audit verify FILE|-", "-key", "-data-dir"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("sigil audit verify --help lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "a-secret-from-the-environment") {
		t.Errorf("help shows the token from the environment:\n%s", stdout)
	}
	if stdout, _, code := runCLI(t, "", "users", "passwd", "-h"); code != exitOK || !strings.Contains(stdout, "-stdin") {
		t.Errorf("sigil users passwd -h: exit %d\n%s", code, stdout)
	}
	// A bad flag is still a usage error (exit 2), on stderr; so is a flag
	// of another subcommand.
	for _, args := range [][]string{{"devices", "list", "--nope"}, {"devices", "show", "dev-1", "--state", "active"}} {
		if _, stderr, code := runCLI(t, "", args...); code != exitUsage || !strings.Contains(stderr, "--help") {
			t.Errorf("sigil %s: exit %d, %s", strings.Join(args, " "), code, stderr)
		}
	}
}

// testedElsewhere are the commands that TestCommands does not run, with
// the test that does.
var testedElsewhere = map[string]string{
	"serve":             "test/e2e TestBinaries (a fleet manager, not an API call)",
	"migrate":           "TestMigrateToPostgres (a data directory and a database, not an API call)",
	"backup":            "TestBackupRestoreOffline (a data directory, not an API call)",
	"restore":           "TestBackupRestoreOffline (a data directory, not an API call)",
	"firmware keygen":   "TestFirmwareOffline",
	"firmware trust":    "TestFirmwareOffline",
	"firmware sign":     "TestFirmwareOffline",
	"firmware manifest": "TestFirmwareKMS",
	"audit verify":      "TestAuditVerify",
	"broker-config":     "TestBrokerConfig",
	"bridge create":     "TestBridgeCreate (a key and CSR made here, against the real API)",
	"broker-sync":       "test/e2e TestBrokerPoolRevocation (a fleet, a broker and its reload)",
	"completion":        "TestCompletionBash",
	"help":              "TestEverySubcommandHelp",
}

// TestEveryCommandTested: every command of the table that runs is run by
// a case of TestCommands or by the test testedElsewhere names.
func TestEveryCommandTested(t *testing.T) {
	root := commandTable()
	tested := map[string]bool{}
	for _, tc := range apiCases {
		inv, err := parse(root, nil, tc.args)
		if err != nil {
			continue // a usage error case
		}
		tested[strings.Join(inv.path, " ")] = true
	}
	root.walk(nil, func(c *command, path []string) {
		name := strings.Join(path, " ")
		if !c.runs() || tested[name] {
			return
		}
		if why := testedElsewhere[name]; why == "" {
			t.Errorf("sigil %s: no case of TestCommands runs it (add one to apiCases)", name)
		}
	})
}

// TestDocCommandsParse: every sigil command line in the documentation's
// code blocks (README.md, docs/*.md) names a command of the table with
// arguments and flags it accepts. (test/e2e TestDocExamples runs those it
// can against a live fleet.)
func TestDocCommandsParse(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "..", "README.md"))
	root := commandTable()
	n := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		inBlock := false
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "```") {
				inBlock = !inBlock
				continue
			}
			line = strings.TrimPrefix(strings.TrimSpace(line), "$ ")
			if !inBlock || !strings.HasPrefix(line, "sigil ") {
				continue
			}
			// Placeholders such as <device-id> stand for a word.
			words, err := shellWords(placeholder.ReplaceAllString(line, "x"))
			if err != nil {
				t.Errorf("%s:%d: %v: %s", file, i+1, err, line)
				continue
			}
			n++
			_, err = parse(root, nil, words[1:])
			if err != nil && !errors.As(err, new(helpRequest)) {
				t.Errorf("%s:%d: %s: %v", file, i+1, line, err)
			}
		}
	}
	t.Logf("%d sigil command lines", n)
	if n < 5 {
		t.Errorf("only %d sigil command lines found in the documentation", n)
	}
}

// placeholder is a documentation placeholder, e.g. <device-id>.
var placeholder = regexp.MustCompile(`<[a-z][a-z_-]*>`)

// shellWords splits a documentation command line as a POSIX shell would,
// for the simple lines documentation holds: words, '…' and "…" quotes,
// a comment, and the end of the command at a redirection or a pipe.
func shellWords(line string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		switch ch := line[i]; {
		case ch == '\'' || ch == '"':
			j := strings.IndexByte(line[i+1:], ch)
			if j < 0 {
				return nil, errors.New("an unclosed quote")
			}
			w.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case ch == ' ' || ch == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case !inWord && strings.IndexByte("#<>|;&", ch) >= 0:
			return words, nil
		default:
			w.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// TestShellWords checks the splitter TestDocCommandsParse relies on.
func TestShellWords(t *testing.T) {
	got, err := shellWords(`sigil secrets put db-password --model "gw 1" --pcr-bound < password.txt  # comment`)
	want := []string{"sigil", "secrets", "put", "db-password", "--model", "gw 1", "--pcr-bound"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := shellWords(`sigil x 'open`); err == nil {
		t.Error("an unclosed quote was accepted")
	}
}
