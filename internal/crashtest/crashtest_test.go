package crashtest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

const env = "SIGIL_CRASHTEST_WRITER"

// TestWriter is the writer of TestKill: it counts from the number it is
// given until killed.
func TestWriter(t *testing.T) {
	arg, ok := Arg(env)
	if !ok {
		t.Skip("writer of TestKill")
	}
	from, err := strconv.Atoi(arg)
	Check(err)
	for i := from; ; i++ {
		fmt.Println("wrote", i)
	}
}

// TestKill kills the writer once it has read what it waits for: the
// lines arrive in order, from the argument passed.
func TestKill(t *testing.T) {
	if _, ok := Arg(env); ok {
		t.Skip("in writer")
	}
	var got []string
	Kill(t, "TestWriter", env, "7", func(line string) bool {
		got = append(got, line)
		return len(got) == 3
	})
	if want := "wrote 7,wrote 8,wrote 9"; strings.Join(got, ",") != want {
		t.Fatalf("lines read %q, want %s", got, want)
	}
}
