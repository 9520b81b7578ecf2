//go:build linux && !dlock_portable

package fs

import (
	"context"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
)

// floorOnce is the least any flock-based lock can do per uncontended use:
// open (creating) a file, flock it, unlock it, close it.
func floorOnce(tb testing.TB, path string) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_UN); err != nil {
		tb.Fatal(err)
	}
	unix.Close(fd)
}

// BenchmarkFloor measures floorOnce alone.
func BenchmarkFloor(b *testing.B) {
	path := filepath.Join(b.TempDir(), "floor")
	for b.Loop() {
		floorOnce(b, path)
	}
}

// BenchmarkDo is one uncontended Do of a mutex, fencing on (the default)
// and off. It reports its cost as a multiple of the floor (x-floor), both
// timed in interleaved batches so that a noisy machine skews them alike.
func BenchmarkDo(b *testing.B) {
	for _, fencing := range []bool{true, false} {
		name := "fencing"
		if !fencing {
			name = "nofencing"
		}
		b.Run(name, func(b *testing.B) {
			floorPath := filepath.Join(b.TempDir(), "floor")
			be := newBackend(b, "", WithFencing(fencing))
			mu := dlock.NewMutex(be)
			ctx := context.Background()
			fn := func(context.Context) error { return nil }
			const batch = 128
			var doNs, floorNs time.Duration
			var n int
			for b.Loop() {
				start := time.Now()
				for range batch {
					if err := mu.Do(ctx, "bench", fn); err != nil {
						b.Fatal(err)
					}
				}
				doNs += time.Since(start)
				b.StopTimer()
				start = time.Now()
				for range batch {
					floorOnce(b, floorPath)
				}
				floorNs += time.Since(start)
				n += batch
				b.StartTimer()
			}
			b.ReportMetric(float64(doNs.Nanoseconds())/float64(n), "do-ns")
			b.ReportMetric(float64(floorNs.Nanoseconds())/float64(n), "floor-ns")
			b.ReportMetric(float64(doNs)/float64(floorNs), "x-floor")
		})
	}
}

// BenchmarkTryLockRelease is the backend alone, without the dlock engine.
func BenchmarkTryLockRelease(b *testing.B) {
	for _, fencing := range []bool{true, false} {
		name := "fencing"
		if !fencing {
			name = "nofencing"
		}
		b.Run(name, func(b *testing.B) {
			be := newBackend(b, "", WithFencing(fencing))
			ctx := context.Background()
			for b.Loop() {
				l, ok, err := be.TryLock(ctx, "bench")
				if err != nil || !ok {
					b.Fatal(ok, err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTryLockBusy is one TryLock of a mutex held elsewhere.
func BenchmarkTryLockBusy(b *testing.B) {
	dir := b.TempDir()
	holder := newBackend(b, dir)
	be := newBackend(b, dir)
	ctx := context.Background()
	l, ok, err := holder.TryLock(ctx, "bench")
	if err != nil || !ok {
		b.Fatal(ok, err)
	}
	defer l.Release(ctx)
	for b.Loop() {
		if _, ok, err := be.TryLock(ctx, "bench"); ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// BenchmarkTryRWRelease is one uncontended TryWLock or TryRLock and its
// Release, fencing on.
func BenchmarkTryRWRelease(b *testing.B) {
	for _, mode := range []string{"write", "read"} {
		b.Run(mode, func(b *testing.B) {
			be := newBackend(b, "")
			ctx := context.Background()
			try := be.TryWLock
			if mode == "read" {
				try = be.TryRLock
			}
			for b.Loop() {
				l, ok, err := try(ctx, "bench")
				if err != nil || !ok {
					b.Fatal(ok, err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandoff measures hand-off latency: from the start of the
// holder's Release to the return of a waiter's Acquire (blocked in the
// backend's native wait), reported as p50-ns and p99-ns. Holder and waiter
// use separate backends over one directory, as two processes would.
func BenchmarkHandoff(b *testing.B) {
	for _, kind := range []string{"mutex", "write", "semaphore"} {
		b.Run(kind, func(b *testing.B) {
			dir := b.TempDir()
			hb, wb := newBackend(b, dir), newBackend(b, dir)
			guard := func(be *Backend) *dlock.Guard[*Lease] {
				switch kind {
				case "write":
					return dlock.NewRWMutex(be).Write()
				case "semaphore":
					return dlock.NewSemaphore(be, 1)
				}
				return dlock.NewMutex(be)
			}
			holder, waiter := guard(hb), guard(wb)
			ctx := context.Background()
			var released atomic.Int64 // when the holder began to release
			lat := make([]time.Duration, 0, b.N)
			start := make(chan struct{})
			got := make(chan time.Duration)
			done := make(chan struct{})
			go func() {
				for range start {
					lk, err := waiter.Acquire(ctx, "handoff")
					if err != nil {
						b.Error(err)
						got <- 0
						done <- struct{}{}
						continue
					}
					got <- time.Since(time.Unix(0, released.Load()))
					if err := lk.Release(ctx); err != nil {
						b.Error(err)
					}
					done <- struct{}{}
				}
			}()
			b.ResetTimer()
			for b.Loop() {
				lk, err := holder.TryAcquire(ctx, "handoff")
				if err != nil {
					b.Fatal(err)
				}
				start <- struct{}{}
				// Let the waiter reach its wait (it registers, tries, sleeps).
				for wb.waiting() == 0 {
					time.Sleep(10 * time.Microsecond)
				}
				time.Sleep(50 * time.Microsecond)
				released.Store(time.Now().UnixNano())
				if err := lk.Release(ctx); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, <-got)
				<-done
			}
			b.StopTimer()
			close(start)
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

// waiting returns how many waits are in progress (armed).
func (b *Backend) waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nwait
}
