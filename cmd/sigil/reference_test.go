package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// referencePath is the command reference generated from the table.
var referencePath = filepath.Join("..", "..", "docs", "CLI.md")

// TestDocsUpToDate fails when docs/CLI.md is not what the command table
// generates; go test ./cmd/sigil -run TestDocsUpToDate -update rewrites
// it.
func TestDocsUpToDate(t *testing.T) {
	got := reference(commandTable())
	if *update {
		if err := os.WriteFile(referencePath, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(referencePath)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("docs/CLI.md is stale: the command table changed; run go test ./cmd/sigil -run TestDocsUpToDate -update\n%s", firstDiff(string(want), got))
	}
}

// firstDiff shows the first line where two texts differ.
func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  file:  %q\n  table: %q", i+1, x, y)
		}
	}
	return ""
}

// TestReferenceNamesEveryCommand: the generated reference has a section
// for every command of the table, with each of its own flags.
func TestReferenceNamesEveryCommand(t *testing.T) {
	ref := reference(commandTable())
	commandTable().walk(nil, func(c *command, path []string) {
		if len(path) == 0 {
			return
		}
		heading := strings.Repeat("#", min(len(path)+1, 4)) + " sigil " + strings.Join(path, " ") + "\n"
		i := strings.Index(ref, heading)
		if i < 0 {
			t.Errorf("no heading %q", heading)
			return
		}
		if !c.runs() {
			return
		}
		section := ref[i+len(heading):]
		if j := strings.Index(section, "\n#"); j >= 0 {
			section = section[:j]
		}
		fs, _, _ := c.flagSet(path)
		fs.VisitAll(func(f *flag.Flag) {
			if c.conn != connNone && isAPIFlag(f.Name) {
				return
			}
			if !strings.Contains(section, "`"+flagSpelling(f.Name)) {
				t.Errorf("sigil %s: the reference does not list %s", strings.Join(path, " "), flagSpelling(f.Name))
			}
		})
	})
}

// isAPIFlag reports whether name is one of the shared API flags.
func isAPIFlag(name string) bool {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	addAPIFlags(fs)
	return fs.Lookup(name) != nil
}

// flagSpelling is how the reference spells a flag: -o, --data-dir.
func flagSpelling(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// reference writes the command reference (Markdown) of the table.
func reference(root *command) string {
	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# sigil command reference\n\n")
	p("<!-- Generated from the command table of cmd/sigil by `go test ./cmd/sigil -run TestDocsUpToDate -update`:\n")
	p("     edit the table, not this file. -->\n\n")
	p("`sigil` is the fleet manager (`sigil serve`) and the operator's command line for its API.\n")
	p("Every command answers `-h`/`--help` with its usage and flags (`sigil help COMMAND` too);\n")
	p("`sigil completion bash` (or `zsh`) prints a completion script. The demo, the benchmarks and\n")
	p("simulated devices are `sigil-sim`'s.\n\n")
	p("Flags take one dash or two (`-o json`, `--data-dir DIR`); a command's arguments come before\n")
	p("its flags. A group run with no subcommand, or with only flags, runs the subcommand its section\n")
	p("names (`sigil devices -o json` is `sigil devices list -o json`).\n\n")

	p("## API flags\n\n")
	p("Every command that calls the API also takes these:\n\n")
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	addAPIFlags(fs)
	flagTable(&b, fs)
	p("\n%s", mdText(strings.TrimSpace(strings.ReplaceAll(apiNote, "\n", " "))))
	p("\n\n## Exit status\n\n| status | meaning |\n| --- | --- |\n")
	for _, e := range exitCodes() {
		p("| %d | %s |\n", e.code, mdCell(e.what))
	}
	p("\n## Commands\n\n")
	for _, c := range root.subs {
		p("- [`sigil %s`](#%s): %s\n", c.name, anchor("sigil "+c.name), mdText(c.summary))
	}
	root.walk(nil, func(c *command, path []string) {
		if len(path) == 0 {
			return
		}
		p("\n%s sigil %s\n\n", strings.Repeat("#", min(len(path)+1, 4)), strings.Join(path, " "))
		if c.runs() {
			p("`%s`\n\n", synopsis(c, path))
		}
		p("%s\n", mdText(capitalize(c.summary)))
		if c.note != "" {
			p("\n%s\n", mdText(c.note))
		}
		if c.def != "" {
			p("\nWith no subcommand, or only flags: `sigil %s %s`.\n", strings.Join(path, " "), c.def)
		}
		if !c.runs() {
			return
		}
		fs := flag.NewFlagSet("", flag.ContinueOnError)
		if c.setup != nil {
			c.setup(fs)
		}
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		switch {
		case n > 0 && c.conn != connNone:
			p("\nIts flags, besides the [API flags](#api-flags):\n\n")
			flagTable(&b, fs)
		case n > 0:
			p("\n")
			flagTable(&b, fs)
		case c.conn != connNone:
			p("\nIt takes the [API flags](#api-flags).\n")
		}
	})
	return b.String()
}

// flagTable writes a table of the flags of fs.
func flagTable(b *bytes.Buffer, fs *flag.FlagSet) {
	fmt.Fprintf(b, "| flag | default | meaning |\n| --- | --- | --- |\n")
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		spelled := flagSpelling(f.Name)
		if name != "" {
			spelled += " " + name
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			def = "`" + f.DefValue + "`"
		}
		fmt.Fprintf(b, "| `%s` | %s | %s |\n", spelled, mdCell(def), mdCell(usage))
	})
}

// mdText escapes what Markdown would read as HTML.
func mdText(s string) string { return strings.NewReplacer("<", "&lt;", ">", "&gt;").Replace(s) }

// mdCell escapes a table cell: HTML and pipes.
func mdCell(s string) string { return strings.ReplaceAll(mdText(s), "|", `\|`) }

// anchor is the fragment GitHub gives a heading.
func anchor(heading string) string {
	return strings.ReplaceAll(strings.ToLower(heading), " ", "-")
}
