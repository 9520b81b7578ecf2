package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The guarantee floors: hand-written locks that do the work one of dlock's
// default guarantees needs and nothing more, measured beside the plain
// floor so that the cost of the guarantee is a measured figure rather than
// an estimate. Those that cannot wait (waits: false in libs) are measured
// in BenchmarkUncontended and BenchmarkThroughputKeys only.

// valkeyFencedFloor is the hand-written lock with a fencing token, which
// dlock gives by default: one script sets the key NX PX and, when it did,
// increments the name's counter and returns it; the release is the floor's
// compare-and-delete.
type valkeyFencedFloor struct{ valkeyFloor }

const valkeyFencedLockScript = `if redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then return redis.call("incr", KEYS[2]) end return 0`

var valkeyFencedLockSHA = scriptSHA(valkeyFencedLockScript)

func (f valkeyFencedFloor) lock(ctx context.Context, name string) (held, error) {
	c := f.c
	key := "bench-ffloor:" + name
	token := f.prefix + strconv.FormatUint(f.n.Add(1), 36)
	px := strconv.FormatInt(leaseTTL.Milliseconds(), 10)
	n, err := c.Do(ctx, c.B().Evalsha().Sha1(valkeyFencedLockSHA).Numkeys(2).Key(key, key+":f").Arg(token, px).Build()).AsInt64()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		n, err = c.Do(ctx, c.B().Eval().Script(valkeyFencedLockScript).Numkeys(2).Key(key, key+":f").Arg(token, px).Build()).AsInt64()
	}
	switch {
	case err != nil:
		return nil, err
	case n == 0:
		return nil, errors.New("valkey fenced floor: held (it does not wait)")
	}
	return &valkeyFloorHeld{f.valkeyFloor, key, token}, nil
}

func openValkeyFencedFloor(tb testing.TB, dir string) locker {
	return valkeyFencedFloor{openValkeyFloor(tb, dir).(valkeyFloor)}
}

// fsSameCalls is the hand-written file lock that makes the system calls of
// dlock's uncontended acquire + release (strace of BenchmarkUncontended):
// open; the waiters' queue check (one F_OFD_GETLK past the data: a try does
// not jump the queue); flock; fstat + statx (the path still names the
// locked file); pread + pwrite (the fencing counter and the holder record);
// a one-byte OFD lock (the holder record's mark, so a killed holder is never
// listed); at release statx (held until the end), flock(LOCK_UN), close.
type fsSameCalls struct{ dir string }

// fsRecord is the holder record written with the counter, as long as
// dlock's (host, pid, process start, acquisition time).
const fsRecord = `{"h":"bench-host","p":4411,"s":1796276692095541263,"t":1796276692095541263}` + "\n"

type fsSameHeld struct {
	fd     int
	path   string
	ino    uint64
	ticket int64 // a waiter's place in the file's queue (fsFairFloor), 0: none
}

// fsQueueBase is the offset of the tickets in the lock file, as dlock's.
const fsQueueBase = 1 << 32

// join takes a waiter's ticket: a one-byte OFD lock at the queue's base plus
// the monotonic clock, which the queue check of a waiter that came later
// sees.
func (h *fsSameHeld) join() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return err
	}
	h.ticket = max(1, ts.Nano())
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: fsQueueBase + h.ticket, Len: 1}
	return unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_SETLK, &lk)
}

