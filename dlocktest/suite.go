// Package dlocktest is the conformance suite that every dlock backend must
// pass, and an in-process backend (Memory) for tests of code that uses
// dlock.
//
// A backend's test plugs in with one call:
//
//	func TestConformance(t *testing.T) {
//		dlocktest.Run(t, dlocktest.Harness[*mybackend.Lease]{
//			New: func(t testing.TB, space string) any { return mybackend.New(...) },
//		})
//	}
//
// Run checks every guarantee the dlock package documents, in named
// subtests: mutual exclusion across goroutines, clients, guards and
// processes; independent names; tries that never wait and waits that honour
// their ctx; release, loss, panics; bad input; the reader-writer and
// semaphore rules; fencing tokens; and no leaked goroutines.
//
// Run re-executes the test binary as helper processes that take locks (to
// check exclusion across processes and that a killed holder's locks are
// freed). The helper runs the same test function with the environment
// variable DLOCKTEST_CHILD set, reaches Run, and there takes its lock
// instead of running the suite: so the test function must reach Run, with
// the same configuration, in the helper too.
package dlocktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// Run runs the conformance suite against the backend that h describes.
func Run[L backend.Lease](t *testing.T, h Harness[L]) {
	t.Helper()
	if raw := os.Getenv(childEnv); raw != "" {
		runChild(t, h, raw)
		return
	}
	if h.New == nil {
		t.Fatal("dlocktest: Harness.New is nil")
	}
	if h.LossWithin <= 0 {
		h.LossWithin = 5 * time.Second
	}
	root := t.TempDir()
	space := filepath.Join(root, "space")
	if err := os.Mkdir(space, 0o700); err != nil {
		t.Fatal(err)
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	s := &suite[L]{h: h, top: t.Name(), root: root, space: space, run: hex.EncodeToString(id[:])}

	probe := h.New(t, space)
	_, isLocker := probe.(backend.Locker[L])
	_, isRW := probe.(backend.RWLocker[L])
	_, isSem := probe.(backend.Semaphore[L])
	if !isLocker && !isRW && !isSem {
		t.Fatalf("dlocktest: Harness.New returned %T, which implements none of backend.Locker, RWLocker, Semaphore", probe)
	}
	if isLocker {
		t.Run("Mutex", func(t *testing.T) {
			k := kind[L]{child: "mutex", guard: func(n any) *dlock.Guard[L] { return dlock.NewMutex(n.(backend.Locker[L])) }}
			s.exclusive(t, k)
			s.lossInDo(t)
			s.test(t, "AllLossInDo", s.testAllLossInDo)
		})
	}
	if isRW {
		t.Run("RWMutex", func(t *testing.T) {
			t.Run("Write", func(t *testing.T) {
				s.exclusive(t, kind[L]{child: "write", guard: func(n any) *dlock.Guard[L] { return dlock.NewRWMutex(n.(backend.RWLocker[L])).Write() }})
			})
			s.rw(t)
			if offersUpgradeable[L](s.node(t)) {
				t.Run("Upgradeable", func(t *testing.T) {
					s.exclusive(t, kind[L]{child: "upgradeable", shared: true, guard: func(n any) *dlock.Guard[L] {
						return dlock.NewRWMutex(n.(backend.RWLocker[L])).Upgradeable()
					}})
					s.upgrade(t)
				})
			}
		})
	}
	if isSem {
		t.Run("Semaphore", func(t *testing.T) {
			t.Run("LimitOne", func(t *testing.T) {
				s.exclusive(t, kind[L]{child: "semaphore", limit: 1, guard: func(n any) *dlock.Guard[L] { return dlock.NewSemaphore(n.(backend.Semaphore[L]), 1) }})
			})
			s.semaphore(t)
		})
	}
}

type suite[L backend.Lease] struct {
	h     Harness[L]
	top   string // the test that called Run, for helper processes
	root  string // holds space and nothing else
	space string
	run   string // random, so that names of two runs never meet
}

// kind is a primitive under test whose holders exclude each other.
type kind[L backend.Lease] struct {
	child  string // the helper process's name for it
	limit  int
	shared bool // its holders are readers (an upgradeable reader)
	guard  func(node any) *dlock.Guard[L]
}

// test runs f as a subtest that must leak no goroutine.
func (s *suite[L]) test(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		opt := goleak.IgnoreCurrent()
		t.Cleanup(func() { goleak.VerifyNone(t, opt) })
		f(t)
	})
}

