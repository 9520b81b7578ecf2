package dlock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

type ctxKey struct{}

// recorder is an Observer that records its events as lines, and checks
// that each event gets the ctx its predecessor returned.
type recorder struct {
	mu     sync.Mutex
	events []string
	bad    []string
}

func (r *recorder) add(ctx context.Context, want, line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if got, _ := ctx.Value(ctxKey{}).(string); got != want {
		r.bad = append(r.bad, fmt.Sprintf("%s got ctx value %q, want %q", line, got, want))
	}
	r.events = append(r.events, line)
}

func (r *recorder) AcquireStart(ctx context.Context, e dlock.AcquireEvent) context.Context {
	r.add(context.WithValue(ctx, ctxKey{}, ""), "", fmt.Sprintf("start %s %s %s try=%v", e.Backend, e.Kind, e.Name, e.Try))
	return context.WithValue(ctx, ctxKey{}, "acquire")
}

func (r *recorder) AcquireEnd(ctx context.Context, e dlock.AcquireEvent, err error) context.Context {
	r.add(ctx, "acquire", fmt.Sprintf("end %s attempts>0=%v err=%v", e.Name, e.Attempts > 0, errText(err)))
	return context.WithValue(ctx, ctxKey{}, "hold")
}

func (r *recorder) Released(ctx context.Context, e dlock.HoldEvent, err error) {
	r.add(ctx, "hold", fmt.Sprintf("released %s token>0=%v err=%v", e.Name, e.Token > 0, errText(err)))
}

func (r *recorder) Lost(ctx context.Context, e dlock.HoldEvent) {
	r.add(ctx, "hold", fmt.Sprintf("lost %s atRelease=%v", e.Name, e.AtRelease))
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// errText names the sentinels err matches.
func errText(err error) string {
	if err == nil {
		return "nil"
	}
	var s []string
	for _, e := range []error{dlock.ErrNotAcquired, dlock.ErrLockLost, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			s = append(s, strings.TrimPrefix(e.Error(), "context "))
		}
	}
	return strings.Join(s, "+")
}

// Observers are told of every acquisition, release and loss, with the
// contexts they returned passed on.
func TestObserver(t *testing.T) {
	defer goleak.VerifyNone(t)
	mem := dlocktest.NewMemory()
	r := &recorder{}
	mu := dlock.NewMutex(mem, dlock.WithObserver(r))
	ctx := context.Background()
	check := func(what string, want ...string) {
		t.Helper()
		got := r.take()
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: events\n\t%s\nwant\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
		}
	}

	_ = mu.Do(ctx, "job", func(context.Context) error { return nil })
	check("Do", "start dlocktest mutex job try=false", "end job attempts>0=true err=nil", "released job token>0=true err=nil")

	lk, _ := mu.TryAcquire(ctx, "job")
	_, _ = mu.TryAcquire(ctx, "job")
	check("try of a held lock", "start dlocktest mutex job try=true", "end job attempts>0=true err=nil",
		"start dlocktest mutex job try=true", "end job attempts>0=true err=lock not acquired")

	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, _ = mu.Acquire(wctx, "job")
	cancel()
	check("timed-out wait", "start dlocktest mutex job try=false", "end job attempts>0=true err=lock not acquired+deadline exceeded")

	mem.Lose(lk.Lease()) // an Acquire'd lock is watched while observed
	deadline := time.Now().Add(5 * time.Second)
	for r.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	check("loss of an acquired lock", "lost job atRelease=false")
	_ = lk.Release(ctx)
	check("release of the lost lock", "released job token>0=true err=lock lost")

	c := &capture{m: mem}
	cm := dlock.NewMutex(c, dlock.WithObserver(r))
	_ = cm.Do(ctx, "job", func(ctx context.Context) error {
		mem.Lose(c.lease)
		<-ctx.Done()
		return nil
	})
	check("loss in Do", "start dlocktest mutex job try=false", "end job attempts>0=true err=nil",
		"lost job atRelease=false", "released job token>0=true err=lock lost")

	lr := dlock.NewMutex(lostAtReleaseLocker{}, dlock.WithObserver(r))
	_ = lr.Do(ctx, "job", func(context.Context) error { return nil })
	check("loss learned at release", "start dlock_test mutex job try=false", "end job attempts>0=true err=nil",
		"lost job atRelease=true", "released job token>0=false err=lock lost")

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bad {
		t.Error(b)
	}
}

// With no observer, observing costs no allocation: a Guard with a nil
// logger and one without options allocate the same.
func TestNoObserverNoCost(t *testing.T) {
	ctx := context.Background()
	allocs := func(mu *dlock.Mutex[*dlocktest.MemoryLease]) float64 {
		return testing.AllocsPerRun(200, func() {
			lk, err := mu.TryAcquire(ctx, "x")
			if err != nil {
				t.Fatal(err)
			}
			_ = lk.Release(ctx)
		})
	}
	plain := allocs(dlock.NewMutex(dlocktest.NewMemory()))
	nilLogger := allocs(dlock.NewMutex(dlocktest.NewMemory(), dlock.WithLogger(nil), dlock.WithObserver(nil)))
	observed := allocs(dlock.NewMutex(dlocktest.NewMemory(), dlock.WithObserver(&nopObserver{})))
	if nilLogger != plain {
		t.Errorf("acquire+release allocates %v with a nil logger and observer, %v without: unset observing must cost nothing", nilLogger, plain)
	}
	t.Logf("allocations per acquire+release: %v without observers, %v with one that does nothing", plain, observed)
}

type nopObserver struct{}

func (nopObserver) AcquireStart(ctx context.Context, _ dlock.AcquireEvent) context.Context {
	return ctx
}
func (nopObserver) AcquireEnd(ctx context.Context, _ dlock.AcquireEvent, _ error) context.Context {
	return ctx
}
func (nopObserver) Released(context.Context, dlock.HoldEvent, error) {}
func (nopObserver) Lost(context.Context, dlock.HoldEvent)            {}
