package dlock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/detach"
	"github.com/dlock-go/dlock/internal/pace"
)

// Errors returned by dlock and its backends. Match them with errors.Is; the
// errors actually returned wrap these and name the lock. Each but ErrNilFunc
// is the backend package's error of the same name, so that a backend needs
// only package backend.
var (
	// ErrNotAcquired reports that a lock was not acquired: held elsewhere
	// (TryDo, TryAcquire), or a wait ended because its ctx was done (then
	// the error matches ctx.Err() too).
	ErrNotAcquired = backend.ErrNotAcquired
	// ErrLockLost reports that a held lock was lost: the backend could no
	// longer guarantee ownership. It is the cause of Do's ctx cancellation.
	ErrLockLost = backend.ErrLockLost
	// ErrInvalidName reports a lock name that is empty or that the backend
	// cannot map into its namespace.
	ErrInvalidName = backend.ErrInvalidName
	// ErrInvalidLimit reports a semaphore limit below 1.
	ErrInvalidLimit = backend.ErrInvalidLimit
	// ErrNotHeld reports a Release of a lock that was already released.
	ErrNotHeld = backend.ErrNotHeld
	// ErrClosed reports a call on a backend that was closed; a wait ends at
	// once on it.
	ErrClosed = backend.ErrClosed
	// ErrInvalidOption reports an invalid argument to a backend's
	// constructor (an option value out of range, a nil client or pool).
	ErrInvalidOption = backend.ErrInvalidOption
	// ErrNilFunc reports a nil callback passed to Do or TryDo.
	ErrNilFunc = errors.New("nil function")
)

// Locker is a lock of any kind over any backend, as code that runs work
// under it needs it: every *Guard is one, whatever its backend. Take a
// Locker, not a *Guard[L], in a service's constructor so that its tests can
// pass a Guard over dlocktest.Memory in place of one over pg, valkey or fs.
type Locker interface {
	// Do takes the lock name, waiting until it is free or ctx is done, runs
	// fn and releases the lock (see Guard.Do).
	Do(ctx context.Context, name string, fn func(ctx context.Context) error) error
	// TryDo is Do with a single attempt (see Guard.TryDo).
	TryDo(ctx context.Context, name string, fn func(ctx context.Context) error) error
	// Hold is Acquire returning a Handle (see Guard.Hold).
	Hold(ctx context.Context, name string) (Handle, error)
	// TryHold is TryAcquire returning a Handle (see Guard.TryHold).
	TryHold(ctx context.Context, name string) (Handle, error)
}

// Handle is a held lock of any kind over any backend: every *Lock is one.
// Code that holds a lock across calls (leader election) keeps a Handle, so
// that it names no backend.
type Handle interface {
	// Name returns the lock's name.
	Name() string
	// Lost returns a channel closed when the lock is lost or released.
	Lost() <-chan struct{}
	// Err says why Lost closed: nil while held, ErrLockLost, ErrNotHeld.
	Err() error
	// Token returns the lock's fencing token, if the backend has one.
	Token() (uint64, bool)
	// Release gives the lock up.
	Release(ctx context.Context) error
}

var (
	_ Locker = (*Guard[backend.Lease])(nil)
	_ Handle = (*Lock[backend.Lease])(nil)
)

// Guard is a lock of one kind (a mutex, one side of a reader-writer mutex,
// or a semaphore) over one backend, for every name: Do runs a function
// under a named lock, TryDo does so only if the lock is free, Acquire and
// TryAcquire return it held. It waits, honours ctx, runs the function and
// releases the same way whatever the backend, which only makes attempts.
// Mutex and Semaphore are other names for it; RWMutex has two.
//
// A Guard is safe for concurrent use. Every call names the lock it takes;
// calls with different names are independent. L is the backend's lease
// type; code that should not name it uses the Locker and Handle interfaces.
type Guard[L backend.Lease] struct {
	kind    string
	backend string // the backend's package name, for observers
	try     func(ctx context.Context, name string) (L, bool, error)
	wait    func(ctx context.Context, name string) (L, error) // nil: poll try
	// tryAll takes several names in one atomic attempt (nil: the backend
	// has no such path; see backend.MultiLocker).
	tryAll func(ctx context.Context, names []string) ([]L, int, error)
	// releaseAll releases several leases in one round trip (nil: the
	// backend has no such path; see backend.MultiReleaser).
	releaseAll func(ctx context.Context, leases []L) []error
	// describe returns the holders of name (nil: the backend records none).
	describe func(ctx context.Context, name string) ([]Holder, error)
	err      error // a configuration error every call returns
	opts     options
	// rdl shares the release contexts' done channels and timers among
	// the releases that run at once (their timeout is opts').
	rdl detach.Deadlines
}

