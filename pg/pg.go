package pg

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock/backend"
)

// Backend is the PostgreSQL backend: session advisory locks on connections
// it takes from the user's pool. Use it with dlock.NewMutex, NewRWMutex and
// NewSemaphore; Keys gives a view addressed by numeric advisory keys. It is
// safe for concurrent use. Close it when done (see Close).
type Backend struct {
	maxConns int // the pool's MaxConns, fixed when the pool was made
	pool     *pgxpool.Pool
	cfg      config
	addr     string // the server's host:port, for errors
	traced   bool   // the pool's connections have a pgx tracer (see stmtCtx)

	mu        sync.Mutex
	conns     map[*lockConn]struct{} // lock connections: hold leases or run tries (or are being acquired)
	held      map[Key]*hold          // locks held by this backend's leases
	writers   map[Key]int            // RW write waits in progress, by key
	queued    map[Key]int            // waits in (or entering) the server's queue, by key
	acquiring int                    // pool connections being acquired
	waiting   int                    // pool connections held by queued waits
	closed    bool
	monTimer  *time.Timer    // runs monitor; made at the first lock connection
	monArmed  bool           // monTimer is set (or its tick runs) for the lock connections
	monWG     sync.WaitGroup // monitor ticks in progress
	watchWG   sync.WaitGroup // lock connections' watchers, and startWatchers

	watchMu     sync.Mutex  // guards the next four; taken after a lock connection's lock and b.mu
	watchQ      []watchItem // lock connections whose watchers are to start (see resume)
	watchTimer  *time.Timer // runs startWatchers
	watchArmed  bool        // watchTimer is set (or startWatchers runs)
	watchClosed bool        // Close stopped the watchers' timer

	nwMu    sync.Mutex           // guards the next three (see acquireNoWait)
	nw      map[*noWait]struct{} // pool Acquires in flight
	nwTimer *time.Timer          // runs checkNoWait
	nwArmed bool                 // nwTimer is set (or checkNoWait runs)

	recStmts    [4]recStmt    // the prepared statements of holder records (callRecorded)
	fenceMu     chan struct{} // capacity 1: held while the fencing and holder tables are created
	tablesReady atomic.Bool
}

var (
	_ backend.Locker[*Lease]            = (*Backend)(nil)
	_ backend.LockWaiter[*Lease]        = (*Backend)(nil)
	_ backend.RWLocker[*Lease]          = (*Backend)(nil)
	_ backend.RWWaiter[*Lease]          = (*Backend)(nil)
	_ backend.Semaphore[*Lease]         = (*Backend)(nil)
	_ backend.SemaphoreWaiter[*Lease]   = (*Backend)(nil)
	_ backend.Fencer                    = (*Lease)(nil)
	_ backend.LossNotifier              = (*Lease)(nil)
	_ backend.LostChecker               = (*Lease)(nil)
	_ backend.UpgradeableLocker[*Lease] = (*Backend)(nil)
	_ backend.UpgradeableWaiter[*Lease] = (*Backend)(nil)
	_ backend.Upgrader                  = (*Lease)(nil)
)

// hold counts the leases of this backend on one key.
type hold struct{ excl, shared int }

type mode uint8

const (
	exclusive mode = iota
	shared
)

// errClosed reports a call on a closed Backend.
var errClosed = backend.ErrClosed

// errNilPool reports a call on a Backend that New did not make (a zero
// Backend).
var errNilPool = errors.New("pg: Backend not made by New")

// New returns a backend that takes its lock connections from pool. pool
// must outlive the backend. A nil pool or an option value out of range
// gives an error wrapping backend.ErrInvalidOption (dlock.ErrInvalidOption)
// that names it.
func New(pool *pgxpool.Pool, opts ...Option) (*Backend, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", errBadOption)
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Backend{
		pool:     pool,
		maxConns: int(pool.Config().MaxConns),
		cfg:      cfg,
		addr:     serverAddr(pool),
		traced:   pool.Config().ConnConfig.Tracer != nil,
		conns:    make(map[*lockConn]struct{}),
		held:     make(map[Key]*hold),
		writers:  make(map[Key]int),
		queued:   make(map[Key]int),
		fenceMu:  make(chan struct{}, 1),
	}, nil
}

