package dlocktest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/holder"
)

// Memory is an in-process backend: every primitive, native waits served
// in arrival order (first come, first served, with writer preference for
// RW locks), and fencing tokens, over maps guarded by a mutex. A try fails
// while anyone waits for the lock: it does not jump the queue. It is the
// reference implementation of the backend interfaces, and a
// stand-in for a real backend in unit tests of code that uses dlock:
//
//	mem := dlocktest.NewMemory()
//	mu := dlock.NewMutex(mem)
//
// Its locks live in one process; Lose simulates a loss. The zero value is
// not usable; call NewMemory.
type Memory struct {
	mu     sync.Mutex
	locks  map[memKey]*memLock
	tokens map[memKey]uint64
}

type memKey struct {
	kind byte // 'm' mutex, 'r' rwmutex, 's' semaphore
	name string
}

type memLock struct {
	holders  map[*MemoryLease]struct{}
	writer   *MemoryLease // the exclusive holder of a mutex or RW lock
	upgrader *MemoryLease // the upgradeable reader of an RW lock
	queue    []*memWaiter // in arrival order; the head is served first
}

// memWaiter is a wait in a lock's queue.
type memWaiter struct {
	can     func(*memLock) bool
	mode    memMode
	granted chan *MemoryLease // receives the lease when served
	holder  backend.Holder    // who waits, for the lease
	upgrade *MemoryLease      // an Upgrade's lease, to make the writer
}

// memMode is how a lease holds its lock.
type memMode uint8

const (
	shared      memMode = iota // a reader or a semaphore ticket
	exclusive                  // a mutex or a writer
	upgradeable                // an RW lock's upgradeable reader
)

// MemoryLease is a lock held in a Memory.
type MemoryLease struct {
	m     *Memory
	key   memKey
	token uint64
	lost  chan struct{}
	state int // guarded by m.mu: 0 held, 1 lost, 2 released
	who   backend.Holder
	after []*func() // guarded by m.mu: AfterLost's functions
}

var (
	_ backend.Locker[*MemoryLease]            = (*Memory)(nil)
	_ backend.LockWaiter[*MemoryLease]        = (*Memory)(nil)
	_ backend.RWLocker[*MemoryLease]          = (*Memory)(nil)
	_ backend.RWWaiter[*MemoryLease]          = (*Memory)(nil)
	_ backend.Semaphore[*MemoryLease]         = (*Memory)(nil)
	_ backend.SemaphoreWaiter[*MemoryLease]   = (*Memory)(nil)
	_ backend.Fencer                          = (*MemoryLease)(nil)
	_ backend.LossNotifier                    = (*MemoryLease)(nil)
	_ backend.LockDescriber                   = (*Memory)(nil)
	_ backend.RWDescriber                     = (*Memory)(nil)
	_ backend.MultiReleaser[*MemoryLease]     = (*Memory)(nil)
	_ backend.SemaphoreDescriber              = (*Memory)(nil)
	_ backend.UpgradeableLocker[*MemoryLease] = (*Memory)(nil)
	_ backend.UpgradeableWaiter[*MemoryLease] = (*Memory)(nil)
	_ backend.Upgrader                        = (*MemoryLease)(nil)
	_ backend.MultiLocker[*MemoryLease]       = (*Memory)(nil)
	_ backend.MultiRWLocker[*MemoryLease]     = (*Memory)(nil)
	_ backend.MultiSemaphore[*MemoryLease]    = (*Memory)(nil)
)

// NewMemory returns an empty in-process lock space.
func NewMemory() *Memory {
	return &Memory{locks: make(map[memKey]*memLock), tokens: make(map[memKey]uint64)}
}

// TryLock implements backend.Locker.
func (m *Memory) TryLock(ctx context.Context, name string) (*MemoryLease, bool, error) {
	return m.try(ctx, memKey{'m', name}, m.canWrite, exclusive)
}

// Lock implements backend.LockWaiter.
func (m *Memory) Lock(ctx context.Context, name string) (*MemoryLease, error) {
	return m.wait(ctx, memKey{'m', name}, m.canWrite, exclusive)
}

// TryRLock implements backend.RWLocker.
func (m *Memory) TryRLock(ctx context.Context, name string) (*MemoryLease, bool, error) {
	return m.try(ctx, memKey{'r', name}, m.canRead, shared)
}

// TryWLock implements backend.RWLocker.
func (m *Memory) TryWLock(ctx context.Context, name string) (*MemoryLease, bool, error) {
	return m.try(ctx, memKey{'r', name}, m.canWrite, exclusive)
}

