package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"
)

// pgWatchedFloor is the hand-written PostgreSQL lock with the guarantees
// that dlock's pg backend gives by default beyond the plain floor's, and
// nothing more:
//
//   - loss is reported within milliseconds when the server closes the
//     session: a lock held longer than watchDelay (1 ms, dlock's) has a
//     goroutine waiting until its connection's socket is readable without
//     reading it (a peek, as dlock's watcher does); what comes while the
//     lock is idle is the server's FATAL message or its close, and the
//     lock is lost. The release marks the watcher stale and sends its
//     unlock at once: its read waits for the watcher's wait, which the
//     answer ends. A per-lock timer starts the watcher. (Anything else that
//     came while idle, a notice, would end the watch here; dlock reads it
//     and watches on.)
//   - a wait is bounded by its ctx on the server and is not cut short by a
//     statement_timeout of the pool's connections: lock_timeout from ctx's
//     deadline, set with set_config(..., true) in the wait's own implicit
//     transaction, in one prepared statement with the lock function, run
//     only when the session's statement_timeout is 0 (as dlock's); on a
//     session with one, the statement returns at once and the wait sends
//     the timeouts (statement_timeout 0 too) in one batch with the lock
//     statement.
//
// A free lock costs no set_config: the lock is first tried
// (pg_try_advisory_lock, prepared), unless a wait of this instance is
// already queued for the name (a try could not succeed: dlock skips it the
// same way). Then the statements are: try (free lock) or the batch (held
// lock), and pg_advisory_unlock; the connection goes back to the pool at
// release, as the plain floor's. Not here, because they cost nothing per
// lock: the monitor's pings of idle lock connections. Off by default in
// dlock, so not here either: fencing tokens and holder records.
type pgWatchedFloor struct {
	p *pgxpool.Pool

	mu     sync.Mutex
	queued map[int64]int // waits in the server's queue, by key
}

func (f *pgWatchedFloor) warm(ctx context.Context, n int) error { return warmPool(ctx, f.p, n) }

// Names of the watched floor's prepared statements.
const (
	pgWFloorTry      = "bench_wfloor_try"
	pgWFloorLock     = "bench_wfloor_lock"
	pgWFloorUnlock   = "bench_wfloor_unlock"
	pgWFloorTimeouts = "bench_wfloor_timeouts"
	pgWFloorWait     = "bench_wfloor_wait"
)

// watchDelay is how long a lock is held before its watcher starts (dlock's).
const watchDelay = time.Millisecond

type pgWatchedHeld struct {
	conn  *pgxpool.Conn
	key   int64
	timer *time.Timer

	mu sync.Mutex // guards stale
	// stale is set by Release: the watcher, started or not, must not
	// report anything any more.
	stale bool
	lost  chan struct{} // closed when the watcher finds the session ended
}

func (f *pgWatchedFloor) lock(ctx context.Context, name string) (held, error) {
	conn, err := f.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	key := advisoryKey(name)
	f.mu.Lock()
	busy := f.queued[key] > 0
	f.mu.Unlock()
	ok := false
	if !busy {
		if err := conn.QueryRow(ctx, pgWFloorTry, key).Scan(&ok); err != nil {
			conn.Release()
			return nil, err
		}
	}
	if !ok {
		if err := f.wait(ctx, conn, key); err != nil {
			conn.Release()
			return nil, err
		}
	}
	h := &pgWatchedHeld{conn: conn, key: key, lost: make(chan struct{})}
	h.timer = time.AfterFunc(watchDelay, h.watch)
	return h, nil
}

// wait queues for key on conn's session, bounded by ctx: lock_timeout and
// the lock in one statement (or, on a session with a statement_timeout,
// the timeouts and the lock in one batch: one implicit transaction, one
// round trip). A ctx ended meanwhile makes pgx close the connection, which
// frees the lock.
func (f *pgWatchedFloor) wait(ctx context.Context, conn *pgxpool.Conn, key int64) error {
	f.mu.Lock()
	f.queued[key]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		if f.queued[key]--; f.queued[key] == 0 {
			delete(f.queued, key)
		}
		f.mu.Unlock()
	}()
	ms := int64(0)
	if dl, ok := ctx.Deadline(); ok {
		ms = max(time.Until(dl).Milliseconds()+2, 1)
	}
	c := conn.Conn()
	tms := strconv.FormatInt(ms, 10)
	// One statement, unless the session has a statement_timeout, which
	// would cut the wait short: the statement then returns false at once,
	// without queueing, and the batch below runs instead.
	var waited bool
	if err := c.QueryRow(ctx, pgWFloorWait, tms, key).Scan(&waited); err != nil || waited {
		return err
	}
	sdT, err := c.Prepare(ctx, pgWFloorTimeouts, "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true)")
	if err != nil {
		return err
	}
	sdL, err := c.Prepare(ctx, pgWFloorLock, "SELECT pg_advisory_lock($1::bigint)")
	if err != nil {
		return err
	}
	batch := &pgconn.Batch{}
	batch.ExecStatement(sdT, [][]byte{[]byte(tms)}, nil, nil)
	batch.ExecStatement(sdL, [][]byte{strconv.AppendInt(nil, key, 10)}, nil, nil)
	mrr := c.PgConn().ExecBatch(ctx, batch)
	for mrr.NextResult() {
		_, _ = mrr.ResultReader().Close()
	}
	return mrr.Close()
}