// Close releases every lock still held, by closing the lock connections
// (their sessions end, and PostgreSQL frees their locks); their leases
// report loss, and their Release returns an error matching
// backend.ErrLockLost. It stops the backend's monitor and waits for a
// round of pings in progress. Acquisitions that wait at the time of Close fail when their wait ends.
// Close the backend before the pool. Release leases first to return their
// connections to the pool rather than close them. Calling Close twice is
// harmless. It returns nil: it is an io.Closer like every dlock backend.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	conns := slices.Collect(maps.Keys(b.conns))
	b.mu.Unlock()
	for _, lc := range conns {
		lc.lockWait()
		b.fail(lc, errClosed)
		lc.unlock()
	}
	b.mu.Lock()
	b.stopMonitorLocked()
	b.mu.Unlock()
	b.stopWatchers()
	b.monWG.Wait()
	b.watchWG.Wait()
	return nil
}

// Stats describes a backend's use of connections at one moment.
type Stats struct {
	// LockConns is the number of pool connections the backend holds as
	// lock connections (connections of waits in progress not counted).
	LockConns int
	// Leases is the number of leases held.
	Leases int
}

// Stats returns the backend's current use of connections.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s Stats
	for lc := range b.conns {
		if lc.pc != nil {
			s.LockConns++
		}
		s.Leases += len(lc.leases)
	}
	return s
}

// lockConn is a pool connection the backend holds: its session holds the
// locks of its leases. Queries on it are serialized by its lock (sem) and
// are always short (tries, releases, pings): a blocking wait never runs
// on it. Tries and unlocks queued on it together run as one statement
// (see combine.go). While no query runs, its watcher reads it (see conn.go).
type lockConn struct {
	// Set, under Backend.mu, before ready closes; then fixed.
	pc      *pgxpool.Conn
	pid     uint32
	nc      net.Conn      // pc's network connection
	connErr error         // the acquisition failed: no pc
	ready   chan struct{} // closed once pc or connErr is set

	sem   chan struct{}   // capacity 1: held while pc is in use; taken before Backend.mu
	w     *watch          // the running watcher; guarded by sem
	rc    syscall.RawConn // nc's socket, when its watcher can peek; made by its first watcher (see watch); guarded by sem
	noRC  bool            // nc gives no socket: its watcher reads it; guarded by sem
	rw    *watch          // the last peeking run, which may still wait on nc (see quiesce); guarded by sem
	armed bool            // its watcher is to start (see resume); guarded by sem
	gen   atomic.Uint64   // counts resumes and pauses; changed under sem
	bound *time.Timer     // bounds the statement in flight (see boundStmt); guarded by sem

	qmu    sync.Mutex
	q      []*call     // calls waiting for a runner (see exec); guarded by qmu
	spare  []*call     // q's other buffer, reused; guarded by qmu
	qbuf   [2][4]*call // q's and spare's first arrays
	params [2][]byte   // the combined statement's parameters; guarded by sem

	// Guarded by Backend.mu.
	leases  map[*Lease]struct{}
	keys    map[Key]struct{} // keys held or being tried on this session
	pending int              // operations scheduled on it
	gone    bool             // no longer a lock connection: released or closed
	cause   error            // why it failed, once gone by fail
}

// newLockConn returns a lock connection on pc, or, with pc nil, one
// whose connection is still being acquired (see connect).
func newLockConn(pc *pgxpool.Conn) *lockConn {
	lc := &lockConn{
		ready:  readyChan,
		sem:    make(chan struct{}, 1),
		leases: make(map[*Lease]struct{}),
		keys:   make(map[Key]struct{}),
	}
	lc.q, lc.spare = lc.qbuf[0][:0], lc.qbuf[1][:0]
	if pc != nil {
		lc.pc, lc.pid, lc.nc = pc, pc.Conn().PgConn().PID(), pc.Conn().PgConn().Conn()
	} else {
		lc.ready = make(chan struct{})
	}
	return lc
}

// readyChan is the ready of every lock connection made with its
// connection: closed, never written.
var readyChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// addConnLocked makes lc a lock connection.
func (b *Backend) addConnLocked(lc *lockConn) {
	b.conns[lc] = struct{}{}
	if b.monArmed || b.closed {
		return
	}
	b.monArmed = true
	if b.monTimer == nil {
		b.monTimer = time.AfterFunc(b.cfg.lossInterval/2, b.monitor)
	} else {
		b.monTimer.Reset(b.cfg.lossInterval / 2)
	}
}

// retireIfIdleLocked takes lc out of the lock connections if nothing uses
// it; the caller then returns lc.pc to the pool, holding lc's lock with
// its watcher paused.
func (b *Backend) retireIfIdleLocked(lc *lockConn) bool {
	if lc.gone || len(lc.leases) > 0 || len(lc.keys) > 0 || lc.pending > 0 {
		return false
	}
	lc.gone = true
	delete(b.conns, lc)
	return true
}

