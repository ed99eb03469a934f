package rotation

import (
	"testing"

	"github.com/sigil-iot/sigil/internal/leaktest"
)

// TestMain fails the tests when a goroutine outlives them: a Run(ctx) here
// must leave nothing running once ctx is done.
func TestMain(m *testing.M) { leaktest.Main(m) }
