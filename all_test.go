package dlock_test

import (
	"context"
	"errors"
	"fmt"
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
