// gostorm: a Go program that keeps the runtime's asynchronous preemption (SIGURG sent by
// sysmon and the GC to the program's own threads) firing while other threads are making
// system calls: 16 goroutines doing file I/O interleaved with tight loops, a forced
// preemption check, os/exec of itself, timers, and a channel fan-in.
//
// Output is deterministic (counts and checksums only); on success it exits 0, on any
// mismatch it prints a line starting with FAIL and exits 1.
//
//	gostorm [-rounds N]  the workload (N rounds of file I/O per goroutine, default 24;
//	                     the VMs run fewer, emulation being slower)
//	gostorm child N      the child process os/exec starts: prints a checksum, exits 3
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	workers   = 16
	filesPer  = 4 // files per round, in subdirectories round%4
	children  = 4 // concurrent os/exec children
	spinEvery = 6 // rounds between two long spins of one goroutine
	spinFor   = 15 * time.Millisecond
)

var (
	failed int32
	rounds = flag.Int("rounds", 24, "rounds of file I/O per goroutine")
)

func fail(format string, args ...any) {
	atomic.StoreInt32(&failed, 1)
	fmt.Printf("FAIL "+format+"\n", args...)
}

// spin is a loop without calls: only an asynchronous preemption can stop it.
func spin(seed uint64, n int) uint64 {
	x := seed
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
		x ^= x >> 29
	}
	return x
}

func content(w, r, f int) []byte {
	var b bytes.Buffer
	n := 512 + (w*131+r*17+f*7)%3000
	for b.Len() < n {
		fmt.Fprintf(&b, "w%d r%d f%d %d\n", w, r, f, b.Len())
	}
	return b.Bytes()
}

type result struct {
	worker int
	files  int
	bytes  int64
	crc    uint32
	spin   uint64 // a sink for the loops: not printed, the number of iterations varies
}

func worker(base string, w int, out chan<- result) {
	res := result{worker: w}
	dir := filepath.Join(base, fmt.Sprintf("w%02d", w))
	h := crc32.NewIEEE()
	n := *rounds
	for r := 0; r < n; r++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%d", r%4))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			fail("worker %d: MkdirAll: %v", w, err)
			break
		}
		for f := 0; f < filesPer; f++ {
			name := filepath.Join(sub, fmt.Sprintf("r%02d-f%d", r, f))
			data := content(w, r, f)
			if err := os.WriteFile(name, data, 0o644); err != nil {
				fail("worker %d: WriteFile: %v", w, err)
				continue
			}
			got, err := os.ReadFile(name)
			if err != nil || !bytes.Equal(got, data) {
				fail("worker %d: ReadFile %s: %d bytes, err %v", w, filepath.Base(name), len(got), err)
				continue
			}
			st, err := os.Stat(name)
			if err != nil || st.Size() != int64(len(data)) || !st.Mode().IsRegular() {
				fail("worker %d: Stat %s: %v %v", w, filepath.Base(name), st, err)
				continue
			}
			h.Write(got)
			res.files++
			res.bytes += int64(len(got))
		}
		if (r+w)%spinEvery == 0 {
			// Longer than sysmon's 10 ms time slice, so it sends SIGURG while the loop
			// runs; bounded by time so the cost is the same under emulation.  Staggered:
			// some goroutines spin while the others are in system calls.
			start := time.Now()
			for time.Since(start) < spinFor {
				res.spin ^= spin(uint64(w*n+r), 1<<18)
			}
		} else {
			res.spin ^= spin(uint64(w*n+r), 1<<12)
		}
		if r%6 == 5 {
			runtime.GC() // stack scans preempt every running goroutine
		}
	}
	total := 0
	for d := 0; d < 4 && d < n; d++ {
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("d%d", d)))
		if err != nil {
			fail("worker %d: Open dir: %v", w, err)
			continue
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			fail("worker %d: Readdirnames: %v", w, err)
		}
		total += len(names)
	}
	if total != n*filesPer {
		fail("worker %d: directories hold %d files, want %d", w, total, n*filesPer)
	}
	res.crc = h.Sum32()
	out <- res
}

