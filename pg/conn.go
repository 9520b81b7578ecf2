package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock/backend"
)

// Connections: how the backend takes them from the pool without ever
// waiting for one, and how an idle lock connection notices at once that
// its session ended.
//
// The pool is the user's, shared with the user's own work. The backend
// never waits in the pool for a connection to be released: a connection
// it waited for could be one its own leases hold, and a try must not wait
// at all. Before it takes a connection it checks that the pool can give one
// at once (acquired + being constructed + being acquired by this backend <
// MaxConns); when it cannot, a try runs on an existing lock connection
// (queued behind the statements in flight there: multiplexing), a wait
// polls with tries, and when there is no lock connection to use either, a
// try fails within about 20ms (acquireNoWait) with an error matching
// ErrNoConnection. A connection this backend is already acquiring is
// shared: tries that find one wait for it, bounded by their ctx, rather
// than take another.

// ErrNoConnection reports that the pool had no connection to give at once
// and the backend had no lock connection a try could run on: the pool's
// connections are all in use (by the application, or by this backend's
// queued waits and leases). A try returns it at once (within about 20ms);
// a wait (Lock, RLock, WLock, Acquire) keeps trying until its ctx ends. It
// is not permanent.
var ErrNoConnection = errors.New("pg: no free connection in the pool")

// freeLocked returns how many connections the pool can give at once,
// counting those this backend is acquiring as taken.
func (b *Backend) freeLocked() int {
	st := b.pool.Stat()
	return int(st.MaxConns()) - int(st.AcquiredConns()) - int(st.ConstructingConns()) - b.acquiring
}

// noConnErrLocked describes the pool's exhaustion.
func (b *Backend) noConnErrLocked() error {
	st := b.pool.Stat()
	mine := 0
	for lc := range b.conns {
		if !lc.gone {
			mine++
		}
	}
	return fmt.Errorf("%w for %s (MaxConns %d: %d acquired, %d connecting; this backend: %d lock connections, %d queued waits, %d being acquired)",
		ErrNoConnection, b.addr, st.MaxConns(), st.AcquiredConns(), st.ConstructingConns(), mine, b.waiting, b.acquiring)
}

// acquire takes a pool connection without waiting for another to be
// released: it returns an error matching ErrNoConnection when the pool has
// none to give. Constructing a new connection is bounded by ctx. Errors
// name the server's host:port.
func (b *Backend) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	b.mu.Lock()
	if b.freeLocked() <= 0 {
		err := b.noConnErrLocked()
		b.mu.Unlock()
		return nil, err
	}
	b.acquiring++
	b.mu.Unlock()
	pc, err := b.acquireNoWait(ctx)
	b.mu.Lock()
	b.acquiring--
	b.mu.Unlock()
	return pc, err
}

// acquireNoWait runs pool.Acquire, giving it up when it waits for a
// connection to be released: the pool had room when the caller checked,
// but other work may have taken it since. A pool that is full with nothing
// under construction while the Acquire has not returned is waiting for a
// release; seen in four checks in a row (noWaitCheck apart), the Acquire
// is cancelled. The Acquires in flight share one timer of the Backend
// (checkNoWait): a timer per Acquire would wake the runtime's network
// poller each time.
func (b *Backend) acquireNoWait(ctx context.Context) (*pgxpool.Conn, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := &noWait{cancel: cancel}
	b.nwMu.Lock()
	if b.nw == nil {
		b.nw = make(map[*noWait]struct{})
	}
	b.nw[w] = struct{}{}
	if !b.nwArmed {
		b.nwArmed = true
		if b.nwTimer == nil {
			b.nwTimer = time.AfterFunc(noWaitCheck, b.checkNoWait)
		} else {
			b.nwTimer.Reset(noWaitCheck)
		}
	}
	b.nwMu.Unlock()
	pc, err := b.pool.Acquire(actx)
	b.nwMu.Lock()
	delete(b.nw, w)
	b.nwMu.Unlock()
	if err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(actx), ErrNoConnection) {
			b.mu.Lock()
			err = b.noConnErrLocked()
			b.mu.Unlock()
			return nil, err
		}
		return nil, fmt.Errorf("connect to %s: %w", b.addr, err)
	}
	return pc, nil
}

