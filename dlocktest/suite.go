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
	"strings"
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
		})
	}
	if isRW {
		t.Run("RWMutex", func(t *testing.T) {
			t.Run("Write", func(t *testing.T) {
				s.exclusive(t, kind[L]{child: "write", guard: func(n any) *dlock.Guard[L] { return dlock.NewRWMutex(n.(backend.RWLocker[L])).Write() }})
			})
			s.rw(t)
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
	child string // the helper process's name for it
	limit int
	guard func(node any) *dlock.Guard[L]
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

// held asserts that name is held, by trying it once on g.
func held[L backend.Lease](t *testing.T, g *dlock.Guard[L], name string) {
	t.Helper()
	lk, err := g.TryAcquire(context.Background(), name)
	if err == nil {
		_ = lk.Release(context.Background())
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

// exclusive checks a primitive whose holders exclude each other.
func (s *suite[L]) exclusive(t *testing.T, k kind[L]) {
	s.test(t, "Goroutines", func(t *testing.T) {
		g := k.guard(s.node(t))
		s.stress(t, []*dlock.Guard[L]{g}, s.name(t), 100, 2)
	})
	s.test(t, "Clients", func(t *testing.T) {
		a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		held(t, b, name)
		held(t, c, name)
		release(t, lk)
		s.stress(t, []*dlock.Guard[L]{a, b, c}, name, 30, 3)
	})
	s.test(t, "Guards", func(t *testing.T) {
		n := s.node(t)
		g1, g2 := k.guard(n), k.guard(n)
		name := s.name(t)
		lk := tryAcquire(t, g1, name)
		held(t, g2, name)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := g2.Acquire(ctx, name)
		notAcquired(t, err, context.DeadlineExceeded)
		release(t, lk)
		release(t, tryAcquire(t, g2, name))
	})
	s.test(t, "NotReentrant", func(t *testing.T) {
		g := k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, g, name)
		held(t, g, name)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := g.Acquire(ctx, name)
		notAcquired(t, err, context.DeadlineExceeded)
		release(t, lk)
		free(t, g, name, 10*time.Second)
	})
	s.test(t, "Processes", func(t *testing.T) {
		s.processes(t)
		g := k.guard(s.node(t))
		name := s.name(t)
		c, _ := startChild(t, s.top, s.space, k.child, name, k.limit)
		held(t, g, name)
		c.release(t)
		free(t, g, name, 10*time.Second)
		lk := tryAcquire(t, g, name)
		release(t, lk)
	})
	s.test(t, "DeadHolder", func(t *testing.T) {
		s.processes(t)
		g := k.guard(s.node(t))
		name := s.name(t)
		c, _ := startChild(t, s.top, s.space, k.child, name, k.limit)
		held(t, g, name)
		c.kill()
		free(t, g, name, s.h.FreedWithin+5*time.Second)
	})
	s.test(t, "Names", func(t *testing.T) {
		a, b := k.guard(s.node(t)), k.guard(s.node(t))
		base := s.name(t) + "-name"
		long := base + strings.Repeat("x", 10_000) + "-tail"
		flip := func(s string, i int, c byte) string { b := []byte(s); b[i] = c; return string(b) }
		pairs := [][2]string{
			{"a" + base, "b" + base},
			{base + "a", base + "b"},
			{long, flip(long, 10_000, 'y')},
			{base + "-case", base + "-CASE"},
			{base + "x", base + "x\x00"},
			{base, base + "/"},
		}
		for _, p := range pairs {
			l0 := tryAcquire(t, a, p[0])
			l1, err := a.TryAcquire(context.Background(), p[1])
			if err != nil {
				t.Fatalf("names %s and %s share a lock: %v", trunc(p[0]), trunc(p[1]), err)
			}
			held(t, b, p[0])
			held(t, b, p[1])
			release(t, l0)
			held(t, b, p[1])
			release(t, l1)
		}
	})
	s.test(t, "OddNames", func(t *testing.T) {
		a, b := k.guard(s.node(t)), k.guard(s.node(t))
		base := s.name(t)
		odd := []string{
			"../escape", "..", ".", "/", "/etc/passwd", "a/b/../../c", "nul\x00byte", "new\nline",
			"\xff\xfe invalid utf-8", "{tag}", "{", "}", "}{", "x:y", "%2F", "*", "?", " ", "\t",
			strings.Repeat("\xff", 300), strings.Repeat("/", 300), strings.Repeat("é", 200),
		}
		n := len(odd)
		for _, o := range odd[:n] {
			odd = append(odd, base+o, o+base)
		}
		odd = append(odd, base+strings.Repeat("m", 1<<20))
		for _, name := range odd {
			lk, err := a.TryAcquire(context.Background(), name)
			if err != nil {
				if errors.Is(err, dlock.ErrInvalidName) {
					continue // a clear refusal is allowed
				}
				t.Fatalf("name %s: %v (want success, or an error matching dlock.ErrInvalidName)", trunc(name), err)
			}
			held(t, b, name)
			release(t, lk)
		}
		entries, err := os.ReadDir(s.root)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "space" {
				t.Errorf("a lock name escaped its directory: %s appeared beside it", e.Name())
			}
		}
	})
	s.test(t, "BadInput", func(t *testing.T) {
		g := k.guard(s.node(t))
		ctx := context.Background()
		if _, err := g.TryAcquire(ctx, ""); !errors.Is(err, dlock.ErrInvalidName) {
			t.Errorf("TryAcquire(\"\"): %v, want dlock.ErrInvalidName", err)
		}
		if _, err := g.Acquire(ctx, ""); !errors.Is(err, dlock.ErrInvalidName) {
			t.Errorf("Acquire(\"\"): %v, want dlock.ErrInvalidName", err)
		}
		if err := g.Do(ctx, "", func(context.Context) error { return nil }); !errors.Is(err, dlock.ErrInvalidName) {
			t.Errorf("Do(\"\"): %v, want dlock.ErrInvalidName", err)
		}
		if err := g.Do(ctx, s.name(t), nil); !errors.Is(err, dlock.ErrNilFunc) {
			t.Errorf("Do(nil fn): %v, want dlock.ErrNilFunc", err)
		}
		if err := g.TryDo(ctx, s.name(t), nil); !errors.Is(err, dlock.ErrNilFunc) {
			t.Errorf("TryDo(nil fn): %v, want dlock.ErrNilFunc", err)
		}
		free(t, g, s.name(t), 10*time.Second)
	})
	s.test(t, "TryNeverWaits", func(t *testing.T) {
		a, b := k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		done := make(chan error, 2)
		go func() {
			_, err := b.TryAcquire(context.Background(), name)
			done <- err
			done <- b.TryDo(context.Background(), name, func(context.Context) error {
				return errors.New("TryDo ran fn while the lock was held elsewhere")
			})
		}()
		for range 2 {
			select {
			case err := <-done:
				if !errors.Is(err, dlock.ErrNotAcquired) {
					t.Fatalf("try of a held lock: %v, want dlock.ErrNotAcquired", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("a try waited for the holder")
			}
		}
		release(t, lk)
	})
	s.test(t, "WaitDeadline", func(t *testing.T) {
		a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := b.Acquire(ctx, name)
		notAcquired(t, err, context.DeadlineExceeded)
		err = b.Do(ctx, name, func(context.Context) error { return errors.New("fn ran after its ctx ended") })
		notAcquired(t, err, context.DeadlineExceeded)
		release(t, lk)
		free(t, c, name, 10*time.Second) // the failed waiter holds nothing
	})
	s.test(t, "WaitCancel", func(t *testing.T) {
		a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err := b.Acquire(ctx, name)
		notAcquired(t, err, context.Canceled)
		release(t, lk)
		free(t, c, name, 10*time.Second)
	})
	s.test(t, "CancelledContext", func(t *testing.T) {
		a, b := k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := a.Acquire(ctx, name)
		notAcquired(t, err, context.Canceled)
		_, err = a.TryAcquire(ctx, name)
		notAcquired(t, err, context.Canceled)
		err = a.Do(ctx, name, func(context.Context) error { return errors.New("fn ran with a cancelled ctx") })
		notAcquired(t, err, context.Canceled)
		release(t, tryAcquire(t, b, name))
	})
	s.test(t, "CancelRace", func(t *testing.T) {
		// The holder releases just as the waiter's deadline passes: whatever
		// the waiter reports must be true, and nothing may stay held.
		a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		for i := range 12 {
			lk := acquire(t, a, name)
			d := 30*time.Millisecond + time.Duration(i)*2*time.Millisecond
			time.AfterFunc(d, func() { _ = lk.Release(context.Background()) })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond+time.Duration(11-i)*2*time.Millisecond)
			got, err := b.Acquire(ctx, name)
			cancel()
			if err == nil {
				held(t, c, name)
				release(t, got)
			} else if !errors.Is(err, dlock.ErrNotAcquired) {
				t.Fatalf("Acquire: %v", err)
			}
			free(t, c, name, 10*time.Second)
		}
	})
	s.test(t, "ReleaseWakesWaiter", func(t *testing.T) {
		a, b := k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		got := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			got <- b.Do(ctx, name, func(context.Context) error { return nil })
		}()
		time.Sleep(50 * time.Millisecond)
		select {
		case err := <-got:
			t.Fatalf("the waiter got the lock while it was held: %v", err)
		default:
		}
		release(t, lk)
		if err := <-got; err != nil {
			t.Fatalf("waiter: %v", err)
		}
	})
	s.test(t, "DoubleRelease", func(t *testing.T) {
		a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		release(t, lk)
		lk2 := tryAcquire(t, b, name)
		if err := lk.Release(context.Background()); !errors.Is(err, dlock.ErrNotHeld) {
			t.Fatalf("second Release: %v, want dlock.ErrNotHeld", err)
		}
		if err := lk.Err(); !errors.Is(err, dlock.ErrNotHeld) || errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Err after a clean release: %v, want dlock.ErrNotHeld", err)
		}
		held(t, c, name) // the new holder is undisturbed
		release(t, lk2)
	})
	s.test(t, "Loss", func(t *testing.T) {
		s.loses(t)
		a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		lk := tryAcquire(t, a, name)
		s.h.Lose(t, lk.Lease())
		select {
		case <-lk.Lost():
		case <-time.After(s.h.LossWithin):
			t.Fatalf("Lost() not closed within %v of the loss", s.h.LossWithin)
		}
		if err := lk.Err(); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Err after Lost() closed on a loss: %v, want dlock.ErrLockLost", err)
		}
		lk2 := acquire(t, b, name)
		if err := lk.Release(context.Background()); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Release of a lost lock: %v, want dlock.ErrLockLost", err)
		}
		held(t, c, name) // the new holder is undisturbed
		if err := lk.Err(); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Err after the release of a lost lock: %v, want dlock.ErrLockLost", err)
		}
		if err := lk.Release(context.Background()); !errors.Is(err, dlock.ErrNotHeld) {
			t.Fatalf("second Release of a lost lock: %v, want dlock.ErrNotHeld", err)
		}
		held(t, c, name)
		release(t, lk2)
	})
	s.test(t, "Panic", func(t *testing.T) {
		a, b := k.guard(s.node(t)), k.guard(s.node(t))
		name := s.name(t)
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Fatalf("recovered %v, want the panic of fn", r)
				}
			}()
			_ = a.Do(context.Background(), name, func(context.Context) error { panic("boom") })
		}()
		release(t, tryAcquire(t, b, name))
	})
	s.test(t, "DoReturns", func(t *testing.T) {
		g := k.guard(s.node(t))
		name := s.name(t)
		errFn := errors.New("fn failed")
		if err := g.Do(context.Background(), name, func(context.Context) error { return errFn }); !errors.Is(err, errFn) {
			t.Fatalf("Do: %v, want fn's error", err)
		}
		ran := false
		if err := g.Do(context.Background(), name, func(ctx context.Context) error { ran = true; return ctx.Err() }); err != nil || !ran {
			t.Fatalf("Do: %v, ran %v", err, ran)
		}
	})
	s.fencing(t, k)
	s.testBurst(t, k)
	s.testReleaseAfterLoss(t, k)
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