// preemption: with one P, main can only run again if the spinning goroutine is preempted
// asynchronously (its loop has no call, so no cooperative preemption point).
func preemption() {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	var stop int32
	done := make(chan bool)
	go func() {
		x := uint64(1)
		i := 0
		for ; i < 1<<34 && atomic.LoadInt32(&stop) == 0; i++ {
			x = x*6364136223846793005 + 1
		}
		done <- i < 1<<34 || x == 0
	}()
	time.Sleep(time.Millisecond)
	atomic.StoreInt32(&stop, 1)
	if !<-done {
		fail("preemption: the spinning goroutine was never preempted")
		return
	}
	fmt.Println("preemption ok")
}

func runChildren(self string) {
	var wg sync.WaitGroup
	outs := make([]string, children)
	for i := 0; i < children; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cmd := exec.Command(self, "child", strconv.Itoa(i))
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				fail("child %d: %v (want exit status 3)", i, err)
			}
			outs[i] = strings.TrimSpace(stdout.String())
		}(i)
	}
	wg.Wait()
	for i, o := range outs {
		fmt.Printf("child %d: %s\n", i, o)
	}
	if err := exec.Command("/bin/true").Run(); err != nil {
		fail("/bin/true: %v", err)
	} else {
		fmt.Println("exec /bin/true ok")
	}
}

func timers() {
	start := time.Now()
	time.Sleep(20 * time.Millisecond)
	if d := time.Since(start); d < 20*time.Millisecond {
		fail("time.Sleep(20ms) returned after %v", d)
	}
	tk := time.NewTicker(2 * time.Millisecond)
	ticks := 0
	timeout := time.After(5 * time.Second)
	for ticks < 5 {
		select {
		case <-tk.C:
			ticks++
		case <-timeout:
			fail("ticker: %d ticks in 5s", ticks)
			ticks = 5
		}
	}
	tk.Stop()
	fmt.Println("timers ok")
}

func child(arg string) {
	n, _ := strconv.Atoi(arg)
	fmt.Printf("pid-independent checksum %x\n", spin(uint64(n), 1000))
	os.Exit(3)
}

func main() {
	flag.Parse()
	if flag.NArg() == 2 && flag.Arg(0) == "child" {
		child(flag.Arg(1))
	}
	if flag.NArg() != 0 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "usage: gostorm [-rounds N] | gostorm child N")
		os.Exit(2)
	}
	// More Ps than the test machines have cores: more threads in syscalls at once.
	if runtime.GOMAXPROCS(0) < 4 {
		runtime.GOMAXPROCS(4)
	}
	self, err := os.Executable()
	if err != nil {
		fail("os.Executable: %v", err)
		os.Exit(1)
	}
	base, err := os.MkdirTemp("", "gostorm-")
	if err != nil {
		fail("MkdirTemp: %v", err)
		os.Exit(1)
	}
	defer os.RemoveAll(base)

	preemption()

	out := make(chan result)
	for w := 0; w < workers; w++ {
		go worker(base, w, out)
	}
	// Meanwhile: timers and child processes on other goroutines.
	side := make(chan bool)
	go func() { timers(); side <- true }()
	var results []result
	for len(results) < workers {
		results = append(results, <-out)
	}
	<-side
	runChildren(self)

	sort.Slice(results, func(i, j int) bool { return results[i].worker < results[j].worker })
	files, total := 0, int64(0)
	all := crc32.NewIEEE()
	for _, r := range results {
		files += r.files
		total += r.bytes
		fmt.Fprintf(all, "%d %d %08x;", r.worker, r.bytes, r.crc)
	}
	fmt.Printf("workers %d files %d bytes %d crc %08x\n", workers, files, total, all.Sum32())
	if want := workers * *rounds * filesPer; files != want {
		fail("%d files written and read back, want %d", files, want)
	}
	if err := os.RemoveAll(base); err != nil {
		fail("RemoveAll: %v", err)
	}
	if atomic.LoadInt32(&failed) != 0 {
		os.Exit(1)
	}
	fmt.Println("OK")
}
