package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// goroutines is the number of goroutines of the throughput benchmarks.
const goroutines = 64

// waitTimeout bounds every wait of a benchmark, so a stuck library fails the
// benchmark instead of hanging it.
const waitTimeout = time.Minute

// throughputTimeout bounds one run of a throughput benchmark (a second's
// worth of operations, normally): a library that loses a wake-up or stalls
// fails it after this long instead of costing the run a minute per round.
const throughputTimeout = 20 * time.Second

// runID keeps the lock names of one run apart from any earlier run's
// leftovers (pglock rows, lease keys, lock files).
var runID = strconv.FormatInt(time.Now().UnixNano(), 36)

// lockName returns a lock name unique to this run and benchmark, usable as a
// file name.
func lockName(b *testing.B, suffix string) string {
	return fmt.Sprintf("bench-%s-%s-%s", runID, strings.ReplaceAll(b.Name(), "/", "_"), suffix)
}

// BenchmarkUncontended measures one acquire + release of a free lock (the
// waiting acquire): ns/op is the mean, p50-ns the median; and its
// allocations (allocs/op, B/op).
//
// The libraries of a backend take turns, as in BenchmarkHandoff: each turn
// times a block of uncontendedBlock acquire + release of every library, in
// a new random order, until each has had the -benchtime (a duration: that
// long each; Nx: N each, and N is the count reported). Then, one library at
// a time, its allocations are counted over allocRuns more. Each library is
// reported as the sub-benchmark backend/lib (with a duration, the count go
// test prints for it is meaningless: the figures are the turns').
func BenchmarkUncontended(b *testing.B) {
	eachBackend(b, false, func(b *testing.B, ls []lib) {
		type one struct {
			i       int // in ls
			l       lib
			take    func() (held, error)
			samples []time.Duration
			err     error
		}
		ctx := context.Background()
		var all []*one
		for i, l := range ls {
			lk := l.open(b, b.TempDir())
			name := lockName(b, l.name+"-u")
			o := &one{i: i, l: l, take: func() (held, error) { return lk.lock(ctx, name) }}
			// Warm up: connections, prepared statements, scripts, lock files.
			for range 3 {
				if o.err = takeReleaseOnce(o.take); o.err != nil {
					break
				}
			}
			all = append(all, o)
		}
		perLib, ops := benchBudget(time.Second)
		start := time.Now()
		for turn := 0; ; turn++ {
			n := uncontendedBlock
			if ops > 0 {
				if n = min(n, ops-turn*uncontendedBlock); n <= 0 {
					break
				}
			} else if time.Since(start) >= perLib*time.Duration(len(all)) {
				break
			}
			rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
			for _, o := range all {
				for range n {
					if o.err != nil {
						break
					}
					t := time.Now()
					o.err = takeReleaseOnce(o.take)
					o.samples = append(o.samples, time.Since(t))
				}
			}
		}
		slices.SortFunc(all, func(x, y *one) int { return x.i - y.i }) // table order
		for _, o := range all {
			var allocs, bytes float64
			if o.err == nil {
				allocs, bytes, o.err = allocsPerRun(allocRuns, func() error { return takeReleaseOnce(o.take) })
			}
			b.Run(o.l.name, func(b *testing.B) {
				if o.err != nil {
					b.Fatal(o.err)
				}
				reportLatencies(b, slices.Clone(o.samples))
				b.ReportMetric(allocs, "allocs/op")
				b.ReportMetric(bytes, "B/op")
			})
		}
	})
}

// uncontendedBlock is how many acquire + release of one library
// BenchmarkUncontended times in a row; allocRuns how many it counts the
// allocations of.
const (
	uncontendedBlock = 100
	allocRuns        = 200
)

// takeReleaseOnce calls take and releases what it took.
func takeReleaseOnce(take func() (held, error)) error {
	h, err := take()
	if err != nil {
		return err
	}
	return h.Release(context.Background())
}