// Mutex is a distributed mutex, made by NewMutex: at most one holder of
// each name at a time.
type Mutex[L backend.Lease] = Guard[L]

// Semaphore is a distributed counting semaphore, made by NewSemaphore: at
// most its limit of holders of each name at a time.
type Semaphore[L backend.Lease] = Guard[L]

// newGuard makes a Guard of kind over the backend b, whose try and
// (optional) native wait it is given; it finds b's optional capabilities
// common to every kind.
func newGuard[L backend.Lease](b any, kind string, try func(context.Context, string) (L, bool, error), wait func(context.Context, string) (L, error), opts []Option) *Guard[L] {
	g := &Guard[L]{kind: kind, backend: backendName[L](), try: try, wait: wait, opts: newOptions(opts)}
	if r, ok := b.(backend.MultiReleaser[L]); ok {
		g.releaseAll = r.ReleaseAll
	}
	return g
}

// Do takes the lock name, waiting until it is free or ctx is done, runs fn,
// and releases the lock when fn returns or panics (then the panic goes on).
//
// A deadline on ctx is the timeout: when ctx ends before the lock is taken,
// Do returns an error matching both ErrNotAcquired and ctx.Err(), and holds
// nothing. fn's ctx is derived from ctx and is also cancelled, with cause
// an error matching ErrLockLost (see context.Cause), if the lock is lost
// while fn runs; Do then returns an error matching ErrLockLost (and fn's
// own error, if it returned one). So it does when the loss is learned only
// by the release after fn returned. Otherwise Do returns fn's error, or,
// when fn succeeded, the release's.
func (g *Guard[L]) Do(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	return g.do(ctx, name, fn, true)
}

// TryDo is Do with a single attempt: when the lock is held elsewhere it
// returns at once an error matching ErrNotAcquired, without running fn.
func (g *Guard[L]) TryDo(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	return g.do(ctx, name, fn, false)
}

func (g *Guard[L]) do(ctx context.Context, name string, fn func(ctx context.Context) error, wait bool) error {
	if fn == nil {
		return g.errorf(name, ErrNilFunc)
	}
	lk, err := g.acquire(ctx, name, wait, true)
	if err != nil {
		return err
	}
	if lk.obs != nil {
		ctx = lk.obs.ctx // fn's work nests under the observers' hold (a span)
	}
	return run(ctx, lk, fn)
}

// Acquire takes the lock name, waiting until it is free or ctx is done, and
// returns it held. The caller must Release it. When ctx ends first, Acquire
// returns an error matching both ErrNotAcquired and ctx.Err(), and holds
// nothing. ctx bounds only the acquisition, not the holding.
func (g *Guard[L]) Acquire(ctx context.Context, name string) (*Lock[L], error) {
	return g.acquire(ctx, name, true, false)
}

// TryAcquire is Acquire with a single attempt: when the lock is held
// elsewhere it returns at once an error matching ErrNotAcquired.
func (g *Guard[L]) TryAcquire(ctx context.Context, name string) (*Lock[L], error) {
	return g.acquire(ctx, name, false, false)
}

// Hold is Acquire returning the held lock as a Handle, so that the caller
// names no backend (see Locker).
func (g *Guard[L]) Hold(ctx context.Context, name string) (Handle, error) {
	lk, err := g.acquire(ctx, name, true, false)
	if err != nil {
		return nil, err
	}
	return lk, nil
}

// TryHold is TryAcquire returning the held lock as a Handle (see Locker).
func (g *Guard[L]) TryHold(ctx context.Context, name string) (Handle, error) {
	lk, err := g.acquire(ctx, name, false, false)
	if err != nil {
		return nil, err
	}
	return lk, nil
}