// fail ends lc after a failure (or Close): its leases report loss, then
// the connection is closed, which makes the server free every lock of the
// session. The caller holds lc's lock.
func (b *Backend) fail(lc *lockConn, cause error) {
	b.mu.Lock()
	if lc.gone {
		b.mu.Unlock()
		return
	}
	pc := lc.pc
	lc.gone = true
	lc.cause = cause
	delete(b.conns, lc)
	leases := lc.leases
	lc.leases, lc.keys = nil, nil
	for l := range leases {
		l.lost = true
		b.unholdLeaseLocked(l)
	}
	b.mu.Unlock()
	for l := range leases {
		l.closeLost()
	}
	if len(leases) > 0 && !errors.Is(cause, errClosed) {
		b.cfg.logger.Warn("pg: lock connection failed; its leases are lost", "pid", lc.pid, "leases", len(leases), "err", cause)
	}
	if pc != nil { // else still being acquired: connect gives it back
		b.quiesce(lc)
		destroy(pc)
	}
}

// destroy closes a pool connection and gives it back to the pool, which
// discards it: its session, and every lock it holds, ends.
func destroy(pc *pgxpool.Conn) {
	pgc := pc.Conn().PgConn()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_ = pgc.Close(ctx)
	cancel()
	// pgx may close a connection that failed mid-query asynchronously,
	// after a cancel request that can take seconds: close the socket now,
	// so that the server, if it can hear, ends the session at once.
	_ = pgc.Conn().Close()
	pc.Release()
}

func (b *Backend) holdLocked(k Key, m mode) {
	h := b.held[k]
	if h == nil {
		h = &hold{}
		b.held[k] = h
	}
	if m == shared {
		h.shared++
	} else {
		h.excl++
	}
}

// unholdLeaseLocked forgets every hold of l (see attachLocked).
func (b *Backend) unholdLeaseLocked(l *Lease) {
	b.unholdLocked(l.key, l.mode)
	if l.ukey != nil {
		b.unholdLocked(*l.ukey, exclusive)
	}
}

func (b *Backend) unholdLocked(k Key, m mode) {
	h := b.held[k]
	if h == nil {
		return
	}
	if m == shared {
		h.shared--
	} else {
		h.excl--
	}
	if h.shared <= 0 && h.excl <= 0 {
		delete(b.held, k)
	}
}

// conflictsLocked reports whether a lease of this backend holds k in a mode
// that excludes m.
func (b *Backend) conflictsLocked(k Key, m mode) bool {
	h := b.held[k]
	return h != nil && (h.excl > 0 || (m == exclusive && h.shared > 0))
}

// stopMonitorLocked stops the monitor for good (Close). While the backend
// is open the monitor is never stopped: set while there are lock
// connections, it lapses at a tick that finds none.
func (b *Backend) stopMonitorLocked() {
	if b.monArmed {
		b.monArmed = false
		b.monTimer.Stop()
	}
}

// monitor pings the lock connections every half loss interval, so that a
// dead session is found even while its connection is idle, and an idle
// session is never idle long enough for idle_session_timeout. It is a
// timer's function, set when a lock connection is added and it is not
// set, which lapses at a tick that finds none (a reused timer, not a
// goroutine: a lease taken and released at once costs no goroutine, no
// allocation and no timer change for it).
func (b *Backend) monitor() {
	half := b.cfg.lossInterval / 2
	b.mu.Lock()
	if !b.monArmed || b.closed {
		b.mu.Unlock()
		return // stopped after it fired
	}
	if len(b.conns) == 0 {
		// Idle since it was set: it lapses (stopping it at each last
		// release would cost a timer change per lock taken and released
		// alone; addConnLocked sets it again).
		b.monArmed = false
		b.mu.Unlock()
		return
	}
	b.monWG.Add(1)
	defer b.monWG.Done()
	var conns []*lockConn
	for lc := range b.conns {
		if lc.pc != nil {
			conns = append(conns, lc)
		}
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, lc := range conns {
		if !lc.tryLock() {
			continue // in use: the query in flight finds a failure itself
		}
		wg.Go(func() {
			defer lc.unlock()
			b.mu.Lock()
			gone := lc.gone
			b.mu.Unlock()
			if gone {
				return
			}
			err := b.pause(lc)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), half)
				err = lc.pc.Conn().PgConn().Ping(ctx)
				cancel()
			}
			if err != nil {
				b.fail(lc, fmt.Errorf("ping: %w", err))
				return
			}
			b.resume(lc)
		})
	}
	wg.Wait()
	b.mu.Lock()
	if b.monArmed && !b.closed {
		b.monTimer.Reset(half)
	}
	b.mu.Unlock()
}