// fencing checks tokens: when the backend offers them, they strictly
// increase across acquisitions by clients and processes.
func (s *suite[L]) fencing(t *testing.T, k kind[L]) {
	s.test(t, "Fencing", func(t *testing.T) {
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
	})
}

// rw checks the reader-writer rules.
func (s *suite[L]) rw(t *testing.T) {
	rwOf := func(t *testing.T) *dlock.RWMutex[L] { return dlock.NewRWMutex(s.node(t).(backend.RWLocker[L])) }
	s.test(t, "ReadersShare", func(t *testing.T) {
		a, b, c := rwOf(t), rwOf(t), rwOf(t)
		name := s.name(t)
		r1 := tryAcquire(t, a.Read(), name)
		r2 := tryAcquire(t, b.Read(), name)
		r3 := tryAcquire(t, b.Read(), name) // two readers on one client too
		held(t, c.Write(), name)
		release(t, r1)
		release(t, r2)
		held(t, c.Write(), name)
		release(t, r3)
		w := tryAcquire(t, c.Write(), name)
		held(t, a.Read(), name)
		held(t, a.Write(), name)
		release(t, w)
		release(t, tryAcquire(t, a.Read(), name))
	})
	s.test(t, "WriterPreference", func(t *testing.T) {
		a, b, c := rwOf(t), rwOf(t), rwOf(t)
		name := s.name(t)
		r := tryAcquire(t, a.Read(), name)
		ctx := s.ctx(t)
		wrote := make(chan *dlock.Lock[L], 1)
		go func() {
			w, err := b.Write().Acquire(ctx, name)
			if err != nil {
				t.Errorf("writer: %v", err)
			}
			wrote <- w
		}()
		// Once the writer is seen waiting, new readers must stay out.
		deadline := time.Now().Add(20 * time.Second)
		for {
			lk, err := c.Read().TryAcquire(ctx, name)
			if err != nil {
				if !errors.Is(err, dlock.ErrNotAcquired) {
					t.Fatalf("reader: %v", err)
				}
				break
			}
			release(t, lk)
			if time.Now().After(deadline) {
				t.Fatal("new readers still got in 20s after a writer began to wait")
			}
			time.Sleep(5 * time.Millisecond)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := c.Read().Acquire(waitCtx, name)
		cancel()
		notAcquired(t, err, context.DeadlineExceeded)
		release(t, r)
		w := <-wrote
		if w == nil {
			t.FailNow()
		}
		held(t, c.Read(), name)
		release(t, w)
		release(t, acquire(t, c.Read(), name))
	})
	s.test(t, "Stress", func(t *testing.T) {
		nodes := []*dlock.RWMutex[L]{rwOf(t), rwOf(t)}
		name := s.name(t)
		ctx := s.ctx(t)
		var readers, writers, counter atomic.Int64
		var bad atomic.Value
		var wg sync.WaitGroup
		const writersN, readersN, rounds = 4, 12, 3
		for i := range writersN + readersN {
			rw := nodes[i%len(nodes)]
			writer := i < writersN
			wg.Go(func() {
				for range rounds {
					var err error
					if writer {
						err = rw.Write().Do(ctx, name, func(context.Context) error {
							if writers.Add(1) != 1 || readers.Load() != 0 {
								bad.Store("a writer was not alone")
							}
							v := counter.Load()
							runtime.Gosched()
							counter.Store(v + 1)
							writers.Add(-1)
							return nil
						})
					} else {
						err = rw.Read().Do(ctx, name, func(context.Context) error {
							readers.Add(1)
							if writers.Load() != 0 {
								bad.Store("a reader was inside with a writer")
							}
							runtime.Gosched()
							readers.Add(-1)
							return nil
						})
					}
					if err != nil {
						t.Errorf("Do: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		if v := bad.Load(); v != nil {
			t.Fatal(v)
		}
		if got := counter.Load(); got != writersN*rounds {
			t.Fatalf("counter = %d, want %d: writers' updates were lost", got, writersN*rounds)
		}
	})
	s.test(t, "ReaderProcesses", func(t *testing.T) {
		s.processes(t)
		a := rwOf(t)
		name := s.name(t)
		c, _ := startChild(t, s.top, s.space, "read", name, 0)
		release(t, tryAcquire(t, a.Read(), name))
		held(t, a.Write(), name)
		c.kill()
		free(t, a.Write(), name, s.h.FreedWithin+5*time.Second)
	})
	s.test(t, "ReadLoss", func(t *testing.T) {
		s.loses(t)
		a, b := rwOf(t), rwOf(t)
		name := s.name(t)
		r1 := tryAcquire(t, a.Read(), name)
		r2 := tryAcquire(t, b.Read(), name)
		s.h.Lose(t, r1.Lease())
		select {
		case <-r1.Lost():
		case <-time.After(s.h.LossWithin):
			t.Fatalf("Lost() not closed within %v of the loss", s.h.LossWithin)
		}
		if err := r1.Release(context.Background()); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Release of a lost read lock: %v, want dlock.ErrLockLost", err)
		}
		// A backend whose readers share one lock object (a file) may lose
		// the other reader too — then a writer may get in, and that reader
		// must be told; if it did not lose it, the writer stays out.
		w, err := a.Write().TryAcquire(context.Background(), name)
		switch {
		case err == nil:
			select {
			case <-r2.Lost():
			case <-time.After(s.h.LossWithin):
				t.Fatalf("a writer got in beside a reader that was not told within %v that it lost its lock", s.h.LossWithin)
			}
			release(t, w)
			if err := r2.Release(context.Background()); !errors.Is(err, dlock.ErrLockLost) {
				t.Fatalf("Release of a read lock reported lost: %v, want dlock.ErrLockLost", err)
			}
		case errors.Is(err, dlock.ErrNotAcquired):
			// The other reader still holds (or learns of a loss only now).
			if err := r2.Release(context.Background()); err != nil && !errors.Is(err, dlock.ErrLockLost) {
				t.Fatalf("Release of the other reader: %v", err)
			}
		default:
			t.Fatalf("TryAcquire of the write side: %v", err)
		}
		free(t, a.Write(), name, s.h.FreedWithin+5*time.Second)
	})
	s.fencing(t, kind[L]{child: "read", guard: func(n any) *dlock.Guard[L] { return dlock.NewRWMutex(n.(backend.RWLocker[L])).Read() }})
}

// semaphore checks the counting rules.
func (s *suite[L]) semaphore(t *testing.T) {
	semOf := func(t *testing.T, limit int) *dlock.Guard[L] {
		return dlock.NewSemaphore(s.node(t).(backend.Semaphore[L]), limit)
	}
	s.test(t, "Limit", func(t *testing.T) {
		name := s.name(t)
		gs := []*dlock.Guard[L]{semOf(t, 3), semOf(t, 3), semOf(t, 3)}
		var lks []*dlock.Lock[L]
		for _, g := range gs {
			lks = append(lks, tryAcquire(t, g, name))
		}
		held(t, gs[0], name)
		held(t, semOf(t, 3), name)
		for _, lk := range lks {
			release(t, lk)
		}
		// Many contenders: never more than the limit inside.
		var inside, most atomic.Int64
		var wg sync.WaitGroup
		ctx := s.ctx(t)
		for i := range 12 {
			g := gs[i%len(gs)]
			wg.Go(func() {
				for range 3 {
					err := g.Do(ctx, name, func(context.Context) error {
						n := inside.Add(1)
						for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
						}
						time.Sleep(2 * time.Millisecond)
						inside.Add(-1)
						return nil
					})
					if err != nil {
						t.Errorf("Do: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		if m := most.Load(); m > 3 {
			t.Fatalf("%d holders at once, limit 3", m)
		}
	})
	s.test(t, "OneWaiterPerRelease", func(t *testing.T) {
		name := s.name(t)
		a := semOf(t, 2)
		l1, l2 := tryAcquire(t, a, name), tryAcquire(t, a, name)
		ctx, cancel := context.WithCancel(s.ctx(t))
		got := make(chan *dlock.Lock[L], 3)
		var wg sync.WaitGroup
		for range 3 {
			g := semOf(t, 2)
			wg.Go(func() {
				lk, err := g.Acquire(ctx, name)
				if err == nil {
					got <- lk
				}
			})
		}
		time.Sleep(50 * time.Millisecond)
		release(t, l1)
		first := <-got
		time.Sleep(300 * time.Millisecond)
		select {
		case lk := <-got:
			release(t, lk)
			t.Fatal("one release let two waiters in")
		default:
		}
		cancel()
		wg.Wait()
		close(got)
		for lk := range got {
			release(t, lk)
		}
		release(t, first)
		release(t, l2)
		free(t, a, name, 10*time.Second)
	})
	s.test(t, "BadLimit", func(t *testing.T) {
		for _, limit := range []int{0, -1} {
			g := semOf(t, limit)
			if err := g.Do(context.Background(), s.name(t), func(context.Context) error { return nil }); !errors.Is(err, dlock.ErrInvalidLimit) {
				t.Errorf("limit %d: Do: %v, want dlock.ErrInvalidLimit", limit, err)
			}
			if _, err := g.TryAcquire(context.Background(), s.name(t)); !errors.Is(err, dlock.ErrInvalidLimit) {
				t.Errorf("limit %d: TryAcquire: %v, want dlock.ErrInvalidLimit", limit, err)
			}
		}
	})
	s.test(t, "DeadHolderTicket", func(t *testing.T) {
		s.processes(t)
		name := s.name(t)
		g := semOf(t, 2)
		c, _ := startChild(t, s.top, s.space, "semaphore", name, 2)
		lk := tryAcquire(t, g, name)
		held(t, g, name)
		c.kill()
		free(t, g, name, s.h.FreedWithin+5*time.Second)
		release(t, lk)
	})
	s.fencing(t, kind[L]{child: "semaphore", limit: 3, guard: func(n any) *dlock.Guard[L] { return dlock.NewSemaphore(n.(backend.Semaphore[L]), 3) }})
}

// trunc shortens a name for a message.
func trunc(name string) string {
	if len(name) > 48 {
		return fmt.Sprintf("%q…(%d bytes)", name[:48], len(name))
	}
	return fmt.Sprintf("%q", name)
}