// acquire takes name, waiting if wait, and tells the observers; do says
// that Do will run a function under the lock (and watch for its loss).
func (g *Guard[L]) acquire(ctx context.Context, name string, wait, do bool) (*Lock[L], error) {
	o, actx := g.observeStart(ctx, name, !wait)
	lk, attempts, retried, err := g.take(actx, name, wait, do)
	if o == nil {
		return lk, err
	}
	octx := o.end(attempts, retried, err)
	if lk != nil && octx != nil {
		lk.obs = &lockObs{ctx: octx, acquired: time.Now()}
		if !do { // Do watches for loss itself
			lk.obs.unwatch = lk.watch(func() { lk.observeLost(false) })
		}
	}
	return lk, err
}

// take takes name, waiting if wait; it reports how many backend calls it
// made and how many server errors it rode out. do says that Do will run a
// function under the lock: the Lock is made with room for that run.
func (g *Guard[L]) take(ctx context.Context, name string, wait, do bool) (lk *Lock[L], attempts, retried int, err error) {
	if g.err != nil {
		return nil, 0, 0, g.errorf(name, g.err)
	}
	if name == "" {
		return nil, 0, 0, g.errorf(name, fmt.Errorf("%w: empty", ErrInvalidName))
	}
	if ctx.Err() != nil {
		return nil, 0, 0, g.notAcquired(ctx, name, nil)
	}
	ctx, err = g.withOwner(ctx)
	if err != nil {
		return nil, 0, 0, g.errorf(name, err)
	}
	var (
		lease L
		last  error // the last error a wait rode out
	)
	if wait {
		lease, attempts, retried, last, err = g.waitLoop(ctx, name)
	} else {
		var ok bool
		attempts = 1
		lease, ok, err = g.try(ctx, name)
		if err == nil && !ok {
			return nil, attempts, 0, g.errorf(name, ErrNotAcquired)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			if last == nil && !errors.Is(err, ErrNotAcquired) && err != ctx.Err() {
				last = err // the backend says more than that ctx ended (connecting to host:port, say)
			}
			return nil, attempts, retried, g.notAcquired(ctx, name, last)
		}
		return nil, attempts, retried, g.errorf(name, err)
	}
	lk = newLock(g, name, lease, do)
	if ctx.Err() != nil {
		// The backend granted the lock as ctx ended: the caller has gone, so
		// give it back rather than leak it.
		_ = lk.Release(ctx)
		return nil, attempts, retried, g.notAcquired(ctx, name, last)
	}
	return lk, attempts, retried, nil
}

// waitLoop waits for the lock: the backend's native wait if it has one,
// else tries paced by jittered exponential backoff. An error of the backend
// that is not permanent (see isPermanent) is ridden out: the loop pauses
// as between two tries and goes on until ctx ends. It returns the last such
// error with the result, for the error that reports a ctx-ended wait.
func (g *Guard[L]) waitLoop(ctx context.Context, name string) (lease L, attempts, retried int, last, err error) {
	attempts, retried, last, err = g.retry(ctx, func() (ok bool, err error) {
		if g.wait != nil {
			lease, err = g.wait(ctx, name)
			return err == nil, err
		}
		return g.tryOnce(ctx, name, &lease)
	})
	if err != nil {
		var zero L
		lease = zero
	}
	return lease, attempts, retried, last, err
}

// tryOnce is one try, its lease stored in *lease.
func (g *Guard[L]) tryOnce(ctx context.Context, name string, lease *L) (bool, error) {
	l, ok, err := g.try(ctx, name)
	*lease = l
	return ok, err
}

// retry calls attempt until it succeeds, ctx ends or it fails with a
// permanent error, pausing with jittered backoff between attempts that fail
// or find the lock held. It reports how many attempts it made, how many
// server errors it rode out and the last of them.
func (g *Guard[L]) retry(ctx context.Context, attempt func() (ok bool, err error)) (attempts, retried int, last, err error) {
	var (
		p    pace.Pacer
		t    *time.Timer
		used bool
	)
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		attempts++
		ok, err := attempt()
		switch {
		case ok && err == nil:
			return attempts, retried, last, nil
		case err != nil && ctx.Err() != nil:
			return attempts, retried, last, err
		case err != nil && isPermanent(err):
			return attempts, retried, last, err
		case err != nil:
			last = err
			retried++
		}
		if !used {
			p, used = pace.New(g.opts.minWait, g.opts.maxWait), true
		}
		d := p.Next()
		if t == nil {
			t = time.NewTimer(d)
		} else {
			t.Reset(d)
		}
		select {
		case <-ctx.Done():
			return attempts, retried, last, ctx.Err()
		case <-t.C:
		}
	}
}

