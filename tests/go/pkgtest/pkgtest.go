// Package pkgtest is a small library whose tests are run by `go test` under kbox (the go
// tool, the compiler, the linker, vet and the test binary all interposed) and, compiled
// with `go test -c`, as the guest program go-pkgtest in the VMs.
package pkgtest

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sort"
)

// Checksum is the 64-bit FNV-1a hash of data.
func Checksum(data []byte) uint64 {
	h := fnv.New64a()
	h.Write(data)
	return h.Sum64()
}

// WriteTree writes n files of deterministic content under dir (in n/8+1 subdirectories)
// and returns the checksum of all the bytes written.
func WriteTree(dir string, n int) (uint64, error) {
	h := fnv.New64a()
	for i := 0; i < n; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("s%d", i/8))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return 0, err
		}
		data := []byte(fmt.Sprintf("file %d of %d\n", i, n))
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", i)), data, 0o644); err != nil {
			return 0, err
		}
		h.Write(data)
	}
	return h.Sum64(), nil
}

// ReadTree walks dir and returns its regular files' names (relative, sorted) and the
// checksum of their contents in that order.
func ReadTree(dir string) ([]string, uint64, error) {
	var names []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	sort.Strings(names)
	h := fnv.New64a()
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, 0, err
		}
		h.Write(data)
	}
	return names, h.Sum64(), nil
}