func (r fsSameCalls) lock(_ context.Context, name string) (held, error) {
	path := lockPath(r.dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	h := &fsSameHeld{fd: fd, path: path}
	if err := h.take(); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return h, nil
}

func (h *fsSameHeld) take() error {
	q := unix.Flock_t{Type: unix.F_WRLCK, Start: fsQueueBase}
	if h.ticket != 0 {
		q.Len = h.ticket // older tickets only
	}
	if err := unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_GETLK, &q); err != nil {
		return err
	}
	if q.Type != unix.F_UNLCK {
		return unix.EWOULDBLOCK // waiters queued
	}
	if err := unix.Flock(h.fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return err
	}
	if h.ticket != 0 {
		lk := unix.Flock_t{Type: unix.F_UNLCK, Start: fsQueueBase}
		if err := unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_SETLK, &lk); err != nil {
			return err
		}
		h.ticket = 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(h.fd, &st); err != nil {
		return err
	}
	h.ino = st.Ino
	if err := h.samePath(); err != nil {
		return err
	}
	var buf [29]byte
	n, err := unix.Pread(h.fd, buf[:], 0)
	if err != nil {
		return err
	}
	var count uint64
	if n >= 20 {
		if count, err = strconv.ParseUint(string(buf[:20]), 10, 64); err != nil {
			return fmt.Errorf("fs same-calls floor: counter: %w", err)
		}
	}
	var rec [21 + len(fsRecord)]byte
	b := strconv.AppendUint(rec[:0], count+1, 10)
	pad := 20 - len(b)
	copy(rec[pad:], b)
	for i := range pad {
		rec[i] = '0'
	}
	rec[20] = '\n'
	copy(rec[21:], fsRecord)
	if _, err := unix.Pwrite(h.fd, rec[:], 0); err != nil {
		return err
	}
	// The mark may still be the predecessor's, which unlocked its flock
	// and is closing the file: retried briefly, as dlock does (fs's
	// record). Refused, it would come back as EWOULDBLOCK with the flock
	// held, and a fair floor's waiter would wait holding the lock.
	mark := unix.Flock_t{Type: unix.F_WRLCK, Start: 1 << 31, Len: 1}
	pause, deadline := 50*time.Microsecond, time.Now().Add(time.Second)
	for {
		err := unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_SETLK, &mark)
		if err != unix.EAGAIN && err != unix.EACCES {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fs same-calls floor: the holder mark stayed locked: %w", err)
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
}

// samePath checks that the path still names the locked file.
func (h *fsSameHeld) samePath() error {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, h.path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO, &stx); err != nil {
		return err
	}
	if stx.Ino != h.ino {
		return errors.New("fs same-calls floor: lock file replaced")
	}
	return nil
}

func (h *fsSameHeld) Release(context.Context) error {
	err := h.samePath()
	if uerr := unix.Flock(h.fd, unix.LOCK_UN); err == nil {
		err = uerr
	}
	if cerr := unix.Close(h.fd); err == nil {
		err = cerr
	}
	return err
}

func openFSSameCalls(_ testing.TB, dir string) locker { return fsSameCalls{dir} }

// Compile-time checks that the floors are lockers.
var (
	_ locker = valkeyFencedFloor{}
	_ locker = fsSameCalls{}
	_ locker = fsFairFloor{}
)

// fsFairFloor is the hand-written lock on files that waits the way dlock's
// does, with the floor's four calls per acquisition (open, flock, flock,
// close) and nothing else:
//   - the wait can be cancelled: a blocking flock cannot be (its thread
//     sleeps in the kernel until the lock is free), so a waiter tries
//     LOCK_NB and, while the file is locked, waits for a close in the
//     directory, which is how a holder lets go (one inotify instance per
//     locker, its close events watched from the first wait on);
//   - waiters are served in arrival order: the goroutines of one locker
//     queue per name in front of the file, so a release hands the lock to
//     the oldest of them, never back to the goroutine that released.
//
// Across lockers (processes) the kernel decides who gets the file, so this
// floor is less fair than dlock, whose queue spans processes: it is a lower
// bound of what strict FIFO and a cancellable wait cost. The queues are
// never freed (the benchmarks use few names).
//
// With same set (floor-fair-samecalls), an acquisition makes dlock's 11 calls
// instead (fsSameCalls), and a waiter takes a ticket in the file's queue as
// dlock's does (one OFD lock, dropped once it holds the lock; the queue
// check then looks at older tickets only): this floor has dlock's calls and
// its order across processes, without its wake-up of the next waiter.
type fsFairFloor struct {
	dir    string
	queues *sync.Map // name -> *fifo
	w      *closeWatch
	same   bool
}

func (f fsFairFloor) lock(ctx context.Context, name string) (held, error) {
	q := fifoOf(f.queues, name)
	if err := q.enter(ctx); err != nil {
		return nil, err
	}
	path := lockPath(f.dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		q.leave()
		return nil, err
	}
	try := func() error { return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) }
	join := func() error { return nil }
	var same *fsSameHeld
	if f.same {
		same = &fsSameHeld{fd: fd, path: path}
		try, join = same.take, same.join
	}
	if err := f.take(ctx, try, join); err != nil {
		_ = unix.Close(fd)
		q.leave()
		return nil, err
	}
	return &fsFairHeld{fd, same, q}, nil
}

