package dlock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// DoAll takes every lock of names, all or none, waiting until it has them
// all or ctx is done; runs fn; and releases them all when fn returns or
// panics. fn's ctx is cancelled, with cause an error matching ErrLockLost,
// if any of them is lost.
//
// The names are deduplicated and taken in one canonical order (byte
// order), whatever order the caller gives, so two callers whose sets
// overlap never deadlock. The acquisition shares ctx's one deadline; when a
// name cannot be had before it ends, every name already taken is released
// before DoAll returns, and the error — matching ErrNotAcquired and
// ctx.Err() — names the lock that could not be had.
//
// A backend with an atomic path for several names (backend.MultiLocker,
// MultiRWLocker, MultiSemaphore) takes them all in one attempt: no other
// client ever sees some of them taken and not the others. When that
// attempt finds a name busy, and always on other backends, the names are
// taken one after another, waiting in line for each, so another client may
// see some of them held before DoAll has the rest: all-or-none is then
// about what DoAll holds when it returns or runs fn. TryDoAll and
// TryAcquireAll over an atomic path are atomic. Each backend's package
// documentation says which path it has.
func (g *Guard[L]) DoAll(ctx context.Context, names []string, fn func(ctx context.Context) error) error {
	return g.doAll(ctx, names, fn, true)
}

// TryDoAll is DoAll with a single attempt at each name: when one is held
// elsewhere it releases those it took and returns at once an error
// matching ErrNotAcquired that names it, without running fn.
func (g *Guard[L]) TryDoAll(ctx context.Context, names []string, fn func(ctx context.Context) error) error {
	return g.doAll(ctx, names, fn, false)
}

// AcquireAll is DoAll's acquisition: it returns every lock of names held,
// as one LockSet, which the caller must Release.
func (g *Guard[L]) AcquireAll(ctx context.Context, names []string) (*LockSet[L], error) {
	return g.acquireAll(ctx, names, true)
}

// TryAcquireAll is TryDoAll's acquisition (see AcquireAll).
func (g *Guard[L]) TryAcquireAll(ctx context.Context, names []string) (*LockSet[L], error) {
	return g.acquireAll(ctx, names, false)
}

func (g *Guard[L]) doAll(ctx context.Context, names []string, fn func(ctx context.Context) error, wait bool) error {
	if fn == nil {
		return g.errorf(fmt.Sprint(names), ErrNilFunc)
	}
	set, err := g.acquireAll(ctx, names, wait)
	if err != nil {
		return err
	}
	return run(ctx, set, fn)
}

// canonical returns names sorted and without duplicates, or an error if
// there are none or one is empty.
func canonical(names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no names", ErrInvalidName)
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	if sorted[0] == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidName)
	}
	return sorted, nil
}

func (g *Guard[L]) acquireAll(ctx context.Context, names []string, wait bool) (*LockSet[L], error) {
	sorted, err := canonical(names)
	if err != nil {
		return nil, g.errorf(fmt.Sprint(names), err)
	}
	set := &LockSet[L]{lost: make(chan struct{})}
	if g.tryAll != nil && len(sorted) > 1 {
		set.locks, err = g.takeAll(ctx, sorted)
		unsupported := errors.Is(err, errors.ErrUnsupported) // not for this set: one by one
		if err != nil && !unsupported && (!wait || !errors.Is(err, ErrNotAcquired) || ctx.Err() != nil) {
			return nil, err
		}
	}
	for _, name := range sorted[len(set.locks):] { // all of them unless takeAll took them
		lk, err := g.acquire(ctx, name, wait, true)
		if err != nil {
			for _, taken := range slices.Backward(set.locks) {
				_ = taken.Release(ctx)
			}
			return nil, err
		}
		set.locks = append(set.locks, lk)
	}
	set.unwatch = make([]func(), len(set.locks))
	for i, lk := range set.locks {
		set.unwatch[i] = lk.watch(func() { set.markLost(lk) })
	}
	return set, nil
}