// RLock implements backend.RWWaiter.
func (m *Memory) RLock(ctx context.Context, name string) (*MemoryLease, error) {
	return m.wait(ctx, memKey{'r', name}, m.canRead, shared)
}

// WLock implements backend.RWWaiter. While it waits, new readers of name
// wait too (behind it in the queue); readers that came first go first.
func (m *Memory) WLock(ctx context.Context, name string) (*MemoryLease, error) {
	return m.wait(ctx, memKey{'r', name}, m.canWrite, exclusive)
}

// TryAcquire implements backend.Semaphore. Each attempt is judged by its own
// limit: a holder that asks with a larger limit may enter beside holders
// that asked with a smaller one.
func (m *Memory) TryAcquire(ctx context.Context, name string, limit int) (*MemoryLease, bool, error) {
	if limit < 1 {
		return nil, false, fmt.Errorf("%w: %d", dlock.ErrInvalidLimit, limit)
	}
	return m.try(ctx, memKey{'s', name}, m.canTicket(limit), shared)
}

// Acquire implements backend.SemaphoreWaiter.
func (m *Memory) Acquire(ctx context.Context, name string, limit int) (*MemoryLease, error) {
	if limit < 1 {
		return nil, fmt.Errorf("%w: %d", dlock.ErrInvalidLimit, limit)
	}
	return m.wait(ctx, memKey{'s', name}, m.canTicket(limit), shared)
}

// TryLockAll implements backend.MultiLocker: atomic, under one lock of m.
func (m *Memory) TryLockAll(ctx context.Context, names []string) ([]*MemoryLease, int, error) {
	return m.tryAll(ctx, 'm', names, m.canWrite, exclusive)
}

// TryRLockAll implements backend.MultiRWLocker.
func (m *Memory) TryRLockAll(ctx context.Context, names []string) ([]*MemoryLease, int, error) {
	return m.tryAll(ctx, 'r', names, m.canRead, shared)
}

// TryWLockAll implements backend.MultiRWLocker.
func (m *Memory) TryWLockAll(ctx context.Context, names []string) ([]*MemoryLease, int, error) {
	return m.tryAll(ctx, 'r', names, m.canWrite, exclusive)
}

// TryAcquireAll implements backend.MultiSemaphore.
func (m *Memory) TryAcquireAll(ctx context.Context, names []string, limit int) ([]*MemoryLease, int, error) {
	if limit < 1 {
		return nil, -1, fmt.Errorf("%w: %d", dlock.ErrInvalidLimit, limit)
	}
	return m.tryAll(ctx, 's', names, m.canTicket(limit), shared)
}

// tryAll grants every name of kind at once, or none: it returns the index
// of the first name held in the way or waited for.
func (m *Memory) tryAll(ctx context.Context, kind byte, names []string, can func(*memLock) bool, mode memMode) ([]*MemoryLease, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, name := range names {
		if l := m.locks[memKey{kind, name}]; l != nil && (len(l.queue) > 0 || !can(l)) {
			return nil, i, nil
		}
	}
	who := self(ctx)
	leases := make([]*MemoryLease, len(names))
	for i, name := range names {
		leases[i], _ = m.grant(memKey{kind, name}, can, mode, who)
	}
	return leases, -1, nil
}

// ReleaseAll implements backend.MultiReleaser: each lease as its Release
// would.
func (m *Memory) ReleaseAll(ctx context.Context, leases []*MemoryLease) []error {
	errs := make([]error, len(leases))
	for i, l := range leases {
		if l.m != m {
			errs[i] = l.Release(ctx)
			continue
		}
		m.mu.Lock()
		errs[i] = l.releaseLocked()
		m.mu.Unlock()
	}
	return errs
}

// Lose makes lease lose its lock, as a server restart or an expired key
// would: its Lost channel closes and the lock is free for others.
func (m *Memory) Lose(lease *MemoryLease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if lease.state == 0 {
		lease.state = 1
		lease.closeLost()
		m.drop(lease)
	}
}

func (m *Memory) canRead(l *memLock) bool  { return l.writer == nil }
func (m *Memory) canWrite(l *memLock) bool { return len(l.holders) == 0 }
func (m *Memory) canTicket(limit int) func(*memLock) bool {
	return func(l *memLock) bool { return len(l.holders) < limit }
}

func (m *Memory) lock(k memKey) *memLock {
	l := m.locks[k]
	if l == nil {
		l = &memLock{holders: make(map[*MemoryLease]struct{})}
		m.locks[k] = l
	}
	return l
}

