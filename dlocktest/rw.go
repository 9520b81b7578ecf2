package dlocktest

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// rw runs the reader-writer subtests.
func (s *suite[L]) rw(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"ReadersShare", s.testReadersShare},
		{"WriterPreference", s.testWriterPreference},
		{"Stress", s.testRWStress},
		{"ReaderProcesses", s.testReaderProcesses},
		{"ReadLoss", s.testReadLoss},
		{"Holders", s.testReadersHolders},
	} {
		s.test(t, c.name, c.f)
	}
	s.test(t, "Fencing", func(t *testing.T) { s.testFencing(t, readKind[L]()) })
	s.test(t, "Order", s.testRWOrder)
}

// testRWOrder checks the order in which an RW lock serves its waiters
// (guarantee 12 and writer preference): while a writer holds, a reader, a
// writer and a reader queue in that order; the first reader goes in alone
// (the second reader came after a waiting writer), then the writer, then
// the second reader.
func (s *suite[L]) testRWOrder(t *testing.T) {
	if s.h.Unordered {
		t.Skip("Harness.Unordered: the backend does not promise arrival order")
	}
	a, b, c := s.rwOf(t), s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	holder := tryAcquire(t, a.Write(), name)
	acquired := make(chan int, 4)
	var wg sync.WaitGroup
	var waiters []orderedWaiter
	for i, g := range []*dlock.Guard[L]{b.Read(), c.Write(), b.Read()} {
		waiters = append(waiters, waitInOrder(t, &wg, g, name, i, acquired))
		time.Sleep(arrivalGap)
	}
	expectOrder(t, holder, waiters, acquired, &wg)
}

func (s *suite[L]) rwOf(t *testing.T) *dlock.RWMutex[L] {
	return dlock.NewRWMutex(s.node(t).(backend.RWLocker[L]))
}

func readKind[L backend.Lease]() kind[L] {
	return kind[L]{child: "read", guard: func(n any) *dlock.Guard[L] { return dlock.NewRWMutex(n.(backend.RWLocker[L])).Read() }}
}

// testReadersShare checks that readers share a name; a writer excludes readers and writers.
func (s *suite[L]) testReadersShare(t *testing.T) {
	a, b, c := s.rwOf(t), s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	r1 := tryAcquire(t, a.Read(), name)
	r2 := tryAcquire(t, b.Read(), name)
	r3 := tryAcquire(t, b.Read(), name) // two readers on one client too
	held(t, c.Write(), name, r1, r2, r3)
	release(t, r1)
	release(t, r2)
	held(t, c.Write(), name, r3)
	release(t, r3)
	w := tryAcquire(t, c.Write(), name)
	held(t, a.Read(), name, w)
	held(t, a.Write(), name, w)
	release(t, w)
	release(t, tryAcquire(t, a.Read(), name))
}

// testWriterPreference checks that once a writer waits, new readers wait too.
func (s *suite[L]) testWriterPreference(t *testing.T) {
	a, b, c := s.rwOf(t), s.rwOf(t), s.rwOf(t)
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
	held(t, c.Read(), name, w)
	release(t, w)
	release(t, acquire(t, c.Read(), name))
}

// testRWStress checks that readers and writers on two clients: a writer is always alone, no update lost.
func (s *suite[L]) testRWStress(t *testing.T) {
	nodes := []*dlock.RWMutex[L]{s.rwOf(t), s.rwOf(t)}
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
}

// testReaderProcesses checks that a reader in a helper process shares with this one, excludes a writer, and frees on death.
func (s *suite[L]) testReaderProcesses(t *testing.T) {
	s.processes(t)
	a := s.rwOf(t)
	name := s.name(t)
	c, _ := startChild(t, s.top, s.space, "read", name, 0)
	release(t, tryAcquire(t, a.Read(), name))
	held(t, a.Write(), name)
	c.kill()
	free(t, a.Write(), name, s.h.FreedWithin+5*time.Second)
}

// testReadLoss checks that a lost read lock is reported; a writer that gets in beside another reader means that reader was told.
func (s *suite[L]) testReadLoss(t *testing.T) {
	s.loses(t)
	a, b := s.rwOf(t), s.rwOf(t)
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
}