// allocsPerRun calls f n times and returns the heap allocations and bytes
// per call, counted as go test -benchmem counts them (whole allocations).
func allocsPerRun(n int, f func() error) (allocs, bytes float64, err error) {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for range n {
		if err := f(); err != nil {
			return 0, 0, err
		}
	}
	runtime.ReadMemStats(&m1)
	return float64((m1.Mallocs - m0.Mallocs) / uint64(n)), float64((m1.TotalAlloc - m0.TotalAlloc) / uint64(n)), nil
}

// eachBackend runs f as a sub-benchmark per backend with the libraries of
// that backend that the benchmark measures and -test.bench selects (see
// benchSelects); waiting restricts them to libraries that can wait for a
// held lock. f reports each library as a sub-benchmark of its own.
func eachBackend(b *testing.B, waiting bool, f func(b *testing.B, ls []lib)) {
	for _, be := range []string{"valkey", "pg", "fs"} {
		var ls []lib
		for _, l := range libs {
			if l.backend == be && (l.waits || !waiting) && l.measures(b.Name()) && benchSelects(2, l.name) {
				ls = append(ls, l)
			}
		}
		if len(ls) > 0 && benchSelects(1, be) {
			b.Run(be, func(b *testing.B) { f(b, ls) })
		}
	}
}

// benchBudget returns -test.benchtime: a duration (d), or Nx (ops = N);
// def when it is not set.
func benchBudget(def time.Duration) (d time.Duration, ops int) {
	if f := flag.Lookup("test.benchtime"); f != nil {
		v := f.Value.String()
		if n, ok := strings.CutSuffix(v, "x"); ok {
			if i, err := strconv.Atoi(n); err == nil && i > 0 {
				return 0, i
			}
		}
		if t, err := time.ParseDuration(v); err == nil && t > 0 {
			return t, 0
		}
	}
	return def, 0
}

// takeRelease times b.N rounds of take and the release of what it took,
// reporting allocations and the median round as p50-ns. One clock read per
// round: each sample is the time from one round's start to the next one's.
func takeRelease(b *testing.B, take func() (held, error)) {
	ctx := context.Background()
	samples := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	prev := time.Now()
	for i := range b.N {
		h, err := take()
		if err != nil {
			b.Fatal(err)
		}
		if err := h.Release(ctx); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		samples[i] = now.Sub(prev)
		prev = now
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(float64(percentile(samples, 0.50)), "p50-ns")
}

// BenchmarkHandoff measures the time from a holder's release call to a
// waiter's acquisition returning. Holder and waiter are independent
// instances (clients, pools, backends), as two processes would be. The
// waiter starts waiting 5 to 15 ms (at random, so that pollers are caught at
// every phase) before the release.
//
// The libraries of a backend take turns: each turn makes one hand-off of
// every library, in a new random order, so that the load of a shared
// machine, which comes and goes over seconds, falls on all of them alike
// (measured one library after the other, 100 hand-offs each, pg's dlock ÷
// floor read 0.73–1.58 from round to round). -benchtime Nx sets the turns
// (default 40, also when -benchtime is a duration). Each library is then
// reported as the sub-benchmark backend/lib: p50-ns and p99-ns, and ns/op
// as the mean hand-off (not the loop's time, which includes the holding).
// A library that fails is dropped from the turns and its sub-benchmark
// fails.
func BenchmarkHandoff(b *testing.B) {
	_, turns := benchBudget(0)
	if turns == 0 {
		turns = 40
	}
	eachBackend(b, true, func(b *testing.B, ls []lib) {
		samples, errs := handoffTurns(b, ls, turns)
		for _, l := range ls {
			b.Run(l.name, func(b *testing.B) {
				if errs[l.name] != nil {
					b.Fatal(errs[l.name])
				}
				reportLatencies(b, slices.Clone(samples[l.name]))
			})
		}
	})
}

// handoffTurns makes turns turns of hand-offs of the libraries ls (see
// BenchmarkHandoff) and returns each one's samples, or the error that
// dropped it.
func handoffTurns(b *testing.B, ls []lib, turns int) (map[string][]time.Duration, map[string]error) {
	type pair struct {
		l              lib
		holder, waiter locker
		name           string
	}
	samples, errs := map[string][]time.Duration{}, map[string]error{}
	var ps []*pair
	for _, l := range ls {
		dir := b.TempDir()
		ps = append(ps, &pair{l, l.open(b, dir), l.open(b, dir), lockName(b, l.name+"-h")})
	}
	one := func(p *pair) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*waitTimeout)
		defer cancel()
		return handoff(ctx, p.holder, p.waiter, p.name)
	}
	// Warm up both instances of each, also their waiting (a first wait may
	// open a connection or a watch).
	for _, p := range ps {
		for range 2 {
			if _, err := one(p); err != nil {
				errs[p.l.name] = err
				break
			}
		}
	}
	for range turns {
		rand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		for _, p := range ps {
			if errs[p.l.name] != nil {
				continue
			}
			d, err := one(p)
			if err != nil {
				errs[p.l.name] = err
				continue
			}
			samples[p.l.name] = append(samples[p.l.name], d)
		}
	}
	return samples, errs
}

