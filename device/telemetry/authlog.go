package telemetry

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// DefaultAuthPatterns are the substrings AuthLog counts when Patterns is
// nil: what sshd, PAM, login and su write on a failed authentication.
func DefaultAuthPatterns() []string {
	return []string{"Failed password", "Failed publickey", "authentication failure", "Invalid user", "FAILED LOGIN", "FAILED SU"}
}

// maxAuthRead bounds what one collection reads of the log; the rest is read
// at the next one.
const maxAuthRead = 1 << 20

// AuthLog is a Source that counts failed local authentications in a log
// file the device writes (e.g. /var/log/auth.log): auth.failures is the
// number of new lines since the previous point that contain one of the
// patterns. History before the first collection is not counted; a
// rotated or truncated file is read from its start.
type AuthLog struct {
	Path     string
	Patterns []string // nil means DefaultAuthPatterns()

	mu      sync.Mutex
	started bool
	offset  int64
	file    os.FileInfo
}

var _ Source = (*AuthLog)(nil)

// Collect adds auth.failures.
func (a *AuthLog) Collect(_ context.Context, p *wire.TelemetryPoint) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := os.Open(a.Path)
	if err != nil {
		return fmt.Errorf("auth log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("auth log: %w", err)
	}
	if !a.started {
		a.started, a.offset, a.file = true, fi.Size(), fi
		p.SetMetric("auth.failures", 0)
		return nil
	}
	if !os.SameFile(a.file, fi) || fi.Size() < a.offset {
		a.offset = 0 // rotated or truncated
	}
	a.file = fi
	buf := make([]byte, min(fi.Size()-a.offset, maxAuthRead))
	n, err := f.ReadAt(buf, a.offset)
	if err != nil && err != io.EOF {
		return fmt.Errorf("auth log: %w", err)
	}
	patterns := a.Patterns
	if patterns == nil {
		patterns = DefaultAuthPatterns()
	}
	count, used := countLines(buf[:n], patterns)
	if used == 0 && n == maxAuthRead {
		used = n // one line longer than a read: skip it
	}
	a.offset += int64(used)
	p.SetMetric("auth.failures", float64(count))
	return nil
}

// countLines counts the complete lines of b that contain one of the
// patterns and returns how many bytes those complete lines span.
func countLines(b []byte, patterns []string) (count, used int) {
	end := bytes.LastIndexByte(b, '\n')
	if end < 0 {
		return 0, 0
	}
	for line := range bytes.Lines(b[:end+1]) {
		for _, pat := range patterns {
			if pat != "" && bytes.Contains(line, []byte(pat)) {
				count++
				break
			}
		}
	}
	return count, end + 1
}
