//go:build !linux

package metrics

// The process figures are read from Linux's /proc and getrusage; elsewhere
// only the Go runtime's are exported.

func processCPU() (float64, bool)    { return 0, false }
func processRSS() (float64, bool)    { return 0, false }
func processFDs() (float64, bool)    { return 0, false }
func processMaxFDs() (float64, bool) { return 0, false }
