//go:build !(linux || darwin || freebsd)

package telemetry

import "errors"

type usage struct {
	total, used, avail uint64
}

func statfs(string) (usage, error) {
	return usage{}, errors.New("telemetry: disk usage is not supported on this system")
}
