package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/internal/crashtest"
)

const crashEnv = "SIGIL_AUDIT_CRASH_WRITER"

// TestCrashWriter is the helper process of TestCrashSafety: eight
// goroutines append until the process is killed, printing each
// acknowledged entry as "ok <seq> <target>".
func TestCrashWriter(t *testing.T) {
	path, ok := crashtest.Arg(crashEnv)
	if !ok {
		t.Skip("helper process for TestCrashSafety")
	}
	l, err := Open(Config{Path: path})
	crashtest.Check(err)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				target := fmt.Sprintf("%d-%d-%d", os.Getpid(), w, i)
				e, err := l.Append(context.Background(), New(System("crash"), "test.append", target))
				mu.Lock()
				crashtest.Check(err)
				fmt.Println("ok", e.Seq, target)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrashSafety kills a writer in the middle of group commits, three
// times over the same file: every acknowledged entry survives under the
// sequence number it was given, the chain verifies, and the next writer
// continues it.
func TestCrashSafety(t *testing.T) {
	if _, ok := crashtest.Arg(crashEnv); ok {
		t.Skip("in helper")
	}
	path := filepath.Join(t.TempDir(), File)
	acked := map[uint64]string{}
	for round := range 3 {
		n := 0
		crashtest.Kill(t, "TestCrashWriter", crashEnv, path, func(line string) bool {
			f := strings.Fields(line)
			if len(f) == 3 && f[0] == "ok" {
				seq, _ := strconv.ParseUint(f[1], 10, 64)
				if prev, dup := acked[seq]; dup {
					t.Fatalf("sequence number %d acknowledged twice: %s and %s", seq, prev, f[2])
				}
				acked[seq] = f[2]
				n++
			}
			return n >= 200
		})
		if n == 0 {
			t.Fatal("writer acknowledged nothing")
		}

		l, err := Open(Config{Path: path})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		rep, err := l.VerifyStore(t.Context(), newKey(t).Public())
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for seq, target := range acked {
			e, err := l.Get(t.Context(), seq)
			if err != nil || e.Target != target {
				t.Fatalf("round %d: acknowledged entry %d (%s) reads back as %q, %v", round, seq, target, e.Target, err)
			}
		}
		t.Logf("round %d: %d acknowledged, %d in the log", round, n, rep.Last)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
