package dlocktest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// Timing of the arrival-order subtests. A waiter's place in the queue is
// its arrival; the pauses between arrivals are long enough for a waiter's
// first attempt to reach the server on a loaded machine. The order of
// service is then read without timing: each waiter holds until told to
// release, so exactly one is inside at a time.
const (
	arrivalGap      = 100 * time.Millisecond // between two waiters of this process
	childArrivalGap = 400 * time.Millisecond // after a helper process says it is waiting
	serveWithin     = 30 * time.Second       // for the next waiter to be served
)

// orderedWaiter is one waiter of an arrival-order subtest: acquired is
// sent its index when it holds the lock, and it releases when its release
// channel closes.
type orderedWaiter struct {
	release chan struct{}
}

// waitInOrder starts a waiter of guard g on name that reports to acquired.
func waitInOrder[L backend.Lease](t *testing.T, wg *sync.WaitGroup, g *dlock.Guard[L], name string, i int, acquired chan<- int) orderedWaiter {
	w := orderedWaiter{release: make(chan struct{})}
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		lk, err := g.Acquire(ctx, name)
		if err != nil {
			t.Errorf("waiter %d: %v", i, err)
			acquired <- -1
			return
		}
		acquired <- i
		<-w.release
		if err := lk.Release(context.Background()); err != nil {
			t.Errorf("waiter %d: Release: %v", i, err)
		}
	})
	return w
}

// childInOrder starts a waiter in a helper process that reports to
// acquired.
func childInOrder(t *testing.T, wg *sync.WaitGroup, c *child, i int, acquired chan<- int) orderedWaiter {
	w := orderedWaiter{release: make(chan struct{})}
	wg.Go(func() {
		line, ok := <-c.lines
		if !ok || len(line) < 8 || line[:8] != "acquired" {
			t.Errorf("helper waiter %d said %q (open %v), want acquired", i, line, ok)
			acquired <- -1
			return
		}
		acquired <- i
		<-w.release
		if _, err := fmt.Fprintln(c.stdin, "release"); err != nil {
			t.Errorf("helper waiter %d: %v", i, err)
		}
		if line, ok := <-c.lines; !ok || line != "released" {
			t.Errorf("helper waiter %d said %q, want released", i, line)
		}
		c.stdin.Close()
		_ = c.wait()
	})
	return w
}

// expectOrder releases holder and then checks that the waiters are served
// in the order of their indexes, releasing each in turn.
func expectOrder[L backend.Lease](t *testing.T, holder *dlock.Lock[L], waiters []orderedWaiter, acquired <-chan int, wg *sync.WaitGroup) {
	t.Helper()
	defer func() {
		for _, w := range waiters {
			select {
			case <-w.release:
			default:
				close(w.release)
			}
		}
		wg.Wait()
	}()
	release(t, holder)
	for want := range waiters {
		select {
		case got := <-acquired:
			if got < 0 {
				t.FailNow()
			}
			if got != want {
				t.Errorf("waiter %d was served before waiter %d, which began waiting earlier: waiters must be served in arrival order (Harness.Unordered is not set)", got, want)
			}
			close(waiters[got].release)
		case <-time.After(serveWithin):
			t.Fatalf("waiter %d not served within %v of the previous release", want, serveWithin)
		}
	}
}

// testFIFO checks that waiters on two clients (and, where the harness has
// them, in helper processes) are served in the order they began to wait,
// and that a try does not jump the queue (guarantee 12).
func (s *suite[L]) testFIFO(t *testing.T, k kind[L]) {
	if s.h.Unordered {
		t.Skip("Harness.Unordered: the backend does not promise arrival order")
	}
	clients := []*dlock.Guard[L]{k.guard(s.node(t)), k.guard(s.node(t))}
	name := s.name(t)
	holder := tryAcquire(t, k.guard(s.node(t)), name)
	acquired := make(chan int, 8)
	var wg sync.WaitGroup
	var waiters []orderedWaiter
	for i := range 6 {
		if i%3 == 2 && !s.h.InProcess && k.limit <= 1 {
			c := startWaiter(t, s.top, s.space, k.child, name, k.limit)
			waiters = append(waiters, childInOrder(t, &wg, c, i, acquired))
			time.Sleep(childArrivalGap)
			continue
		}
		waiters = append(waiters, waitInOrder(t, &wg, clients[i%2], name, i, acquired))
		time.Sleep(arrivalGap)
	}
	held(t, clients[0], name) // a try fails while others wait, even as the holder leaves
	expectOrder(t, holder, waiters, acquired, &wg)
}

