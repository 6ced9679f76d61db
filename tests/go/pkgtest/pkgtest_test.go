package pkgtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

func TestChecksumOfKnownInputs(t *testing.T) {
	for in, want := range map[string]uint64{"": 0xcbf29ce484222325, "a": 0xaf63dc4c8601ec8c} {
		if got := Checksum([]byte(in)); got != want {
			t.Errorf("Checksum(%q) = %#x, want %#x", in, got, want)
		}
	}
}

// Parallel subtests, each with goroutines of its own doing file I/O in its temp dir
// (-test.short: smaller trees, as the VMs run it under emulation).
func TestTreesWrittenByParallelGoroutinesReadBack(t *testing.T) {
	size := 20
	if testing.Short() {
		size = 4
	}
	for i := 0; i < 6; i++ {
		i := i
		t.Run(fmt.Sprintf("tree%d", i), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var wg sync.WaitGroup
			sums := make([]uint64, 4)
			errs := make([]error, 4)
			for g := range sums {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					sums[g], errs[g] = WriteTree(filepath.Join(dir, fmt.Sprint(g)), size+i+g)
				}(g)
			}
			wg.Wait()
			for g := range sums {
				if errs[g] != nil {
					t.Fatalf("WriteTree %d: %v", g, errs[g])
				}
				names, sum, err := ReadTree(filepath.Join(dir, fmt.Sprint(g)))
				if err != nil || len(names) != size+i+g || sum != sums[g] {
					t.Errorf("tree %d: %d files, checksum %#x (want %d, %#x), err %v",
						g, len(names), sum, size+i+g, sums[g], err)
				}
			}
		})
	}
}

func TestChannelFanInOfChecksums(t *testing.T) {
	t.Parallel()
	out := make(chan uint64)
	for g := 0; g < 32; g++ {
		go func(g int) { out <- Checksum([]byte(fmt.Sprint(g))) }(g)
	}
	var x uint64
	for g := 0; g < 32; g++ {
		x ^= <-out
	}
	var want uint64
	for g := 0; g < 32; g++ {
		want ^= Checksum([]byte(fmt.Sprint(g)))
	}
	if x != want {
		t.Fatalf("fan-in: %#x, want %#x", x, want)
	}
}

func TestAChildProcessRuns(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("/bin/sh", "-c", "echo child $((6 * 7))").Output()
	if err != nil || string(out) != "child 42\n" {
		t.Fatalf("sh: %q, %v", out, err)
	}
}

func TestMissingFilesReportNotExist(t *testing.T) {
	_, err := os.ReadFile(filepath.Join(t.TempDir(), "missing"))
	if !os.IsNotExist(err) {
		t.Fatalf("ReadFile of a missing file: %v", err)
	}
}
