package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// cmdCompletion is `sigil completion bash|zsh`: a completion script for
// the commands and subcommands in the usage text, which stays the single
// list of what sigil accepts.
func cmdCompletion(args []string, stdout io.Writer) error {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		return usageError{"sigil completion needs a shell: bash or zsh"}
	}
	script := bashCompletion(commandTree(usage))
	if args[0] == "zsh" {
		script = "autoload -U +X bashcompinit && bashcompinit\n" + script
	}
	_, err := io.WriteString(stdout, script)
	return err
}

// commandTree reads "sigil CMD SUB | SUB …" lines of the usage text into
// commands and their subcommands (lower-case words that are not flags or
// placeholders).
func commandTree(text string) map[string][]string {
	tree := map[string][]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "sigil" {
			continue
		}
		cmd := f[1]
		if _, ok := tree[cmd]; !ok {
			tree[cmd] = nil
		}
		// Subcommands: the word after the command and after each '|'.
		for i := 2; i < len(f); i++ {
			w := strings.Trim(f[i], "[]()")
			if i == 2 || f[i-1] == "|" {
				if strings.Contains(w, "|") {
					for _, alt := range strings.Split(w, "|") {
						addWord(tree, cmd, alt)
					}
					continue
				}
				addWord(tree, cmd, w)
			}
		}
	}
	return tree
}

func addWord(tree map[string][]string, cmd, w string) {
	if w == "" || strings.HasPrefix(w, "-") || strings.ToLower(w) != w || strings.ContainsAny(w, ".=/") {
		return
	}
	for _, have := range tree[cmd] {
		if have == w {
			return
		}
	}
	tree[cmd] = append(tree[cmd], w)
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