func (s *suite[L]) node(t *testing.T) any { return s.h.New(t, s.space) }

// name returns a lock name unique to this run and subtest.
func (s *suite[L]) name(t *testing.T) string { return s.run + ":" + t.Name() }

func (s *suite[L]) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite[L]) processes(t *testing.T) {
	t.Helper()
	if s.h.InProcess {
		t.Skip("the backend lives in one process")
	}
}

func (s *suite[L]) loses(t *testing.T) {
	t.Helper()
	if s.h.Lose == nil {
		t.Skip("Harness.Lose is not set")
	}
}

func acquire[L backend.Lease](t *testing.T, g *dlock.Guard[L], name string) *dlock.Lock[L] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lk, err := g.Acquire(ctx, name)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return lk
}

func tryAcquire[L backend.Lease](t *testing.T, g *dlock.Guard[L], name string) *dlock.Lock[L] {
	t.Helper()
	lk, err := g.TryAcquire(context.Background(), name)
	if err != nil {
		t.Fatalf("TryAcquire: %v", err)
	}
	return lk
}

func release[L backend.Lease](t *testing.T, lk *dlock.Lock[L]) {
	t.Helper()
	if err := lk.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// held asserts that name cannot be taken on g: it is held elsewhere, by
// holders where the test has them.
//
// When g takes it anyway and one of holders says it lost its lock, the
// holder's lease lapsed before the check (the machine stalled longer than
// the lease: it was told, guarantee 5, so nobody held twice), and what the
// test set out to check cannot be checked: the test is skipped, saying so.
// A holder that still says it holds is a double hold.
func held[L backend.Lease](t *testing.T, g *dlock.Guard[L], name string, holders ...interface{ Err() error }) {
	t.Helper()
	lk, err := g.TryAcquire(context.Background(), name)
	if err == nil {
		_ = lk.Release(context.Background())
		for _, h := range holders {
			if herr := h.Err(); errors.Is(herr, dlock.ErrLockLost) {
				t.Skipf("TryAcquire took a lock whose holder's lease had lapsed (%v): the machine stalled longer than the lease; nothing left to check", herr)
			}
		}
		if len(holders) > 0 {
			t.Fatalf("TryAcquire took a lock that should be held elsewhere, by a holder that still says it holds it: a double hold")
		}
		t.Fatalf("TryAcquire took a lock that should be held elsewhere")
	}
	if !errors.Is(err, dlock.ErrNotAcquired) {
		t.Fatalf("TryAcquire of a held lock: %v, want an error matching dlock.ErrNotAcquired", err)
	}
}

// free asserts that name can be taken on g (waiting up to a while for a
// release in flight) and leaves it free.
func free[L backend.Lease](t *testing.T, g *dlock.Guard[L], name string, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	lk, err := g.Acquire(ctx, name)
	if err != nil {
		t.Fatalf("lock is not free (within %v): %v", within, err)
	}
	release(t, lk)
}

// notAcquired asserts that err reports a wait ended by ctx.
func notAcquired(t *testing.T, err, ctxErr error) {
	t.Helper()
	if err == nil {
		t.Fatal("acquired, want an error")
	}
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, ctxErr) {
		t.Fatalf("error %q should match dlock.ErrNotAcquired and %v", err, ctxErr)
	}
}

