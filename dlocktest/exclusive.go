package dlocktest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
)

// exclusive runs the subtests of a primitive whose holders exclude each
// other: a mutex, the write side of an RWMutex, a semaphore of limit 1.
func (s *suite[L]) exclusive(t *testing.T, k kind[L]) {
	for _, c := range []struct {
		name string
		f    func(*testing.T, kind[L])
	}{
		{"Goroutines", s.testExclusionAcrossGoroutines},
		{"Clients", s.testExclusionAcrossClients},
		{"Guards", s.testExclusionAcrossGuards},
		{"NotReentrant", s.testNotReentrant},
		{"Processes", s.testExclusionAcrossProcesses},
		{"DeadHolder", s.testDeadHolderFrees},
		{"Names", s.testNamesIndependent},
		{"OddNames", s.testOddNamesStayInside},
		{"BadInput", s.testBadInput},
		{"TryNeverWaits", s.testTryNeverWaits},
		{"WaitDeadline", s.testWaitEndsAtDeadline},
		{"WaitCancel", s.testWaitEndsOnCancel},
		{"CancelledContext", s.testCancelledContext},
		{"CancelRace", s.testCancelRace},
		{"ReleaseWakesWaiter", s.testReleaseWakesWaiter},
		{"DoubleRelease", s.testDoubleRelease},
		{"Loss", s.testLossReported},
		{"Panic", s.testReleaseOnPanic},
		{"DoReturns", s.testDoReturns},
		{"Fencing", s.testFencing},
		{"Burst", s.testBurst},
		{"ReleaseAfterLoss", s.testReleaseAfterLoss},
		{"LossUnderLoad", s.testLossUnderLoad},
		{"AllOrNone", s.testAllOrNone},
		{"AllNoDeadlock", s.testAllNoDeadlock},
		{"AllAtomic", s.testAllAtomic},
		{"AllLoss", s.testAllLoss},
		{"AllRelease", s.testAllRelease},
		{"FIFO", s.testFIFO},
		{"NoStarvation", s.testNoStarvation},
		{"CancelledWaiter", s.testCancelledWaiter},
		{"Holders", s.testHolders},
	} {
		s.test(t, c.name, func(t *testing.T) { c.f(t, k) })
	}
}

// testExclusionAcrossGoroutines checks that many goroutines on one guard never hold a name together (guarantee 1).
func (s *suite[L]) testExclusionAcrossGoroutines(t *testing.T, k kind[L]) {
	g := k.guard(s.node(t))
	s.stress(t, []*dlock.Guard[L]{g}, s.name(t), 100, 2)
}

// testExclusionAcrossClients checks that holders on three clients (nodes) exclude each other (guarantee 1).
func (s *suite[L]) testExclusionAcrossClients(t *testing.T, k kind[L]) {
	a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
	name := s.name(t)
	lk := tryAcquire(t, a, name)
	held(t, b, name, lk)
	held(t, c, name, lk)
	release(t, lk)
	s.stress(t, []*dlock.Guard[L]{a, b, c}, name, 30, 3)
}

// testExclusionAcrossGuards checks that two guards over one client exclude each other (guarantee 1).
func (s *suite[L]) testExclusionAcrossGuards(t *testing.T, k kind[L]) {
	n := s.node(t)
	g1, g2 := k.guard(n), k.guard(n)
	name := s.name(t)
	lk := tryAcquire(t, g1, name)
	held(t, g2, name, lk)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := g2.Acquire(ctx, name)
	notAcquired(t, err, context.DeadlineExceeded)
	release(t, lk)
	release(t, tryAcquire(t, g2, name))
}

// testNotReentrant checks that a second acquisition of a held name fails or waits, even on the same guard (guarantee 1).
func (s *suite[L]) testNotReentrant(t *testing.T, k kind[L]) {
	g := k.guard(s.node(t))
	name := s.name(t)
	lk := tryAcquire(t, g, name)
	held(t, g, name, lk)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := g.Acquire(ctx, name)
	notAcquired(t, err, context.DeadlineExceeded)
	release(t, lk)
	free(t, g, name, 10*time.Second)
}

// testExclusionAcrossProcesses checks that a lock held by a helper process excludes this one (guarantee 1).
func (s *suite[L]) testExclusionAcrossProcesses(t *testing.T, k kind[L]) {
	s.processes(t)
	g := k.guard(s.node(t))
	name := s.name(t)
	c, _ := startChild(t, s.top, s.space, k.child, name, k.limit)
	held(t, g, name)
	c.release(t)
	free(t, g, name, 10*time.Second)
	lk := tryAcquire(t, g, name)
	release(t, lk)
}

