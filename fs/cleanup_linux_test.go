//go:build linux && !dlock_portable

package fs

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestNoLockFilesLeft: locks of 10,000 distinct names taken and released
// leave no lock file behind, of any kind; the files of locks still held
// stay.
func TestNoLockFilesLeft(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	var held []*Lease
	for i := range 10_000 {
		name := "job-" + strconv.Itoa(i)
		l := mustTry(t)(b.TryLock(bg(), name))
		if i%1000 == 0 {
			held = append(held, l) // held: its file must stay
			continue
		}
		mustRelease(t, l)
	}
	t.Logf("%d files after 10,000 names released, before the sweep", len(lockFiles(t, dir)))
	b.sweepIdle()
	if files := lockFiles(t, dir); len(files) != len(held) {
		t.Fatalf("%d files after 10,000 names with %d held: %v", len(files), len(held), files[:min(len(files), 10)])
	}
	for _, l := range held {
		mustRelease(t, l)
	}
	for i := range 300 {
		name := "x" + strconv.Itoa(i)
		// Two readers, released in either order; a writer; a wait.
		r1 := mustTry(t)(b.TryRLock(bg(), name))
		r2 := mustTry(t)(b.TryRLock(bg(), name))
		if i%2 == 0 {
			r1, r2 = r2, r1
		}
		mustRelease(t, r1)
		b.sweepIdle()
		if _, err := os.Lstat(r2.Path()); err != nil {
			t.Fatalf("a reader still holds %s, yet it was removed: %v", r2.Path(), err)
		}
		mustRelease(t, r2)
		w, err := b.WLock(bg(), name)
		if err != nil {
			t.Fatal(err)
		}
		mustRelease(t, w)
		// A semaphore: two slots and its counter.
		s1 := mustTry(t)(b.TryAcquire(bg(), name, 3))
		s2 := mustTry(t)(b.TryAcquire(bg(), name, 3))
		mustRelease(t, s1)
		mustRelease(t, s2)
		s, err := b.Acquire(bg(), name, 2)
		if err != nil {
			t.Fatal(err)
		}
		mustRelease(t, s)
	}
	// A mutex handed to a waiter: the waiter's release removes the file.
	h := mustTry(t)(b.TryLock(bg(), "handed"))
	got := make(chan error, 1)
	go func() {
		l, err := b.Lock(bg(), "handed")
		if err == nil {
			err = l.Release(bg())
		}
		got <- err
	}()
	waitTickets(t, h.Path(), 1)
	mustRelease(t, h)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	b.Close() // sweeps what it noted
	if files := lockFiles(t, dir); len(files) != 0 {
		t.Fatalf("%d files left: %v", len(files), files[:min(len(files), 10)])
	}

	// Without Close: the monitor removes them within two ticks.
	dir = t.TempDir()
	b = newBackend(t, dir, WithLossInterval(20*time.Millisecond))
	for i := range 1000 {
		mustRelease(t, mustTry(t)(b.TryLock(bg(), strconv.Itoa(i))))
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(lockFiles(t, dir)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d files left 10 s after their release", len(lockFiles(t, dir)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWaitersKeepTheFile: an idle lock file in whose queue a waiter
// holds a ticket (a waiter process stopped just as the lock came free) is
// not removed; a held one neither.
func TestWaitersKeepTheFile(t *testing.T) {
	for _, k := range queueKinds {
		t.Run(k.name, func(t *testing.T) {
			dir := t.TempDir()
			b := newBackend(t, dir)
			path := filepath.Join(dir, k.file("w"))
			h := mustTry(t)(k.hold(b, "w"))
			queue, counter := true, k.name != "semaphore"
			if removeIdle(path, &b.trust, queue, counter) {
				t.Fatal("removed a held lock file")
			}
			c := spawnHelper(t, dir, k.name, "w")
			waitTickets(t, path, 1)
			stop(t, c)
			mustRelease(t, h)
			b.sweepIdle()
			if removeIdle(path, &b.trust, queue, counter) {
				t.Fatal("removed a lock file with a waiter's ticket")
			}
			if n := len(tickets(t, path)); n != 1 {
				t.Fatalf("%d tickets, want the waiter's", n)
			}
			c.kill()
			if !removeIdle(path, &b.trust, queue, counter) {
				t.Fatal("an idle lock file without tickets was not removed")
			}
		})
	}
}

// TestTokensIncreaseAcrossRemoval: every kind of lock keeps strictly
// increasing tokens while its file is removed at every release, and a
// holder does not remove a file whose counter is ahead of the wall clock
// (the next token could not exceed it otherwise).
func TestTokensIncreaseAcrossRemoval(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	kinds := map[string]func() *Lease{
		"mutex":     func() *Lease { return mustTry(t)(b.TryLock(bg(), "t")) },
		"read":      func() *Lease { return mustTry(t)(b.TryRLock(bg(), "t")) },
		"write":     func() *Lease { return mustTry(t)(b.TryWLock(bg(), "t")) },
		"semaphore": func() *Lease { return mustTry(t)(b.TryAcquire(bg(), "t", 2)) },
	}
	for kind, take := range kinds {
		var last uint64
		for range 200 {
			l := take()
			if l.Token() <= last {
				t.Fatalf("%s: token %d after %d", kind, l.Token(), last)
			}
			last = l.Token()
			mustRelease(t, l)
			b.sweepIdle()
			if _, err := os.Lstat(l.Path()); !os.IsNotExist(err) {
				t.Fatalf("%s: lock file after release: %v", kind, err)
			}
		}
	}
	if files := lockFiles(t, dir); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}

	// A counter ahead of the clock (a clock set back, say): the file stays,
	// so the counter goes on from it.
	ahead := uint64(time.Now().Add(time.Hour).UnixNano())
	off := newBackend(t, dir, WithFencing(false))
	for _, kind := range []string{"mutex", "read", "write"} {
		path := filepath.Join(dir, fileName(kindMutex, "ahead"))
		take := func(b *Backend) *Lease { return mustTry(t)(b.TryLock(bg(), "ahead")) }
		switch kind {
		case "read":
			path = filepath.Join(dir, fileName(kindRW, "ahead"))
			take = func(b *Backend) *Lease { return mustTry(t)(b.TryRLock(bg(), "ahead")) }
		case "write":
			path = filepath.Join(dir, fileName(kindRW, "ahead"))
			take = func(b *Backend) *Lease { return mustTry(t)(b.TryWLock(bg(), "ahead")) }
		}
		if err := os.WriteFile(path, fmt.Appendf(nil, "%020d\n", ahead), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, by := range []*Backend{off, b} { // fencing off: the counter is read
			l := take(by)
			if by == b && l.Token() != ahead+1 {
				t.Fatalf("%s: token %d, want %d", kind, l.Token(), ahead+1)
			}
			mustRelease(t, l)
			by.sweepIdle()
			if _, err := os.Lstat(path); err != nil {
				t.Fatalf("%s: a file whose counter is ahead of the clock was removed: %v", kind, err)
			}
		}
		l := take(b)
		if l.Token() != ahead+2 {
			t.Fatalf("%s: token %d, want %d", kind, l.Token(), ahead+2)
		}
		mustRelease(t, l)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOwnRemovalIsNoLoss: a release that removes the file is not taken for
// a loss, neither by the releasing lease nor by the next holder of the
// name, whose new file the old removal's notification names too; a
// removal by someone else while the lock is held still is.
func TestOwnRemovalIsNoLoss(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	for range 20 {
		l := mustTry(t)(a.TryLock(bg(), "n"))
		held := mustTry(t)(a.TryLock(bg(), "other")) // keeps a's monitor busy
		mustRelease(t, l)
		a.sweepIdle()
		next := mustTry(t)(b.TryLock(bg(), "n"))
		mine := mustTry(t)(a.TryLock(bg(), "n2"))
		time.Sleep(5 * time.Millisecond) // the monitors see the removal
		for _, l := range []*Lease{next, mine, held} {
			select {
			case <-l.Lost():
				t.Fatalf("%s reported lost after another lease's release", l.Path())
			default:
			}
			mustRelease(t, l)
		}
	}
	// Removed by someone else while held, after removals by releases.
	for range 3 {
		mustRelease(t, mustTry(t)(a.TryLock(bg(), "gone")))
		a.sweepIdle()
	}
	l := mustTry(t)(a.TryLock(bg(), "gone"))
	if err := os.Remove(l.Path()); err != nil {
		t.Fatal(err)
	}
	waitLost(t, l, 5*time.Second)
	if err := l.Release(bg()); err == nil {
		t.Fatal("Release of a lease whose file was removed returned nil")
	}
}

// The stress test: goroutines of this process and of child processes lock,
// release (and so remove) the files of a few names for a while, and log
// every entry and exit into one O_APPEND file, written while holding. The
// log must show no two holders where the lock allows one, never more than
// the limit of a semaphore, and tokens strictly above those of every holder
// that left before the attempt began.

// stressSpec configures a stress child.
type stressSpec struct {
	Dir, Log string
	For      time.Duration
	Workers  int
}

const stressEnv = "DLOCK_FS_TEST_STRESS"

var stressNames = []string{"a", "b"}

// stressRemoved counts the files this process's stress workers removed.
var stressRemoved atomic.Int64

const stressLimit = 2

// runStress is the child's side: it runs the workers and exits 0 if no
// call failed.
func runStress() int {
	var spec stressSpec
	if err := json.Unmarshal([]byte(os.Getenv(stressEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := stress(spec, "p"+strconv.Itoa(os.Getpid())); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// stress runs spec.Workers workers over two Backends of spec.Dir until
// spec.For has passed.
func stress(spec stressSpec, id string) error {
	var bs [2]*Backend
	for i := range bs {
		// Ticks every 5 ms: the monitor removes idle files often.
		b, err := New(spec.Dir, WithWaitFallback(200*time.Millisecond), WithLossInterval(5*time.Millisecond))
		if err != nil {
			return err
		}
		defer b.Close()
		bs[i] = b
	}
	deadline := time.Now().Add(spec.For)
	errs := make(chan error, spec.Workers)
	for w := range spec.Workers {
		go func() { errs <- stressWorker(bs[w%2], spec.Log, fmt.Sprintf("%s-%d", id, w), deadline) }()
	}
	var first error
	for range spec.Workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func stressWorker(b *Backend, log, id string, deadline time.Time) error {
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for time.Now().Before(deadline) {
		name := stressNames[rand.IntN(len(stressNames))]
		op := rand.IntN(8)
		if op == 7 {
			// Remove an idle file of the name, of any kind.
			files := []struct {
				file           string
				queue, counter bool
			}{
				{fileName(kindMutex, name), true, true},
				{fileName(kindRW, name), true, true},
				{slotName(fileName(kindSemSlot, name), rand.IntN(stressLimit)), true, false},
				{fileName(kindSemCounter, name), false, true},
			}
			r := files[rand.IntN(len(files))]
			if removeIdle(b.prefix+r.file, &b.trust, r.queue, r.counter) {
				stressRemoved.Add(1)
			}
			continue
		}
		group := [...]string{"m", "m", "rw", "rw", "rw", "s", "s"}[op]
		// Before the attempt: whoever left before this line, left before
		// this holder took its token.
		if _, err := fmt.Fprintf(f, "A %s/%s - 0 %s\n", group, name, id); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(bg(), 30*time.Second)
		var l *Lease
		var ok bool
		var err error
		var kind string
		switch op {
		case 0, 1:
			kind = "m"
			if op == 0 {
				l, err = b.Lock(ctx, name)
				ok = err == nil
			} else {
				l, ok, err = b.TryLock(ctx, name)
			}
		case 2, 3:
			kind = "r"
			if op == 2 {
				l, err = b.RLock(ctx, name)
				ok = err == nil
			} else {
				l, ok, err = b.TryRLock(ctx, name)
			}
		case 4:
			kind = "w"
			l, err = b.WLock(ctx, name)
			ok = err == nil
		case 5, 6:
			kind = "s"
			if op == 5 {
				l, err = b.Acquire(ctx, name, stressLimit)
				ok = err == nil
			} else {
				l, ok, err = b.TryAcquire(ctx, name, stressLimit)
			}
		}
		cancel()
		if err != nil {
			return fmt.Errorf("%s %s %s: %w", id, kind, name, err)
		}
		if !ok {
			continue
		}
		key := group + "/" + name
		if _, err := fmt.Fprintf(f, "E %s %s %d %s\n", key, kind, l.Token(), id); err != nil {
			return err
		}
		for range rand.IntN(3) {
			runtime.Gosched()
		}
		if _, err := fmt.Fprintf(f, "X %s %s %d %s\n", key, kind, l.Token(), id); err != nil {
			return err
		}
		if err := l.Release(bg()); err != nil {
			return fmt.Errorf("%s release %s %s: %w", id, kind, name, err)
		}
	}
	return nil
}

// checkStressLog verifies the log (see stress) and returns how many
// acquisitions it holds.
func checkStressLog(t *testing.T, log string) int {
	t.Helper()
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type state struct {
		holders map[string]string // id -> kind
		left    uint64            // the highest token of those who left
		before  map[string]uint64 // id -> left when it began its attempt
	}
	states := map[string]*state{}
	n := 0
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		var ev, key, kind, id string
		var token uint64
		if _, err := fmt.Sscanf(sc.Text(), "%s %s %s %d %s", &ev, &key, &kind, &token, &id); err != nil {
			t.Fatalf("log line %d %q: %v", line, sc.Text(), err)
		}
		s := states[key]
		if s == nil {
			s = &state{holders: map[string]string{}, before: map[string]uint64{}}
			states[key] = s
		}
		switch ev {
		case "A":
			s.before[id] = s.left
			continue
		case "X":
			delete(s.holders, id)
			s.left = max(s.left, token)
			continue
		}
		n++
		var bad bool
		switch kind {
		case "m", "w":
			bad = len(s.holders) > 0
		case "r":
			for _, k := range s.holders {
				bad = bad || k == "w"
			}
		case "s":
			bad = len(s.holders) >= stressLimit
		}
		if bad {
			t.Fatalf("log line %d: %s enters %s (%s) while %v hold it", line, id, key, kind, s.holders)
		}
		if token <= s.before[id] {
			t.Fatalf("log line %d: %s enters %s with token %d, not above %d of one who left before it began", line, id, key, token, s.before[id])
		}
		s.holders[id] = kind
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStressRemoval runs the stress test for 20 s (DLOCK_FS_STRESS sets
// another duration) with two child processes and this one.
func TestStressRemoval(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s; runs without -short")
	}
	d := 20 * time.Second
	if v := os.Getenv("DLOCK_FS_STRESS"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	dir, tmp := t.TempDir(), t.TempDir()
	log := filepath.Join(tmp, "log")
	if err := os.WriteFile(log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := stressSpec{Dir: dir, Log: log, For: d, Workers: 3}
	raw, _ := json.Marshal(spec)
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), stressEnv+"="+string(raw))
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	var wg sync.WaitGroup
	var local error
	wg.Go(func() { local = stress(spec, "parent") })
	wg.Wait()
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("child %d: %v: %s", i, err, outs[i])
		}
	}
	if local != nil {
		t.Error(local)
	}
	n := checkStressLog(t, log)
	t.Logf("%d acquisitions in %v, checked; this process's workers removed %d idle files (its monitors more)", n, d, stressRemoved.Load())
	if n < 100 {
		t.Fatalf("only %d acquisitions", n)
	}
	files := lockFiles(t, dir)
	sort.Strings(files)
	if len(files) != 0 {
		t.Fatalf("lock files left after every holder let go: %v", files)
	}
}

// TestStillNamedZ: the raw statx check agrees with lstat's, and so does
// its fallback (statx unavailable).
func TestStillNamedZ(t *testing.T) {
	dir := t.TempDir()
	f := newLockFile(&trust{euid: uint32(os.Geteuid())}, dir, "/", "z")
	if err := f.open(0o600); err != nil {
		t.Fatal(err)
	}
	defer f.close()
	if err := f.identify(); err != nil {
		t.Fatal(err)
	}
	for _, fallback := range []bool{false, true} {
		noStatx.Store(fallback)
		if same, err := f.named(); err != nil || !same {
			t.Fatalf("fallback %v: the open file: %v, %v", fallback, same, err)
		}
		if same, err := stillNamedZ(f.path, f.zpath, f.dev, f.ino+1); err != nil || same {
			t.Fatalf("fallback %v: another inode: %v, %v", fallback, same, err)
		}
		if same, err := stillNamedZ(f.path, f.zpath, f.dev+1<<8, f.ino); err != nil || same {
			t.Fatalf("fallback %v: another device: %v, %v", fallback, same, err)
		}
	}
	noStatx.Store(false)
	if err := os.Remove(f.path); err != nil {
		t.Fatal(err)
	}
	if same, err := f.named(); err != nil || same {
		t.Fatalf("a removed file: %v, %v", same, err)
	}
	if err := os.WriteFile(f.path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if same, err := f.named(); err != nil || same {
		t.Fatalf("a replaced file: %v, %v", same, err)
	}
}
