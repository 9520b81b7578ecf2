package pg_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/pg"
)

// BenchmarkDo measures an uncontended Do (take, run nothing, release)
// against its floor, the cheapest correct hand-written lock on the same
// pool (a pooled connection, prepared pg_advisory_lock($1) and
// pg_advisory_unlock($1), the connection back to the pool), interleaved
// operation by operation so that a loaded machine weighs on both alike.
// Reported: the median of each and their ratio.
//
//	go test -run '^$' -bench Do -count 6 ./pg/
func BenchmarkDo(b *testing.B) {
	url := testURL(b)
	be, pool := newBackend(b, url)
	ctx := context.Background()
	mu := dlock.NewMutex(be)
	name := uniq(b)
	key, _ := pg.MutexKey(name + "-floor").Int64()
	fn := func(context.Context) error { return nil }
	floor := func() {
		c, err := pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Release()
		for _, q := range []string{"SELECT pg_advisory_lock($1)", "SELECT pg_advisory_unlock($1)"} {
			if _, err := c.Conn().Prepare(ctx, q, q); err != nil { // no round trip once prepared
				b.Fatal(err)
			}
			if _, err := c.Exec(ctx, q, key); err != nil {
				b.Fatal(err)
			}
		}
	}
	do := func() {
		if err := mu.Do(ctx, name, fn); err != nil {
			b.Fatal(err)
		}
	}
	// Warm the pool and the statements (interleaved runs each three times first).
	interleaved(b, do, floor, "do", "floor")
}

// BenchmarkHandoff measures the time from a release to the waiter (queued
// on the server, in another client) holding the lock.
func BenchmarkHandoff(b *testing.B) {
	url := testURL(b)
	holder, _ := newBackend(b, url)
	waiter, _ := newBackend(b, url)
	ctx := context.Background()
	name := uniq(b)
	key, _ := pg.MutexKey(name).Int64()
	probe := newPool(b, url, 1)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		h, ok, err := holder.TryLock(ctx, name)
		if err != nil || !ok {
			b.Fatalf("holder: %v %v", ok, err)
		}
		got := make(chan time.Time, 1)
		go func() {
			l, err := waiter.Lock(ctx, name)
			at := time.Now()
			if err != nil {
				b.Error(err)
			} else {
				_ = l.Release(ctx)
			}
			got <- at
		}()
		for { // until the waiter is queued on the server
			var n int
			if err := probe.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1::bigint & 4294967295 AND classid = ($1::bigint >> 32) & 4294967295", key).Scan(&n); err != nil {
				b.Fatal(err)
			}
			if n > 0 {
				break
			}
		}
		b.StartTimer()
		start := time.Now()
		if err := h.Release(ctx); err != nil {
			b.Fatal(err)
		}
		at := <-got
		lat = append(lat, at.Sub(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkHold measures holding n distinct locks at once: time per lock
// taken and released, the lock connections used, and the heap held per
// lease.
func BenchmarkHold(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			url := testURL(b)
			be, pool := newBackend(b, url)
			ctx := context.Background()
			base := uniq(b)
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprint(base, i)
			}
			ls := make([]*pg.Lease, n)
			var conns, poolConns int
			var heap float64
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				var m0, m1 runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&m0)
				for i, name := range names {
					l, ok, err := be.TryLock(ctx, name)
					if err != nil || !ok {
						b.Fatalf("lock %d: %v %v", i, ok, err)
					}
					ls[i] = l
				}
				runtime.GC()
				runtime.ReadMemStats(&m1)
				heap = float64(m1.HeapAlloc) - float64(m0.HeapAlloc)
				conns = max(conns, be.Stats().LockConns)
				poolConns = max(poolConns, int(pool.Stat().TotalConns()))
				for _, l := range ls {
					if err := l.Release(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/lock")
			b.ReportMetric(float64(conns), "lockconns")
			b.ReportMetric(float64(poolConns), "poolconns")
			b.ReportMetric(heap/float64(n), "heapB/lease")
		})
	}
}

