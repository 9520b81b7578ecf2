package dlock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

// pollOnly hides Memory's native waits, so the engine's own backoff loop
// does the waiting.
type pollOnly struct{ m *dlocktest.Memory }

func (p pollOnly) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryLock(ctx, name)
}

func (p pollOnly) TryAcquire(ctx context.Context, name string, limit int) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryAcquire(ctx, name, limit)
}

// The engine's polling path (for backends without a native wait) passes
// the suite's mutex and semaphore subtests.
func TestPollingEngine(t *testing.T) {
	mem := dlocktest.NewMemory()
	dlocktest.Run(t, dlocktest.Harness[*dlocktest.MemoryLease]{
		New:       func(testing.TB, string) any { return pollOnly{mem} },
		Lose:      func(_ testing.TB, l *dlocktest.MemoryLease) { mem.Lose(l) },
		Fencing:   true,
		InProcess: true,
		Unordered: true, // polled: no arrival order
	})
}

// lateGranter's wait ignores ctx's end and grants anyway, as a server can
// grant a lock just as its client gives up.
type lateGranter struct{ m *dlocktest.Memory }

func (l lateGranter) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return l.m.TryLock(ctx, name)
}

func (l lateGranter) Lock(ctx context.Context, name string) (*dlocktest.MemoryLease, error) {
	<-ctx.Done()
	lease, _, err := l.m.TryLock(context.Background(), name)
	return lease, err
}

func TestLateGrantIsReleased(t *testing.T) {
	defer goleak.VerifyNone(t)
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(lateGranter{mem})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := mu.Acquire(ctx, "x")
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire: %v, want ErrNotAcquired and DeadlineExceeded", err)
	}
	lk, err := mu.TryAcquire(context.Background(), "x")
	if err != nil {
		t.Fatalf("the late grant was leaked: %v", err)
	}
	if err := lk.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// stuckLease's Release hangs until its ctx ends.
type stuckLease struct{ lost chan struct{} }