// splitPattern splits a -test.bench pattern into its slash-separated
// elements as go test does: a slash within brackets or parentheses, or
// escaped, separates nothing.
func splitPattern(s string) []string {
	var parts []string
	brackets, parens, start := 0, 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '[':
			brackets++
		case ']':
			brackets = max(brackets-1, 0)
		case '(':
			if brackets == 0 {
				parens++
			}
		case ')':
			if brackets == 0 {
				parens--
			}
		case '/':
			if brackets == 0 && parens == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:])
}

// benchSelects reports whether -test.bench lets a sub-benchmark named name
// run at depth level (0 is the top-level benchmark), as go test would: the
// pattern's level-th slash-separated element, if any, must match name. A
// benchmark that measures several libraries at once (BenchmarkHandoff)
// measures only those the pattern selects.
func benchSelects(level int, name string) bool {
	f := flag.Lookup("test.bench")
	if f == nil {
		return true
	}
	parts := splitPattern(f.Value.String())
	if level >= len(parts) {
		return true
	}
	re, err := regexp.Compile(parts[level])
	return err != nil || re.MatchString(name)
}

// handoff takes name with holder, starts a waiter, releases 5 to 15 ms
// later, and returns the time from the release call to the waiter's
// acquisition returning.
func handoff(ctx context.Context, holder, waiter locker, name string) (time.Duration, error) {
	released, acquired, err := handoffAt(ctx, holder, waiter, name, nil)
	return acquired.Sub(released), err
}

// handoffAt is handoff returning when the release was called and when the
// waiter's acquisition returned; rec, if not nil, records the sockets in
// between.
func handoffAt(ctx context.Context, holder, waiter locker, name string, rec *sockRecorder) (released, acquired time.Time, err error) {
	type result struct {
		h   held
		at  time.Time
		err error
	}
	h, err := holder.lock(ctx, name)
	if err != nil {
		return released, acquired, err
	}
	done := make(chan result, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, waitTimeout)
		defer cancel()
		w, err := waiter.lock(wctx, name)
		done <- result{w, time.Now(), err}
	}()
	time.Sleep(5*time.Millisecond + rand.N(10*time.Millisecond))
	if rec != nil {
		rec.start()
	}
	released = time.Now()
	rerr := h.Release(ctx)
	r := <-done
	if rec != nil {
		rec.stop()
	}
	if r.err != nil {
		return released, r.at, errors.Join(rerr, r.err)
	}
	if err := r.h.Release(ctx); err != nil || rerr != nil {
		return released, r.at, errors.Join(rerr, err)
	}
	if r.at.Before(released) {
		return released, r.at, fmt.Errorf("the waiter acquired %v before the holder released", released.Sub(r.at))
	}
	return released, r.at, nil
}

func reportLatencies(b *testing.B, samples []time.Duration) {
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	b.ReportMetric(float64(sum)/float64(len(samples)), "ns/op")
	b.ReportMetric(float64(percentile(samples, 0.50)), "p50-ns")
	b.ReportMetric(float64(percentile(samples, 0.99)), "p99-ns")
}

