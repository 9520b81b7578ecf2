package valkey

import (
	"context"
	"fmt"
	"strconv"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
)

// Backend is a lock backend over one valkey-go client: a standalone
// server, a Valkey Cluster or a Sentinel-managed primary. It offers
// mutexes, reader-writer mutexes and semaphores, with native waits and
// fencing tokens. It is safe for concurrent use.
//
// A Backend owns a background goroutine (only while leases are held, and
// for a second after the last is released) and a
// dedicated pub/sub connection (only once something waited); Close stops
// them. It does not close the client.
type Backend struct {
	c *core
}

var (
	_ backend.Locker[*Lease]          = (*Backend)(nil)
	_ backend.LockWaiter[*Lease]      = (*Backend)(nil)
	_ backend.RWLocker[*Lease]        = (*Backend)(nil)
	_ backend.RWWaiter[*Lease]        = (*Backend)(nil)
	_ backend.Semaphore[*Lease]       = (*Backend)(nil)
	_ backend.SemaphoreWaiter[*Lease] = (*Backend)(nil)
	_ backend.Fencer                  = (*Lease)(nil)
	_ backend.LossNotifier            = (*Lease)(nil)
	_ backend.LostChecker             = (*Lease)(nil)
)

// New returns a Backend over client, configured by opts. It returns an
// error for a nil client or an invalid option.
func New(client valkeygo.Client, opts ...Option) (*Backend, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil client", errBadOption)
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Backend{c: newCore(cfg, []valkeygo.Client{client})}, nil
}

// Close stops extending leases and closes the pub/sub connection. Leases
// still held are reported lost (their keys expire within the lease time
// unless released). Later calls fail. Close is idempotent and returns nil.
func (b *Backend) Close() error {
	b.c.close()
	return nil
}

// TryLock implements backend.Locker. It fails while others wait for the
// lock (on one node; see the package documentation): a try never jumps the
// queue.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	a, err := b.tryLock(ctx, name)
	return a.lease, a.lease != nil, err
}

func (b *Backend) tryLock(ctx context.Context, name string) (attempt, error) {
	r, err := b.mutex(name)
	if err != nil {
		return attempt{}, err
	}
	return b.c.try(ctx, r, "")
}

func (b *Backend) mutex(name string) (*request, error) {
	return newRequestFor(b.c, kindMutex, name, acquireMutex)
}

// Lock implements backend.LockWaiter: it queues for the lock and waits for
// a release notification (or, as a fallback, polls with a bounded
// backoff).
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	r, err := b.mutex(name)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, r)
}

func (b *Backend) rw(k kind, name string) (*request, error) {
	s := acquireRead
	if k == kindWrite {
		s = acquireWrite
	}
	return newRequestFor(b.c, k, name, s)
}

// TryRLock implements backend.RWLocker. It fails while a writer holds the
// lock or waits for it.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	r, err := b.rw(kindRead, name)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, r, "")
	return a.lease, a.lease != nil, err
}

// TryWLock implements backend.RWLocker. It fails while anyone holds the
// lock or waits for it.
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	r, err := b.rw(kindWrite, name)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, r, "")
	return a.lease, a.lease != nil, err
}

// RLock implements backend.RWWaiter. A reader queues like a writer, and
// enters when no writer holds the lock and no writer queued before it.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	r, err := b.rw(kindRead, name)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, r)
}

// WLock implements backend.RWWaiter. While a writer waits, readers that
// come after it wait too (writer preference); readers that came before it
// go first.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	r, err := b.rw(kindWrite, name)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, r)
}

func (b *Backend) sem(name string, limit int) (*request, error) {
	if limit < 1 {
		return nil, fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit)
	}
	r, err := newRequestFor(b.c, kindSem, name, acquireSem)
	if err != nil {
		return nil, err
	}
	r.extra = []string{strconv.Itoa(limit)}
	return r, nil
}

// TryAcquire implements backend.Semaphore. Each attempt is judged by its
// own limit: a holder that asks with a larger limit may enter beside
// holders that asked with a smaller one. It fails while others wait for a
// ticket.
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	r, err := b.sem(name, limit)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, r, "")
	return a.lease, a.lease != nil, err
}

// Acquire implements backend.SemaphoreWaiter: waiters get tickets in the
// order they began waiting.
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	r, err := b.sem(name, limit)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, r)
}
