package serverkit

import "syscall"

// sysProcAttr asks the kernel to kill the server when the process that
// started it dies, so that a test binary that crashes or is killed does not
// leave a server behind.
//
// Strictly, the signal follows the death of the OS thread that started the
// child; the Go runtime does not end its threads while the process lives,
// unless a goroutine locked to one exits.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
