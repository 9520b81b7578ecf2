package dlock

import (
	"context"
	"fmt"

	"github.com/dlock-go/dlock/backend"
)

// NewSemaphore returns a distributed counting semaphore over b: at most
// limit holders of each name at a time. A limit below 1 is reported, as an
// error matching ErrInvalidLimit, by every call of the returned Guard. It
// waits with b's native wait when b implements backend.SemaphoreWaiter,
// else it polls with backoff.
//
// Every holder of a name should use the same limit; each backend documents
// what happens when they disagree.
func NewSemaphore[L backend.Lease](b backend.Semaphore[L], limit int, opts ...Option) *Semaphore[L] {
	if b == nil {
		return brokenGuard[L]("semaphore", opts)
	}
	if limit < 1 {
		g := brokenGuard[L]("semaphore", opts)
		g.err = fmt.Errorf("%w: %d (must be at least 1)", ErrInvalidLimit, limit)
		return g
	}
	try := func(ctx context.Context, name string) (L, bool, error) {
		return b.TryAcquire(ctx, name, limit)
	}
	var wait func(context.Context, string) (L, error)
	if w, ok := b.(backend.SemaphoreWaiter[L]); ok {
		wait = func(ctx context.Context, name string) (L, error) {
			return w.Acquire(ctx, name, limit)
		}
	}
	g := newGuard(b, "semaphore", try, wait, opts)
	if m, ok := b.(backend.MultiSemaphore[L]); ok {
		g.tryAll = func(ctx context.Context, names []string) ([]L, int, error) {
			return m.TryAcquireAll(ctx, names, limit)
		}
	}
	if d, ok := b.(backend.SemaphoreDescriber); ok {
		g.describe = func(ctx context.Context, name string) ([]Holder, error) {
			return d.DescribeSemaphore(ctx, name, limit)
		}
	}
	return g
}