// testNoStarvation checks that under saturation by several clients each
// gets a fair share of the acquisitions (guarantee 12): at least half of
// the mean, whatever the backend's ordering promise. A backend without a
// native wait for the kind is polled by the engine, which cannot promise
// it (a client that takes the lock again at once can starve pollers): the
// subtest is skipped for it.
func (s *suite[L]) testNoStarvation(t *testing.T, k kind[L]) {
	if !nativeWait[L](s.node(t), k) {
		t.Skip("the backend has no native wait for this kind: polled waiters are not protected from starvation")
	}
	const (
		clients, perClient = 4, 2
		run                = 2 * time.Second
		maxRun             = 4 * run
		minTotal           = 20 * clients
		hold               = time.Millisecond
	)
	name := s.name(t)
	counts := make([]int, clients)
	var mu sync.Mutex
	var wg sync.WaitGroup
	// Every client is made (connected) before the run's clock starts, and
	// all start together: a client still connecting must not look starved.
	guards := make([]*dlock.Guard[L], clients)
	for c := range guards {
		guards[c] = k.guard(s.node(t))
	}
	start := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for c, g := range guards {
		for range perClient {
			wg.Go(func() {
				<-start
				for ctx.Err() == nil {
					err := g.Do(ctx, name, func(context.Context) error { time.Sleep(hold); return nil })
					if err == nil {
						mu.Lock()
						counts[c]++
						mu.Unlock()
					}
				}
			})
		}
	}
	// Run for run, and on until there are enough acquisitions to judge
	// (a slow backend on a loaded machine makes few), at most maxRun.
	close(start)
	begin := time.Now()
	total := 0
	for {
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		total = 0
		for _, n := range counts {
			total += n
		}
		mu.Unlock()
		if el := time.Since(begin); el >= run && total >= minTotal || el >= maxRun {
			break
		}
	}
	cancel()
	wg.Wait()
	total = 0
	for _, n := range counts {
		total += n
	}
	mean := float64(total) / clients
	t.Logf("acquisitions per client in %v: %v", time.Since(begin).Round(time.Millisecond), counts)
	for c, n := range counts {
		if float64(n) < mean/2 {
			t.Errorf("client %d got %d acquisitions, under half the mean %.1f (all: %v): a client starved", c, n, mean, counts)
		}
	}
}

// nativeWait reports whether node waits natively for locks of kind k.
func nativeWait[L backend.Lease](node any, k kind[L]) bool {
	var ok bool
	switch k.child {
	case "mutex":
		_, ok = node.(backend.LockWaiter[L])
	case "read", "write":
		_, ok = node.(backend.RWWaiter[L])
	case "semaphore":
		_, ok = node.(backend.SemaphoreWaiter[L])
	case "upgradeable":
		_, ok = node.(backend.UpgradeableWaiter[L])
	}
	return ok
}

// testCancelledWaiter checks that a waiter whose ctx ends leaves at once
// and holds up nobody (guarantee 12): with a holder and two waiters in
// line, the first waiter's ctx is cancelled; when the holder releases, the
// second waiter is served at once — not after a dead waiter's eviction
// (FreedWithin) or never — and once it has released, a try takes the lock
// at once (no trace of the cancelled waiter is left to make tries fail).
func (s *suite[L]) testCancelledWaiter(t *testing.T, k kind[L]) {
	holderG, first, second := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
	name := s.name(t)
	holder := tryAcquire(t, holderG, name)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstErr := make(chan error, 1)
	go func() {
		lk, err := first.Acquire(ctx, name)
		if err == nil {
			_ = lk.Release(context.Background())
		}
		firstErr <- err
	}()
	time.Sleep(arrivalGap)
	secondLock := make(chan *dlock.Lock[L], 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), serveWithin)
		defer cancel()
		lk, err := second.Acquire(ctx, name)
		if err != nil {
			t.Errorf("second waiter: %v", err)
		}
		secondLock <- lk
	}()
	time.Sleep(arrivalGap)
	cancel()
	select {
	case err := <-firstErr:
		notAcquired(t, err, context.Canceled)
	case <-time.After(serveWithin):
		t.Fatalf("a cancelled wait did not return within %v", serveWithin)
	}

	// A hand-off takes milliseconds; a cancelled waiter left in line would
	// hold the second one up until it is evicted as dead (FreedWithin: the
	// lease, for a backend with leases) or for ever.
	bound := 5 * time.Second
	if s.h.FreedWithin >= 1500*time.Millisecond {
		bound = s.h.FreedWithin * 2 / 3
	}
	start := time.Now()
	release(t, holder)
	var lk *dlock.Lock[L]
	select {
	case lk = <-secondLock:
	case <-time.After(serveWithin):
		t.Fatalf("the second waiter was not served within %v of the release", serveWithin)
	}
	if lk == nil {
		t.FailNow()
	}
	if took := time.Since(start); took > bound {
		t.Errorf("the second waiter was served %v after the release (bound %v): the cancelled waiter held the line up", took, bound)
	}
	release(t, lk)
	release(t, tryAcquire(t, holderG, name))
}
