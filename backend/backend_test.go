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
}
