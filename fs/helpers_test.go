//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock/dlocktest"
)

// Test helpers of both implementations (see common.go).

// harness plugs the backend into the conformance suite. The portable
// implementation's waits poll: arrival order is not promised there
// (unordered), but the suite still checks that nobody starves.
func harness() dlocktest.Harness[*Lease] {
	return dlocktest.Harness[*Lease]{
		New: func(t testing.TB, space string) any {
			b, err := New(space)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		Lose:        loseLease,
		LossWithin:  3 * time.Second,
		FreedWithin: 100 * time.Millisecond,
		Fencing:     true,
		Unordered:   unordered,
	}
}

func TestConformance(t *testing.T) {
	dlocktest.Run(t, harness())
}

// loseLease makes l lose its lock from outside: it removes the lock file, so
// that the path no longer names the locked file. For a read lease that loses
// every reader of the name at once (they lock one file), which the suite
// allows.
func loseLease(t testing.TB, l *Lease) {
	t.Helper()
	if err := os.Remove(l.Path()); err != nil {
		t.Fatalf("lose: %v", err)
	}
}

// newBackend returns a Backend over dir (a new temporary directory if
// dir is ""), closed when the test ends.
func newBackend(t testing.TB, dir string, opts ...Option) *Backend {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	b, err := New(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func bg() context.Context { return context.Background() }

// mustTry(t)(b.TryLock(...)) asserts that a try took the lock.
func mustTry(t *testing.T) func(*Lease, bool, error) *Lease {
	return func(l *Lease, ok bool, err error) *Lease {
		t.Helper()
		if err != nil || !ok {
			t.Fatalf("try: ok=%v err=%v, want the lock", ok, err)
		}
		return l
	}
}

func mustRelease(t *testing.T, l *Lease) {
	t.Helper()
	if err := l.Release(bg()); err != nil {
		t.Fatalf("release %s: %v", l.Path(), err)
	}
}

// lockFiles lists the files in dir but the directory's marker (which
// stays: it says which implementation uses the directory).
func lockFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".dlock-fs-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// mustBusy(t)(b.TryLock(...)) asserts that a try found the lock held.
func mustBusy(t *testing.T) func(*Lease, bool, error) {
	return func(l *Lease, ok bool, err error) {
		t.Helper()
		if err != nil || ok {
			if ok {
				l.Release(bg())
			}
			t.Fatalf("try: ok=%v err=%v, want busy", ok, err)
		}
	}
}