// percentile returns the nearest-rank percentile p of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// BenchmarkThroughputHot runs 64 goroutines taking and releasing one lock,
// all on one instance. Reported: ops/s (acquire + release pairs per second).
func BenchmarkThroughputHot(b *testing.B) {
	eachBackend(b, true, func(b *testing.B, ls []lib) {
		throughputTurns(b, ls, func(l lib) func(int) string {
			name := lockName(b, l.name+"-hot")
			return func(int) string { return name }
		})
	})
}

// BenchmarkThroughputKeys runs 64 goroutines, each taking and releasing its
// own lock, all on one instance. Reported: ops/s.
func BenchmarkThroughputKeys(b *testing.B) {
	eachBackend(b, false, func(b *testing.B, ls []lib) {
		throughputTurns(b, ls, func(l lib) func(int) string {
			names := make([]string, goroutines)
			for i := range names {
				names[i] = lockName(b, l.name+"-"+strconv.Itoa(i))
			}
			return func(g int) string { return names[g] }
		})
	})
}

// throughputSlice is how long one turn of a throughput benchmark runs one
// library.
const throughputSlice = 100 * time.Millisecond

// throughputTurns measures the throughput of the libraries ls, the
// goroutines of library l taking the names of names(l). The libraries take
// turns, as in BenchmarkHandoff: each turn runs every library, in a new
// random order, for throughputSlice (or, with -benchtime Nx, N locks in one
// turn), until each has run the -benchtime. A library runs its turn on an
// instance of its own, opened with its connections and warmed up off the
// clock (see throughput), and closed after it: the instances of one
// backend's libraries together would hold more connections than the test
// server allows. Each library is reported as the sub-benchmark backend/lib:
// ops/s, and ns/op as the time per lock (with a duration, the count go test
// prints for it is meaningless: the figures are the turns').
func throughputTurns(b *testing.B, ls []lib, names func(l lib) func(int) string) {
	type one struct {
		i       int // in ls
		l       lib
		name    func(int) string
		ops     int64
		elapsed time.Duration
		err     error
	}
	var all []*one
	for i, l := range ls {
		all = append(all, &one{i: i, l: l, name: names(l)})
	}
	d, ops := benchBudget(time.Second)
	for turn := 0; ; turn++ {
		if ops > 0 && turn > 0 || ops == 0 && time.Duration(turn)*throughputSlice >= d {
			break
		}
		rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		for _, o := range all {
			if o.err != nil {
				continue
			}
			n := int64(ops)
			if ops == 0 {
				n = math.MaxInt64
			}
			var took int64
			var elapsed time.Duration
			took, elapsed, o.err = throughput(b, o.l, o.name, n, throughputSlice, ops == 0)
			o.ops += took
			o.elapsed += elapsed
		}
	}
	slices.SortFunc(all, func(x, y *one) int { return x.i - y.i }) // table order
	for _, o := range all {
		b.Run(o.l.name, func(b *testing.B) {
			if o.err != nil {
				failOrStall(b, o.l, o.err)
			}
			b.ReportMetric(float64(o.ops)/o.elapsed.Seconds(), "ops/s")
			b.ReportMetric(float64(o.elapsed.Nanoseconds())/float64(o.ops), "ns/op")
		})
	}
}

