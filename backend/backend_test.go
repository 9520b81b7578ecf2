package backend_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
	"go.uber.org/goleak"
)

type key struct{}

// DetachedContext is not cancelled with its parent, carries its values,
// ends at its deadline or when cancelled (also before anyone asked for
// Done), and contexts derived from it follow it without goroutines.
func TestDetachedContext(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	cancelParent()

	ctx, cancel := backend.DetachedContext(parent, 50*time.Millisecond)
	defer cancel()
	if ctx.Value(key{}) != "v" {
		t.Fatal("the caller's values are lost")
	}
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > 50*time.Millisecond {
		t.Fatalf("Deadline = %v, %v", dl, ok)
	}
	if ctx.Err() != nil {
		t.Fatalf("detached ctx ended with its parent: %v", ctx.Err())
	}
	before := runtime.NumGoroutine()
	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	ran := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { close(ran) })
	defer stop()
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("deriving contexts started %d goroutines", n-before)
	}
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a derived ctx did not end at the deadline")
	}
	<-ran
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) || !errors.Is(context.Cause(child), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, child's cause %v", ctx.Err(), context.Cause(child))
	}
	if r, c := backend.ReleaseContext(ctx, time.Hour); r != ctx {
		t.Error("ReleaseContext made a second context of a detached one")
	} else {
		c()
	}

	// Cancelled before anyone looked: Done is closed when first asked for.
	ctx2, cancel2 := backend.DetachedContext(context.Background(), time.Hour)
	cancel2()
	select {
	case <-ctx2.Done():
	default:
		t.Fatal("a cancelled detached ctx is not done")
	}
	if !errors.Is(ctx2.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want context.Canceled", ctx2.Err())
	}

	// Err alone (no Done yet) answers from the deadline and cancel: nil
	// before, DeadlineExceeded once past it; Done is then closed at once.
	ctx3, cancel3 := backend.DetachedContext(context.Background(), 20*time.Millisecond)
	defer cancel3()
	if err := ctx3.Err(); err != nil {
		t.Fatalf("Err before the deadline = %v", err)
	}
	time.Sleep(30 * time.Millisecond)
	if err := ctx3.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err past the deadline = %v, want context.DeadlineExceeded", err)
	}
	select {
	case <-ctx3.Done():
	default:
		t.Fatal("past its deadline, Done is not closed")
	}
	ctx4, cancel4 := backend.DetachedContext(context.Background(), time.Hour)
	cancel4()
	if err := ctx4.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err of a cancelled ctx, Done never asked for = %v, want context.Canceled", err)
	}
}

