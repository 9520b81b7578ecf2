package valkey

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

func benchBackend(b *testing.B) (*Backend, context.Context) {
	addr := dlocktest.RequireEnv(b, "DLOCK_TEST_VALKEY_ADDR")
	be, err := New(testClient(b, addr), WithKeyPrefix(testPrefix(b.TempDir())))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	return be, context.Background()
}

// BenchmarkUncontendedDo measures Do on a free lock, and reports it as a
// ratio to the floor: two PING round trips on the same client (an acquire
// and a release cannot take fewer).
func BenchmarkUncontendedDo(b *testing.B) {
	be, ctx := benchBackend(b)
	c := be.c.nodes[0].client
	const floorN = 2000
	t0 := time.Now()
	for range floorN {
		_ = c.Do(ctx, c.B().Ping().Build()).Error()
		_ = c.Do(ctx, c.B().Ping().Build()).Error()
	}
	floor := time.Since(t0) / floorN
	mu := dlock.NewMutex(be)
	fn := func(context.Context) error { return nil }
	b.ResetTimer()
	for b.Loop() {
		if err := mu.Do(ctx, "uncontended", fn); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(floor.Nanoseconds()), "floor-ns/op")
	b.ReportMetric(float64(per)/float64(floor), "x-floor")
}

// BenchmarkHandOff measures the time from a release to the waiter holding
// the lock (another Backend, as another process would be).
func BenchmarkHandOff(b *testing.B) {
	be, ctx := benchBackend(b)
	space := b.TempDir()
	addr := dlocktest.RequireEnv(b, "DLOCK_TEST_VALKEY_ADDR")
	holder, err := New(testClient(b, addr), WithKeyPrefix(testPrefix(space)))
	if err != nil {
		b.Fatal(err)
	}
	defer holder.Close()
	waiter, err := New(testClient(b, addr), WithKeyPrefix(testPrefix(space)))
	if err != nil {
		b.Fatal(err)
	}
	defer waiter.Close()
	_ = be
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		l := mustLock(b, holder, "handoff")
		got := make(chan time.Time, 1)
		started := make(chan struct{})
		go func() {
			close(started)
			w, err := waiter.Lock(ctx, "handoff")
			at := time.Now()
			if err == nil {
				_ = w.Release(ctx)
			}
			got <- at
		}()
		<-started
		time.Sleep(2 * time.Millisecond) // let the waiter subscribe and wait
		t0 := time.Now()
		_ = l.Release(ctx)
		lat = append(lat, (<-got).Sub(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkParallelOneKey: 64 goroutines acquire and release one lock.
func BenchmarkParallelOneKey(b *testing.B) {
	be, ctx := benchBackend(b)
	mu := dlock.NewMutex(be)
	fn := func(context.Context) error { return nil }
	b.SetParallelism(64 / runtime.GOMAXPROCS(0))
	if 64%runtime.GOMAXPROCS(0) != 0 || runtime.GOMAXPROCS(0) > 64 {
		b.SetParallelism(1)
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := mu.Do(ctx, "one-key", fn); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkParallelManyKeys: 64 goroutines each acquire and release their
// own lock.
func BenchmarkParallelManyKeys(b *testing.B) {
	be, ctx := benchBackend(b)
	mu := dlock.NewMutex(be)
	fn := func(context.Context) error { return nil }
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	var id atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		name := "many-" + strconv.FormatInt(id.Add(1), 10)
		for pb.Next() {
			if err := mu.Do(ctx, name, fn); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHold100k holds 100,000 leases in one process and reports the
// heap and goroutines that costs (one extender goroutine in all).
func BenchmarkHold100k(b *testing.B) {
	be, ctx := benchBackend(b)
	const n = 100_000
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		g0 := runtime.NumGoroutine()
		leases := make([]*Lease, n)
		var wg sync.WaitGroup
		for w := range 64 {
			wg.Go(func() {
				for i := w; i < n; i += 64 {
					l, ok, err := be.TryLock(ctx, "hold-"+strconv.Itoa(i))
					if err != nil || !ok {
						b.Error(ok, err)
						return
					}
					leases[i] = l
				}
			})
		}
		wg.Wait()
		runtime.GC()
		runtime.ReadMemStats(&m1)
		g1 := runtime.NumGoroutine()
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "heap-B/lease")
		b.ReportMetric(float64(g1-g0), "goroutines")
		for w := range 64 {
			wg.Go(func() {
				for i := w; i < n; i += 64 {
					if leases[i] != nil {
						_ = leases[i].Release(ctx)
					}
				}
			})
		}
		wg.Wait()
	}
}

// BenchmarkTryAcquireAll compares the composite path with single tries:
// each operation takes n free mutexes by one TryAcquireAll (one script)
// and, interleaved in the same loop, the same n names by n TryAcquire in
// sequence, releasing each set. Reported: all-ns and seq-ns (one
// acquisition of the n names, release excluded), seq/all (their ratio),
// and all+rel-ns, seq+rel-ns (with the releases). ns/op is both sides
// together.
func BenchmarkTryAcquireAll(b *testing.B) {
	for _, n := range []int{2, 8, 32} {
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) {
			be, ctx := benchBackend(b)
			mu := dlock.NewMutex(be)
			names := make([]string, n)
			for i := range names {
				names[i] = "all:" + strconv.Itoa(i)
			}
			locks := make([]*dlock.Lock[*Lease], n)
			var all, seq, allRel, seqRel time.Duration
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				set, err := mu.TryAcquireAll(ctx, names)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := set.Release(ctx); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				for i, name := range names {
					if locks[i], err = mu.TryAcquire(ctx, name); err != nil {
						b.Fatal(err)
					}
				}
				t3 := time.Now()
				for _, lk := range locks {
					if err := lk.Release(ctx); err != nil {
						b.Fatal(err)
					}
				}
				t4 := time.Now()
				all += t1.Sub(t0)
				allRel += t2.Sub(t0)
				seq += t3.Sub(t2)
				seqRel += t4.Sub(t2)
			}
			reportPair(b, "all", "seq", "rel", all, seq, allRel, seqRel)
		})
	}
}

// BenchmarkUncontendedOwner measures what an owner text costs: a free
// lock taken and released with dlock.WithOwner and, interleaved in the
// same loop, without. Reported: owner-ns, plain-ns and their ratio
// owner/plain; ns/op and allocs/op are both sides together.
func BenchmarkUncontendedOwner(b *testing.B) {
	be, ctx := benchBackend(b)
	plain := dlock.NewMutex(be)
	owned := dlock.NewMutex(be, dlock.WithOwner("nightly report, build 1234"))
	var withOwner, without time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		lk, err := owned.TryAcquire(ctx, "owner")
		if err != nil {
			b.Fatal(err)
		}
		if err := lk.Release(ctx); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if lk, err = plain.TryAcquire(ctx, "owner"); err != nil {
			b.Fatal(err)
		}
		if err := lk.Release(ctx); err != nil {
			b.Fatal(err)
		}
		withOwner += t1.Sub(t0)
		without += time.Since(t1)
	}
	b.ReportMetric(float64(withOwner.Nanoseconds())/float64(b.N), "owner-ns")
	b.ReportMetric(float64(without.Nanoseconds())/float64(b.N), "plain-ns")
	b.ReportMetric(float64(withOwner)/float64(without), "owner/plain")
}

// BenchmarkReleaseAll compares ReleaseAll with one Release per lease: each
// operation takes n free mutexes by one TryLockAll and releases them by
// one ReleaseAll (one script) and, interleaved in the same loop, takes
// them again and releases them by n Release in sequence. Reported:
// all-ns and each-ns (the releases alone), each/all (their ratio), and
// all+try-ns, each+try-ns (with the TryLockAll). ns/op is both sides
// together.
func BenchmarkReleaseAll(b *testing.B) {
	for _, n := range []int{2, 8, 32} {
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) {
			be, ctx := benchBackend(b)
			names := make([]string, n)
			for i := range names {
				names[i] = "relall:" + strconv.Itoa(i)
			}
			try := func() []*Lease {
				ls, busy, err := be.TryLockAll(ctx, names)
				if err != nil || busy != -1 {
					b.Fatal(busy, err)
				}
				return ls
			}
			var all, each, allTry, eachTry time.Duration
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				ls := try()
				t1 := time.Now()
				for _, err := range be.ReleaseAll(ctx, ls) {
					if err != nil {
						b.Fatal(err)
					}
				}
				t2 := time.Now()
				ls = try()
				t3 := time.Now()
				for _, l := range ls {
					if err := l.Release(ctx); err != nil {
						b.Fatal(err)
					}
				}
				t4 := time.Now()
				all += t2.Sub(t1)
				allTry += t2.Sub(t0)
				each += t4.Sub(t3)
				eachTry += t4.Sub(t2)
			}
			reportPair(b, "all", "each", "try", all, each, allTry, eachTry)
		})
	}
}

// reportPair reports the two sides of a benchmark that times both in one
// loop: a's and z's time per operation (a-ns, z-ns), their ratio (z/a), and
// each with its other half w (a+w-ns, z+w-ns).
func reportPair(b *testing.B, a, z, w string, ta, tz, taw, tzw time.Duration) {
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	b.ReportMetric(per(ta), a+"-ns")
	b.ReportMetric(per(tz), z+"-ns")
	b.ReportMetric(float64(tz)/float64(ta), z+"/"+a)
	b.ReportMetric(per(taw), a+"+"+w+"-ns")
	b.ReportMetric(per(tzw), z+"+"+w+"-ns")
}
