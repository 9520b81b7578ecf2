package dlocktest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// semaphore runs the counting subtests.
func (s *suite[L]) semaphore(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"Limit", s.testSemaphoreLimit},
		{"OneWaiterPerRelease", s.testOneWaiterPerRelease},
		{"BadLimit", s.testBadLimit},
		{"DeadHolderTicket", s.testDeadHolderTicket},
		{"Holders", s.testSemaphoreHolders},
	} {
		s.test(t, c.name, c.f)
	}
	s.test(t, "Fencing", func(t *testing.T) { s.testFencing(t, semKind[L](3)) })
}

func (s *suite[L]) semOf(t *testing.T, limit int) *dlock.Guard[L] {
	return dlock.NewSemaphore(s.node(t).(backend.Semaphore[L]), limit)
}

func semKind[L backend.Lease](limit int) kind[L] {
	return kind[L]{child: "semaphore", limit: limit, guard: func(n any) *dlock.Guard[L] { return dlock.NewSemaphore(n.(backend.Semaphore[L]), limit) }}
}

// testSemaphoreLimit checks that at most limit holders at once, across clients.
func (s *suite[L]) testSemaphoreLimit(t *testing.T) {
	name := s.name(t)
	gs := []*dlock.Guard[L]{s.semOf(t, 3), s.semOf(t, 3), s.semOf(t, 3)}
	var lks []*dlock.Lock[L]
	for _, g := range gs {
		lks = append(lks, tryAcquire(t, g, name))
	}
	held(t, gs[0], name, lks[0], lks[1], lks[2])
	held(t, s.semOf(t, 3), name, lks[0], lks[1], lks[2])
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
}

// testOneWaiterPerRelease checks that one released ticket lets one waiter in.
func (s *suite[L]) testOneWaiterPerRelease(t *testing.T) {
	name := s.name(t)
	a := s.semOf(t, 2)
	l1, l2 := tryAcquire(t, a, name), tryAcquire(t, a, name)
	ctx, cancel := context.WithCancel(s.ctx(t))
	got := make(chan *dlock.Lock[L], 3)
	var wg sync.WaitGroup
	for range 3 {
		g := s.semOf(t, 2)
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
}

// testBadLimit checks that a limit below 1 is refused with ErrInvalidLimit.
func (s *suite[L]) testBadLimit(t *testing.T) {
	for _, limit := range []int{0, -1} {
		g := s.semOf(t, limit)
		if err := g.Do(context.Background(), s.name(t), func(context.Context) error { return nil }); !errors.Is(err, dlock.ErrInvalidLimit) {
			t.Errorf("limit %d: Do: %v, want dlock.ErrInvalidLimit", limit, err)
		}
		if _, err := g.TryAcquire(context.Background(), s.name(t)); !errors.Is(err, dlock.ErrInvalidLimit) {
			t.Errorf("limit %d: TryAcquire: %v, want dlock.ErrInvalidLimit", limit, err)
		}
	}
}

// testDeadHolderTicket checks that a SIGKILLed holder's ticket returns.
func (s *suite[L]) testDeadHolderTicket(t *testing.T) {
	s.processes(t)
	name := s.name(t)
	g := s.semOf(t, 2)
	c, _ := startChild(t, s.top, s.space, "semaphore", name, 2)
	lk := tryAcquire(t, g, name)
	held(t, g, name)
	c.kill()
	free(t, g, name, s.h.FreedWithin+5*time.Second)
	release(t, lk)
}