// isPermanent reports whether a wait must end at once on err rather than
// ride it out: bad input, or an error its backend marked permanent.
func isPermanent(err error) bool {
	return backend.IsPermanent(err) || errors.Is(err, ErrInvalidName) ||
		errors.Is(err, ErrInvalidLimit) || errors.Is(err, ErrNilFunc) || errors.Is(err, ErrClosed)
}

// notAcquired is the error of a wait that ctx ended: it matches
// ErrNotAcquired, ctx.Err(), ctx's cause if it has another, and last, the
// last backend error the wait rode out, if any.
func (g *Guard[L]) notAcquired(ctx context.Context, name string, last error) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	msg, args := "dlock: %s %s: %w: %w", []any{g.kind, shortName(name), ErrNotAcquired, err}
	if cause != nil && cause != err {
		msg, args = msg+" (%w)", append(args, cause)
	}
	if last != nil {
		msg, args = msg+"; last error: %w", append(args, last)
	}
	return fmt.Errorf(msg, args...)
}

func (g *Guard[L]) errorf(name string, err error) error {
	return fmt.Errorf("dlock: %s %s: %w", g.kind, shortName(name), err)
}

// Lock is a held lock, returned by Acquire and TryAcquire. Its methods are
// safe for concurrent use.
type Lock[L backend.Lease] struct {
	g     *Guard[L]
	name  string
	lease L

	mu    sync.Mutex
	state lockState

	rctx detach.Ctx // Release's ctx: one Release runs, so it is kept here rather than made
	run  *doRun     // Do's run under the lock, made with it (nil: Acquire'd)

	obs *lockObs // nil unless the Guard has observers
}

// lockObs is what a Lock keeps for its Guard's observers.
type lockObs struct {
	ctx      context.Context // from the observers' AcquireEnd
	acquired time.Time
	unwatch  func() // stops watching an Acquire'd lock for loss
	lostTold atomic.Bool
}

// doLock is a Lock that Do runs a function under: the lock and the state
// of the run in one allocation.
type doLock[L backend.Lease] struct {
	Lock[L]
	run doRun
}

// newLock returns a held lock of lease; do: with room for Do's run.
func newLock[L backend.Lease](g *Guard[L], name string, lease L, do bool) *Lock[L] {
	if do {
		d := &doLock[L]{Lock: Lock[L]{g: g, name: name, lease: lease}}
		d.Lock.run = &d.run
		return &d.Lock
	}
	return &Lock[L]{g: g, name: name, lease: lease}
}

// lockState is where a Lock is in its life.
type lockState uint8

const (
	held      lockState = iota
	releasing           // Release is running; the lock was not known lost when it began
	lost                // lost: learned before or by Release
	released            // released cleanly
)

// Name returns the lock's name.
func (l *Lock[L]) Name() string { return l.name }

// Lease returns the backend's lease, for backend-specific features.
func (l *Lock[L]) Lease() L { return l.lease }

// Lost returns a channel that is closed when the lock is lost: the backend
// can no longer guarantee that this holder owns it (see backend.Lease). It
// is also closed once the lock is released; Err tells which happened.
func (l *Lock[L]) Lost() <-chan struct{} { return l.lease.Lost() }

// Err says why Lost is closed, as context.Context's Err does for Done. It
// returns nil while the lock is held (and while a Release that began before
// any loss was known is still running); an error matching ErrLockLost once
// the lock is lost, also when the loss was first learned by Release; and
// one matching ErrNotHeld after any other Release (the lock was held until
// it was given up, or its release failed for another reason, which Release
// returned). Once non-nil, Err always returns an error matching the same
// sentinel.
func (l *Lock[L]) Err() error {
	l.mu.Lock()
	st := l.state
	l.mu.Unlock()
	switch {
	case st == lost, st == held && l.leaseLost():
		return l.g.errorf(l.name, ErrLockLost)
	case st == released:
		return l.g.errorf(l.name, ErrNotHeld)
	}
	return nil
}

