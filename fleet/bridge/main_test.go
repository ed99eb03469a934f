package bridge_test

import (
	"testing"

	"github.com/sigil-iot/sigil/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }
