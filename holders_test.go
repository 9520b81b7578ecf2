package dlock_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

// Holders tells who holds a name, with the Guard's owner text or the
// call's; a too long owner text and a backend that records no holders are
// clear errors.
func TestHolders(t *testing.T) {
	ctx := context.Background()
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem, dlock.WithOwner("nightly report"))
	lk, err := mu.TryAcquire(ctx, "job")
	if err != nil {
		t.Fatal(err)
	}
	hs, err := mu.Holders(ctx, "job")
	if err != nil || len(hs) != 1 || hs[0].Owner != "nightly report" || hs[0].PID != os.Getpid() || hs[0].Since.IsZero() {
		t.Fatalf("Holders = %+v, %v", hs, err)
	}
	_ = lk.Release(ctx)

	lk, err = mu.TryAcquire(dlock.ContextWithOwner(ctx, "deploy job 4411"), "job")
	if err != nil {
		t.Fatal(err)
	}
	if hs, _ := mu.Holders(ctx, "job"); len(hs) != 1 || hs[0].Owner != "deploy job 4411" {
		t.Fatalf("Holders with the call's owner = %+v", hs)
	}
	_ = lk.Release(ctx)

	long := strings.Repeat("x", dlock.MaxOwner+1)
	if _, err := dlock.NewMutex(mem, dlock.WithOwner(long)).TryAcquire(ctx, "job"); !errors.Is(err, dlock.ErrInvalidOption) {
		t.Fatalf("TryAcquire with a long WithOwner: %v, want ErrInvalidOption", err)
	}
	if _, err := mu.TryAcquire(dlock.ContextWithOwner(ctx, long), "job"); !errors.Is(err, dlock.ErrInvalidOption) {
		t.Fatalf("TryAcquire with a long ContextWithOwner: %v, want ErrInvalidOption", err)
	}
	if _, err := mu.Holders(ctx, ""); !errors.Is(err, dlock.ErrInvalidName) {
		t.Fatalf("Holders of an empty name: %v", err)
	}
	if _, err := dlock.NewMutex(pollOnly{mem}).Holders(ctx, "job"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Holders over a backend that records none: %v, want errors.ErrUnsupported", err)
	}
}
