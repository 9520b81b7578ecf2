//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// Idle lock files go: many names of every kind locked and released leave
// no file behind after a sweep, and while some are held exactly their
// files remain.
func TestLockFilesDeleted(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	ctx := context.Background()
	const names = 500
	for i := range names {
		n := fmt.Sprintf("job-%d", i)
		mustRelease(t, mustTry(t)(b.TryLock(ctx, n)))
		r1 := mustTry(t)(b.TryRLock(ctx, n))
		r2 := mustTry(t)(b.TryRLock(ctx, n))
		mustRelease(t, r1)
		mustRelease(t, r2)
		mustRelease(t, mustTry(t)(b.TryWLock(ctx, n)))
		s1 := mustTry(t)(b.TryAcquire(ctx, n, 3))
		s2 := mustTry(t)(b.TryAcquire(ctx, n, 3))
		mustRelease(t, s2)
		mustRelease(t, s1)
	}
	t.Logf("%d files after %d names of each kind were released, before the sweep", len(lockFiles(t, dir)), names)
	b.sweepIdle()
	if left := lockFiles(t, dir); len(left) != 0 {
		t.Fatalf("%d files left after %d names of each kind were released, e.g. %q", len(left), names, left[:min(5, len(left))])
	}
	m := mustTry(t)(b.TryLock(ctx, "held"))
	r := mustTry(t)(b.TryRLock(ctx, "held"))
	s := mustTry(t)(b.TryAcquire(ctx, "held", 2))
	b.sweepIdle()
	got := lockFiles(t, dir)
	want := []string{"m-held", "r-held", "rh-held+1", "s-held+0", "sc-held"} // a semaphore's counter goes with its slots, a reader's record file with it
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("files while held: %q, want %q", got, want)
	}
	// A waiter leaves nothing behind either.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	if _, err := b.Lock(wctx, "held"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock of a held mutex: %v, want the ctx's deadline", err)
	}
	cancel()
	for _, l := range []*Lease{m, r, s} {
		mustRelease(t, l)
	}
	b.sweepIdle()
	if left := lockFiles(t, dir); len(left) != 0 {
		t.Fatalf("files left: %q", left)
	}
	// Close removes what is noted, and files of leases it frees.
	h := mustTry(t)(b.TryLock(ctx, "held"))
	mustRelease(t, mustTry(t)(b.TryRLock(ctx, "released")))
	b.Close()
	if err := h.Release(ctx); !errors.Is(err, backend.ErrLockLost) {
		t.Fatalf("Release after Close: %v, want ErrLockLost", err)
	}
	if left := lockFiles(t, dir); len(left) != 0 {
		t.Fatalf("files left after Close: %q", left)
	}
}

// An idle lock file stays until the monitor's next tick (a name locked
// again meanwhile reuses it) and goes within two ticks of its release.
func TestIdleFileGoesWithinTwoTicks(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir, WithLossInterval(20*time.Millisecond))
	ctx := context.Background()
	ticks := func() uint64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.ticks
	}
	for _, k := range []struct {
		name string
		try  func() (*Lease, bool, error)
	}{
		{"mutex", func() (*Lease, bool, error) { return b.TryLock(ctx, "n") }},
		{"read", func() (*Lease, bool, error) { return b.TryRLock(ctx, "n") }},
		{"write", func() (*Lease, bool, error) { return b.TryWLock(ctx, "n") }},
		{"semaphore", func() (*Lease, bool, error) { return b.TryAcquire(ctx, "n", 2) }},
	} {
		t0 := ticks()
		l := mustTry(t)(k.try())
		mustRelease(t, l)
		_, err := os.Lstat(l.Path())
		if t1 := ticks(); t1 < t0+2 && err != nil {
			// Fewer than two ticks since the release: not swept yet.
			t.Fatalf("%s: file %s gone %d tick(s) after its release: %v", k.name, l.Path(), t1-t0, err)
		}
		// Two ticks after the release, and the sweep they started done.
		deadline := time.Now().Add(time.Minute)
		for {
			b.mu.Lock()
			done := b.ticks >= t0+2 && !b.idle.sweeping
			b.mu.Unlock()
			if done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the monitor did not tick twice in a minute", k.name)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if left := lockFiles(t, dir); len(left) != 0 {
			t.Fatalf("%s: files left two ticks after the release: %q", k.name, left)
		}
	}
}

