//go:build linux && !dlock_portable

package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// queueKind is one kind of lock as the queue tests drive it.
type queueKind struct {
	name string // the helper process's kind
	file func(name string) string
	// hold takes the lock so that a waiter of this kind must wait.
	hold func(b *Backend, n string) (*Lease, bool, error)
	try  func(b *Backend, n string) (*Lease, bool, error)
	wait func(b *Backend, ctx context.Context, n string) (*Lease, error)
}

var queueKinds = []queueKind{
	{"mutex", func(n string) string { return fileName(kindMutex, n) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryLock(bg(), n) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryLock(bg(), n) },
		func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.Lock(ctx, n) }},
	{"read", func(n string) string { return fileName(kindRW, n) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryWLock(bg(), n) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryRLock(bg(), n) },
		func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.RLock(ctx, n) }},
	{"write", func(n string) string { return fileName(kindRW, n) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryRLock(bg(), n) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryWLock(bg(), n) },
		func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.WLock(ctx, n) }},
	{"semaphore", func(n string) string { return slotName(fileName(kindSemSlot, n), 0) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryAcquire(bg(), n, 1) },
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryAcquire(bg(), n, 1) },
		func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.Acquire(ctx, n, 1) }},
}

// tickets lists the tickets in the waiters' queue of the lock file at path
// (their offsets past queueBase), in increasing order.
func tickets(t testing.TB, path string) []int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil // removed by its last holder: no queue
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var out []int64
	// F_OFD_GETLK reports one conflicting lock of a range, not the lowest:
	// split the range around each one found.
	var scan func(start, end int64) // [start, end); end 0: to the end
	scan = func(start, end int64) {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: start}
		if end != 0 {
			lk.Len = end - start
		}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		if lk.Type == unix.F_UNLCK {
			return
		}
		if lk.Len != 1 {
			t.Fatalf("a lock of %d bytes at %d in the queue", lk.Len, lk.Start)
		}
		out = append(out, lk.Start-queueBase)
		if lk.Start > start {
			scan(start, lk.Start)
		}
		scan(lk.Start+1, end)
	}
	scan(queueBase, 0)
	slices.Sort(out)
	return out
}

// waitTickets waits until the queue of path holds n tickets and returns
// them.
func waitTickets(t testing.TB, path string, n int) []int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := tickets(t, path)
		if len(got) == n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue holds %d tickets, want %d", len(got), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// stop stops the helper process with SIGSTOP and waits until every thread
// of it has stopped.
func stop(t *testing.T, h *helper) {
	t.Helper()
	pid := h.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		all := len(stats) > 0
		for _, p := range stats {
			raw, err := os.ReadFile(p)
			// The state follows the command's closing parenthesis.
			i := bytes.LastIndexByte(raw, ')')
			if err != nil || i < 0 || i+2 >= len(raw) || raw[i+2] != 'T' {
				all = false
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper process did not stop")
		}
		time.Sleep(time.Millisecond)
	}
}

// waitResult is what a waiting goroutine reports.
type waitResult struct {
	l   *Lease
	err error
	at  time.Time
}

func goWait(ctx context.Context, k queueKind, b *Backend, name string) <-chan waitResult {
	c := make(chan waitResult, 1)
	go func() {
		l, err := k.wait(b, ctx, name)
		c <- waitResult{l, err, time.Now()}
	}()
	return c
}

// served waits for a waiter's lock; the waiter's backend has a wait
// fallback of a minute, so being served within 10 s means it was woken.
func served(t *testing.T, c <-chan waitResult) *Lease {
	t.Helper()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatalf("waiter: %v", r.err)
		}
		return r.l
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not served within 10s")
	}
	return nil
}