// noWaitCheck is the period of acquireNoWait's checks.
const noWaitCheck = 5 * time.Millisecond

// noWait is one pool.Acquire of acquireNoWait; guarded by Backend.nwMu.
type noWait struct {
	cancel  context.CancelCauseFunc
	blocked int // checks in a row that saw it wait for a release
}

// checkNoWait cancels the Acquires in flight that four checks in a row saw
// wait in a pool full with nothing under construction, and runs again
// later while any is in flight. It runs from the timer only: a timer that
// fires after the last Acquire returned finds none and stops.
func (b *Backend) checkNoWait() {
	st := b.pool.Stat()
	full := st.ConstructingConns() == 0 && st.AcquiredConns() >= st.MaxConns()
	b.nwMu.Lock()
	defer b.nwMu.Unlock()
	for w := range b.nw {
		if !full {
			w.blocked = 0
		} else if w.blocked++; w.blocked >= 4 {
			w.cancel(ErrNoConnection)
		}
	}
	if len(b.nw) == 0 {
		b.nwArmed = false
		return
	}
	b.nwTimer.Reset(noWaitCheck)
}

// serverAddr names the pool's first server as host:port.
func serverAddr(pool *pgxpool.Pool) string {
	if pool == nil {
		return ""
	}
	cc := pool.Config().ConnConfig
	return net.JoinHostPort(cc.Host, fmt.Sprint(cc.Port))
}

