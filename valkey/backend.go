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
// A Backend owns a background goroutine (only while leases are held) and a
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

// TryLock implements backend.Locker.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	a, err := b.tryLock(ctx, name)
	return a.lease, a.lease != nil, err
}

func (b *Backend) tryLock(ctx context.Context, name string) (attempt, error) {
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		return attempt{}, err
	}
	return b.c.try(ctx, kindMutex, name, acquireMutex, mutexKeys(base), base)
}

// Lock implements backend.LockWaiter: it waits for a release notification
// (or, as a fallback, polls with a bounded backoff).
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, kindMutex, name, base, func(ctx context.Context) (attempt, error) {
		return b.c.try(ctx, kindMutex, name, acquireMutex, mutexKeys(base), base)
	})
}

// TryRLock implements backend.RWLocker. It fails while a writer holds the
// lock or waits for it in WLock.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, kindRead, name, acquireRead, rwKeys(base), base)
	return a.lease, a.lease != nil, err
}

// TryWLock implements backend.RWLocker.
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, kindWrite, name, acquireWrite, rwKeys(base), base, "", "0")
	return a.lease, a.lease != nil, err
}

// RLock implements backend.RWWaiter.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, kindRead, name, base, func(ctx context.Context) (attempt, error) {
		return b.c.try(ctx, kindRead, name, acquireRead, rwKeys(base), base)
	})
}

// WLock implements backend.RWWaiter. While it waits it keeps a mark in the
// lock's set of waiting writers (expiring after writerMark unless renewed,
// so a crashed waiter does not hold readers off for long), and new readers
// are refused.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		return nil, err
	}
	waiter := newToken()
	mark := strconv.FormatInt(writerMark.Milliseconds(), 10)
	l, err := b.c.wait(ctx, kindWrite, name, base, func(ctx context.Context) (attempt, error) {
		return b.c.try(ctx, kindWrite, name, acquireWrite, rwKeys(base), base, waiter, mark)
	})
	if err != nil {
		// Stop holding readers off, and wake them.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		b.c.evalAll(uctx, unmarkWriter, []string{rwKeys(base)[2]}, []string{waiter, channel(base, kindWrite)})
	}
	return l, err
}

// TryAcquire implements backend.Semaphore. Each attempt is judged by its
// own limit: a holder that asks with a larger limit may enter beside
// holders that asked with a smaller one.
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	base, err := b.semBase(name, limit)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, kindSem, name, acquireSem, semKeys(base), base, strconv.Itoa(limit))
	return a.lease, a.lease != nil, err
}

// Acquire implements backend.SemaphoreWaiter.
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	base, err := b.semBase(name, limit)
	if err != nil {
		return nil, err
	}
	lim := strconv.Itoa(limit)
	return b.c.wait(ctx, kindSem, name, base, func(ctx context.Context) (attempt, error) {
		return b.c.try(ctx, kindSem, name, acquireSem, semKeys(base), base, lim)
	})
}

func (b *Backend) semBase(name string, limit int) (string, error) {
	if limit < 1 {
		return "", fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit)
	}
	return keyBase(b.c.cfg.prefix, name)
}