// TestTryDoesNotJumpQueue: while a waiter waits, a try fails even when the
// lock is free (the waiter, in a stopped helper process, has not taken it
// yet); tries succeed again once the queue is empty.
func TestTryDoesNotJumpQueue(t *testing.T) {
	for _, k := range queueKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			b := newBackend(t, dir)
			path := filepath.Join(dir, k.file("q"))
			h := mustTry(t)(k.hold(b, "q"))
			c := spawnHelper(t, dir, k.name, "q")
			waitTickets(t, path, 1)
			stop(t, c)
			mustRelease(t, h)
			mustBusy(t)(k.try(b, "q"))
			mustBusy(t)(k.hold(b, "q")) // the other side of an RW lock too
			if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			c.locked(t)
			c.release(t)
			mustRelease(t, mustTry(t)(k.try(b, "q")))
		})
	}
}

// TestDeadWaiterBlocksNobody: a waiter killed with SIGKILL leaves the
// queue with its process, whether it dies while the lock is held or after
// the lock came free for it: the next waiter is woken and served, and
// tries succeed again.
func TestDeadWaiterBlocksNobody(t *testing.T) {
	for _, k := range queueKinds {
		for _, when := range []string{"held", "free"} {
			t.Run(k.name+"/"+when, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				b := newBackend(t, dir)
				wb := newBackend(t, dir, WithWaitFallback(time.Minute))
				path := filepath.Join(dir, k.file("d"))
				h := mustTry(t)(k.hold(b, "d"))
				c := spawnHelper(t, dir, k.name, "d")
				waitTickets(t, path, 1)
				ctx, cancel := context.WithTimeout(bg(), time.Minute)
				defer cancel()
				got := goWait(ctx, k, wb, "d")
				waitTickets(t, path, 2)
				if when == "held" {
					c.kill()
					mustRelease(t, h)
				} else {
					stop(t, c)
					mustRelease(t, h)
					time.Sleep(20 * time.Millisecond)
					mustBusy(t)(k.try(b, "d")) // the stopped waiter is alive: still first
					c.kill()
				}
				l := served(t, got)
				mustRelease(t, l)
				if n := len(tickets(t, path)); n != 0 {
					t.Fatalf("%d tickets left in the queue", n)
				}
				mustRelease(t, mustTry(t)(k.try(b, "d")))
			})
		}
	}
}

// TestCancelledWaiterLeaves: a waiter whose ctx ends is out of the queue
// by the time its wait returns, and the next waiter is served at the next
// release.
func TestCancelledWaiterLeaves(t *testing.T) {
	for _, k := range queueKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			b := newBackend(t, dir)
			b1 := newBackend(t, dir)
			wb := newBackend(t, dir, WithWaitFallback(time.Minute))
			path := filepath.Join(dir, k.file("c"))
			h := mustTry(t)(k.hold(b, "c"))
			ctx1, cancel1 := context.WithCancel(bg())
			defer cancel1()
			first := goWait(ctx1, k, b1, "c")
			waitTickets(t, path, 1)
			ctx, cancel := context.WithTimeout(bg(), time.Minute)
			defer cancel()
			second := goWait(ctx, k, wb, "c")
			both := waitTickets(t, path, 2)
			cancel1()
			r := <-first
			if !errors.Is(r.err, dlock.ErrNotAcquired) || !errors.Is(r.err, context.Canceled) {
				t.Fatalf("cancelled wait: %v", r.err)
			}
			if got := tickets(t, path); !slices.Equal(got, both[1:]) {
				t.Fatalf("after the first waiter gave up the queue holds %v, want %v", got, both[1:])
			}
			mustRelease(t, h)
			mustRelease(t, served(t, second))
			mustRelease(t, mustTry(t)(k.try(b, "c")))
		})
	}
}

