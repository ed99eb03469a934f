//go:build darwin || freebsd

package telemetry

import "syscall"

// blockSize is the unit of the block counts.
func blockSize(st *syscall.Statfs_t) uint64 { return uint64(st.Bsize) }