// Tokens strictly increase across the deletion and re-creation of the
// lock file, for every kind.
func TestTokensIncreaseAcrossDeletion(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	ctx := context.Background()
	kinds := map[string]func() (*Lease, bool, error){
		"mutex": func() (*Lease, bool, error) { return b.TryLock(ctx, "n") },
		"read":  func() (*Lease, bool, error) { return b.TryRLock(ctx, "n") },
		"write": func() (*Lease, bool, error) { return b.TryWLock(ctx, "n") },
		"sem":   func() (*Lease, bool, error) { return b.TryAcquire(ctx, "n", 2) },
	}
	for k, try := range kinds {
		var last uint64
		for i := range 300 {
			l := mustTry(t)(try())
			if l.Token() <= last {
				t.Fatalf("%s, acquisition %d: token %d after %d", k, i, l.Token(), last)
			}
			last = l.Token()
			mustRelease(t, l)
		}
	}
	// Readers and writers of one name draw from one counter.
	var last uint64
	for i := range 100 {
		var l *Lease
		if i%2 == 0 {
			l = mustTry(t)(b.TryRLock(ctx, "rw"))
		} else {
			l = mustTry(t)(b.TryWLock(ctx, "rw"))
		}
		if l.Token() <= last {
			t.Fatalf("rw acquisition %d: token %d after %d", i, l.Token(), last)
		}
		last = l.Token()
		mustRelease(t, l)
	}
}

// With the Windows mapping of names (here on any system), names that
// differ only by case are still different locks.
func TestFoldedNames(t *testing.T) {
	b := newBackend(t, t.TempDir())
	b.fold = true
	ctx := context.Background()
	a := mustTry(t)(b.TryLock(ctx, "Job"))
	c := mustTry(t)(b.TryLock(ctx, "job"))
	d := mustTry(t)(b.TryLock(ctx, "CON"))
	if _, ok, err := b.TryLock(ctx, "Job"); ok || err != nil {
		t.Fatalf("second TryLock of Job: ok %v, err %v", ok, err)
	}
	if strings.EqualFold(filepath.Base(a.Path()), filepath.Base(c.Path())) {
		t.Fatalf("files %s and %s differ only by case", a.Path(), c.Path())
	}
	for _, l := range []*Lease{a, c, d} {
		mustRelease(t, l)
	}
}

// A symbolic link or a hard link planted at a lock file's name is refused,
// as a permanent error, and nothing is written through it.
func TestPlantedLinksRefused(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need a privilege on Windows")
	}
	dir := t.TempDir()
	b := newBackend(t, dir)
	ctx := context.Background()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "m-sym")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(victim, filepath.Join(dir, "m-hard")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"sym", "hard"} {
		_, ok, err := b.TryLock(ctx, n)
		if ok || err == nil || !backend.IsPermanent(err) {
			t.Errorf("TryLock %s: ok %v, err %v; want a permanent error", n, ok, err)
		}
	}
	if data, _ := os.ReadFile(victim); string(data) != "keep" {
		t.Errorf("victim file changed: %q", data)
	}
}

