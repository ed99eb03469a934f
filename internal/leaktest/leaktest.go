// Package leaktest fails a package's tests when a goroutine outlives them.
// Every package with a long-running component (a Run(ctx) method, which
// must return once ctx is done and leave nothing running) calls Main from
// its TestMain; test/leaks_test.go fails for a package that does not.
//
// The check is goleak's (go.uber.org/goleak): after the tests pass it
// lists the goroutines still running, waiting briefly for those on their
// way out, and fails the run with their stacks. The goroutines it ignores
// are named in ignores, each with the reason it is not a leak.
package leaktest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main runs m's tests and exits: with their code, or 1 when they passed and
// a goroutine outlived them. It is a package's whole TestMain:
//
//	func TestMain(m *testing.M) { leaktest.Main(m) }
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run runs m's tests and returns their exit code, or 1 when they passed and
// a goroutine outlived them: for a TestMain with set-up of its own.
func Run(m *testing.M) int {
	code := m.Run()
	if code != 0 {
		return code
	}
	if err := goleak.Find(ignores()...); err != nil {
		fmt.Fprintf(os.Stderr, "leaktest: goroutines outlived the tests: %v\n", err)
		return 1
	}
	return 0
}

// ignores are the goroutines that outlive a package's tests by design.
func ignores() []goleak.Option {
	return nil
}
