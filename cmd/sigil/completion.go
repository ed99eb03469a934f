package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// cmdCompletion is `sigil completion bash|zsh`: a completion script for
// the commands and subcommands in the usage text, which stays the single
// list of what sigil accepts.
func cmdCompletion(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("completion", flag.ContinueOnError)
	shell, args, err := positional(args, "sigil completion needs a shell: bash or zsh")
	if err != nil {
		return err
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 || (shell != "bash" && shell != "zsh") {
		return usageError{"sigil completion needs a shell: bash or zsh"}
	}
	script := bashCompletion(commandTree(usage))
	if shell == "zsh" {
		script = "autoload -U +X bashcompinit && bashcompinit\n" + script
	}
	_, err = io.WriteString(stdout, script)
	return err
}

// commandTree reads the "sigil CMD SUB | SUB …" lines of the usage text
// into commands and their subcommands (usageLine).
func commandTree(text string) map[string][]string {
	tree := map[string][]string{}
	for _, line := range strings.Split(text, "\n") {
		cmd, subs, ok := usageLine(line)
		if !ok {
			continue
		}
		for _, w := range subs {
			if !slices.Contains(tree[cmd], w) {
				tree[cmd] = append(tree[cmd], w)
			}
		}
		if _, ok := tree[cmd]; !ok {
			tree[cmd] = nil
		}
	}
	return tree
}

func bashCompletion(tree map[string][]string) string {
	cmds := make([]string, 0, len(tree))
	for c := range tree {
		cmds = append(cmds, c)
	}
	sort.Strings(cmds)
	var b strings.Builder
	b.WriteString("# bash completion for sigil (sigil completion bash)\n_sigil() {\n")
	b.WriteString("  local cur=${COMP_WORDS[COMP_CWORD]}\n")
	fmt.Fprintf(&b, "  if [ \"$COMP_CWORD\" -eq 1 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", strings.Join(cmds, " "))
	b.WriteString("  if [ \"$COMP_CWORD\" -eq 2 ]; then\n    case ${COMP_WORDS[1]} in\n")
	for _, c := range cmds {
		if subs := tree[c]; len(subs) > 0 {
			sort.Strings(subs)
			fmt.Fprintf(&b, "      %s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", c, strings.Join(subs, " "))
		}
	}
	b.WriteString("    esac\n    return\n  fi\n")
	b.WriteString("  COMPREPLY=($(compgen -W \"--server --token --ca --data-dir -o --justification\" -- \"$cur\"))\n}\n")
	b.WriteString("complete -F _sigil sigil\n")
	return b.String()
}