// Lease is a lock held through a Backend.
type Lease struct {
	b     *Backend
	lc    *lockConn
	kind  string
	name  string
	key   Key
	mode  mode
	token uint64
	topic string // a semaphore's: its release notifies waiters of topic
	// An upgradeable reader's upgrade key (see upgrade.go), held with key
	// shared; nil once upgraded (key is then held exclusive, as a
	// writer's). Changed under b.mu by Upgrade, which must not run
	// concurrently with Release.
	ukey        *Key
	upgradeable bool   // taken as an upgradeable reader
	rec         string // an upgradeable reader's holder record (holder table on), for Upgrade

	end      lossSignal // ended once lost or released
	lost     bool       // guarded by b.mu: the connection failed
	released atomic.Bool
}

// Lost returns a channel closed when the lease's connection dies (then the
// server has freed, or is about to free, the lock) and by Release.
func (l *Lease) Lost() <-chan struct{} { return l.end.done() }

// IsLost reports whether Lost's channel is closed (or would be, were it
// made now). It implements backend.LostChecker: the channel is made only
// for a caller that asks for it.
func (l *Lease) IsLost() bool { return l.end.ended() }

// AfterLost runs f in its own goroutine once Lost is closed (at once if it
// is); stop unregisters f, reporting whether that kept it from running. It
// implements backend.LossNotifier, so dlock's Do needs no goroutine to
// watch the lease.
func (l *Lease) AfterLost(f func()) (stop func() bool) { return l.end.afterFunc(f) }

// closeLost ends l's loss signal (Lost closes, AfterLost's functions
// start); idempotent.
func (l *Lease) closeLost() { l.end.end() }

// lossSignal is a lease's Lost channel and AfterLost functions, made only
// when asked for: a lease taken and released with nobody watching costs
// no channel, context or registration.
type lossSignal struct {
	mu    sync.Mutex
	over  bool
	ch    chan struct{} // nil until done is called
	funcs []*lossFunc   // registered by afterFunc, not yet started
}

// lossFunc is one function of AfterLost.
type lossFunc struct{ f func() }

func (s *lossSignal) ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.over
}

func (s *lossSignal) done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
		if s.over {
			close(s.ch)
		}
	}
	return s.ch
}

func (s *lossSignal) afterFunc(f func()) (stop func() bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.over {
		go f()
		return func() bool { return false }
	}
	lf := &lossFunc{f}
	s.funcs = append(s.funcs, lf)
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, g := range s.funcs {
			if g == lf {
				s.funcs = slices.Delete(s.funcs, i, i+1)
				return true
			}
		}
		return false // started, or stopped before
	}
}

func (s *lossSignal) end() {
	s.mu.Lock()
	if s.over {
		s.mu.Unlock()
		return
	}
	s.over = true
	if s.ch != nil {
		close(s.ch)
	}
	funcs := s.funcs
	s.funcs = nil
	s.mu.Unlock()
	for _, lf := range funcs {
		go lf.f()
	}
}

// Token returns the lease's fencing token, or 0 when fencing is off (see
// WithFencing).
func (l *Lease) Token() uint64 { return l.token }

// PID returns the process ID of the PostgreSQL session that holds the lock,
// as pg_locks.pid and pg_stat_activity.pid show it.
func (l *Lease) PID() uint32 { return l.lc.pid }

func (l *Lease) errorf(format string, args ...any) error {
	return fmt.Errorf(format, args...)
}

// Release releases the lock with pg_advisory_unlock on its session; the
// connection goes back to the pool when it holds no other lease. The
// unlock runs even when ctx is cancelled, bounded by ctx's deadline (by
// WithOpTimeout when ctx has none; dlock's Lock.Release passes the
// WithReleaseTimeout deadline). Release
// returns nil only when the session confirmed the unlock, so the lease held
// the lock until then. Otherwise (the connection died — its session was
// terminated, reset, or the server restarted — the unlock timed out, or
// the session no longer held the lock) the lock may have been freed
// earlier: the connection is closed, which frees every lock of its session,
// every lease on it reports the loss at once, and Release returns an error
// matching backend.ErrLockLost that also wraps the cause.
func (l *Lease) Release(ctx context.Context) error {
	if !l.released.CompareAndSwap(false, true) {
		return l.errorf("release: %w", backend.ErrNotHeld)
	}
	defer l.closeLost()
	ls := [1]*Lease{l}
	var errs [1]error
	l.b.releaseOn(ctx, l.lc, ls[:], errs[:])
	return errs[0]
}
