//go:build !unix

package fleetbench

import "time"

// cpuTime is unknown here: callers fall back to wall time.
func cpuTime() time.Duration { return 0 }