func (s stuckLease) Release(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
func (s stuckLease) Lost() <-chan struct{}             { return s.lost }

type stuckLocker struct{}

func (stuckLocker) TryLock(context.Context, string) (stuckLease, bool, error) {
	return stuckLease{make(chan struct{})}, true, nil
}

func TestReleaseIsBoundedAndDetached(t *testing.T) {
	defer goleak.VerifyNone(t)
	mu := dlock.NewMutex(stuckLocker{}, dlock.WithReleaseTimeout(50*time.Millisecond))
	lk, err := mu.TryAcquire(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	err = lk.Release(ctx) // ctx already cancelled: still tries, for the timeout
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Release: %v, want the release timeout's DeadlineExceeded", err)
	}
	if time.Since(start) < 40*time.Millisecond {
		t.Fatalf("Release gave up at once on a cancelled ctx instead of running for its timeout")
	}

	// A release with a cancelled ctx really frees the lock.
	mem := dlocktest.NewMemory()
	m := dlock.NewMutex(mem)
	lk2, err := m.TryAcquire(context.Background(), "y")
	if err != nil {
		t.Fatal(err)
	}
	if err := lk2.Release(ctx); err != nil {
		t.Fatalf("Release with a cancelled ctx: %v", err)
	}
	if lk3, err := m.TryAcquire(context.Background(), "y"); err != nil {
		t.Fatalf("lock not freed: %v", err)
	} else {
		_ = lk3.Release(context.Background())
	}
}

func TestDoReleasesAfterCtxCancelled(t *testing.T) {
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem)
	ctx, cancel := context.WithCancel(context.Background())
	err := mu.Do(ctx, "x", func(ctx context.Context) error {
		cancel()
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if lk, err := mu.TryAcquire(context.Background(), "x"); err != nil {
		t.Fatalf("Do did not release after its ctx was cancelled: %v", err)
	} else {
		_ = lk.Release(context.Background())
	}
}

func TestNilBackendIsAnError(t *testing.T) {
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	if err := dlock.NewMutex[*dlocktest.MemoryLease](nil).Do(ctx, "x", fn); err == nil || !strings.Contains(err.Error(), "nil backend") {
		t.Errorf("mutex over nil: %v", err)
	}
	if err := dlock.NewRWMutex[*dlocktest.MemoryLease](nil).Write().Do(ctx, "x", fn); err == nil {
		t.Errorf("rwmutex over nil: %v", err)
	}
	if err := dlock.NewSemaphore[*dlocktest.MemoryLease](nil, 2).Do(ctx, "x", fn); err == nil {
		t.Errorf("semaphore over nil: %v", err)
	}
}

func TestErrorsNameTheLock(t *testing.T) {
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem)
	lk, _ := mu.TryAcquire(context.Background(), "report")
	defer lk.Release(context.Background())
	_, err := mu.TryAcquire(context.Background(), "report")
	if !errors.Is(err, dlock.ErrNotAcquired) || !strings.Contains(err.Error(), `"report"`) {
		t.Fatalf("error %q should match ErrNotAcquired and name the lock", err)
	}
	long := strings.Repeat("n", 1<<20)
	lk2, _ := mu.TryAcquire(context.Background(), long)
	defer lk2.Release(context.Background())
	_, err = mu.TryAcquire(context.Background(), long)
	if len(err.Error()) > 200 {
		t.Fatalf("error message of %d bytes for a long name; want it cut", len(err.Error()))
	}
}

func TestLoggerIsSilentByDefaultAndUsedWhenGiven(t *testing.T) {
	var buf bytes.Buffer
	mem := dlocktest.NewMemory()
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mu := dlock.NewMutex(mem, dlock.WithLogger(log))
	_ = mu.Do(context.Background(), "x", func(context.Context) error { return nil })
	if !strings.Contains(buf.String(), "acquired") || !strings.Contains(buf.String(), "released") {
		t.Fatalf("log: %q", buf.String())
	}
}

func TestBackoffOptionPacesPolling(t *testing.T) {
	mem := dlocktest.NewMemory()
	tries := 0
	counting := countingLocker{pollOnly{mem}, &tries}
	mu := dlock.NewMutex(counting, dlock.WithBackoff(20*time.Millisecond, 20*time.Millisecond))
	lk, _ := dlock.NewMutex(mem).TryAcquire(context.Background(), "x")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := mu.Acquire(ctx, "x")
	if !errors.Is(err, dlock.ErrNotAcquired) {
		t.Fatal(err)
	}
	_ = lk.Release(context.Background())
	// 200ms at 10-30ms a pause: well under the hundreds a busy loop makes.
	if tries < 3 || tries > 40 {
		t.Fatalf("%d tries in 200ms with a 20ms backoff", tries)
	}
}

type countingLocker struct {
	pollOnly
	n *int
}

func (c countingLocker) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	*c.n++
	return c.pollOnly.TryLock(ctx, name)
}

