package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// completionCommand is `sigil completion bash|zsh`: a completion script
// generated from the command table, completing command words, then the
// flags of the command typed (after a -), then file names.
func completionCommand() *command {
	return &command{name: "completion", args: "bash|zsh", summary: "print a shell completion script (e.g. source <(sigil completion bash))",
		pos: []string{"a shell: bash or zsh"},
		run: func(_ context.Context, x *call) error {
			shell := x.arg(0)
			if shell != "bash" && shell != "zsh" {
				return usageError{"sigil completion needs a shell: bash or zsh"}
			}
			script := bashCompletion(x.root)
			if shell == "zsh" {
				script = "autoload -U +X bashcompinit && bashcompinit\n" + script
			}
			_, err := io.WriteString(x.stdout, script)
			return err
		}}
}

// bashCompletion writes the bash completion script of the table: for
// each command path, its subcommands and its flags.
func bashCompletion(root *command) string {
	var b strings.Builder
	b.WriteString(`# bash completion for sigil (sigil completion bash), generated from its command table
_sigil() {
  local cur=${COMP_WORDS[COMP_CWORD]} path=sigil subs flags i
  for ((i = 1; i < COMP_CWORD; i++)); do
    _sigil_words "$path"
    [[ " $subs " == *" ${COMP_WORDS[i]} "* ]] || break
    path="$path ${COMP_WORDS[i]}"
  done
  _sigil_words "$path"
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
  elif [ "$i" -eq "$COMP_CWORD" ] && [ -n "$subs" ]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
  fi
}
# _sigil_words sets subs and flags to the subcommands and flags of a command path.
_sigil_words() {
  subs= flags=
  case $1 in
`)
	root.walk(nil, func(c *command, path []string) {
		subs := c.subNames()
		sort.Strings(subs)
		flags := completionFlags(c, path)
		if d := c.sub(c.def); d != nil && !c.runs() {
			flags = completionFlags(d, append(path, d.name)) // `sigil devices -o json` runs devices list
		}
		fmt.Fprintf(&b, "    %q) subs=%q flags=%q ;;\n", strings.Join(append([]string{"sigil"}, path...), " "), strings.Join(subs, " "), strings.Join(flags, " "))
	})
	b.WriteString("  esac\n}\ncomplete -o default -F _sigil sigil\n")
	return b.String()
}

// completionFlags lists a command's flags as typed: -o, --data-dir.
func completionFlags(c *command, path []string) []string {
	if !c.runs() {
		return nil
	}
	fs, _, _ := c.flagSet(path)
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Name) == 1 {
			names = append(names, "-"+f.Name)
		} else {
			names = append(names, "--"+f.Name)
		}
	})
	return names
}