// grant gives k to a new lease if can allows it; m.mu is held.
func (m *Memory) grant(k memKey, can func(*memLock) bool, mode memMode, who backend.Holder) (*MemoryLease, bool) {
	l := m.lock(k)
	if !can(l) {
		return nil, false
	}
	m.tokens[k]++
	who.Since = time.Now()
	lease := &MemoryLease{m: m, key: k, token: m.tokens[k], lost: make(chan struct{}), who: who}
	l.holders[lease] = struct{}{}
	switch mode {
	case exclusive:
		l.writer = lease
	case upgradeable:
		l.upgrader = lease
	}
	return lease, true
}

// try grants k at once, unless it is held in the way or anyone waits for
// it (a try does not jump the queue).
func (m *Memory) try(ctx context.Context, k memKey, can func(*memLock) bool, mode memMode) (*MemoryLease, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.locks[k]; l != nil && len(l.queue) > 0 {
		return nil, false, nil
	}
	lease, ok := m.grant(k, can, mode, self(ctx))
	if !ok {
		m.tidy(k)
	}
	return lease, ok, nil
}

// wait queues behind the waiters of k, if any, and is served in order.
func (m *Memory) wait(ctx context.Context, k memKey, can func(*memLock) bool, mode memMode) (*MemoryLease, error) {
	m.mu.Lock()
	l := m.lock(k)
	who := self(ctx)
	if len(l.queue) == 0 {
		if lease, ok := m.grant(k, can, mode, who); ok {
			m.mu.Unlock()
			return lease, nil
		}
	}
	w := &memWaiter{can: can, mode: mode, granted: make(chan *MemoryLease, 1), holder: who}
	l.queue = append(l.queue, w)
	m.mu.Unlock()
	select {
	case lease := <-w.granted:
		return lease, nil
	case <-ctx.Done():
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case lease := <-w.granted: // served as ctx ended: give it back
		lease.state = 2
		lease.closeLost()
		m.drop(lease)
	default:
		l.queue = slices.DeleteFunc(l.queue, func(q *memWaiter) bool { return q == w })
		m.serve(k) // a writer that gives up may let readers behind it in
		m.tidy(k)
	}
	return nil, ctx.Err()
}

// serve grants k to the waiters at the head of its queue, in order, while
// they can have it; m.mu is held.
func (m *Memory) serve(k memKey) {
	l := m.locks[k]
	for l != nil && len(l.queue) > 0 {
		w := l.queue[0]
		if w.upgrade != nil {
			if !w.can(l) {
				return
			}
			l.writer = w.upgrade
			l.queue = l.queue[1:]
			w.granted <- w.upgrade
			continue
		}
		lease, ok := m.grant(k, w.can, w.mode, w.holder)
		if !ok {
			return
		}
		l.queue = l.queue[1:]
		w.granted <- lease
	}
}

// drop removes a lease from its lock and serves the waiters; m.mu is held.
func (m *Memory) drop(lease *MemoryLease) {
	l := m.locks[lease.key]
	l.queue = slices.DeleteFunc(l.queue, func(q *memWaiter) bool { return q.upgrade == lease })
	delete(l.holders, lease)
	if l.writer == lease {
		l.writer = nil
	}
	if l.upgrader == lease {
		l.upgrader = nil
	}
	m.serve(lease.key)
	m.tidy(lease.key)
}

// tidy forgets a lock nobody holds or waits for; m.mu is held.
func (m *Memory) tidy(k memKey) {
	if l := m.locks[k]; l != nil && len(l.holders) == 0 && len(l.queue) == 0 {
		delete(m.locks, k)
	}
}

// Release implements backend.Lease.
func (l *MemoryLease) Release(ctx context.Context) error {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	return l.releaseLocked()
}

// releaseLocked is Release with l.m.mu held.
func (l *MemoryLease) releaseLocked() error {
	switch l.state {
	case 1:
		l.state = 2
		return dlock.ErrLockLost
	case 2:
		return dlock.ErrNotHeld
	}
	l.state = 2
	l.closeLost()
	l.m.drop(l)
	return nil
}

// Lost implements backend.Lease.
func (l *MemoryLease) Lost() <-chan struct{} { return l.lost }

// Token implements backend.Fencer: tokens count the acquisitions of each
// name and kind, from 1.
func (l *MemoryLease) Token() uint64 { return l.token }