// Goroutines of four Backends lock, release (deleting lock files) and
// lock again a few names of every kind under the race detector: never two
// holders, never a writer beside a reader, never more tickets than the
// limit, never a token that does not increase.
func TestDeletionStress(t *testing.T) {
	dir := t.TempDir()
	var bs []*Backend
	for range 4 {
		bs = append(bs, newBackend(t, dir))
	}
	run := 2 * time.Second
	if testing.Short() {
		run = 300 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	type state struct {
		mu                     sync.Mutex
		holders, readers, sems int
		last                   uint64
		seen                   map[uint64]bool
	}
	var mutexes, rws, sems [3]state
	for i := range sems {
		sems[i].seen = make(map[uint64]bool)
	}
	var bad atomic.Value
	var ops atomic.Int64
	check := func(ok bool, msg string, args ...any) {
		if !ok {
			bad.Store(fmt.Sprintf(msg, args...))
		}
	}
	var wg sync.WaitGroup
	for g := range 16 {
		b := bs[g%len(bs)]
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				n := i % 3
				name := fmt.Sprint("n", n)
				wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
				var l *Lease
				var err error
				switch (g + i) % 4 {
				case 0, 1: // a mutex, a writer: alone
					s, what, lock := &mutexes[n], "mutex", b.Lock
					if (g+i)%4 == 1 {
						s, what, lock = &rws[n], "writer", b.WLock
					}
					if l, err = lock(wctx, name); err == nil {
						s.mu.Lock()
						s.holders++
						check(s.holders == 1 && s.readers == 0, "%s of %s not alone", what, name)
						check(l.Token() > s.last, "%s token %d after %d", what, l.Token(), s.last)
						s.last = l.Token()
						s.mu.Unlock()
						runtime.Gosched()
						s.mu.Lock()
						s.holders--
						s.mu.Unlock()
					}
				case 2:
					if l, err = b.RLock(wctx, name); err == nil {
						s := &rws[n]
						s.mu.Lock()
						s.readers++
						check(s.holders == 0, "reader of %s beside a writer", name)
						check(l.Token() > s.last, "reader token %d after the last writer's %d", l.Token(), s.last)
						s.mu.Unlock()
						runtime.Gosched()
						s.mu.Lock()
						s.readers--
						s.mu.Unlock()
					}
				case 3:
					if l, err = b.Acquire(wctx, name, 2); err == nil {
						s := &sems[n]
						s.mu.Lock()
						s.sems++
						check(s.sems <= 2, "%d tickets of %s with limit 2", s.sems, name)
						// Two holders at once record their tokens in
						// either order: check only that none repeats.
						check(!s.seen[l.Token()], "semaphore token %d given twice", l.Token())
						s.seen[l.Token()] = true
						s.mu.Unlock()
						runtime.Gosched()
						s.mu.Lock()
						s.sems--
						s.mu.Unlock()
					}
				}
				wcancel()
				if err != nil {
					if !errors.Is(err, backend.ErrNotAcquired) {
						check(false, "acquire %s: %v", name, err)
					}
					continue
				}
				if err := l.Release(context.Background()); err != nil {
					check(false, "release %s: %v", name, err)
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	t.Logf("%d acquisitions in %v", ops.Load(), run)
	if ops.Load() < 100 {
		t.Fatalf("only %d acquisitions", ops.Load())
	}
	for _, b := range bs {
		b.Close()
	}
	if left := lockFiles(t, dir); len(left) != 0 {
		t.Fatalf("files left: %q", left)
	}
}

// BenchmarkPortableDo is one uncontended Do of a mutex (the lock file
// stays between Dos, and goes a tick after the last):
//
//	go test -tags dlock_portable -run '^$' -bench PortableDo ./fs
func BenchmarkPortableDo(b *testing.B) {
	dir := b.TempDir()
	be, err := New(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	mu := dlock.NewMutex(be)
	ctx := context.Background()
	for b.Loop() {
		if err := mu.Do(ctx, "bench", func(context.Context) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// sweepRemoves runs the idle sweep's removal of the lock file of l, as
// if it had been noted, and reports whether it removed it.
func sweepRemoves(b *Backend, l *Lease) bool { return b.removeNoted(l.Path(), l.idleFile()) }

// In the moment of a failed upgrade attempt the upgradeable reader holds
// no lock of r-NAME (flock lets go of the shared lock first): u-NAME alone
// must keep writers, other upgradeable readers and the idle sweep out
// then, and a lost upgradeable reader must let u-NAME go.
func TestPortableUpgradeWindow(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	u := mustTry(t)(a.TryULock(bg(), "x"))
	if err := unlockHandle(u.f.h); err != nil { // as a failed conversion leaves it
		t.Fatal(err)
	}
	mustBusy(t)(b.TryWLock(bg(), "x"))
	mustBusy(t)(b.TryULock(bg(), "x"))
	ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
	if _, err := b.WLock(ctx, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WLock beside an upgradeable reader: %v, want the deadline", err)
	}
	cancel()
	if sweepRemoves(b, u) {
		t.Fatal("the sweep removed the file of an upgradeable reader")
	}
	r := mustTry(t)(b.TryRLock(bg(), "x")) // readers may come in meanwhile
	if ok, err := lockHandle(u.f.h, false); !ok || err != nil {
		t.Fatalf("taking the shared lock back: %v %v", ok, err)
	}
	if ok, err := u.TryUpgrade(bg()); ok || err != nil {
		t.Fatalf("TryUpgrade beside a reader: %v %v", ok, err)
	}
	mustRelease(t, r)

	loseLease(t, u)
	deadline := time.Now().Add(10 * time.Second)
	for !u.IsLost() {
		if time.Now().After(deadline) {
			t.Fatal("the loss was not found")
		}
		time.Sleep(time.Millisecond)
	}
	u2 := mustTry(t)(b.TryULock(bg(), "x")) // u-NAME was let go with the loss
	if _, err := u.TryUpgrade(bg()); !errors.Is(err, backend.ErrLockLost) {
		t.Fatalf("TryUpgrade after the loss: %v", err)
	}
	if err := u.Release(bg()); !errors.Is(err, backend.ErrLockLost) {
		t.Fatalf("Release after the loss: %v", err)
	}
	if err := u2.Upgrade(bg()); err != nil {
		t.Fatal(err)
	}
	hs, err := a.DescribeRW(bg(), "x")
	if err != nil || len(hs) != 1 || hs[0].Shared {
		t.Fatalf("holders after the upgrade: %+v, %v; want one writer", hs, err)
	}
	mustRelease(t, u2)
	mustRelease(t, mustTry(t)(a.TryWLock(bg(), "x")))
}