// TestSemaphoreFIFO: waiters for the tickets of a semaphore of limit 2 are
// served in the order they began to wait, one per released ticket, and two
// tickets released together serve two waiters at once.
func TestSemaphoreFIFO(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	path := filepath.Join(dir, slotName(fileName(kindSemSlot, "s"), 0))
	h1 := mustTry(t)(b.TryAcquire(bg(), "s", 2))
	h2 := mustTry(t)(b.TryAcquire(bg(), "s", 2))
	ctx, cancel := context.WithTimeout(bg(), time.Minute)
	defer cancel()
	const n = 4
	got, errs, leases := goAcquire(t, ctx, func(int) *Backend { return newBackend(t, dir, WithWaitFallback(time.Minute)) }, path, n, 2)
	next := func() int { t.Helper(); return nextServed(t, got, errs) }
	mustRelease(t, h1)
	if i := next(); i != 0 {
		t.Fatalf("waiter %d served first", i)
	}
	mustRelease(t, h2)
	if i := next(); i != 1 {
		t.Fatalf("waiter %d served second", i)
	}
	mustBusy(t)(b.TryAcquire(bg(), "s", 2))
	// Two tickets come free together: both remaining waiters get in.
	mustRelease(t, leases[0])
	mustRelease(t, leases[1])
	a, c := next(), next()
	if a+c != 5 {
		t.Fatalf("waiters %d and %d served last", a, c)
	}
	mustRelease(t, leases[2])
	mustRelease(t, leases[3])
	mustRelease(t, mustTry(t)(b.TryAcquire(bg(), "s", 2)))
}

// TestForeignLockInQueue: a lock over a lock file's queue that is no
// waiter's ticket — a classic fcntl record lock of some process, or an OFD
// lock of a whole range — is reported by every try and wait at once with a
// clear, permanent error: never a hang, never a lock taken. A leftover
// file at a name the backend no longer uses (the writers' gate of earlier
// versions) is ignored and left untouched.
func TestForeignLockInQueue(t *testing.T) {
	for _, lock := range []string{"posix", "ofd"} {
		for _, k := range queueKinds {
			t.Run(lock+"/"+k.name, func(t *testing.T) {
				t.Parallel()
				b := newBackend(t, "")
				path := filepath.Join(b.Dir(), k.file("f"))
				// A classic record lock belongs to a process, and any close of
				// the file by that process drops it: it is taken by a helper
				// process. An OFD lock belongs to its open file description.
				var unlock func()
				if lock == "posix" {
					h, _ := startHelper(t, "", "posix", path)
					unlock = func() { h.release(t) }
				} else {
					fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
					if err != nil {
						t.Fatal(err)
					}
					defer unix.Close(fd)
					lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart}
					if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
						t.Fatal(err)
					}
					unlock = func() {
						lk.Type = unix.F_UNLCK
						if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
							t.Fatal(err)
						}
					}
				}
				refused := func(err error) bool {
					return err != nil && strings.Contains(err.Error(), "not a waiter of this backend") && backend.IsPermanent(err)
				}
				if l, ok, err := k.try(b, "f"); ok || !refused(err) {
					if ok {
						l.Release(bg())
					}
					t.Fatalf("try = %v, %v; want a permanent refusal", ok, err)
				}
				ctx, cancel := context.WithTimeout(bg(), 30*time.Second)
				defer cancel()
				t0 := time.Now()
				if l, err := k.wait(b, ctx, "f"); !refused(err) {
					if err == nil {
						l.Release(bg())
					}
					t.Fatalf("wait = %v; want a permanent refusal", err)
				}
				if d := time.Since(t0); d > 5*time.Second {
					t.Fatalf("the refusal took %v", d)
				}
				// Once the foreign lock is gone, all is well.
				unlock()
				mustRelease(t, mustTry(t)(k.try(b, "f")))
			})
		}
	}

	t.Run("counter", func(t *testing.T) {
		// A lock over a reader's fencing counter: refused, not a hang (it
		// is not in the queue, but readers take turns there).
		b := newBackend(t, "")
		path := filepath.Join(b.Dir(), fileName(kindRW, "c"))
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Len: 1}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
			t.Fatal(err)
		}
		if l, ok, err := b.TryRLock(bg(), "c"); ok || err == nil || !strings.Contains(err.Error(), "not a reader's") || !backend.IsPermanent(err) {
			if ok {
				l.Release(bg())
			}
			t.Fatalf("TryRLock = %v, %v; want a permanent refusal", ok, err)
		}
	})

	t.Run("old gate", func(t *testing.T) {
		b := newBackend(t, "")
		victim, untouched := plantVictim(t)
		if err := os.Link(victim, filepath.Join(b.Dir(), fileName(kindRWGate, "g"))); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkfifo(filepath.Join(b.Dir(), fileName(kindRWGate, "fifo")), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"g", "fifo"} {
			mustRelease(t, mustTry(t)(b.TryRLock(bg(), n)))
			mustRelease(t, mustTry(t)(b.TryWLock(bg(), n)))
			ctx, cancel := context.WithTimeout(bg(), 10*time.Second)
			l, err := b.RLock(ctx, n)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			mustRelease(t, l)
		}
		untouched()
	})
}

