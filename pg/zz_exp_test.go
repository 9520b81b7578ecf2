package pg_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
)

func BenchmarkExp(b *testing.B) {
	url := testURL(b)
	ctx := context.Background()
	be, pool := newBackend(b, url)
	mu := dlock.NewMutex(be)
	name := uniq(b)
	floor := func() {
		c, err := pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Conn().Prepare(ctx, "xl", "select pg_advisory_lock($1)"); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Conn().Prepare(ctx, "xu", "select pg_advisory_unlock($1)"); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Exec(ctx, "xl", int64(42)); err != nil {
			b.Fatal(err)
		}
		var ok bool
		if err := c.QueryRow(ctx, "xu", int64(42)).Scan(&ok); err != nil || !ok {
			b.Fatal(err)
		}
		c.Release()
	}
	dl := func() {
		l, err := mu.Acquire(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	for range 5 {
		floor()
		dl()
	}
	fs := make([]time.Duration, 0, b.N)
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if i%2 == 0 {
			floor()
			t1 := time.Now()
			dl()
			t2 := time.Now()
			fs = append(fs, t1.Sub(t0))
			ds = append(ds, t2.Sub(t1))
		} else {
			dl()
			t1 := time.Now()
			floor()
			t2 := time.Now()
			ds = append(ds, t1.Sub(t0))
			fs = append(fs, t2.Sub(t1))
		}
	}
	b.StopTimer()
	slices.Sort(fs)
	slices.Sort(ds)
	f, d := fs[len(fs)/2], ds[len(ds)/2]
	b.ReportMetric(float64(f), "floor-p50-ns")
	b.ReportMetric(float64(d), "dlock-p50-ns")
	b.ReportMetric(float64(d)/float64(f), "ratio")
}
