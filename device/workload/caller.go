// Package workload is sigild's SPIFFE Workload API (compiled into sigild
// only with the workloadapi build tag): it serves local processes, over a
// unix socket, the X.509- and JWT-SVIDs of the workloads the fleet
// registered for this device, choosing them by the kernel's credentials
// of the calling process (SO_PEERCRED: its PID, user and group, then the
// executable /proc/PID/exe names and its SHA-256).
//
// Workload keys are software keys: sigild makes a new ECDSA P-256 key for
// each X.509-SVID and holds it in memory only, and the fleet signs the
// certificate for a CSR (wire.TypeWorkloadRequest); the key reaches the
// workload that asks, never the disk or the fleet. The device's own
// identity key stays in the TPM and signs nothing here but the mTLS
// session the requests travel on.
package workload

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Caller is the process at the other end of a connection.
type Caller struct {
	PID       int32
	UID, GID  uint32
	ExePath   string
	ExeSHA256 [32]byte
}

// peerCred returns the kernel's credentials of a unix socket's peer.
func peerCred(c net.Conn) (*syscall.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, errors.New("workload: not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("workload: SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// maxExe bounds how much of an executable is hashed.
const maxExe = 1 << 30

// inspect completes a caller from /proc (procDir, "/proc" on a device):
// the executable's path and SHA-256, read through /proc/PID/exe (the file
// the process runs, even if its path was replaced since).
func inspect(procDir string, cred *syscall.Ucred) (Caller, error) {
	c := Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	exe := procDir + "/" + strconv.Itoa(int(cred.Pid)) + "/exe"
	path, err := os.Readlink(exe)
	if err != nil {
		return c, fmt.Errorf("workload: executable of process %d: %w", cred.Pid, err)
	}
	f, err := os.Open(exe)
	if err != nil {
		return c, fmt.Errorf("workload: executable of process %d: %w", cred.Pid, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxExe)); err != nil {
		return c, fmt.Errorf("workload: hashing the executable of process %d: %w", cred.Pid, err)
	}
	c.ExePath = path
	copy(c.ExeSHA256[:], h.Sum(nil))
	return c, nil
}

// Matches reports whether the caller matches every selector of e.
func (c Caller) Matches(e *wire.WorkloadEntry) bool {
	switch {
	case e.HasUID && e.UID != c.UID, e.HasGID && e.GID != c.GID:
		return false
	case e.ExePath != "" && e.ExePath != c.ExePath:
		return false
	case len(e.ExeSHA256) != 0 && (len(e.ExeSHA256) != 32 || [32]byte(e.ExeSHA256) != c.ExeSHA256):
		return false
	}
	return e.HasUID || e.HasGID || e.ExePath != "" || len(e.ExeSHA256) != 0
}
