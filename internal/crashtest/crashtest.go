// Package crashtest kills a writing process mid-write, for tests of a
// store's crash safety: the test binary starts itself again running a
// writer test, reads what the writer reports committing, and kills it with
// SIGKILL at a moment of its choosing; the test then reopens the store and
// checks that every reported write survived.
//
// The writer is a test of the same package that does nothing unless Arg
// finds the environment variable the crash test set: it writes until
// killed, printing one line per committed write, and ends any failure
// with Check, whose "error" line fails the crash test.
package crashtest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readFor bounds how long Kill reads a writer that never has written
// enough: it then kills it where it is, and the test checks what was
// written so far.
const readFor = 20 * time.Second

// Arg returns the argument Kill passed to the writer in the environment
// variable env, and whether this process is such a writer.
func Arg(env string) (string, bool) {
	v := os.Getenv(env)
	return v, v != ""
}

// Check ends the writer process if err is not nil, printing "error" and
// err for the crash test that reads its output (and fails on it).
func Check(err error) {
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
}

// Kill runs the test named writer (a test of the calling package) in a
// new process of the test binary, with arg in the environment variable
// env. It passes each line the writer prints to line until line returns
// true (or readFor has passed), then kills the writer with SIGKILL. It
// fails t if the writer prints a line starting with "error", stops by
// itself, or dies of anything but that SIGKILL.
func Kill(t testing.TB, writer, env, arg string, line func(string) (stop bool)) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+writer+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+arg)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() { // a failure while reading: the writer goes too
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(readFor)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "error") {
			t.Fatalf("writer: %s", sc.Text())
		}
		if line(sc.Text()) || time.Now().After(deadline) {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	waited = true
	if ee, ok := errors.AsType[*exec.ExitError](err); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("writer did not die by SIGKILL: %v", err)
	}
}