// TestWaiterFollowsReplacedLockFile: a waiter whose lock file is removed
// while it waits takes its ticket along to the new file, and takes the lock
// there once the old holder lets the old file go.
func TestWaiterFollowsReplacedLockFile(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	wb := newBackend(t, dir, WithWaitFallback(50*time.Millisecond))
	path := filepath.Join(dir, fileName(kindMutex, "r"))
	h := mustTry(t)(b.TryLock(bg(), "r"))
	ctx, cancel := context.WithTimeout(bg(), time.Minute)
	defer cancel()
	got := goWait(ctx, queueKinds[0], wb, "r")
	waitTickets(t, path, 1)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitLost(t, h, 5*time.Second)
	if err := h.Release(bg()); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("release of the lost lock: %v", err)
	}
	l := served(t, got)
	if same, err := stillNamed(path, l.dev, l.ino); err != nil || !same {
		t.Fatalf("the waiter holds a file the path no longer names: %v, %v", same, err)
	}
	mustBusy(t)(b.TryLock(bg(), "r"))
	mustRelease(t, l)
}

// TestReleaseWakesNextWaiter: a release always wakes the next waiter,
// whether it waits in this Backend (which wakes only its oldest waiter of a
// mutex, from the release itself) or in another; nobody relies on the
// fallback timer, which here is an hour. 16 waiters over two Backends
// queue behind a holder and must all be served, one after another.
func TestReleaseWakesNextWaiter(t *testing.T) {
	dir := t.TempDir()
	bs := []*Backend{newBackend(t, dir, WithWaitFallback(time.Hour)), newBackend(t, dir, WithWaitFallback(time.Hour))}
	holder := mustTry(t)(bs[0].TryLock(bg(), "next"))
	ctx, cancel := context.WithTimeout(bg(), 30*time.Second)
	defer cancel()
	const waiters = 16
	var inside atomic.Int32
	errs := make(chan error, waiters)
	for i := range waiters {
		go func() {
			l, err := bs[i%2].Lock(ctx, "next")
			if err != nil {
				errs <- err
				return
			}
			if inside.Add(1) != 1 {
				errs <- errors.New("two holders at once")
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			errs <- l.Release(bg())
		}()
		time.Sleep(5 * time.Millisecond) // queue one after another
	}
	if err := holder.Release(bg()); err != nil {
		t.Fatal(err)
	}
	for range waiters {
		if err := <-errs; err != nil {
			t.Fatalf("a waiter: %v (a missed wake-up waits for the hour-long fallback; ctx ends it after 30s)", err)
		}
	}
}

// TestLocalWaitersServedInOrder: waiters of one Backend (a close wakes only
// the oldest of them) are served one by one in the order they began to
// wait, whether the holder is in their Backend (its release wakes them
// directly) or in another (inotify), and waiters that give up (the oldest
// among them) pass the wake-up on: the wait fallback is a minute and each
// waiter must be served within 10 s, so a waiter skipped, woken out of
// order or never woken fails the test.
func TestLocalWaitersServedInOrder(t *testing.T) {
	for _, k := range queueKinds {
		if k.name == "read" {
			continue // readers go in together
		}
		for _, giveUp := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/giveUp=%v", k.name, giveUp), func(t *testing.T) {
				localAndForeign(t, func(t *testing.T, dir string, wb, hb *Backend) {
					path := filepath.Join(dir, k.file("o"))
					h := mustTry(t)(k.hold(hb, "o"))
					const n = 6
					var waits []<-chan waitResult
					var cancels []context.CancelFunc
					for i := range n {
						ctx, cancel := context.WithTimeout(bg(), time.Minute)
						defer cancel()
						cancels = append(cancels, cancel)
						waits = append(waits, goWait(ctx, k, wb, "o"))
						waitTickets(t, path, i+1)
					}
					order := []int{0, 1, 2, 3, 4, 5}
					if giveUp {
						// The oldest waiter and one in the middle give up.
						for _, i := range []int{0, 3} {
							cancels[i]()
							if r := <-waits[i]; !errors.Is(r.err, dlock.ErrNotAcquired) {
								t.Fatalf("waiter %d gave up with %v", i, r.err)
							}
						}
						order = []int{1, 2, 4, 5}
					}
					mustRelease(t, h)
					for j, i := range order {
						l := served(t, waits[i])
						for _, later := range order[j+1:] {
							select {
							case r := <-waits[later]:
								t.Fatalf("waiter %d served (err %v) while waiter %d, who began to wait before it, holds the lock", later, r.err, i)
							default:
							}
						}
						mustRelease(t, l)
					}
				})
			})
		}
	}
}