// throughput opens an instance of l, warms it up off the clock, then times
// its goroutines taking n locks in all (of name(g) for goroutine g), or as
// many as they take in slice if timed; it returns how many they took and
// how long that took, and closes the instance.
func throughput(tb testing.TB, l lib, name func(g int) string, n int64, slice time.Duration, timed bool) (int64, time.Duration, error) {
	sc := &scope{TB: tb}
	defer sc.close()
	lk := l.open(sc, tb.TempDir())
	// A library that loses a wake-up fails here after throughputTimeout
	// instead of hanging the run (the warm-up below and the timed run have
	// budgets of their own: a slow peer's waits in flight at the end of
	// either take seconds).
	ctx, cancel := context.WithTimeout(context.Background(), throughputTimeout)
	defer cancel()
	// Connections are opened before the clock starts, as a running
	// application's pool has them: 64 PostgreSQL connections take from
	// 0.25 s to over a second to open on a loaded machine, which the rate
	// would count.
	if w, ok := lk.(warmer); ok {
		if err := w.warm(ctx, goroutines); err != nil {
			return 0, 0, err
		}
	}
	// A running application's connections have served its statements
	// before: a PostgreSQL session's first run of a statement reads the
	// catalog (2.3 ms for dlock's wait on a fresh session here, 0.2 ms
	// after), which the floors pay while the pool connects (they prepare
	// in AfterConnect) and a library that prepares on first use would pay
	// on the clock, 64 sessions over. So the workload runs once, off the
	// clock, before it is timed: warmLocks locks, or warmTime if that
	// comes first.
	wctx, wcancel := context.WithTimeout(context.Background(), throughputTimeout)
	_, err := runThroughput(wctx, lk, name, warmLocks, time.Now().Add(warmTime))
	wcancel()
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel = context.WithTimeout(context.Background(), throughputTimeout)
	defer cancel()
	var until time.Time
	start := time.Now()
	if timed {
		until = start.Add(slice)
	}
	took, err := runThroughput(ctx, lk, name, n, until)
	return took, time.Since(start), err
}

// scope is a testing.TB whose cleanups run when close is called (a
// library's instance for one turn), not at the end of the benchmark.
type scope struct {
	testing.TB
	cleanups []func()
}

func (s *scope) Cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

func (s *scope) close() {
	for _, f := range slices.Backward(s.cleanups) {
		f()
	}
	s.cleanups = nil
}

// The throughput benchmarks' untimed warm-up: this many locks, or this
// long if that comes first.
const (
	warmLocks = 8 * goroutines
	warmTime  = 500 * time.Millisecond
)

// runThroughput has the goroutines, started at once, take and release n
// locks in all (of name(g) for goroutine g), stopping at until if it is
// not zero, and returns how many they took and released, and the first
// error (which ends the run).
func runThroughput(ctx context.Context, lk locker, name func(g int) string, n int64, until time.Time) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		firstErr   error
		errOnce    sync.Once
	)
	warm := make(chan struct{}) // starts every goroutine at once
	for g := range goroutines {
		wg.Go(func() {
			n1 := name(g)
			<-warm
			for next.Add(1) <= n && (until.IsZero() || time.Now().Before(until)) {
				h, err := lk.lock(ctx, n1)
				if err == nil {
					err = h.Release(ctx)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				done.Add(1)
			}
		})
	}
	close(warm)
	wg.Wait()
	return done.Load(), firstErr
}

// isPeer reports whether l is a peer (not dlock, not a floor).
func isPeer(l lib) bool {
	return !strings.HasPrefix(l.name, "dlock") && !strings.HasPrefix(l.name, "floor") && l.name != "2rtt"
}

// failOrStall ends a benchmark that could not finish: a peer that stalled
// (its wait outlived the benchmark's bound) is skipped with the reason, so
// that a peer's bug never turns the CI red (bench/run lists the stalls in
// BENCHMARKS.md); anything else fails.
func failOrStall(b *testing.B, l lib, err error) {
	b.Helper()
	if isPeer(l) && errors.Is(err, context.DeadlineExceeded) {
		stall(b, err.Error())
	}
	b.Fatal(err)
}

// stall skips b, a peer's benchmark that stalled, and says so on stdout
// (go test prints skipped benchmarks only with -v): "--- STALL: name: why".
func stall(b *testing.B, why string) {
	b.Helper()
	fmt.Printf("\n--- STALL: %s (skipped): %s\n", b.Name(), strings.ReplaceAll(strings.TrimSpace(why), "\n", "\n    "))
	b.Skip("peer stalled: " + why)
}

// scaleAcquireTimeout bounds one acquisition of BenchmarkScale.
const scaleAcquireTimeout = 10 * time.Second

