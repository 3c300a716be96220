// Package benchkit holds what the project's benchmark commands share: the
// description of the machine, medians and ratios, the CPU time of this
// process and of others, and the building of the programs under test.
package benchkit

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Machine describes the machine in a few words: system, architecture, CPUs
// and the CPU's model name.
func Machine() string {
	s := fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				s += ", " + strings.TrimSpace(v)
				break
			}
		}
	}
	return s
}

// Median returns the median of v (the mean of the middle two for an even
// count), or 0 for none. v is not modified.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Ratio returns a/b, or 0 when b is 0.
func Ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// Round rounds f to digits decimal places.
func Round(f float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(f*p) / p
}

// GoTool returns the go command to build with: $GO, the go of the running
// toolchain, or "go" from PATH.
func GoTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

// Build builds the package pkg (an import path or a ./ path relative to the
// working directory) into the executable out.
func Build(out, pkg string) error {
	if b, err := exec.Command(GoTool(), "build", "-o", out, pkg).CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return !errors.Is(err, os.ErrNotExist)
}

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, 100 on
// every Linux system.
const userHZ = 100

// PIDFile returns the process id written in the file at path, or 0.
func PIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// ProcessCPU returns the user and system CPU time of process pid so far,
// from /proc (in steps of 10 ms), or 0 where there is no /proc.
func ProcessCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: count fields from
	// after it. utime and stime are fields 14 and 15 of the line.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * time.Second / userHZ
}

// RSS returns the resident set size of this process now, from /proc, or 0
// where there is no /proc.
func RSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}

// Received is a line that a receiving client of the inbound benchmark
// writes: first one with Ready set, once it has joined the room; then one
// with the count, once it has received every message or given up.
type Received struct {
	Ready bool `json:"ready,omitempty"`
	// Messages counts the room's groupchat messages with a body that
	// arrived; Stanzas every stanza read (the stream's inbound count).
	Messages int `json:"messages"`
	Stanzas  int `json:"stanzas"`
	// SpanS is the time from the first message to the last; MsgsPerS the
	// messages over it.
	SpanS    float64 `json:"span_s"`
	MsgsPerS float64 `json:"msgs_per_s"`
	// CPUMicrosPerMsg is the process's CPU time from Ready to the last
	// message, divided by the messages.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// AllocBytesPerMsg and AllocsPerMsg are the heap bytes and objects
	// the process allocated over the same time, per message.
	AllocBytesPerMsg float64 `json:"alloc_bytes_per_msg"`
	AllocsPerMsg     float64 `json:"allocs_per_msg"`
}

// Allocs returns the heap bytes and objects this process has allocated so
// far.
func Allocs() (bytes, objects uint64) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// PerMsg returns the allocations since b0 and o0 (from Allocs) per message.
func PerMsg(b0, o0 uint64, msgs int) (bytesPerMsg, objectsPerMsg float64) {
	if msgs <= 0 {
		return 0, 0
	}
	b, o := Allocs()
	return Round(float64(b-b0)/float64(msgs), 0), Round(float64(o-o0)/float64(msgs), 2)
}
