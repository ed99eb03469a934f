//go:build linux || darwin || freebsd

package telemetry

import (
	"fmt"
	"syscall"
)

// usage is a file system's size, in bytes, as df counts it.
type usage struct {
	total, used, avail uint64
}

// statfs reads the usage of the file system holding path.
func statfs(path string) (usage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return usage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := blockSize(&st)
	return usage{
		total: uint64(st.Blocks) * bs,
		used:  (uint64(st.Blocks) - uint64(st.Bfree)) * bs,
		avail: uint64(st.Bavail) * bs,
	}, nil
}