// TestLocalReadersWokenTogether: of the waiters of one Backend, a close
// wakes every reader older than the oldest writer (they go in together,
// and a reader taking the lock closes nothing that would wake the next:
// four readers must all be in before any leaves), then that writer, then
// the readers behind it. The wait fallback is a minute: a waiter not
// woken fails the test.
func TestLocalReadersWokenTogether(t *testing.T) {
	localAndForeign(t, func(t *testing.T, dir string, wb, hb *Backend) {
		read, write := queueKinds[1], queueKinds[2]
		path := filepath.Join(dir, read.file("t"))
		h := mustTry(t)(hb.TryWLock(bg(), "t"))
		ctx, cancel := context.WithTimeout(bg(), time.Minute)
		defer cancel()
		var waits []<-chan waitResult
		for i, k := range []queueKind{read, read, read, read, write, read} {
			waits = append(waits, goWait(ctx, k, wb, "t"))
			waitTickets(t, path, i+1)
		}
		notYet := func(is ...int) {
			t.Helper()
			for _, i := range is {
				select {
				case r := <-waits[i]:
					t.Fatalf("waiter %d served (err %v) before its turn", i, r.err)
				default:
				}
			}
		}
		mustRelease(t, h)
		var readers []*Lease
		for i := range 4 {
			readers = append(readers, served(t, waits[i]))
		}
		notYet(4, 5)
		for _, r := range readers {
			notYet(4, 5)
			mustRelease(t, r)
		}
		w := served(t, waits[4])
		notYet(5)
		mustRelease(t, w)
		mustRelease(t, served(t, waits[5]))
	})
}

