//go:build !unix

package benchkit

import "time"

// CPUTime returns 0: there is no getrusage here.
func CPUTime() time.Duration { return 0 }

// ChildUsage returns zeros: there is no rusage here.
func ChildUsage(any) (time.Duration, int64) { return 0, 0 }

// RaiseOpenFiles does nothing here and returns 0.
func RaiseOpenFiles() (uint64, error) { return 0, nil }