// BenchmarkDo measures the engine's own cost per uncontended Do, over the
// in-process backend.
func BenchmarkDo(b *testing.B) {
	mu := dlock.NewMutex(dlocktest.NewMemory())
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := mu.Do(ctx, "bench", fn); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcquireRelease is BenchmarkDo without the callback's context
// and loss watcher.
func BenchmarkAcquireRelease(b *testing.B) {
	mu := dlock.NewMutex(dlocktest.NewMemory())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		lk, err := mu.Acquire(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := lk.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

var errDown = errors.New("connection refused (test server down)")

// flaky is a Memory whose server is down while down is set: every attempt
// fails with errDown (or with err, when set).
type flaky struct {
	m    *dlocktest.Memory
	down atomic.Bool
	err  error
	hits atomic.Int32
}

func (f *flaky) fail() error {
	f.hits.Add(1)
	if f.err != nil {
		return f.err
	}
	return errDown
}

func (f *flaky) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	if f.down.Load() {
		return nil, false, f.fail()
	}
	return f.m.TryLock(ctx, name)
}

// flakyWaiter adds a native wait, which also fails while the server is down.
type flakyWaiter struct{ *flaky }

func (f flakyWaiter) Lock(ctx context.Context, name string) (*dlocktest.MemoryLease, error) {
	if f.down.Load() {
		return nil, f.fail()
	}
	return f.m.Lock(ctx, name)
}

// A wait rides out server errors until the server is back, with a native
// wait and without; then the lock is taken. A try reports them at once.
func TestWaitRidesOutServerErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, native := range []bool{false, true} {
		f := &flaky{m: dlocktest.NewMemory()}
		var b backend.Locker[*dlocktest.MemoryLease] = f
		if native {
			b = flakyWaiter{f}
		}
		mu := dlock.NewMutex(b, dlock.WithBackoff(time.Millisecond, 5*time.Millisecond))
		f.down.Store(true)
		if _, err := mu.TryAcquire(context.Background(), "x"); !errors.Is(err, errDown) || errors.Is(err, dlock.ErrNotAcquired) {
			t.Fatalf("native=%v: TryAcquire on a down server: %v, want the server error at once", native, err)
		}
		go func() {
			for f.hits.Load() < 5 {
				time.Sleep(time.Millisecond)
			}
			f.down.Store(false)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		lk, err := mu.Acquire(ctx, "x")
		cancel()
		if err != nil {
			t.Fatalf("native=%v: Acquire while the server came back: %v", native, err)
		}
		if err := lk.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// A wait whose ctx ends while the server is down reports ErrNotAcquired,
// ctx.Err() and the last server error; it holds nothing.
func TestWaitEndedDuringOutageNamesServerError(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := &flaky{m: dlocktest.NewMemory()}
	f.down.Store(true)
	mu := dlock.NewMutex(flakyWaiter{f}, dlock.WithBackoff(time.Millisecond, 5*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := mu.Acquire(ctx, "x")
	for _, want := range []error{dlock.ErrNotAcquired, context.DeadlineExceeded, errDown} {
		if !errors.Is(err, want) {
			t.Errorf("Acquire: %v; does not match %v", err, want)
		}
	}
	if f.hits.Load() < 2 {
		t.Errorf("the wait tried %d times in 100ms; it did not ride out the outage", f.hits.Load())
	}
	f.down.Store(false)
	lk, err := mu.TryAcquire(context.Background(), "x")
	if err != nil {
		t.Fatalf("the failed wait left the lock held: %v", err)
	}
	_ = lk.Release(context.Background())
}

// Errors that cannot heal end a wait at once.
func TestWaitEndsOnPermanentError(t *testing.T) {
	errAuth := errors.New("WRONGPASS invalid password")
	for _, perm := range []error{backend.Permanent(errAuth), fmt.Errorf("%w: bad", dlock.ErrInvalidName)} {
		f := &flaky{m: dlocktest.NewMemory(), err: perm}
		f.down.Store(true)
		mu := dlock.NewMutex(flakyWaiter{f})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := mu.Acquire(ctx, "x")
		cancel()
		if !errors.Is(err, perm) || errors.Is(err, dlock.ErrNotAcquired) || f.hits.Load() != 1 {
			t.Errorf("Acquire with %v: %v after %d attempts; want that error after one", perm, err, f.hits.Load())
		}
	}
	if !backend.IsPermanent(fmt.Errorf("wrapped: %w", backend.Permanent(errDown))) || backend.IsPermanent(errDown) {
		t.Error("IsPermanent does not see the mark through wrapping, or sees one that is not there")
	}
	if backend.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
}

// lostAtRelease's Release finds out only then that the lock was gone.
type lostAtRelease struct{ lost chan struct{} }

func (l lostAtRelease) Release(context.Context) error {
	close(l.lost)
	return fmt.Errorf("unlock found another holder: %w", dlock.ErrLockLost)
}
func (l lostAtRelease) Lost() <-chan struct{} { return l.lost }

type lostAtReleaseLocker struct{}

func (lostAtReleaseLocker) TryLock(context.Context, string) (lostAtRelease, bool, error) {
	return lostAtRelease{make(chan struct{})}, true, nil
}

// Err tells a loss from a release, whenever the loss was learned.
func TestLockErr(t *testing.T) {
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem)
	ctx := context.Background()

	lk, err := mu.TryAcquire(ctx, "clean")
	if err != nil {
		t.Fatal(err)
	}
	if lk.Err() != nil {
		t.Fatalf("Err while held: %v", lk.Err())
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(lk.Err(), dlock.ErrNotHeld) || errors.Is(lk.Err(), dlock.ErrLockLost) {
		t.Fatalf("Err after a clean release: %v, want ErrNotHeld", lk.Err())
	}
	if err := lk.Release(ctx); !errors.Is(err, dlock.ErrNotHeld) || !errors.Is(lk.Err(), dlock.ErrNotHeld) {
		t.Fatalf("second Release: %v, Err %v", err, lk.Err())
	}

	lk, err = mu.TryAcquire(ctx, "lost")
	if err != nil {
		t.Fatal(err)
	}
	mem.Lose(lk.Lease())
	<-lk.Lost()
	if !errors.Is(lk.Err(), dlock.ErrLockLost) {
		t.Fatalf("Err after a loss: %v, want ErrLockLost", lk.Err())
	}
	if err := lk.Release(ctx); !errors.Is(err, dlock.ErrLockLost) || !errors.Is(lk.Err(), dlock.ErrLockLost) {
		t.Fatalf("Release of a lost lock: %v, Err %v; want ErrLockLost twice", err, lk.Err())
	}

	lr, err := dlock.NewMutex(lostAtReleaseLocker{}).TryAcquire(ctx, "found-at-release")
	if err != nil {
		t.Fatal(err)
	}
	if lr.Err() != nil {
		t.Fatalf("Err while held: %v", lr.Err())
	}
	if err := lr.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release: %v, want ErrLockLost", err)
	}
	if !errors.Is(lr.Err(), dlock.ErrLockLost) || errors.Is(lr.Err(), dlock.ErrNotHeld) {
		t.Fatalf("Err after a loss learned at release: %v, want ErrLockLost", lr.Err())
	}
}

// Composite acquisition refuses an empty set, an empty name and a nil fn.
func TestAllBadInput(t *testing.T) {
	mu := dlock.NewMutex(dlocktest.NewMemory())
	ctx := context.Background()
	for _, names := range [][]string{nil, {}, {"a", ""}} {
		if _, err := mu.AcquireAll(ctx, names); !errors.Is(err, dlock.ErrInvalidName) {
			t.Errorf("AcquireAll(%q): %v, want ErrInvalidName", names, err)
		}
		if _, err := mu.TryAcquireAll(ctx, names); !errors.Is(err, dlock.ErrInvalidName) {
			t.Errorf("TryAcquireAll(%q): %v, want ErrInvalidName", names, err)
		}
	}
	if err := mu.DoAll(ctx, []string{"a"}, nil); !errors.Is(err, dlock.ErrNilFunc) {
		t.Errorf("DoAll(nil fn): %v, want ErrNilFunc", err)
	}
	set, err := mu.AcquireAll(ctx, []string{"b", "a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := set.Release(ctx); !errors.Is(err, dlock.ErrNotHeld) {
		t.Errorf("second Release of a set: %v, want ErrNotHeld", err)
	}
}

// connectingLocker's wait is stuck connecting until ctx ends, and says so.
type connectingLocker struct{}

func (connectingLocker) TryLock(ctx context.Context, _ string) (*dlocktest.MemoryLease, bool, error) {
	<-ctx.Done()
	return nil, false, fmt.Errorf("connect 127.0.0.1:5432: %w", ctx.Err())
}

// A wait or try that ctx ended while the backend was still connecting
// says where it was connecting to, not only that ctx ended.
func TestCtxEndedErrorKeepsBackendCause(t *testing.T) {
	mu := dlock.NewMutex(connectingLocker{})
	for _, take := range []func(context.Context, string) (*dlock.Lock[*dlocktest.MemoryLease], error){mu.Acquire, mu.TryAcquire} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := take(ctx, "x")
		cancel()
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "127.0.0.1:5432") {
			t.Errorf("%v: want ErrNotAcquired, DeadlineExceeded and the address being connected to", err)
		}
	}
}
