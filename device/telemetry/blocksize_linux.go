package telemetry

import "syscall"

// blockSize is the unit of the block counts: the fragment size on Linux.
func blockSize(st *syscall.Statfs_t) uint64 {
	if st.Frsize > 0 {
		return uint64(st.Frsize)
	}
	return uint64(st.Bsize)
}