// TestLocalSemaphoreWaiters: waiters of one Backend for a semaphore of
// limit 3 (a close wakes only the oldest; a waiter that takes a slot wakes
// the next while slots may be free) are served in order, and tickets
// released together serve as many waiters at once; the holders are in
// the waiters' Backend or in another. The wait fallback is a minute.
func TestLocalSemaphoreWaiters(t *testing.T) {
	localAndForeign(t, func(t *testing.T, dir string, wb, hb *Backend) {
		path := filepath.Join(dir, slotName(fileName(kindSemSlot, "s"), 0))
		var held []*Lease
		for range 3 {
			held = append(held, mustTry(t)(hb.TryAcquire(bg(), "s", 3)))
		}
		ctx, cancel := context.WithTimeout(bg(), time.Minute)
		defer cancel()
		const n = 5
		got, errs, leases := goAcquire(t, ctx, func(int) *Backend { return wb }, path, n, 3)
		served := func(want ...int) {
			t.Helper()
			seen := map[int]bool{}
			for range want {
				seen[nextServed(t, got, errs)] = true
			}
			for _, i := range want {
				if !seen[i] {
					t.Fatalf("served %v, want %v", seen, want)
				}
			}
			select {
			case i := <-got:
				t.Fatalf("waiter %d served too", i)
			default:
			}
		}
		// Two tickets come free together: the two oldest get in.
		mustRelease(t, held[0])
		mustRelease(t, held[1])
		served(0, 1)
		mustRelease(t, held[2])
		served(2)
		// Three at once: both remaining get in.
		for _, i := range []int{0, 1, 2} {
			mustRelease(t, leases[i])
		}
		served(3, 4)
		mustRelease(t, leases[3])
		mustRelease(t, leases[4])
	})
}

// goAcquire starts n waiters for a ticket of the semaphore "s" of limit,
// the i-th in backend(i), one after another: each has its ticket in the
// queue at path before the next starts. Each sends its index on got once
// it holds leases[i], or its error on errs.
func goAcquire(t *testing.T, ctx context.Context, backend func(i int) *Backend, path string, n, limit int) (got chan int, errs chan error, leases []*Lease) {
	t.Helper()
	got, errs, leases = make(chan int, n), make(chan error, n), make([]*Lease, n)
	for i := range n {
		b := backend(i)
		go func() {
			l, err := b.Acquire(ctx, "s", limit)
			if err != nil {
				errs <- err
				return
			}
			leases[i] = l
			got <- i
		}()
		waitTickets(t, path, i+1)
	}
	return got, errs, leases
}

// nextServed returns the index of the next waiter of goAcquire served,
// within 10 s.
func nextServed(t *testing.T, got <-chan int, errs <-chan error) int {
	t.Helper()
	select {
	case i := <-got:
		return i
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("no waiter served within 10s")
	}
	return -1
}

// localAndForeign runs f in two parallel subtests, each with a directory
// of its own and wb, a Backend of it whose waits fall back after a minute
// (a waiter served within seconds was woken), and hb, the holders'
// Backend: wb itself ("local", whose releases wake wb's waiters directly)
// or another ("foreign", through inotify).
func localAndForeign(t *testing.T, f func(t *testing.T, dir string, wb, hb *Backend)) {
	for _, where := range []string{"local", "foreign"} {
		t.Run(where, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			wb := newBackend(t, dir, WithWaitFallback(time.Minute))
			hb := wb
			if where == "foreign" {
				hb = newBackend(t, dir)
			}
			f(t, dir, wb, hb)
		})
	}
}

// TestWaiterLeavesRemovedFileHeldByHungHolder: a waiter whose lock file is
// removed while a holder that never lets go (a hung process) still holds it
// moves to the new file and takes the lock there: the removed file's lock
// guards nothing any more, and waiting for it would wait forever.
func TestWaiterLeavesRemovedFileHeldByHungHolder(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	wb := newBackend(t, dir, WithWaitFallback(50*time.Millisecond))
	path := filepath.Join(dir, fileName(kindMutex, "hung"))
	h := mustTry(t)(b.TryLock(bg(), "hung"))
	defer h.Release(bg())
	ctx, cancel := context.WithTimeout(bg(), 10*time.Second)
	defer cancel()
	got := goWait(ctx, queueKinds[0], wb, "hung")
	waitTickets(t, path, 1)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	l := served(t, got)
	if same, err := stillNamed(path, l.dev, l.ino); err != nil || !same {
		t.Fatalf("the waiter holds a file the path no longer names: %v, %v", same, err)
	}
	mustRelease(t, l)
}