// ReleaseDetached hands release a ctx that outlives its cancelled parent,
// carries its values and the deadline, and ends when release returns; a
// release that never asks for Done costs one allocation.
func TestReleaseDetached(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	cancelParent()
	var got context.Context
	err := backend.ReleaseDetached(parent, time.Minute, func(ctx context.Context) error {
		got = ctx
		if ctx.Err() != nil || ctx.Value(key{}) != "v" {
			return errors.New("release's ctx is cancelled with its parent, or lost its values")
		}
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) < 50*time.Second {
			return errors.New("release's ctx has not the timeout as its deadline")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Err() == nil {
		t.Fatal("release's ctx still live after release returned")
	}
	f := func(context.Context) error { return nil }
	if n := testing.AllocsPerRun(100, func() { _ = backend.ReleaseDetached(parent, time.Minute, f) }); n > 1 {
		t.Fatalf("ReleaseDetached costs %v allocations, want 1", n)
	}
	// A network client that checks Err before it sends makes no timer.
	f = func(ctx context.Context) error { return ctx.Err() }
	if n := testing.AllocsPerRun(100, func() { _ = backend.ReleaseDetached(parent, time.Minute, f) }); n > 1 {
		t.Fatalf("ReleaseDetached whose release checks Err costs %v allocations, want 1", n)
	}
}

// A detached ctx ends at its deadline and when cancelled: Done closes, Err
// matches, and contexts derived from it (asked for before or after Done,
// and a context.AfterFunc) end with it, with its Err as their cause, never
// the cause of the caller's cancelled ctx, and without a goroutine left.
func TestDetachedContextEnds(t *testing.T) {
	defer goleak.VerifyNone(t)
	parentCause := errors.New("the caller's cause")
	parent, cancelParent := context.WithCancelCause(context.Background())
	cancelParent(parentCause)

	for _, tc := range []struct {
		name    string
		timeout time.Duration
		cancel  bool // cancel it rather than wait for the deadline
		want    error
	}{
		{"deadline", 30 * time.Millisecond, false, context.DeadlineExceeded},
		{"cancel", time.Hour, true, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := backend.DetachedContext(parent, tc.timeout)
			defer cancel()
			early, cancelEarly := context.WithCancel(ctx) // before anyone asked for Done
			defer cancelEarly()
			done := ctx.Done()
			late, cancelLate := context.WithTimeout(ctx, time.Hour)
			defer cancelLate()
			ran := make(chan struct{})
			stop := context.AfterFunc(ctx, func() { close(ran) })
			defer stop()
			if ctx.Err() != nil || early.Err() != nil || late.Err() != nil {
				t.Fatalf("ended early: %v, %v, %v", ctx.Err(), early.Err(), late.Err())
			}
			if tc.cancel {
				cancel()
			}
			for _, c := range []<-chan struct{}{done, early.Done(), late.Done(), ran} {
				select {
				case <-c:
				case <-time.After(5 * time.Second):
					t.Fatal("a channel did not close when the ctx ended")
				}
			}
			if err := ctx.Err(); err != tc.want {
				t.Fatalf("Err = %v, want %v", err, tc.want)
			}
			for _, c := range []context.Context{ctx, early, late} {
				if err := context.Cause(c); err != tc.want {
					t.Errorf("Cause = %v, want %v", err, tc.want)
				}
			}
			if stop() {
				t.Error("stop after the AfterFunc ran reports it stopped it")
			}
		})
	}

	// A derived ctx cancelled first leaves the detached one alone, and an
	// AfterFunc stopped in time never runs.
	ctx, cancel := backend.DetachedContext(parent, time.Hour)
	child, cancelChild := context.WithCancel(ctx)
	cancelChild()
	<-child.Done()
	stop := context.AfterFunc(ctx, func() { t.Error("a stopped AfterFunc ran") })
	if !stop() {
		t.Error("stop before the end reports it did not stop f")
	}
	if ctx.Err() != nil {
		t.Fatalf("a child's cancel ended its parent: %v", ctx.Err())
	}
	cancel()
	cancel() // a second cancel does nothing
	if ctx.Err() != context.Canceled {
		t.Fatalf("Err = %v", ctx.Err())
	}
	// Ended before a derived ctx is made: the child is done at once.
	child2, cancelChild2 := context.WithCancel(ctx)
	defer cancelChild2()
	<-child2.Done()
	if context.Cause(child2) != context.Canceled {
		t.Fatalf("Cause = %v", context.Cause(child2))
	}
}

// Done made past the deadline is closed at once; Err past the deadline
// closes a Done already made without waiting for its timer.
func TestDetachedContextPastDeadline(t *testing.T) {
	ctx, cancel := backend.DetachedContext(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	select {
	case <-ctx.Done():
	default:
		t.Fatal("Done made past the deadline is open")
	}
	if ctx.Err() != context.DeadlineExceeded {
		t.Fatalf("Err = %v", ctx.Err())
	}
}

// Waiting on Done costs three allocations beyond the ctx, its channel and
// its timer (the timer and its function; context.WithoutCancel +
// WithDeadline cost 7); a derived ctx starts no goroutine.
func TestReleaseDetachedDoneAllocs(t *testing.T) {
	defer goleak.VerifyNone(t)
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	f := func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		default:
			return nil
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = backend.ReleaseDetached(parent, time.Minute, f) }); n > 4 {
		t.Fatalf("ReleaseDetached whose release asks for Done costs %v allocations, want 4", n)
	}
	before := runtime.NumGoroutine()
	_ = backend.ReleaseDetached(parent, time.Minute, func(ctx context.Context) error {
		c, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if n := runtime.NumGoroutine(); n > before {
			t.Errorf("deriving a ctx started %d goroutines", n-before)
		}
		return c.Err()
	})
}
