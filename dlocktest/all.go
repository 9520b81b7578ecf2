package dlocktest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// testAllOrNone checks composite acquisition: a set whose one name is held
// elsewhere is not taken, nothing of it stays held, the error names the
// held lock; once free, the whole set is taken whatever the order given,
// duplicates included, and Release frees all of it.
func (s *suite[L]) testAllOrNone(t *testing.T, k kind[L]) {
	a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
	base := s.run + ":" + k.child + ":all" // short: errors cut names at 64 bytes
	names := []string{base + "/c", base + "/a", base + "/b", base + "/a"}
	blocker := tryAcquire(t, a, base+"/b")
	_, err := b.TryAcquireAll(context.Background(), names)
	if !errors.Is(err, dlock.ErrNotAcquired) || !strings.Contains(err.Error(), "/b") {
		t.Fatalf("TryAcquireAll with one name held elsewhere: %v, want ErrNotAcquired naming %s/b", err, trunc(base))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = b.AcquireAll(ctx, names)
	cancel()
	notAcquired(t, err, context.DeadlineExceeded)
	for _, n := range []string{base + "/a", base + "/c"} {
		release(t, tryAcquire(t, c, n)) // the failed attempts hold nothing
	}
	release(t, blocker)
	set, err := b.AcquireAll(s.ctx(t), names)
	if err != nil {
		t.Fatalf("AcquireAll of a free set: %v", err)
	}
	if got := set.Names(); len(got) != 3 || got[0] != base+"/a" || got[2] != base+"/c" {
		t.Fatalf("Names() = %q, want the three names sorted", got)
	}
	for _, n := range set.Names() {
		held(t, c, n, set)
	}
	if err := set.Release(context.Background()); err != nil {
		t.Fatalf("Release of the set: %v", err)
	}
	if err := set.Err(); !errors.Is(err, dlock.ErrNotHeld) {
		t.Fatalf("Err after Release: %v, want ErrNotHeld", err)
	}
	ran := false
	if err := c.DoAll(s.ctx(t), names, func(context.Context) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("DoAll of the freed set: %v (ran %v)", err, ran)
	}
}

// atomicAll reports whether node offers kind k an atomic path for the set
// names (backend.MultiLocker and friends, not declining the set with
// errors.ErrUnsupported), by trying the set once; what the try took is
// released.
func atomicAll[L backend.Lease](t *testing.T, k kind[L], node any, names []string) bool {
	t.Helper()
	var tryAll func(context.Context, []string) ([]L, int, error)
	switch k.child {
	case "mutex":
		if m, ok := node.(backend.MultiLocker[L]); ok {
			tryAll = m.TryLockAll
		}
	case "write":
		if m, ok := node.(backend.MultiRWLocker[L]); ok {
			tryAll = m.TryWLockAll
		}
	case "semaphore":
		if m, ok := node.(backend.MultiSemaphore[L]); ok {
			tryAll = func(ctx context.Context, names []string) ([]L, int, error) {
				return m.TryAcquireAll(ctx, names, k.limit)
			}
		}
	}
	if tryAll == nil {
		return false
	}
	leases, busy, err := tryAll(context.Background(), names)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		return false
	case err != nil:
		t.Fatalf("the backend's atomic path over a free set: %v", err)
	case busy >= 0 || len(leases) != len(names):
		t.Fatalf("the backend's atomic path over a free set: busy %d, %d leases for %d names", busy, len(leases), len(names))
	}
	for _, l := range leases {
		if err := l.Release(context.Background()); err != nil {
			t.Fatalf("release of a lease of the atomic path: %v", err)
		}
	}
	return true
}

