package swtpm

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes swtpm exit when the process that started it dies,
// so a crashed or timed-out test leaves no TPM running.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