// AfterLost implements backend.LossNotifier.
func (l *MemoryLease) AfterLost(f func()) (stop func() bool) {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.state != 0 {
		go f()
		return func() bool { return false }
	}
	p := &f
	l.after = append(l.after, p)
	return func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		n := len(l.after)
		l.after = slices.DeleteFunc(l.after, func(q *func()) bool { return q == p })
		return len(l.after) < n
	}
}

// closeLost closes Lost and starts AfterLost's functions; m.mu is held.
func (l *MemoryLease) closeLost() {
	close(l.lost)
	for _, f := range l.after {
		go (*f)()
	}
	l.after = nil
}

// self is the holder an acquisition with ctx records: this process, with
// ctx's owner text.
func self(ctx context.Context) backend.Holder {
	return holder.Self(backend.OwnerFromContext(ctx), time.Time{})
}

// DescribeLock implements backend.LockDescriber.
func (m *Memory) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	return m.describe(memKey{'m', name}), nil
}

// DescribeRW implements backend.RWDescriber.
func (m *Memory) DescribeRW(ctx context.Context, name string) ([]backend.Holder, error) {
	return m.describe(memKey{'r', name}), nil
}

// DescribeSemaphore implements backend.SemaphoreDescriber.
func (m *Memory) DescribeSemaphore(ctx context.Context, name string, limit int) ([]backend.Holder, error) {
	if limit < 1 {
		return nil, fmt.Errorf("%w: %d", dlock.ErrInvalidLimit, limit)
	}
	return m.describe(memKey{'s', name}), nil
}

// describe lists k's holders, oldest first.
func (m *Memory) describe(k memKey) []backend.Holder {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.locks[k]
	if l == nil {
		return nil
	}
	hs := make([]backend.Holder, 0, len(l.holders))
	for lease := range l.holders {
		h := lease.who
		h.Shared = k.kind == 'r' && l.writer != lease
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b backend.Holder) int { return a.Since.Compare(b.Since) })
	return hs
}

// TryULock implements backend.UpgradeableLocker.
func (m *Memory) TryULock(ctx context.Context, name string) (*MemoryLease, bool, error) {
	return m.try(ctx, memKey{'r', name}, m.canULock, upgradeable)
}

// ULock implements backend.UpgradeableWaiter.
func (m *Memory) ULock(ctx context.Context, name string) (*MemoryLease, error) {
	return m.wait(ctx, memKey{'r', name}, m.canULock, upgradeable)
}

func (m *Memory) canULock(l *memLock) bool { return l.writer == nil && l.upgrader == nil }

// TryUpgrade implements backend.Upgrader.
func (l *MemoryLease) TryUpgrade(ctx context.Context) (bool, error) {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	lk, err := l.upgradable()
	if err != nil || lk.writer == l {
		return err == nil, err
	}
	if len(lk.holders) != 1 {
		return false, nil
	}
	lk.writer = l
	return true, nil
}

// Upgrade implements backend.Upgrader: it waits at the head of the queue,
// so that readers and writers that come later wait behind it.
func (l *MemoryLease) Upgrade(ctx context.Context) error {
	m := l.m
	m.mu.Lock()
	lk, err := l.upgradable()
	if err != nil || lk.writer == l {
		m.mu.Unlock()
		return err
	}
	if len(lk.holders) == 1 {
		lk.writer = l
		m.mu.Unlock()
		return nil
	}
	w := &memWaiter{can: func(x *memLock) bool { return len(x.holders) == 1 }, granted: make(chan *MemoryLease, 1), upgrade: l}
	lk.queue = append([]*memWaiter{w}, lk.queue...)
	m.mu.Unlock()
	var end error
	select {
	case <-w.granted:
		return nil
	case <-ctx.Done():
		end = ctx.Err()
	case <-l.lost:
		end = dlock.ErrLockLost
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-w.granted: // served as it gave up: it holds the write lock
		if end == dlock.ErrLockLost {
			return end
		}
		return nil
	default:
	}
	lk.queue = slices.DeleteFunc(lk.queue, func(q *memWaiter) bool { return q == w })
	m.serve(l.key) // readers behind it may go in
	return end
}

// upgradable returns l's lock if l is a held upgradeable reader; m.mu is
// held.
func (l *MemoryLease) upgradable() (*memLock, error) {
	switch l.state {
	case 1:
		return nil, dlock.ErrLockLost
	case 2:
		return nil, dlock.ErrNotHeld
	}
	lk := l.m.locks[l.key]
	if lk == nil || lk.upgrader != l {
		return nil, backend.Permanent(fmt.Errorf("%w: not an upgradeable read lock", errors.ErrUnsupported))
	}
	return lk, nil
}