// testAllAtomic checks a backend's atomic path for several names: while
// one name of a set is held elsewhere, TryAcquireAll of the set fails
// again and again, and a third client trying the set's other names never
// finds one of them held — the failed attempts took none, not even for a
// moment. Skipped where the backend has no atomic path for the set (a
// cluster whose names fall in several slots, say).
func (s *suite[L]) testAllAtomic(t *testing.T, k kind[L]) {
	nb := s.node(t)
	base := s.run + ":" + k.child + ":atomic"
	names := []string{base + "/a", base + "/b", base + "/c"}
	if !atomicAll(t, k, nb, names) {
		t.Skip("the backend takes these names one after another (no atomic path for this kind, or not for this set)")
	}
	a, b, c := k.guard(s.node(t)), k.guard(nb), k.guard(s.node(t))
	blocker := tryAcquire(t, a, base+"/c")
	defer release(t, blocker)
	ctx := s.ctx(t)
	done := make(chan struct{})
	var failed sync.WaitGroup
	var tries, seen int
	failed.Go(func() {
		defer close(done)
		for range 200 {
			_, err := b.TryAcquireAll(ctx, names)
			if !errors.Is(err, dlock.ErrNotAcquired) {
				t.Errorf("TryAcquireAll with /c held elsewhere: %v, want ErrNotAcquired", err)
				return
			}
		}
	})
	for stop := false; !stop; {
		select {
		case <-done:
			stop = true
		default:
		}
		for _, n := range names[:2] {
			tries++
			lk, err := c.TryAcquire(ctx, n)
			switch {
			case errors.Is(err, dlock.ErrNotAcquired):
				seen++
			case err != nil:
				t.Fatalf("TryAcquire(%s): %v", trunc(n), err)
			default:
				release(t, lk)
			}
		}
	}
	failed.Wait()
	if seen > 0 {
		t.Fatalf("%d of %d tries found a name of the set held while TryAcquireAll of the set kept failing: its attempts are not atomic", seen, tries)
	}
	set, err := b.TryAcquireAll(ctx, []string{names[0], names[1]})
	if err != nil {
		t.Fatalf("TryAcquireAll of two free names: %v", err)
	}
	for _, n := range set.Names() {
		held(t, c, n, set)
	}
	if err := set.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// testAllNoDeadlock checks that clients taking overlapping sets in
// opposite orders never deadlock: they all finish within the ctx.
func (s *suite[L]) testAllNoDeadlock(t *testing.T, k kind[L]) {
	base := s.name(t)
	sets := [][]string{
		{base + "/x", base + "/y", base + "/z"},
		{base + "/z", base + "/y", base + "/x"},
		{base + "/y", base + "/z"},
	}
	ctx := s.ctx(t)
	var wg sync.WaitGroup
	var inside sync.Map
	errs := make(chan error, 6)
	for i := range 6 {
		g, names := k.guard(s.node(t)), sets[i%len(sets)]
		wg.Go(func() {
			for round := range 8 {
				err := g.DoAll(ctx, names, func(context.Context) error {
					for _, n := range names {
						if _, dup := inside.LoadOrStore(n, i); dup {
							return fmt.Errorf("%s held twice", n)
						}
					}
					time.Sleep(time.Millisecond)
					for _, n := range names {
						inside.Delete(n)
					}
					return nil
				})
				if err != nil {
					errs <- fmt.Errorf("client %d round %d: %w", i, round, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testAllLoss checks that the loss of one lock of a set is reported by the
// set (Lost, Err, Release) and cancels DoAll's ctx.
func (s *suite[L]) testAllLoss(t *testing.T, k kind[L]) {
	s.loses(t)
	a, b := k.guard(s.node(t)), k.guard(s.node(t))
	base := s.name(t)
	names := []string{base + "/1", base + "/2", base + "/3"}
	set, err := a.AcquireAll(s.ctx(t), names)
	if err != nil {
		t.Fatal(err)
	}
	s.h.Lose(t, set.Locks()[1].Lease())
	select {
	case <-set.Lost():
	case <-time.After(s.h.LossWithin):
		t.Fatalf("the set's Lost() not closed within %v of one lock's loss", s.h.LossWithin)
	}
	if err := set.Err(); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("set Err after a loss: %v, want ErrLockLost", err)
	}
	if err := set.Release(context.Background()); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release of a set with a lost lock: %v, want ErrLockLost", err)
	}
	for _, n := range names {
		free(t, b, n, s.h.LossWithin+10*time.Second)
	}

}

// testAllRelease checks a set's Release (one round trip where the backend
// implements backend.MultiReleaser): every name can be taken by another
// client the moment Release returns, a waiter on one of them is served,
// each lock's Err says how it ended, and when one lock of the set was lost,
// Release reports it and still frees the others at once.
func (s *suite[L]) testAllRelease(t *testing.T, k kind[L]) {
	a, b := k.guard(s.node(t)), k.guard(s.node(t))
	base := s.name(t)
	names := []string{base + "/1", base + "/2", base + "/3", base + "/4"}
	ctx := s.ctx(t)
	set, err := a.AcquireAll(ctx, names)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		got <- b.Do(ctx, names[1], func(context.Context) error { return nil })
	}()
	time.Sleep(50 * time.Millisecond)
	if err := set.Release(context.Background()); err != nil {
		t.Fatalf("Release of a held set: %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("a waiter on a name of the set, after its Release: %v", err)
	}
	for i, lk := range set.Locks() {
		if err := lk.Err(); !errors.Is(err, dlock.ErrNotHeld) || errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Err of lock %d after the set's Release: %v, want ErrNotHeld", i, err)
		}
	}
	takeAllNow(t, b, names, "after the set's Release")
	if err := set.Release(context.Background()); !errors.Is(err, dlock.ErrNotHeld) {
		t.Fatalf("second Release of a set: %v, want ErrNotHeld", err)
	}

	if s.h.Lose == nil {
		return
	}
	set, err = a.AcquireAll(ctx, names)
	if err != nil {
		t.Fatal(err)
	}
	lostLock := set.Locks()[2]
	s.h.Lose(t, lostLock.Lease())
	select {
	case <-lostLock.Lost():
	case <-time.After(s.h.LossWithin):
		t.Fatalf("Lost() not closed within %v of the loss", s.h.LossWithin)
	}
	err = set.Release(context.Background())
	if !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release of a set with %s lost: %v, want ErrLockLost", trunc(names[2]), err)
	}
	if err := lostLock.Err(); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Err of the lost lock after the set's Release: %v, want ErrLockLost", err)
	}
	takeAllNow(t, b, names, "after the Release of a set with one lock lost")
}

// takeAllNow asserts that every name can be taken on g at once (one try
// each), and leaves them free.
func takeAllNow[L backend.Lease](t *testing.T, g *dlock.Guard[L], names []string, when string) {
	t.Helper()
	for _, n := range names {
		lk, err := g.TryAcquire(context.Background(), n)
		if err != nil {
			t.Fatalf("%s is not free right %s: %v", trunc(n), when, err)
		}
		release(t, lk)
	}
}

// testAllLossInDo checks that the loss of one lock of DoAll's set cancels
// fn's ctx with cause ErrLockLost and makes DoAll return ErrLockLost.
func (s *suite[L]) testAllLossInDo(t *testing.T) {
	s.loses(t)
	n := s.node(t).(backend.Locker[L])
	spy := &spyLocker[L]{Locker: n, got: make(chan L, 3)}
	var g *dlock.Guard[L]
	if w, ok := n.(backend.LockWaiter[L]); ok {
		g = dlock.NewMutex[L](&spyWaiter[L]{spyLocker: spy, w: w})
	} else {
		g = dlock.NewMutex[L](spy)
	}
	base := s.name(t)
	err := g.DoAll(s.ctx(t), []string{base + "/1", base + "/2", base + "/3"}, func(ctx context.Context) error {
		<-spy.got
		s.h.Lose(t, <-spy.got)
		<-spy.got
		select {
		case <-ctx.Done():
		case <-time.After(s.h.LossWithin):
			return errors.New("fn's ctx not cancelled after the loss of one lock of the set")
		}
		if cause := context.Cause(ctx); !errors.Is(cause, dlock.ErrLockLost) {
			return fmt.Errorf("fn's ctx cause is %v, want dlock.ErrLockLost", cause)
		}
		return nil
	})
	if !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("DoAll with a lock lost while fn ran: %v, want dlock.ErrLockLost", err)
	}
}