// take calls try until it locks the file, waiting for closes in the
// directory while the file is locked; it calls join before its first wait.
func (f fsFairFloor) take(ctx context.Context, try, join func() error) error {
	var closed <-chan struct{}
	for {
		err := try()
		if err == nil {
			return nil
		}
		if err == unix.EINTR {
			continue // interrupted, not busy: try again at once
		}
		if err != unix.EWOULDBLOCK {
			return err
		}
		if closed == nil {
			// Watch first, then try again: a close between the failed
			// try and the watch would be lost.
			if err := join(); err != nil {
				return err
			}
			if closed, err = f.w.next(); err != nil {
				return err
			}
			continue
		}
		select {
		case <-closed:
		case <-ctx.Done():
			return ctx.Err()
		}
		if closed, err = f.w.next(); err != nil {
			return err
		}
	}
}

type fsFairHeld struct {
	fd   int
	same *fsSameHeld // nil: the floor's calls
	q    *fifo
}

func (h *fsFairHeld) Release(ctx context.Context) error {
	var err error
	if h.same != nil {
		err = h.same.Release(ctx)
	} else {
		err = unix.Flock(h.fd, unix.LOCK_UN)
		if cerr := unix.Close(h.fd); err == nil {
			err = cerr
		}
	}
	h.q.leave()
	return err
}

// fifoOf returns the fifo of name in queues (name -> *fifo), made if
// there is none.
func fifoOf(queues *sync.Map, name string) *fifo {
	v, ok := queues.Load(name)
	if !ok {
		v, _ = queues.LoadOrStore(name, new(fifo))
	}
	return v.(*fifo)
}

// fifo is a lock that serves its waiters in arrival order.
type fifo struct {
	mu   sync.Mutex
	busy bool
	wait []chan struct{}
}

func (q *fifo) enter(ctx context.Context) error {
	q.mu.Lock()
	if !q.busy {
		q.busy = true
		q.mu.Unlock()
		return nil
	}
	c := make(chan struct{}, 1)
	q.wait = append(q.wait, c)
	q.mu.Unlock()
	select {
	case <-c:
		return nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	if i := slices.Index(q.wait, c); i >= 0 {
		q.wait = slices.Delete(q.wait, i, i+1)
		q.mu.Unlock()
		return ctx.Err()
	}
	q.mu.Unlock()
	q.leave() // handed the turn meanwhile: pass it on
	return ctx.Err()
}

func (q *fifo) leave() {
	q.mu.Lock()
	if len(q.wait) == 0 {
		q.busy = false
		q.mu.Unlock()
		return
	}
	c := q.wait[0]
	q.wait = slices.Delete(q.wait, 0, 1)
	q.mu.Unlock()
	c <- struct{}{}
}

// closeWatch broadcasts the close events of one directory: next returns a
// channel closed at the next batch of events.
type closeWatch struct {
	dir  string
	f    *os.File
	once sync.Once
	err  error
	mu   sync.Mutex
	gen  chan struct{}
	done chan struct{}
}

func newCloseWatch(tb testing.TB, dir string) *closeWatch {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	w := &closeWatch{dir: dir, f: os.NewFile(uintptr(fd), "inotify"), gen: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	tb.Cleanup(func() {
		_ = w.f.Close()
		<-w.done
	})
	return w
}

func (w *closeWatch) next() (<-chan struct{}, error) {
	w.once.Do(func() {
		raw, err := w.f.SyscallConn()
		if err != nil {
			w.err = err
			return
		}
		if cerr := raw.Control(func(fd uintptr) {
			_, err = unix.InotifyAddWatch(int(fd), w.dir, unix.IN_CLOSE_WRITE|unix.IN_CLOSE_NOWRITE|unix.IN_ONLYDIR)
		}); cerr != nil {
			err = cerr
		}
		w.err = err
	})
	if w.err != nil {
		return nil, w.err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen, nil
}

func (w *closeWatch) run() {
	defer close(w.done)
	buf := make([]byte, 4096)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		if n > 0 {
			w.mu.Lock()
			close(w.gen)
			w.gen = make(chan struct{})
			w.mu.Unlock()
		}
	}
}

func openFSFairFloor(same bool) func(tb testing.TB, dir string) locker {
	return func(tb testing.TB, dir string) locker {
		return fsFairFloor{dir, new(sync.Map), newCloseWatch(tb, dir), same}
	}
}