// Token returns the lock's fencing token and true, when the backend offers
// one: tokens of one name strictly increase across all acquisitions by all
// clients and processes, so a downstream store that keeps the largest token
// it has seen can refuse a stale holder's writes. It returns 0, false when
// the backend has no fencing token (or it is not enabled).
func (l *Lock[L]) Token() (uint64, bool) {
	if f, ok := any(l.lease).(backend.Fencer); ok {
		t := f.Token()
		return t, t != 0
	}
	return 0, false
}

// Release gives the lock up. It runs even when ctx is already cancelled:
// its work is bounded by the Guard's release timeout (WithReleaseTimeout)
// alone, which is the deadline of the ctx the backend's release gets.
//
// It returns nil only when the lock was held until it was released. It
// returns an error matching ErrLockLost when the lock had been lost —
// whether Lost had already closed or the backend found out only now — and
// one matching ErrNotHeld when the lock was already released. In every case
// the lock's resources are freed and no other holder is disturbed; Err
// tells afterwards which way it ended.
func (l *Lock[L]) Release(ctx context.Context) error {
	wasLost, err := l.beginRelease()
	if err != nil {
		return err
	}
	return l.endRelease(wasLost, l.releaseLease(ctx))
}

// releaseLease calls the lease's Release with l.rctx: ctx detached from its
// cancellation and bounded by the release timeout (see
// backend.DetachedContext), ended when it returns.
func (l *Lock[L]) releaseLease(ctx context.Context) error {
	l.rctx.Init(ctx, l.g.opts.releaseTimeout, &l.g.rdl)
	defer l.rctx.End()
	return l.lease.Release(&l.rctx)
}

// beginRelease is Release up to the backend's release: it returns an error
// matching ErrNotHeld if the lock is not held, and whether it was known to
// be lost.
func (l *Lock[L]) beginRelease() (wasLost bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != held {
		return false, l.g.errorf(l.name, fmt.Errorf("release: %w", ErrNotHeld))
	}
	if l.obs != nil && l.obs.unwatch != nil {
		l.obs.unwatch()
	}
	wasLost = l.leaseLost()
	l.state = releasing
	if wasLost {
		l.state = lost
	}
	return wasLost, nil
}

// endRelease is Release after the backend's release, which returned err.
func (l *Lock[L]) endRelease(wasLost bool, err error) error {
	g := l.g
	switch {
	case wasLost && (err == nil || !errors.Is(err, ErrLockLost)):
		if err != nil {
			err = fmt.Errorf("%w (release: %w)", ErrLockLost, err)
		} else {
			err = ErrLockLost
		}
	}
	l.mu.Lock()
	if errors.Is(err, ErrLockLost) {
		l.state = lost
	} else {
		l.state = released
	}
	l.mu.Unlock()
	if err != nil {
		err = g.errorf(l.name, err)
	}
	if l.obs != nil {
		if errors.Is(err, ErrLockLost) {
			l.observeLost(true)
		}
		l.observeReleased(err)
	}
	return err
}

// holder is a lock that a function can run under: a *Lock or a *LockSet.
type holder interface {
	// watchLoss arranges for r.lost to be called, once, with an error
	// matching ErrLockLost if the lock is lost before r.unwatch is called.
	watchLoss(r *doRun)
	Release(ctx context.Context) error
	// newRun returns the state of a run under the lock, zeroed.
	newRun() *doRun
}

// doRun is the state of a function running under a lock: how to cancel its
// ctx, and whether the lock was lost while it ran. One allocation for all
// of it keeps Do cheap.
type doRun struct {
	cancel  context.CancelCauseFunc
	lostErr error          // set by lost, read after unwatch
	running sync.WaitGroup // lost may run until it is done
	stop    func() bool    // unregisters lost: true if that kept it from running
}

// lost records err and cancels the function's ctx with it.
func (r *doRun) lost(err error) {
	r.lostErr = err
	r.cancel(err)
}

