package valkey

import (
	"context"
	"fmt"
	"strconv"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
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

// Waiting.
const (
	minPoll = 10 * time.Millisecond
	// maxPoll bounds the fallback poll of a waiter (for lost
	// notifications); a lock expected to expire sooner is retried then.
	maxPoll = 500 * time.Millisecond
	// writerMark is how long a waiting writer's mark holds readers off
	// without being renewed; a waiting writer renews it at least every
	// maxPoll.
	writerMark = 2 * time.Second
)

// wait takes a lock by repeated attempts: after a failed one it subscribes
// to the lock's release channel (on every node) and tries again, so a
// release in between is not missed; then it tries again whenever a release
// is announced, when the lock's holder is due to expire, and, in case a
// notification was lost, at a bounded backoff.
//
// A mutex's or semaphore's release notification wakes one waiter of this
// Backend (see notifier): a waiter that stops without the lock passes its
// turn on, and a semaphore waiter that takes a ticket passes one on too.
func (c *core) wait(ctx context.Context, k kind, name, base string, try func(context.Context) (attempt, error)) (l *Lease, err error) {
	a, err := try(ctx) // the uncontended path builds nothing to wait with
	if err != nil || a.lease != nil {
		return a.lease, err
	}
	wake := make(chan struct{}, 1)
	subs := make([]*subscription, len(c.nodes))
	one := k == kindMutex || k == kindSem
	defer func() {
		for _, s := range subs {
			if s == nil {
				continue
			}
			if one && (l == nil || k == kindSem) {
				s.passOn()
			}
			s.close()
		}
	}()
	ch := channel(base, k)
	subscribed := false
	poll := pace.New(minPoll, maxPoll)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for first := true; ; first = false {
		if !first {
			if a, err = try(ctx); err != nil {
				return nil, err
			}
			if a.lease != nil {
				return a.lease, nil
			}
		}
		if !subscribed || c.dropDead(subs) {
			subscribed = true
			if c.subscribe(ctx, subs, ch, one, wake) > 0 && ctx.Err() == nil {
				continue // try again now that a release cannot be missed
			}
		}
		d := min(poll.Next(), maxPoll) // jittered, never beyond maxPoll
		if a.hint > 0 && a.hint+time.Millisecond < d {
			d = a.hint + time.Millisecond
		}
		timer.Reset(d)
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// subscribe subscribes to ch on every node where subs has no
// subscription, and returns how many it made; failures leave the waiter
// polling.
func (c *core) subscribe(ctx context.Context, subs []*subscription, ch string, one bool, wake chan struct{}) int {
	made := 0
	for i, n := range c.nodes {
		if subs[i] != nil {
			continue
		}
		s, err := n.notif.subscribe(ctx, ch, one, wake)
		if err != nil {
			c.cfg.logger.Debug("dlock/valkey: subscribe failed; polling", "err", err)
			continue
		}
		subs[i] = s
		made++
	}
	return made
}

// dropDead drops the subscriptions whose connection broke and reports
// whether there were any.
func (c *core) dropDead(subs []*subscription) bool {
	found := false
	for i, s := range subs {
		if s != nil && s.dead() {
			s.close()
			subs[i] = nil
			found = true
		}
	}
	return found
}
