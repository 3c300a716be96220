//go:build unix

package benchkit

import (
	"fmt"
	"runtime"
	"syscall"
	"time"
)

// CPUTime returns the user and system CPU time this process has used
// (getrusage), or 0 if it cannot be read.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ChildUsage returns the user and system CPU time and the peak resident set
// size in KiB of a child that has exited, from its rusage (as
// os.ProcessState.SysUsage returns it).
func ChildUsage(sysUsage any) (cpu time.Duration, maxRSSKiB int64) {
	ru, ok := sysUsage.(*syscall.Rusage)
	if !ok {
		return 0, 0
	}
	rss := int64(ru.Maxrss)
	if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
		rss /= 1024 // bytes there, KiB elsewhere
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), rss
}

// RaiseOpenFiles raises this process's soft limit of open files to its
// hard limit and returns the new soft limit. Setting the limit explicitly
// also makes the children (the server under test) inherit it: Go restores
// the limit it found at start-up in children only while the program has
// not set one itself.
func RaiseOpenFiles() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("reading the limit of open files: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("raising the limit of open files to %d: %w", lim.Max, err)
	}
	return uint64(lim.Cur), nil
}
