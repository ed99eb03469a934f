package access

import (
	"testing"

	"github.com/sigil-iot/sigil/internal/leaktest"
)

// TestMain fails the tests when a goroutine outlives them (Run).
func TestMain(m *testing.M) { leaktest.Main(m) }