// LockSet is a set of held locks, one per name, returned by AcquireAll and
// TryAcquireAll. It is lost when any of them is. Its methods are safe for
// concurrent use.
type LockSet[L backend.Lease] struct {
	locks   []*Lock[L] // in canonical order
	unwatch []func()

	mu       sync.Mutex
	lost     chan struct{} // closed by the first loss, or by Release
	closed   bool          // lost is closed
	lostLock *Lock[L]      // the first lock lost
	state    lockState
}

// Names returns the set's names in canonical order (sorted, deduplicated).
func (s *LockSet[L]) Names() []string {
	names := make([]string, len(s.locks))
	for i, lk := range s.locks {
		names[i] = lk.Name()
	}
	return names
}

// Locks returns the set's locks in canonical order.
func (s *LockSet[L]) Locks() []*Lock[L] { return slices.Clone(s.locks) }

// Lost returns a channel that is closed when any lock of the set is lost,
// and once the set is released; Err tells which.
func (s *LockSet[L]) Lost() <-chan struct{} { return s.lost }

// Err is nil while every lock is held; it matches ErrLockLost, naming the
// lock, once any was lost (also when a loss was first learned by Release);
// and ErrNotHeld after any other Release.
func (s *LockSet[L]) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.lostLock != nil:
		return s.lostLock.g.errorf(s.lostLock.name, ErrLockLost)
	case s.state == released:
		return s.locks[0].g.errorf(fmt.Sprint(s.Names()), ErrNotHeld)
	}
	return nil
}

// Token returns the fencing token of the lock name, if the set has it and
// the backend offers tokens.
func (s *LockSet[L]) Token(name string) (uint64, bool) {
	for _, lk := range s.locks {
		if lk.name == name {
			return lk.Token()
		}
	}
	return 0, false
}

// Release releases every lock of the set, in reverse order, even when ctx
// is cancelled (bounded by the release timeout): in one round trip when the
// backend can release several locks at once (backend.MultiReleaser), else
// one after another, each bounded by the timeout. It returns an error
// matching ErrLockLost if any lock had been lost, and one matching
// ErrNotHeld if the set was already released; the errors of every lock
// are joined.
func (s *LockSet[L]) Release(ctx context.Context) error {
	s.mu.Lock()
	if s.state != held {
		s.mu.Unlock()
		return s.locks[0].g.errorf(fmt.Sprint(s.Names()), fmt.Errorf("release: %w", ErrNotHeld))
	}
	s.state = releasing
	s.mu.Unlock()
	for _, u := range s.unwatch {
		u()
	}
	var errs []error
	for i, err := range s.release(ctx) {
		if err != nil {
			errs = append(errs, err)
			if lk := s.locks[len(s.locks)-1-i]; errors.Is(err, ErrLockLost) {
				s.markLost(lk)
			}
		}
	}
	s.mu.Lock()
	s.state = released
	if !s.closed {
		s.closed = true
		close(s.lost)
	}
	s.mu.Unlock()
	return errors.Join(errs...)
}