// scaleN is how many locks BenchmarkScale tries to hold at once.
func scaleN(b *testing.B) int {
	s := os.Getenv("DLOCK_BENCH_SCALE_N")
	if s == "" {
		return 1000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("DLOCK_BENCH_SCALE_N=%q: want a positive integer", s)
	}
	return n
}

// BenchmarkScale takes DLOCK_BENCH_SCALE_N distinct locks (64 goroutines
// acquiring) and holds them all at once, stopping at the first failure.
// Reported: held (locks held at once), goroutines and heap-B/lock (the
// process's growth per held lock, after a GC), and for PostgreSQL the
// connections used. ns/op is the time to take one lock.
func BenchmarkScale(b *testing.B) {
	for _, l := range libs {
		if l.name != "dlock" && l.name != "valkeylock" {
			continue
		}
		b.Run(l.backend+"/"+l.name, func(b *testing.B) {
			for range b.N {
				scale(b, l)
			}
		})
	}
}

func scale(b *testing.B, l lib) {
	b.StopTimer()
	n := scaleN(b)
	lk := l.open(b, b.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*waitTimeout)
	defer cancel()
	names := make([]string, n)
	for i := range names {
		names[i] = lockName(b, strconv.Itoa(i))
	}
	// One warm-up lock for the connections and background goroutines
	// that exist with a single lock too.
	h, err := lk.lock(ctx, lockName(b, "warm"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = h.Release(ctx) }()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()

	helds := make([]held, n)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		failed   atomic.Bool
		firstErr error
		errOnce  sync.Once
	)
	b.StartTimer()
	start := time.Now()
	for range goroutines {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				// dlock's waits ride out errors that may heal (out of
				// descriptors, the server's lock table full) until their
				// ctx ends: bound each one, so that reaching a limit ends
				// the benchmark in seconds, with the last error. (Not
				// valkeylock's: its lock lives only as long as that ctx.)
				actx, cancel := ctx, context.CancelFunc(func() {})
				if strings.HasPrefix(l.name, "dlock") {
					actx, cancel = context.WithTimeout(ctx, scaleAcquireTimeout)
				}
				h, err := lk.lock(actx, names[i])
				cancel()
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					failed.Store(true)
					return
				}
				helds[i] = h
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	count := 0
	for _, h := range helds {
		if h != nil {
			count++
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	g1 := runtime.NumGoroutine()
	conns := -1
	if c, ok := lk.(interface{ lockConns() int }); ok {
		conns = c.lockConns()
	}

	if firstErr != nil {
		b.Logf("%s: held %d of %d locks, then: %v", b.Name(), count, n, firstErr)
	}
	b.ReportMetric(float64(count), "held")
	b.ReportMetric(float64(g1-g0)/float64(max(count, 1)), "goroutines/lock")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(max(count, 1)), "heap-B/lock")
	if conns >= 0 {
		b.ReportMetric(float64(conns), "conns")
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(max(count, 1)), "ns/op")

	// Release everything; failures after a failed acquisition are expected
	// on backends that lost their connection.
	var rerr error
	for _, h := range helds {
		if h == nil {
			continue
		}
		if err := h.Release(ctx); err != nil && rerr == nil {
			rerr = err
		}
	}
	if rerr != nil && firstErr == nil {
		b.Fatal(errors.Join(errors.New("release after scale"), rerr))
	}
}

// TestHarnessSplitPattern checks that the benchmarks that measure several
// libraries at once read -test.bench's elements as go test does.
func TestHarnessSplitPattern(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"^BenchmarkHandoff$/./^dlock$", []string{"^BenchmarkHandoff$", ".", "^dlock$"}},
		{"Handoff/(pg|fs)/(dlock|floor)$", []string{"Handoff", "(pg|fs)", "(dlock|floor)$"}},
		{"Handoff/(pg/dlock|fs)", []string{"Handoff", "(pg/dlock|fs)"}},
		{"A/[/]/b", []string{"A", "[/]", "b"}},
		{`A\/b/c`, []string{`A\/b`, "c"}},
		{"", []string{""}},
	} {
		if got := splitPattern(c.in); !slices.Equal(got, c.want) {
			t.Errorf("splitPattern(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
