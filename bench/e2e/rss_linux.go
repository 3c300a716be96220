package main

import "syscall"

// maxRSSKiB returns the peak resident set size; Linux reports it in KiB.
func maxRSSKiB(ru *syscall.Rusage) int64 { return ru.Maxrss }