// BenchmarkSemHandoff measures the time from the release of a ticket of a
// full semaphore (limit 2) to a waiter, in another client, holding it.
func BenchmarkSemHandoff(b *testing.B) {
	url := testURL(b)
	holder, _ := newBackend(b, url)
	waiter, _ := newBackend(b, url)
	ctx := context.Background()
	name := uniq(b)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		var hs []*pg.Lease
		for range 2 {
			h, ok, err := holder.TryAcquire(ctx, name, 2)
			if err != nil || !ok {
				b.Fatalf("holder: %v %v", ok, err)
			}
			hs = append(hs, h)
		}
		got := make(chan time.Time, 1)
		go func() {
			l, err := waiter.Acquire(ctx, name, 2)
			at := time.Now()
			if err != nil {
				b.Error(err)
			} else {
				_ = l.Release(ctx)
			}
			got <- at
		}()
		time.Sleep(30 * time.Millisecond) // the waiter waits
		b.StartTimer()
		start := time.Now()
		if err := hs[0].Release(ctx); err != nil {
			b.Fatal(err)
		}
		at := <-got
		lat = append(lat, at.Sub(start))
		b.StopTimer()
		_ = hs[1].Release(ctx)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkHolderTable measures what WithHolderTable costs an uncontended
// Do: a backend without it and one with it on the same server,
// interleaved operation by operation. Reported: the median of each and
// their ratio.
//
//	go test -run '^$' -bench HolderTable -count 6 ./pg/
func BenchmarkHolderTable(b *testing.B) {
	url := testURL(b)
	plain, _ := newBackend(b, url)
	rec, _ := newBackend(b, url, pg.WithHolderTable("dlock_bench_holders"))
	ctx := dlock.ContextWithOwner(context.Background(), "bench")
	name := uniq(b)
	fn := func(context.Context) error { return nil }
	run := func(mu *dlock.Mutex[*pg.Lease], name string) func() {
		return func() {
			if err := mu.Do(ctx, name, fn); err != nil {
				b.Fatal(err)
			}
		}
	}
	off, on := run(dlock.NewMutex(plain), name+"-off"), run(dlock.NewMutex(rec), name+"-on")
	interleaved(b, on, off, "on", "off")
}

// BenchmarkTryAcquireAll measures TryAcquireAll of n free names (one
// statement) against n single TryAcquire calls in sequence, each followed
// by the release of what it took, interleaved operation by operation.
// Reported: the median of each and their ratio (all/singles).
//
//	go test -run '^$' -bench TryAcquireAll -count 6 ./pg/
func BenchmarkTryAcquireAll(b *testing.B) {
	url := testURL(b)
	be, _ := newBackend(b, url)
	mu := dlock.NewMutex(be)
	ctx := context.Background()
	for _, n := range []int{2, 8, 32} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			base := uniq(b)
			setNames, singleNames := make([]string, n), make([]string, n)
			for i := range n {
				setNames[i], singleNames[i] = fmt.Sprintf("%s/set/%02d", base, i), fmt.Sprintf("%s/single/%02d", base, i)
			}
			all := func() {
				set, err := mu.TryAcquireAll(ctx, setNames)
				if err != nil {
					b.Fatal(err)
				}
				if err := set.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
			lks := make([]*dlock.Lock[*pg.Lease], n)
			singles := func() {
				for i, name := range singleNames {
					lk, err := mu.TryAcquire(ctx, name)
					if err != nil {
						b.Fatal(err)
					}
					lks[i] = lk
				}
				for _, lk := range lks {
					if err := lk.Release(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			interleaved(b, all, singles, "all", "singles")
		})
	}
}

// BenchmarkReleaseAll measures a set of n free names taken by TryLockAll
// (one statement) and released by ReleaseAll (one statement) against the
// same set released by one Release per lease, interleaved operation by
// operation. Reported: the median of each and their ratio (all/each).
//
//	go test -run '^$' -bench ReleaseAll -count 6 ./pg/
func BenchmarkReleaseAll(b *testing.B) {
	url := testURL(b)
	be, _ := newBackend(b, url)
	ctx := context.Background()
	for _, n := range []int{2, 8, 32} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			base := uniq(b)
			names := make([]string, n)
			for i := range n {
				names[i] = fmt.Sprintf("%s/%02d", base, i)
			}
			take := func() []*pg.Lease {
				ls, busy, err := be.TryLockAll(ctx, names)
				if err != nil || busy != -1 {
					b.Fatalf("TryLockAll: busy %d, %v", busy, err)
				}
				return ls
			}
			all := func() {
				for _, err := range be.ReleaseAll(ctx, take()) {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			each := func() {
				ls := take()
				for i := len(ls) - 1; i >= 0; i-- {
					if err := ls[i].Release(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			interleaved(b, all, each, "all", "each")
		})
	}
}

// interleaved runs x and y b.N times each, alternating which goes first,
// after three warm-up runs of each, and reports the median time of each
// (p50-ns/xName, p50-ns/yName) and their ratio (xName/yName): a loaded
// machine weighs on both alike.
func interleaved(b *testing.B, x, y func(), xName, yName string) {
	for range 3 {
		x()
		y()
	}
	xs := make([]time.Duration, 0, b.N)
	ys := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		first, second, fs, ss := x, y, &xs, &ys
		if i%2 == 1 {
			first, second, fs, ss = y, x, &ys, &xs
		}
		t0 := time.Now()
		first()
		t1 := time.Now()
		second()
		*fs, *ss = append(*fs, t1.Sub(t0)), append(*ss, time.Since(t1))
	}
	b.StopTimer()
	slices.Sort(xs)
	slices.Sort(ys)
	px, py := xs[len(xs)/2], ys[len(ys)/2]
	b.ReportMetric(float64(px.Nanoseconds()), "p50-ns/"+xName)
	b.ReportMetric(float64(py.Nanoseconds()), "p50-ns/"+yName)
	b.ReportMetric(float64(px)/float64(py), xName+"/"+yName)
}
