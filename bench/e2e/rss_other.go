//go:build !linux

package main

import (
	"runtime"
	"syscall"
)

// maxRSSKiB returns the peak resident set size: macOS reports bytes, the
// BSDs KiB.
func maxRSSKiB(ru *syscall.Rusage) int64 {
	if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
		return int64(ru.Maxrss) / 1024
	}
	return int64(ru.Maxrss)
}