// unwatch stops watching for loss; it returns when lost has finished or can
// no longer run.
func (r *doRun) unwatch() {
	if r.stop() {
		r.running.Done()
	}
	r.running.Wait()
}

// run runs fn under h, then releases h (also on panic). fn's ctx is
// cancelled, with cause an error matching ErrLockLost, if h is lost.
func run(ctx context.Context, h holder, fn func(ctx context.Context) error) (err error) {
	fctx, cancel := context.WithCancelCause(ctx)
	r := h.newRun()
	r.cancel = cancel
	h.watchLoss(r)
	defer func() {
		r.unwatch()
		cancel(nil)
		rerr := h.Release(ctx)
		switch {
		case r.lostErr != nil && err != nil:
			err = fmt.Errorf("%w: %w", r.lostErr, err)
		case r.lostErr != nil:
			err = r.lostErr
		case errors.Is(rerr, ErrLockLost) && err != nil: // lost, learned at release
			err = fmt.Errorf("%w: %w", rerr, err)
		case err == nil:
			err = rerr
		}
		// Any other release failure after fn's own error cannot be returned
		// too; observers (WithLogger) are told of it.
	}()
	return fn(fctx)
}

func (l *Lock[L]) newRun() *doRun {
	if l.run != nil {
		return l.run // made with l, used once: only one Do runs under l
	}
	return new(doRun)
}

func (l *Lock[L]) watchLoss(r *doRun) {
	r.running.Add(1)
	onLost := func() {
		defer r.running.Done()
		r.lost(l.g.errorf(l.name, ErrLockLost))
		l.observeLost(false)
	}
	if n, ok := any(l.lease).(backend.LossNotifier); ok {
		r.stop = n.AfterLost(onLost)
		return
	}
	r.stop = watchChan(l.lease.Lost(), onLost, r.running.Done)
}

// watchChan runs onLost in a goroutine if lost closes before the returned
// stop is called, else skipped; stop returns false, after the goroutine
// has ended, having called onLost or skipped.
func watchChan(lost <-chan struct{}, onLost, skipped func()) (stop func() bool) {
	quit, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-lost:
			onLost()
		case <-quit:
			skipped()
		}
	}()
	return func() bool {
		close(quit)
		<-exited
		return false
	}
}

// watch runs onLost once if the lease is lost before unwatch is called;
// unwatch returns when onLost has finished or can no longer run. It uses
// the lease's AfterLost when it has one (no goroutine), else a goroutine
// that watches Lost.
func (l *Lock[L]) watch(onLost func()) (unwatch func()) {
	if n, ok := any(l.lease).(backend.LossNotifier); ok {
		done := make(chan struct{})
		stop := n.AfterLost(func() {
			defer close(done)
			onLost()
		})
		return func() {
			if !stop() {
				<-done
			}
		}
	}
	stop := watchChan(l.lease.Lost(), onLost, func() {})
	return func() { stop() }
}

// leaseLost reports whether the lease's Lost channel is closed, asking
// a backend.LostChecker rather than making the channel.
func (l *Lock[L]) leaseLost() bool {
	if c, ok := any(l.lease).(backend.LostChecker); ok {
		return c.IsLost()
	}
	return isClosed(l.lease.Lost())
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// shortName quotes name for an error message, cut to 64 bytes.
func shortName(name string) string {
	if len(name) <= maxShownName {
		return strconv.Quote(name)
	}
	return fmt.Sprintf("%q…(%d bytes)", name[:maxShownName], len(name))
}

// logName is name for a log attribute: unquoted, cut to 64 bytes.
func logName(name string) string {
	if len(name) <= maxShownName {
		return name
	}
	return fmt.Sprintf("%s…(%d bytes)", name[:maxShownName], len(name))
}

// maxShownName is how much of a lock name messages and logs show.
const maxShownName = 64

// errNilBackend is the configuration error of a Guard made over a nil
// backend.
var errNilBackend = errors.New("nil backend")

// brokenGuard returns a Guard whose every call fails with a configuration
// error (a nil backend unless the caller sets another).
func brokenGuard[L backend.Lease](kind string, opts []Option) *Guard[L] {
	g := newGuard[L](nil, kind, nil, nil, opts)
	g.err = errNilBackend
	return g
}
