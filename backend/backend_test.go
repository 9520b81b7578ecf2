package backend_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
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
