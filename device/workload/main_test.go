package workload

import (
	"testing"

	"github.com/sigil-iot/sigil/internal/leaktest"
)

// TestMain fails the tests when a goroutine outlives them: Serve must
// leave nothing running once its context is done.
func TestMain(m *testing.M) { leaktest.Main(m) }