// release releases the set's locks in reverse order and returns each one's
// error, in that order: in one round trip when the backend has one
// (backend.MultiReleaser), else one lock after another.
func (s *LockSet[L]) release(ctx context.Context) []error {
	g := s.locks[0].g
	errs := make([]error, len(s.locks))
	if g.releaseAll == nil || len(s.locks) < 2 {
		for i, lk := range slices.Backward(s.locks) {
			errs[len(s.locks)-1-i] = lk.Release(ctx)
		}
		return errs
	}
	var (
		leases  = make([]L, 0, len(s.locks))
		pending = make([]*Lock[L], 0, len(s.locks)) // the locks of leases
		wasLost = make([]bool, 0, len(s.locks))
		where   = make([]int, 0, len(s.locks)) // their places in errs
	)
	for i, lk := range slices.Backward(s.locks) {
		lost, err := lk.beginRelease()
		if err != nil {
			errs[len(s.locks)-1-i] = err
			continue
		}
		leases, pending, wasLost = append(leases, lk.lease), append(pending, lk), append(wasLost, lost)
		where = append(where, len(s.locks)-1-i)
	}
	var got []error
	_ = backend.ReleaseDetached(ctx, g.opts.releaseTimeout, func(ctx context.Context) error {
		got = g.releaseAll(ctx, leases)
		return nil
	})
	for j, lk := range pending {
		var err error
		if j < len(got) {
			err = got[j]
		} else { // a backend that broke the contract: the lease's fate is unknown
			err = fmt.Errorf("the backend's ReleaseAll returned %d errors for %d leases", len(got), len(leases))
		}
		errs[where[j]] = lk.endRelease(wasLost[j], err)
	}
	return errs
}

// markLost records the first lost lock and closes Lost.
func (s *LockSet[L]) markLost(lk *Lock[L]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lostLock == nil {
		s.lostLock = lk
	}
	if !s.closed {
		s.closed = true
		close(s.lost)
	}
	lk.observeLost(false)
}

func (s *LockSet[L]) newRun() *doRun { return new(doRun) }

func (s *LockSet[L]) watchLoss(r *doRun) {
	r.running.Add(1)
	r.stop = watchChan(s.lost, func() {
		defer r.running.Done()
		r.lost(s.Err())
	}, r.running.Done)
}

// takeAll takes the sorted names in one atomic attempt of the backend. It
// returns an error matching ErrNotAcquired, naming one busy lock, when the
// attempt found one held elsewhere.
func (g *Guard[L]) takeAll(ctx context.Context, names []string) ([]*Lock[L], error) {
	setName := fmt.Sprint(names)
	if g.err != nil {
		return nil, g.errorf(setName, g.err)
	}
	if ctx.Err() != nil {
		return nil, g.notAcquired(ctx, setName, nil)
	}
	var obs []*observed
	if len(g.opts.observers) > 0 {
		obs = make([]*observed, len(names))
		for i, name := range names {
			obs[i], _ = g.observeStart(ctx, name, true)
		}
	}
	locks, err := g.tryAllOnce(ctx, names, setName)
	for i, o := range obs {
		octx := o.end(1, 0, err)
		if locks != nil && octx != nil {
			locks[i].obs = &lockObs{ctx: octx, acquired: time.Now()}
		}
	}
	return locks, err
}

// tryAllOnce is takeAll's attempt, without the observers.
func (g *Guard[L]) tryAllOnce(ctx context.Context, names []string, setName string) ([]*Lock[L], error) {
	octx, err := g.withOwner(ctx)
	if err != nil {
		return nil, g.errorf(setName, err)
	}
	leases, busy, err := g.tryAll(octx, names)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, g.notAcquired(ctx, setName, nil)
	case err != nil:
		return nil, g.errorf(setName, err)
	case busy >= 0 && busy < len(names):
		return nil, g.errorf(names[busy], ErrNotAcquired)
	}
	locks := make([]*Lock[L], len(leases))
	for i, l := range leases {
		locks[i] = &Lock[L]{g: g, name: names[min(i, len(names)-1)], lease: l}
	}
	if busy >= 0 || len(leases) != len(names) || ctx.Err() != nil {
		// A backend that broke the contract, or ctx ended as the locks were
		// granted: give back whatever was taken rather than leak it.
		for _, lk := range slices.Backward(locks) {
			_ = lk.Release(ctx)
		}
		if ctx.Err() != nil {
			return nil, g.notAcquired(ctx, setName, nil)
		}
		return nil, g.errorf(setName, fmt.Errorf("backend returned %d leases and busy %d for %d names", len(leases), busy, len(names)))
	}
	return locks, nil
}