// lock takes lc for a statement, waiting at most until ctx ends.
func (lc *lockConn) lock(ctx context.Context) bool {
	select {
	case lc.sem <- struct{}{}:
		return true
	default:
	}
	select {
	case lc.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (lc *lockConn) lockWait() { lc.sem <- struct{}{} }

func (lc *lockConn) tryLock() bool {
	select {
	case lc.sem <- struct{}{}:
		return true
	default:
		return false
	}
}

func (lc *lockConn) unlock() { <-lc.sem }

// An idle lock connection is watched all the time by a watcher goroutine,
// so that the server's closing of its socket — pg_terminate_backend, a
// server shutting down or crashing — is noticed in about a millisecond,
// and its leases report the loss at once, with no statement and no round
// trip. A session that dies silently (a network cut, a frozen server)
// sends nothing: the monitor's pings find it.
//
// On a plain TCP or Unix socket (pgx's default without TLS) the watcher
// waits for the socket to become readable without reading it (a peek):
// a statement on the connection needs no pause first, it only marks the
// watcher stale and goes; its reads wait for the watcher's wait, which the
// statement's response ends. So a release is sent at once (no hand-off
// between goroutines before the unlock leaves). When the socket becomes
// readable while the connection is idle, the watcher reads what came under
// the connection's lock: a notice is consumed, a closed session fails the
// connection. On any other connection (TLS, a wrapped net.Conn) the watcher
// reads the connection itself (WaitForNotification with no ctx), and a
// statement first pauses it: a read deadline in the past ends its read,
// which leaves the connection usable.

// watch is one run of a lock connection's watcher.
type watch struct {
	// done is closed when the run no longer reads the connection.
	done chan struct{}
	err  error // set before done closes (reading runs)
	peek bool  // a peeking run (see peekWatch), else a reading one
	// stale is set (under the connection's lock) when a statement takes
	// the connection from a peeking run: the run ends without touching
	// anything when its wait ends.
	stale atomic.Bool
}

// watchDelay is how long a lock connection is idle before its watcher
// starts: a lease released at once (Do with short work) never pays for it,
// and the revocation window grows by at most this much.
const watchDelay = time.Millisecond

// resume arranges for lc's watcher to start once lc has been idle for
// watchDelay. The caller holds lc's lock and lc is a live lock connection.
// The lock connections waiting for their watchers share one timer of the
// Backend (startWatchers): a timer added per operation would wake the
// runtime's network poller each time, which costs more than the statement
// under load.
func (b *Backend) resume(lc *lockConn) {
	if lc.w != nil || lc.armed {
		return
	}
	gen := lc.gen.Add(1)
	lc.armed = true
	due := time.Now().Add(watchDelay)
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	if b.watchClosed {
		return // Close ends lc
	}
	b.watchQ = append(b.watchQ, watchItem{lc: lc, gen: gen, due: due})
	b.armWatchersLocked(watchDelay)
}

// watchItem is a lock connection whose watcher is to start at due, unless
// it was paused since (gen changed).
type watchItem struct {
	lc  *lockConn
	gen uint64
	due time.Time
}

// armWatchersLocked sets the watchers' timer to run startWatchers after d,
// unless it is set already. The caller holds b.watchMu.
func (b *Backend) armWatchersLocked(d time.Duration) {
	if b.watchArmed {
		return
	}
	b.watchArmed = true
	b.watchWG.Add(1)
	if b.watchTimer == nil {
		b.watchTimer = time.AfterFunc(d, b.startWatchers)
	} else {
		b.watchTimer.Reset(d)
	}
}

// stopWatchers stops the watchers' timer for good (Close).
func (b *Backend) stopWatchers() {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	b.watchClosed = true
	b.watchQ = nil
	if b.watchArmed && b.watchTimer.Stop() {
		b.watchArmed = false
		b.watchWG.Done() // its function will never run
	}
}

// startWatchers starts the watchers of the lock connections that are due
// and were not paused since, and sets the timer again for the others. A
// connection in use right now is tried again at the next run (its user
// pauses it, which drops it, or lets it go soon).
func (b *Backend) startWatchers() {
	defer b.watchWG.Done()
	b.watchMu.Lock()
	q := b.watchQ
	b.watchQ = nil
	b.watchArmed = false
	closed := b.watchClosed
	b.watchMu.Unlock()
	if closed {
		return
	}
	now := time.Now()
	var later []watchItem
	next := watchDelay
	for _, it := range q {
		lc := it.lc
		if lc.gen.Load() != it.gen {
			continue // paused since
		}
		if now.Before(it.due) {
			later = append(later, it)
			next = min(next, it.due.Sub(now))
			continue
		}
		if !lc.tryLock() {
			later = append(later, it)
			continue
		}
		if lc.gen.Load() == it.gen && lc.armed {
			lc.armed = false
			b.mu.Lock()
			gone := lc.gone
			b.mu.Unlock()
			if !gone {
				b.watch(lc)
			}
		}
		lc.unlock()
	}
	if len(later) == 0 {
		return
	}
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	if b.watchClosed {
		return
	}
	b.watchQ = append(later, b.watchQ...)
	b.armWatchersLocked(next)
}

// watch starts lc's watcher now. The caller holds lc's lock.
func (b *Backend) watch(lc *lockConn) {
	if lc.w != nil {
		return
	}
	b.quiesce(lc) // a stale run still waiting: end it first
	if lc.rc == nil && !lc.noRC {
		lc.rc = rawConn(lc.nc)
		lc.noRC = lc.rc == nil
	}
	w := &watch{done: make(chan struct{}), peek: lc.rc != nil}
	lc.w = w
	pgc := lc.pc.Conn().PgConn()
	b.watchWG.Add(1)
	if w.peek {
		lc.rw = w
		go b.peekWatch(lc, w, pgc)
		return
	}
	go func() {
		defer b.watchWG.Done()
		var err error
		for err == nil {
			err = pgc.WaitForNotification(context.Background())
		}
		w.err = err
		dead := pgc.IsClosed()
		close(w.done)
		if !dead {
			return // paused
		}
		// End lc now. Its lock may be held by a user, who pauses the
		// watcher first (done is closed: no wait) and finds the
		// connection dead itself, or by anything else for a moment: wait
		// for it (fail does nothing to an lc already ended).
		lc.lockWait()
		b.fail(lc, fmt.Errorf("connection closed: %w", err))
		lc.unlock()
	}()
}

// drainWait bounds how long a peeking watcher that found lc's socket
// readable while idle reads what came.
const drainWait = time.Millisecond

// peekWatch is the run w of lc's peeking watcher (see watch).
func (b *Backend) peekWatch(lc *lockConn, w *watch, pgc *pgconn.PgConn) {
	defer b.watchWG.Done()
	err := lc.rc.Read(readable)
	close(w.done)
	if w.stale.Load() {
		return // a statement's response (or its deadline) ended the wait
	}
	// Something came, or the wait failed, while lc looked idle: look
	// under lc's lock, unless a statement took lc meanwhile.
	lc.lockWait()
	defer lc.unlock()
	if w.stale.Load() || lc.w != w {
		return
	}
	lc.w, lc.rw = nil, nil
	b.mu.Lock()
	gone := lc.gone
	b.mu.Unlock()
	if gone {
		return
	}
	if err == nil && !pgc.IsClosed() {
		// Read what came (a notice, or the server's last words), for at
		// most drainWait: pgconn handles it, and closes the connection
		// when the session ended.
		_ = lc.nc.SetReadDeadline(time.Now().Add(drainWait))
		for err == nil {
			err = pgc.WaitForNotification(context.Background())
		}
		_ = lc.nc.SetReadDeadline(time.Time{})
	}
	if pgc.IsClosed() {
		b.fail(lc, fmt.Errorf("connection closed: %w", err))
		return
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The socket cannot be waited on this way (a wrapper's odd
		// RawConn, say): watch lc by reading it from now on, rather
		// than fail the same way every millisecond.
		lc.rc, lc.noRC = nil, true
	}
	b.resume(lc)
}

// pause stops lc's watcher, if it runs (or is about to start), and
// returns an error when the watcher found the connection dead. The caller
// holds lc's lock and runs a statement on lc next: a peeking run is only
// marked stale (the statement's response ends its wait); before lc's
// connection goes back to the pool or is closed, quiesce it.
func (b *Backend) pause(lc *lockConn) error {
	if lc.armed {
		lc.gen.Add(1) // startWatchers drops its entry
		lc.armed = false
	}
	w := lc.w
	if w == nil {
		return nil
	}
	lc.w = nil
	if w.peek {
		w.stale.Store(true)
		return nil // the statement finds a dead connection itself
	}
	nc := lc.pc.Conn().PgConn().Conn()
	_ = nc.SetReadDeadline(time.Now())
	<-w.done
	_ = nc.SetReadDeadline(time.Time{})
	if lc.pc.Conn().PgConn().IsClosed() {
		return fmt.Errorf("connection closed: %w", w.err)
	}
	return nil
}

// quiesce stops lc's watcher and waits until no run of it reads or waits
// on lc's connection (a stale peeking run waits until something arrives,
// or a read deadline in the past ends it): before the connection goes
// back to the pool, or a new run starts. The caller holds lc's lock.
func (b *Backend) quiesce(lc *lockConn) {
	_ = b.pause(lc)
	w := lc.rw
	if w == nil {
		return
	}
	lc.rw = nil
	select {
	case <-w.done:
		return
	default:
	}
	_ = lc.nc.SetReadDeadline(time.Now())
	<-w.done
	_ = lc.nc.SetReadDeadline(time.Time{})
}

// sessionEnded reports that err, from a statement on pgc, shows that the
// server ended the session (or the connection broke) rather than that the
// statement timed out: then the session holds nothing any more.
func sessionEnded(pgc *pgconn.PgConn, err error) bool {
	if !pgc.IsClosed() || pgconn.Timeout(err) {
		return false
	}
	if pgconn.SafeToRetry(err) || errors.Is(err, pgconn.ErrConnClosed) {
		return true // not sent, or the driver had closed the connection
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// permanent marks err with backend.Permanent when retrying cannot heal
// it: authentication failed, the database or a schema does not exist, the
// role lacks a privilege, bad configuration, a closed backend.
func permanent(err error) error {
	if err == nil || backend.IsPermanent(err) {
		return err
	}
	if errors.Is(err, errClosed) || errors.Is(err, errNilPool) {
		return backend.Permanent(err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28000", // invalid_authorization_specification (pg_hba.conf)
			"28P01", // invalid_password
			"3D000", // invalid_catalog_name: no such database
			"3F000", // invalid_schema_name (the fencing table's schema)
			"42501", // insufficient_privilege
			"42602": // invalid_name
			return backend.Permanent(err)
		}
	}
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		return backend.Permanent(err)
	}
	return err
}

// A statement on a lock connection is bounded (WithOpTimeout, or a
// release's deadline) by a timer of the connection, made once and set per
// statement, that sets the connection's deadline in the past when it
// fires, as pgx does for a ctx that ends (its default handler): the
// statement's read or write fails and pgx closes the connection. The
// statement itself runs with a ctx that cannot be cancelled, so pgx
// watches nothing: a context with its timer, and pgx's watch of it (a
// channel and a context.AfterFunc), per statement cost more client CPU
// than the rest of the client's work on a try.

// pastDeadline is the deadline that ends a statement at once.
var pastDeadline = time.Unix(1, 0)

// boundStmt arms lc's statement timer to end the statement about to run
// at dl, and returns the time it has. The caller holds lc's lock and calls
// endStmt when the statement returns.
func (lc *lockConn) boundStmt(dl time.Time) time.Duration {
	d := time.Until(dl)
	if lc.bound == nil {
		nc := lc.nc
		lc.bound = time.AfterFunc(d, func() { _ = nc.SetDeadline(pastDeadline) })
	} else {
		lc.bound.Reset(d)
	}
	return d
}

// endStmt disarms lc's statement timer after the statement returned err,
// and returns err, or an error matching context.DeadlineExceeded if the
// timer fired: then the connection's deadline is in the past (whatever
// the statement returned, it took its whole time), and the caller must
// treat the connection as failed.
func (lc *lockConn) endStmt(err error, d time.Duration) error {
	if lc.bound.Stop() {
		return err
	}
	_ = lc.nc.SetDeadline(pastDeadline) // the timer's function may still be running: the same either way
	if err == nil {
		err = errors.New("no answer")
	}
	return fmt.Errorf("%w: statement bounded by %v: %w", context.DeadlineExceeded, d, err)
}

// stmtCtx is the ctx of a statement bounded by a lock connection's timer:
// one that cannot be cancelled, so that pgx watches nothing, with ctx's
// values only when the pool's connections have a tracer that may read
// them (pgx traces Prepare, which the statements call). It never asks ctx
// for Done: dlock's release context makes its channel and timer then.
func (b *Backend) stmtCtx(ctx context.Context) context.Context {
	if b.traced {
		return context.WithoutCancel(ctx)
	}
	return context.Background()
}

// lockUntil takes lc for a statement, waiting at most until dl.
func (lc *lockConn) lockUntil(dl time.Time) bool {
	if lc.tryLock() {
		return true
	}
	t := getTimer(time.Until(dl))
	defer putTimer(t)
	select {
	case lc.sem <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

// getTimer returns a timer that fires after d, from waitTimers.
func getTimer(d time.Duration) *time.Timer {
	t, _ := waitTimers.Get().(*time.Timer)
	if t == nil {
		return time.NewTimer(d)
	}
	t.Reset(d)
	return t
}

// putTimer stops t and keeps it in waitTimers.
func putTimer(t *time.Timer) {
	if !t.Stop() {
		select { // a tick left by an expired timer (asynctimerchan=1)
		case <-t.C:
		default:
		}
	}
	waitTimers.Put(t)
}

// waitTimers holds the stopped timers of lockUntil and exec: a release
// waits for a busy lock connection about once per lock when many
// goroutines share few connections.
var waitTimers sync.Pool