// testDeadHolderFrees checks that a SIGKILLed holder process frees its lock within FreedWithin (guarantee 6).
func (s *suite[L]) testDeadHolderFrees(t *testing.T, k kind[L]) {
	s.processes(t)
	g := k.guard(s.node(t))
	name := s.name(t)
	c, _ := startChild(t, s.top, s.space, k.child, name, k.limit)
	held(t, g, name)
	c.kill()
	free(t, g, name, s.h.FreedWithin+5*time.Second)
}

// testNamesIndependent checks that names that differ by one byte anywhere, or by case, are different locks (guarantee 2).
func (s *suite[L]) testNamesIndependent(t *testing.T, k kind[L]) {
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
		held(t, b, p[0], l0)
		held(t, b, p[1], l1)
		release(t, l0)
		held(t, b, p[1], l1)
		release(t, l1)
	}
}

// testOddNamesStayInside checks that hostile names work or are refused with ErrInvalidName, and nothing appears outside the space (guarantee 7).
func (s *suite[L]) testOddNamesStayInside(t *testing.T, k kind[L]) {
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
		held(t, b, name, lk)
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
}

// testBadInput checks that an empty name and a nil fn are refused with their errors (guarantee 7).
func (s *suite[L]) testBadInput(t *testing.T, k kind[L]) {
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
}

// testTryNeverWaits checks that a try of a held name fails at once with ErrNotAcquired (guarantee 3).
func (s *suite[L]) testTryNeverWaits(t *testing.T, k kind[L]) {
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
}

// testWaitEndsAtDeadline checks that a wait ended by its deadline says ErrNotAcquired and DeadlineExceeded and holds nothing (guarantee 3).
func (s *suite[L]) testWaitEndsAtDeadline(t *testing.T, k kind[L]) {
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
}

// testWaitEndsOnCancel checks that a wait ended by cancellation says ErrNotAcquired and Canceled and holds nothing (guarantee 3).
func (s *suite[L]) testWaitEndsOnCancel(t *testing.T, k kind[L]) {
	a, b, c := k.guard(s.node(t)), k.guard(s.node(t)), k.guard(s.node(t))
	name := s.name(t)
	lk := tryAcquire(t, a, name)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := b.Acquire(ctx, name)
	notAcquired(t, err, context.Canceled)
	release(t, lk)
	free(t, c, name, 10*time.Second)
}

// testCancelledContext checks that a call with a ctx already cancelled acquires nothing (guarantee 3).
func (s *suite[L]) testCancelledContext(t *testing.T, k kind[L]) {
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
}

// testCancelRace checks that a release racing a waiter's deadline leaves a true answer and nothing held (guarantee 3).
func (s *suite[L]) testCancelRace(t *testing.T, k kind[L]) {
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
			held(t, c, name, got)
			release(t, got)
		} else if !errors.Is(err, dlock.ErrNotAcquired) {
			t.Fatalf("Acquire: %v", err)
		}
		free(t, c, name, 10*time.Second)
	}
}

// testReleaseWakesWaiter checks that a release lets a waiter in, and not before (guarantee 4).
func (s *suite[L]) testReleaseWakesWaiter(t *testing.T, k kind[L]) {
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
}

// testDoubleRelease checks that a second release says ErrNotHeld and does not disturb the next holder (guarantee 4, 11).
func (s *suite[L]) testDoubleRelease(t *testing.T, k kind[L]) {
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
	held(t, c, name, lk2) // the new holder is undisturbed
	release(t, lk2)
}

// testLossReported checks that a revoked lock closes Lost within LossWithin, Err and Release say ErrLockLost, and the next holder is undisturbed (guarantees 4, 5, 11).
func (s *suite[L]) testLossReported(t *testing.T, k kind[L]) {
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
	held(t, c, name, lk2) // the new holder is undisturbed
	if err := lk.Err(); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Err after the release of a lost lock: %v, want dlock.ErrLockLost", err)
	}
	if err := lk.Release(context.Background()); !errors.Is(err, dlock.ErrNotHeld) {
		t.Fatalf("second Release of a lost lock: %v, want dlock.ErrNotHeld", err)
	}
	held(t, c, name, lk2)
	release(t, lk2)
}

// testReleaseOnPanic checks that Do releases when fn panics, and the panic goes on.
func (s *suite[L]) testReleaseOnPanic(t *testing.T, k kind[L]) {
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
}

// testDoReturns checks that Do returns fn's error, and nil when fn succeeds.
func (s *suite[L]) testDoReturns(t *testing.T, k kind[L]) {
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
}
