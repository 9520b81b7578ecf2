package dlock_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

// multiLocker gives Memory an atomic path for several names that misbehaves
// as told: unsupported for every set, or one lease short.
type multiLocker struct {
	*dlocktest.Memory
	calls int
	mode  string // "unsupported", "short", or "" to behave
}

func (m *multiLocker) TryLockAll(ctx context.Context, names []string) ([]*dlocktest.MemoryLease, int, error) {
	m.calls++
	switch m.mode {
	case "unsupported":
		return nil, -1, fmt.Errorf("names in several slots: %w", errors.ErrUnsupported)
	case "short":
		leases, busy, err := m.Memory.TryLockAll(ctx, names)
		if len(leases) > 0 {
			_ = leases[len(leases)-1].Release(ctx)
			leases = leases[:len(leases)-1]
		}
		return leases, busy, err
	}
	return m.Memory.TryLockAll(ctx, names)
}

func TestAllAtomicPath(t *testing.T) {
	ctx := context.Background()
	names := []string{"b", "a", "c"}
	free := func(t *testing.T, mem *dlocktest.Memory) {
		t.Helper()
		for _, n := range names {
			lk, err := dlock.NewMutex(mem).TryAcquire(ctx, n)
			if err != nil {
				t.Fatalf("%s still held: %v", n, err)
			}
			_ = lk.Release(ctx)
		}
	}
	t.Run("used", func(t *testing.T) {
		m := &multiLocker{Memory: dlocktest.NewMemory()}
		set, err := dlock.NewMutex(m).TryAcquireAll(ctx, names)
		if err != nil || m.calls != 1 || len(set.Locks()) != 3 || set.Locks()[0].Name() != "a" {
			t.Fatalf("TryAcquireAll: %v after %d calls of TryLockAll", err, m.calls)
		}
		if err := set.Release(ctx); err != nil {
			t.Fatal(err)
		}
		free(t, m.Memory)
	})
	t.Run("busy then wait", func(t *testing.T) {
		m := &multiLocker{Memory: dlocktest.NewMemory()}
		g := dlock.NewMutex(m)
		lk, err := g.TryAcquire(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		_, err = g.TryAcquireAll(ctx, names)
		if !errors.Is(err, dlock.ErrNotAcquired) || m.calls != 1 {
			t.Fatalf("TryAcquireAll with c held: %v", err)
		}
		done := make(chan error, 1)
		go func() {
			set, err := g.AcquireAll(ctx, names)
			if err == nil {
				err = set.Release(ctx)
			}
			done <- err
		}()
		_ = lk.Release(ctx)
		if err := <-done; err != nil {
			t.Fatalf("AcquireAll once c was released: %v", err)
		}
		free(t, m.Memory)
	})
	t.Run("unsupported falls back", func(t *testing.T) {
		m := &multiLocker{Memory: dlocktest.NewMemory(), mode: "unsupported"}
		set, err := dlock.NewMutex(m).TryAcquireAll(ctx, names)
		if err != nil || len(set.Names()) != 3 {
			t.Fatalf("TryAcquireAll over a set without an atomic path: %v", err)
		}
		_ = set.Release(ctx)
		free(t, m.Memory)
	})
	t.Run("short is an error and leaks nothing", func(t *testing.T) {
		m := &multiLocker{Memory: dlocktest.NewMemory(), mode: "short"}
		_, err := dlock.NewMutex(m).TryAcquireAll(ctx, names)
		if err == nil || errors.Is(err, dlock.ErrNotAcquired) {
			t.Fatalf("TryAcquireAll over a backend one lease short: %v, want a contract error", err)
		}
		free(t, m.Memory)
	})
	t.Run("cancelled", func(t *testing.T) {
		m := &multiLocker{Memory: dlocktest.NewMemory()}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := dlock.NewMutex(m).AcquireAll(cctx, names)
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
			t.Fatalf("AcquireAll with ctx done: %v", err)
		}
		free(t, m.Memory)
	})
}

// multiReleaser gives Memory a release of several leases that records its
// calls and misbehaves as told: "short" returns one error too few.
type multiReleaser struct {
	*dlocktest.Memory
	calls [][]*dlocktest.MemoryLease // each call's leases, in the order given
	mode  string
}

func (m *multiReleaser) ReleaseAll(ctx context.Context, leases []*dlocktest.MemoryLease) []error {
	m.calls = append(m.calls, slices.Clone(leases))
	errs := m.Memory.ReleaseAll(ctx, leases)
	if m.mode == "short" {
		errs = errs[:len(errs)-1]
	}
	return errs
}

func TestAllReleasePath(t *testing.T) {
	ctx := context.Background()
	t.Run("one call, reverse order", func(t *testing.T) {
		m := &multiReleaser{Memory: dlocktest.NewMemory()}
		g := dlock.NewMutex(m)
		set, err := g.AcquireAll(ctx, []string{"b", "c", "a"})
		if err != nil {
			t.Fatal(err)
		}
		mem := dlock.NewMutex(m.Memory)
		m.Lose(set.Locks()[1].Lease())
		err = set.Release(ctx)
		var want []*dlocktest.MemoryLease
		for _, lk := range slices.Backward(set.Locks()) {
			want = append(want, lk.Lease())
		}
		if !errors.Is(err, dlock.ErrLockLost) || len(m.calls) != 1 || !slices.Equal(m.calls[0], want) {
			t.Fatalf("Release: %v after %d ReleaseAll calls, want ErrLockLost after one call with the leases of c, b, a", err, len(m.calls))
		}
		for i, want := range []error{dlock.ErrNotHeld, dlock.ErrLockLost, dlock.ErrNotHeld} {
			if err := set.Locks()[i].Err(); !errors.Is(err, want) {
				t.Fatalf("lock %d: Err %v, want %v", i, err, want)
			}
		}
		for _, n := range []string{"a", "b", "c"} {
			lk, err := mem.TryAcquire(ctx, n)
			if err != nil {
				t.Fatalf("%s still held: %v", n, err)
			}
			_ = lk.Release(ctx)
		}
		if err := set.Release(ctx); !errors.Is(err, dlock.ErrNotHeld) || len(m.calls) != 1 {
			t.Fatalf("second Release: %v after %d calls, want ErrNotHeld and no call", err, len(m.calls))
		}
	})
	t.Run("single lock", func(t *testing.T) {
		m := &multiReleaser{Memory: dlocktest.NewMemory()}
		set, err := dlock.NewMutex(m).AcquireAll(ctx, []string{"a"})
		if err != nil {
			t.Fatal(err)
		}
		if err := set.Release(ctx); err != nil || len(m.calls) != 0 {
			t.Fatalf("Release of one lock: %v after %d ReleaseAll calls, want its own Release", err, len(m.calls))
		}
	})
	t.Run("backend returns too few errors", func(t *testing.T) {
		m := &multiReleaser{Memory: dlocktest.NewMemory(), mode: "short"}
		set, err := dlock.NewSemaphore(m, 2).AcquireAll(ctx, []string{"a", "b"})
		if err != nil {
			t.Fatal(err)
		}
		if err := set.Release(ctx); err == nil || !strings.Contains(err.Error(), "returned 1 errors for 2 leases") {
			t.Fatalf("Release over a backend breaking the contract: %v", err)
		}
		if err := set.Release(ctx); !errors.Is(err, dlock.ErrNotHeld) {
			t.Fatalf("second Release: %v, want ErrNotHeld", err)
		}
	})
}