// stress has workers goroutines, spread over the guards, each take name
// rounds times and do a slow read-modify-write of a counter: two holders at
// once would lose an update or be seen inside together.
func (s *suite[L]) stress(t *testing.T, guards []*dlock.Guard[L], name string, workers, rounds int) {
	t.Helper()
	var inside, counter atomic.Int64
	var overlap atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	ctx := s.ctx(t)
	for i := range workers {
		g := guards[i%len(guards)]
		wg.Go(func() {
			for range rounds {
				err := g.Do(ctx, name, func(context.Context) error {
					if inside.Add(1) != 1 {
						overlap.Store(true)
					}
					v := counter.Load()
					runtime.Gosched()
					counter.Store(v + 1)
					inside.Add(-1)
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Do: %v", err)
	}
	if overlap.Load() {
		t.Fatal("two holders were inside at once")
	}
	if got, want := counter.Load(), int64(workers*rounds); got != want {
		t.Fatalf("counter = %d after %d critical sections: updates were lost", got, want)
	}
}

// lossInDo checks that a lost mutex cancels Do's ctx with ErrLockLost.
func (s *suite[L]) lossInDo(t *testing.T) {
	s.test(t, "LossInDo", func(t *testing.T) {
		s.loses(t)
		n := s.node(t).(backend.Locker[L])
		spy := &spyLocker[L]{Locker: n, got: make(chan L, 1)}
		var g *dlock.Guard[L]
		if w, ok := n.(backend.LockWaiter[L]); ok {
			g = dlock.NewMutex[L](&spyWaiter[L]{spyLocker: spy, w: w})
		} else {
			g = dlock.NewMutex[L](spy)
		}
		for _, returns := range []string{"ctx.Err()", "nil"} {
			err := g.Do(s.ctx(t), s.name(t)+returns, func(ctx context.Context) error {
				s.h.Lose(t, <-spy.got)
				select {
				case <-ctx.Done():
				case <-time.After(s.h.LossWithin):
					return errors.New("fn's ctx not cancelled after the loss")
				}
				if cause := context.Cause(ctx); !errors.Is(cause, dlock.ErrLockLost) {
					return fmt.Errorf("fn's ctx cause is %v, want dlock.ErrLockLost", cause)
				}
				if returns == "nil" {
					return nil
				}
				return ctx.Err()
			})
			if !errors.Is(err, dlock.ErrLockLost) {
				t.Fatalf("Do with fn returning %s: %v, want dlock.ErrLockLost", returns, err)
			}
		}
	})
}

// spyLocker passes each lease it hands out to got.
type spyLocker[L backend.Lease] struct {
	backend.Locker[L]
	got chan L
}

func (s *spyLocker[L]) TryLock(ctx context.Context, name string) (L, bool, error) {
	l, ok, err := s.Locker.TryLock(ctx, name)
	if ok && err == nil {
		s.got <- l
	}
	return l, ok, err
}

type spyWaiter[L backend.Lease] struct {
	*spyLocker[L]
	w backend.LockWaiter[L]
}

func (s *spyWaiter[L]) Lock(ctx context.Context, name string) (L, error) {
	l, err := s.w.Lock(ctx, name)
	if err == nil {
		s.got <- l
	}
	return l, err
}

// testFencing checks tokens: when the backend offers them, they strictly
// increase across acquisitions by clients and processes.
func (s *suite[L]) testFencing(t *testing.T, k kind[L]) {
	a, b := k.guard(s.node(t)), k.guard(s.node(t))
	name := s.name(t)
	var last uint64
	next := func(token uint64, ok bool, who string) {
		t.Helper()
		if !ok {
			if s.h.Fencing {
				t.Fatalf("%s: lease has no fencing token, but Harness.Fencing is set", who)
			}
			t.Skip("the backend offers no fencing token")
		}
		if token <= last {
			t.Fatalf("%s: token %d after %d: tokens must strictly increase", who, token, last)
		}
		last = token
	}
	for i := range 6 {
		g := a
		if i%2 == 1 {
			g = b
		}
		lk := acquire(t, g, name)
		tok, ok := lk.Token()
		release(t, lk)
		next(tok, ok, fmt.Sprintf("acquisition %d", i))
		if i == 3 && !s.h.InProcess {
			c, tok := startChild(t, s.top, s.space, k.child, name, k.limit)
			c.release(t)
			next(tok, tok != 0, "helper process")
		}
	}
}

// trunc shortens a name for a message.
func trunc(name string) string {
	if len(name) > 48 {
		return fmt.Sprintf("%q…(%d bytes)", name[:48], len(name))
	}
	return fmt.Sprintf("%q", name)
}
