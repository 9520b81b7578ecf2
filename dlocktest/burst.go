package dlocktest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// burstN is how many goroutines of one backend instance take locks at once
// in testBurst: more than any sane connection pool has connections.
const burstN = 64

// burstBound bounds each call of testBurst. It is generous, so that a slow
// machine does not fail it: what it catches is a call that waits for its
// ctx (a try blocked behind the backend's own resources), which the ctx of
// burstCtx makes last much longer.
const (
	burstBound = 10 * time.Second
	burstCtx   = 20 * time.Second
)

// testBurst checks that a try never waits and a wait never waits for a
// resource the backend itself holds, also when many goroutines of ONE
// backend instance call at once and its pool or connections are busy:
// burstN goroutines try distinct free names at once and keep them; while
// they are held, burstN more wait for other free names, burstN try the held
// names on the same instance and burstN on another instance (all must fail
// at once); then everything is released.
func (s *suite[L]) testBurst(t *testing.T, k kind[L]) {
	g, other := k.guard(s.node(t)), k.guard(s.node(t))
	base := s.name(t)
	names := func(prefix string) []string {
		n := make([]string, burstN)
		for i := range n {
			n[i] = fmt.Sprintf("%s/%s%d", base, prefix, i)
		}
		return n
	}
	tried := burstCall(t, "TryAcquire of a free name", names("try"), func(ctx context.Context, name string) (*dlock.Lock[L], error) {
		return g.TryAcquire(ctx, name)
	})
	waited := burstCall(t, "Acquire of a free name", names("wait"), func(ctx context.Context, name string) (*dlock.Lock[L], error) {
		return g.Acquire(ctx, name)
	})
	for _, on := range []struct {
		who string
		g   *dlock.Guard[L]
	}{{"the same instance", g}, {"another instance", other}} {
		burstRefused(t, "TryAcquire of a held name on "+on.who, names("try"), func(ctx context.Context, name string) error {
			lk, err := on.g.TryAcquire(ctx, name)
			if err == nil {
				_ = lk.Release(context.Background())
			}
			return err
		})
	}
	for _, lk := range append(tried, waited...) {
		release(t, lk)
	}
	for _, name := range names("try")[:4] {
		free(t, other, name, 10*time.Second)
	}
}

// burstCall calls take for every name at once and returns the locks; each
// call must succeed within burstBound.
func burstCall[L backend.Lease](t *testing.T, what string, names []string, take func(context.Context, string) (*dlock.Lock[L], error)) []*dlock.Lock[L] {
	t.Helper()
	locks := make([]*dlock.Lock[L], len(names))
	errs := make([]error, len(names))
	took := make([]time.Duration, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), burstCtx)
			defer cancel()
			start := time.Now()
			locks[i], errs[i] = take(ctx, name)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	var got []*dlock.Lock[L]
	var failed error
	slowest := time.Duration(0)
	for i := range names {
		slowest = max(slowest, took[i])
		switch {
		case errs[i] != nil:
			failed = errors.Join(failed, fmt.Errorf("%s %d of %d concurrent: %w (after %v)", what, i, len(names), errs[i], took[i].Round(time.Millisecond)))
		case took[i] > burstBound:
			failed = errors.Join(failed, fmt.Errorf("%s %d of %d concurrent took %v", what, i, len(names), took[i].Round(time.Millisecond)))
		}
		if locks[i] != nil {
			got = append(got, locks[i])
		}
	}
	t.Logf("%d concurrent calls of %s: slowest %v", len(names), what, slowest.Round(time.Millisecond))
	if failed != nil {
		for _, lk := range got {
			_ = lk.Release(context.Background())
		}
		t.Fatal(failed)
	}
	return got
}

// burstRefused calls try for every (held) name at once: each must fail
// with ErrNotAcquired within burstBound.
func burstRefused(t *testing.T, what string, names []string, try func(context.Context, string) error) {
	t.Helper()
	errs := make([]error, len(names))
	took := make([]time.Duration, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), burstCtx)
			defer cancel()
			start := time.Now()
			errs[i] = try(ctx, name)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i := range names {
		switch {
		case !errors.Is(errs[i], dlock.ErrNotAcquired) || errors.Is(errs[i], context.DeadlineExceeded):
			t.Errorf("%s %d of %d concurrent: %v, want ErrNotAcquired at once", what, i, len(names), errs[i])
		case took[i] > burstBound:
			t.Errorf("%s %d of %d concurrent took %v: a try waited", what, i, len(names), took[i].Round(time.Millisecond))
		}
	}
}