// watch starts the watcher, unless the lock was released first.
func (h *pgWatchedHeld) watch() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stale {
		return
	}
	sc, ok := h.conn.Conn().PgConn().Conn().(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	go func() {
		ended := false
		_ = rc.Read(func(fd uintptr) bool {
			var b [1]byte
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err == unix.EAGAIN || err == unix.EINTR {
				return false
			}
			ended = err != nil || n == 0 || b[0] == 'E' // the server's close, or its FATAL first
			return true
		})
		h.mu.Lock()
		defer h.mu.Unlock()
		if ended && !h.stale {
			close(h.lost) // the lock is lost
		}
	}()
}

func (h *pgWatchedHeld) Release(ctx context.Context) error {
	h.timer.Stop()
	h.mu.Lock()
	h.stale = true
	h.mu.Unlock()
	select {
	case <-h.lost:
		_ = h.conn.Conn().Close(context.Background())
		h.conn.Release()
		return errors.New("pg watched floor: lock lost")
	default:
	}
	return pgUnlock(ctx, h.conn, pgWFloorUnlock, h.key)
}

func openPGWatchedFloor(tb testing.TB, _ string) locker {
	return &pgWatchedFloor{
		p: newPoolWith(tb, func(ctx context.Context, c *pgx.Conn) error {
			if _, err := c.Prepare(ctx, pgWFloorTry, "SELECT pg_try_advisory_lock($1::bigint)"); err != nil {
				return err
			}
			if _, err := c.Prepare(ctx, pgWFloorWait, "SELECT CASE WHEN current_setting('statement_timeout') <> '0' THEN false "+
				"WHEN set_config('lock_timeout', $1, true) IS NULL THEN false ELSE pg_advisory_lock($2::bigint) IS NOT NULL END"); err != nil {
				return err
			}
			_, err := c.Prepare(ctx, pgWFloorUnlock, "SELECT pg_advisory_unlock($1::bigint)")
			return err
		}),
		queued: make(map[int64]int),
	}
}

// TestPGWatchedFloorLoss: the watched floor gives the guarantees it is the
// floor of. A lock held past its watcher's start and released is free at
// once (the release's unlock is answered past the watcher's wait); a lock
// whose session the server ends while it is held reports the loss within a
// second, and its release says so.
func TestPGWatchedFloorLoss(t *testing.T) {
	f := openPGWatchedFloor(t, "").(*pgWatchedFloor)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	name := fmt.Sprintf("bench-wfloor-test-%d", time.Now().UnixNano())

	h, err := f.lock(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the watcher waits
	if err := h.Release(ctx); err != nil {
		t.Fatalf("Release of a watched lock: %v", err)
	}
	c, err := f.p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var free bool
	err = c.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::bigint)", advisoryKey(name)).Scan(&free)
	if err == nil && free {
		_, err = c.Exec(ctx, "SELECT pg_advisory_unlock($1::bigint)", advisoryKey(name))
	}
	c.Release()
	if err != nil || !free {
		t.Fatalf("after Release the lock is not free: %v %v", free, err)
	}

	h, err = f.lock(ctx, name+"-lost")
	if err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() { // before the pool's Close, which waits for it
		if !released {
			_ = h.Release(context.Background())
		}
	})
	time.Sleep(20 * time.Millisecond)
	pid := h.(*pgWatchedHeld).conn.Conn().PgConn().PID()
	if _, err := f.p.Exec(ctx, "SELECT pg_terminate_backend($1, 10000)", int64(pid)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.(*pgWatchedHeld).lost:
	case <-time.After(time.Second):
		t.Fatal("the watched floor did not report the loss within 1s")
	}
	released = true
	if err := h.Release(ctx); err == nil {
		t.Fatal("Release of a lost lock returned nil")
	}
}