// testReleaseAfterLoss checks that a loss is never hidden by a release:
// the harness revokes the lock and Release is called at once, before any
// monitor of the backend could notice; Release must say ErrLockLost, and
// Err must say so afterwards, so that a caller (dlock run) that learns of
// the loss only at release reports it.
func (s *suite[L]) testReleaseAfterLoss(t *testing.T, k kind[L]) {
	s.loses(t)
	a, b := k.guard(s.node(t)), k.guard(s.node(t))
	name := s.name(t)
	for i := range 3 {
		lk := tryAcquire(t, a, name)
		if err := lk.Err(); err != nil {
			t.Fatalf("Err of a held lock: %v", err)
		}
		s.h.Lose(t, lk.Lease())
		if err := lk.Release(context.Background()); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("round %d: Release right after the lock was revoked: %v, want an error matching dlock.ErrLockLost", i, err)
		}
		if err := lk.Err(); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("round %d: Err after a loss learned at release: %v, want dlock.ErrLockLost", i, err)
		}
		select {
		case <-lk.Lost():
		default:
			t.Fatalf("round %d: Lost() open after Release", i)
		}
		free(t, b, name, s.h.LossWithin+10*time.Second)
	}
}

// testLossUnderLoad checks that a loss costs nothing but what was lost
// when it comes while many goroutines of ONE instance take and release
// locks (a backend that shares connections or sends their statements
// together settles them one by one): lossN goroutines each take and
// release lossRounds names of their own, and now and then hand the lock
// they hold to the test, which revokes it (Harness.Lose) before they
// release it. Every try of a free name must succeed; the revoked lock's
// Release must report ErrLockLost; any other Release may report
// ErrLockLost only (a backend may lose several leases with one, as pg
// does with a session), never another error; and the names must all be
// free afterwards.
func (s *suite[L]) testLossUnderLoad(t *testing.T, k kind[L]) {
	s.loses(t)
	g, other := k.guard(s.node(t)), k.guard(s.node(t))
	base := s.name(t)
	const lossN, lossRounds = 16, 40
	type victim struct {
		lk   *dlock.Lock[L]
		lost chan struct{}
	}
	victims := make(chan victim)
	var (
		wg             sync.WaitGroup
		mu             sync.Mutex
		failed         error
		revoked, extra int
	)
	fail := func(err error) {
		mu.Lock()
		failed = errors.Join(failed, err)
		mu.Unlock()
	}
	for w := range lossN {
		wg.Go(func() {
			for i := range lossRounds {
				name := fmt.Sprintf("%s/%d-%d", base, w, i)
				ctx, cancel := context.WithTimeout(context.Background(), burstCtx)
				lk, err := g.TryAcquire(ctx, name)
				if err != nil {
					cancel()
					fail(fmt.Errorf("TryAcquire of the free name %s: %w", name, err))
					return
				}
				handed := false
				if i%8 == w%8 {
					v := victim{lk, make(chan struct{})}
					select {
					case victims <- v:
						<-v.lost
						handed = true
					default: // the test is revoking another one
					}
				}
				err = lk.Release(ctx)
				cancel()
				switch {
				case handed && !errors.Is(err, dlock.ErrLockLost):
					fail(fmt.Errorf("Release of %s, revoked: %v, want an error matching dlock.ErrLockLost", name, err))
				case handed:
					mu.Lock()
					revoked++
					mu.Unlock()
				case errors.Is(err, dlock.ErrLockLost):
					mu.Lock()
					extra++
					mu.Unlock()
				case err != nil:
					fail(fmt.Errorf("Release of %s: %w", name, err))
				}
			}
		})
	}
	stop := make(chan struct{})
	go func() { wg.Wait(); close(stop) }()
	for running := true; running; {
		select {
		case v := <-victims:
			s.h.Lose(t, v.lk.Lease())
			close(v.lost)
		case <-stop:
			running = false
		}
	}
	t.Logf("%d goroutines, %d locks each: %d revoked, %d more lost with them", lossN, lossRounds, revoked, extra)
	if failed != nil {
		t.Fatal(failed)
	}
	if revoked == 0 {
		t.Fatal("no lock was revoked")
	}
	for w := range lossN {
		free(t, other, fmt.Sprintf("%s/%d-%d", base, w, lossRounds-1), s.h.LossWithin+10*time.Second)
	}
}
