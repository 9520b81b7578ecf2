//go:build linux && !dlock_portable

package fs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

func waitLost(t *testing.T, l *Lease, within time.Duration) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(within):
		t.Fatalf("Lost() not closed within %v", within)
	}
}

func TestMutexOneProcess(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	l := mustTry(t)(a.TryLock(bg(), "job"))
	mustBusy(t)(a.TryLock(bg(), "job")) // same backend: per open file description
	mustBusy(t)(b.TryLock(bg(), "job"))
	l2 := mustTry(t)(b.TryLock(bg(), "JOB")) // case matters
	l3 := mustTry(t)(b.TryLock(bg(), "job\x00"))
	mustRelease(t, l)
	if err := l.Release(bg()); !errors.Is(err, dlock.ErrNotHeld) {
		t.Fatalf("second Release: %v, want ErrNotHeld", err)
	}
	mustRelease(t, mustTry(t)(b.TryLock(bg(), "job")))
	mustRelease(t, l2)
	mustRelease(t, l3)
	select {
	case <-l.Lost():
	default:
		t.Fatal("Release did not close Lost")
	}
}

func TestKindsAreSeparate(t *testing.T) {
	b := newBackend(t, "")
	m := mustTry(t)(b.TryLock(bg(), "x"))
	w := mustTry(t)(b.TryWLock(bg(), "x"))
	s := mustTry(t)(b.TryAcquire(bg(), "x", 1))
	for _, l := range []*Lease{m, w, s} {
		mustRelease(t, l)
	}
}

func TestLockWaitsForRelease(t *testing.T) {
	b := newBackend(t, "")
	l := mustTry(t)(b.TryLock(bg(), "w"))
	got := make(chan *Lease)
	go func() {
		l2, err := b.Lock(bg(), "w")
		if err != nil {
			t.Error(err)
		}
		got <- l2
	}()
	select {
	case <-got:
		t.Fatal("Lock returned while the lock was held")
	case <-time.After(50 * time.Millisecond):
	}
	mustRelease(t, l)
	l2 := <-got
	if l2 == nil {
		t.FailNow()
	}
	if l2.Token() <= l.Token() {
		t.Fatalf("token %d after %d", l2.Token(), l.Token())
	}
	mustRelease(t, l2)
}

func TestWaitEndsWithContext(t *testing.T) {
	b := newBackend(t, "")
	l := mustTry(t)(b.TryLock(bg(), "w"))
	defer l.Release(bg())
	s := mustTry(t)(b.TryAcquire(bg(), "w", 1))
	defer s.Release(bg())
	w := mustTry(t)(b.TryWLock(bg(), "w"))
	defer w.Release(bg())
	for _, wait := range []func(context.Context) (*Lease, error){
		func(ctx context.Context) (*Lease, error) { return b.Lock(ctx, "w") },
		func(ctx context.Context) (*Lease, error) { return b.Acquire(ctx, "w", 1) },
		func(ctx context.Context) (*Lease, error) { return b.RLock(ctx, "w") },
		func(ctx context.Context) (*Lease, error) { return b.WLock(ctx, "w") },
	} {
		ctx, cancel := context.WithTimeout(bg(), 20*time.Millisecond)
		_, err := wait(ctx)
		cancel()
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait: %v, want ErrNotAcquired and DeadlineExceeded", err)
		}
	}
}

func TestRWRules(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	r1 := mustTry(t)(a.TryRLock(bg(), "rw"))
	r2 := mustTry(t)(a.TryRLock(bg(), "rw")) // readers share, in one process too
	r3 := mustTry(t)(b.TryRLock(bg(), "rw"))
	mustBusy(t)(b.TryWLock(bg(), "rw"))

	// Two writers wait: the first holds the gate, new readers stay out,
	// and neither deadlocks the other.
	ctx, cancel := context.WithTimeout(bg(), time.Minute)
	defer cancel()
	wrote := make(chan *Lease, 2)
	for range 2 {
		go func() {
			w, err := b.WLock(ctx, "rw")
			if err != nil {
				t.Error(err)
			}
			wrote <- w
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, ok, err := a.TryRLock(bg(), "rw")
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		mustRelease(t, l)
		if time.Now().After(deadline) {
			t.Fatal("readers still get in while writers wait")
		}
		time.Sleep(time.Millisecond)
	}
	rctx, rcancel := context.WithTimeout(bg(), 50*time.Millisecond)
	if _, err := a.RLock(rctx, "rw"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RLock while a writer waits: %v", err)
	}
	rcancel()
	mustRelease(t, r1)
	mustRelease(t, r2)
	mustRelease(t, r3)
	var tokens []uint64
	for range 2 {
		w := <-wrote
		if w == nil {
			t.FailNow()
		}
		mustBusy(t)(a.TryRLock(bg(), "rw"))
		mustBusy(t)(a.TryWLock(bg(), "rw"))
		tokens = append(tokens, w.Token())
		mustRelease(t, w)
	}
	if tokens[1] <= tokens[0] || tokens[0] <= r3.Token() {
		t.Fatalf("tokens not increasing: readers ..%d, writers %v", r3.Token(), tokens)
	}
	mustRelease(t, mustTry(t)(a.TryRLock(bg(), "rw")))
}

func TestSemaphore(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	var held []*Lease
	var last uint64
	for range 3 {
		l := mustTry(t)(a.TryAcquire(bg(), "sem", 3))
		if l.Token() <= last {
			t.Fatalf("token %d after %d", l.Token(), last)
		}
		last = l.Token()
		held = append(held, l)
	}
	mustBusy(t)(b.TryAcquire(bg(), "sem", 3))
	mustBusy(t)(b.TryAcquire(bg(), "sem", 2))         // a smaller limit sees its slots taken
	extra := mustTry(t)(b.TryAcquire(bg(), "sem", 4)) // a larger limit uses one more slot
	got := make(chan *Lease)
	go func() {
		l, err := b.Acquire(bg(), "sem", 4)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(20 * time.Millisecond)
	mustRelease(t, held[1])
	l := <-got
	if l == nil {
		t.FailNow()
	}
	if filepath.Base(l.Path()) != slotName(fileName(kindSemSlot, "sem"), 1) {
		t.Fatalf("waiter took %s, want the released slot 1", l.Path())
	}
	for _, l := range []*Lease{held[0], held[2], extra, l} {
		mustRelease(t, l)
	}
	if _, _, err := a.TryAcquire(bg(), "sem", 0); !errors.Is(err, dlock.ErrInvalidLimit) {
		t.Fatalf("limit 0: %v", err)
	}
}

func TestFencingSurvivesRestartAndDeletion(t *testing.T) {
	dir := t.TempDir()
	a := newBackend(t, dir)
	l := mustTry(t)(a.TryLock(bg(), "f"))
	first := l.Token()
	raw, err := os.ReadFile(filepath.Join(dir, fileName(kindMutex, "f")))
	if err != nil || len(raw) < counterLen || string(raw[:counterLen]) != fmt.Sprintf("%020d\n", first) { // a holder record follows
		t.Fatalf("counter file holds %q, %v; want token %d", raw, err, first)
	}
	a.Close()               // frees the lease, leaves the file: tokens go on from the counter
	b := newBackend(t, dir) // a "restarted" process
	l = mustTry(t)(b.TryLock(bg(), "f"))
	if l.Token() <= first {
		t.Fatalf("token %d after restart, previous %d", l.Token(), first)
	}
	second := l.Token()
	mustRelease(t, l)
	b.sweepIdle()
	// The file was removed once idle: tokens still increase (wall clock).
	if _, err := os.Lstat(filepath.Join(dir, fileName(kindMutex, "f"))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file after its last release: %v", err)
	}
	l = mustTry(t)(b.TryLock(bg(), "f"))
	if l.Token() <= second {
		t.Fatalf("token %d after the file was removed, previous %d", l.Token(), second)
	}
	mustRelease(t, l)
	// A corrupt counter is an error, not a guess.
	if err := os.WriteFile(filepath.Join(dir, fileName(kindMutex, "f")), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.TryLock(bg(), "f"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt counter: %v", err)
	}
	mustRelease(t, mustTry(t)(b.TryLock(bg(), "g"))) // and the failed attempt held nothing
	c := newBackend(t, dir, WithFencing(false))
	l = mustTry(t)(c.TryLock(bg(), "h"))
	if l.Token() != 0 {
		t.Fatalf("token %d with fencing off", l.Token())
	}
	mustRelease(t, l)
}

func TestLossWhenFileRemovedOrReplaced(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	for _, how := range []string{"remove", "replace"} {
		t.Run(how, func(t *testing.T) {
			l := mustTry(t)(a.TryLock(bg(), how))
			switch how {
			case "remove":
				if err := os.Remove(l.Path()); err != nil {
					t.Fatal(err)
				}
			case "replace":
				tmp := filepath.Join(dir, "tmp")
				if err := os.WriteFile(tmp, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, l.Path()); err != nil {
					t.Fatal(err)
				}
			}
			waitLost(t, l, 5*time.Second)
			l2 := mustTry(t)(b.TryLock(bg(), how)) // the path is free again
			if err := l.Release(bg()); !errors.Is(err, dlock.ErrLockLost) {
				t.Fatalf("Release of a lost lease: %v", err)
			}
			mustBusy(t)(a.TryLock(bg(), how)) // the new holder is undisturbed
			mustRelease(t, l2)
		})
	}
}

func TestLossWhenDirectoryMoved(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "locks")
	a := newBackend(t, dir, WithLossInterval(20*time.Millisecond))
	l := mustTry(t)(a.TryLock(bg(), "d"))
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	waitLost(t, l, 5*time.Second)
	if err := l.Release(bg()); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release: %v", err)
	}
}

func TestRemovingRWFileLosesAllReaders(t *testing.T) {
	b := newBackend(t, "")
	r1 := mustTry(t)(b.TryRLock(bg(), "rw"))
	r2 := mustTry(t)(b.TryRLock(bg(), "rw"))
	if err := os.Remove(r1.Path()); err != nil {
		t.Fatal(err)
	}
	waitLost(t, r1, 5*time.Second)
	waitLost(t, r2, 5*time.Second)
	w := mustTry(t)(b.TryWLock(bg(), "rw"))
	for _, l := range []*Lease{r1, r2} {
		if err := l.Release(bg()); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Release: %v", err)
		}
	}
	mustRelease(t, w)
}

func TestReleaseChecksOwnership(t *testing.T) {
	// A removal the monitor has not reported yet still fails Release.
	b := newBackend(t, "")
	l := mustTry(t)(b.TryLock(bg(), "x"))
	b.unregister(l) // keep the monitor out of it
	if err := os.Remove(l.Path()); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(bg()); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release: %v", err)
	}
}

func TestSecurity(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "a", "b")
	b := newBackend(t, dir)
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("directory %s: %v, %v; want mode 0700", d, st.Mode(), err)
		}
	}
	l := mustTry(t)(b.TryLock(bg(), "x"))
	if st, err := os.Stat(l.Path()); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lock file mode %v, %v; want 0600", st.Mode(), err)
	}
	mustRelease(t, l)

	// A symbolic link planted at a lock path is not followed.
	target := filepath.Join(parent, "target")
	if err := os.WriteFile(target, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, fileName(kindMutex, "evil"))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.TryLock(bg(), "evil"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("symlinked lock file: %v, want a refusal", err)
	}
	if raw, _ := os.ReadFile(target); string(raw) != "precious" {
		t.Fatalf("the symlink target was written: %q", raw)
	}
	// Something else than a regular file is refused.
	if err := unix.Mkfifo(filepath.Join(dir, fileName(kindMutex, "fifo")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.TryLock(bg(), "fifo"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("fifo: %v", err)
	}
	// Odd names stay inside the directory.
	for _, name := range []string{"../../escape", "/etc/passwd", "..", ".", "a/b", strings.Repeat("/", 1000)} {
		mustRelease(t, mustTry(t)(b.TryLock(bg(), name)))
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 2 { // a, target
		t.Fatalf("files appeared beside the directory: %v", entries)
	}

	// Unsafe directories are refused with a clear error.
	ww := filepath.Join(parent, "world")
	if err := os.Mkdir(ww, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ww, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ww); err == nil || !strings.Contains(err.Error(), "world-writable") {
		t.Fatalf("world-writable directory: %v", err)
	}
	link := filepath.Join(parent, "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if _, err := New(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("symlinked directory: %v", err)
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(parent, "other")
		if err := os.Mkdir(other, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if _, err := New(other); err == nil || !strings.Contains(err.Error(), "owned by uid 4242") {
			t.Fatalf("directory of another user: %v", err)
		}
	}
	for _, opt := range []Option{WithFileMode(0o400), WithFileMode(os.ModeSetuid | 0o600), WithFileMode(os.ModeDir | 0o600),
		WithDirMode(0o600), WithDirMode(0o777), WithDirMode(0o770), WithLossInterval(0), WithWaitFallback(-1)} {
		if _, err := New(dir, opt); !errors.Is(err, backend.ErrInvalidOption) {
			t.Fatalf("New with a bad option: %v, want backend.ErrInvalidOption", err)
		}
	}
	if _, err := New(""); err == nil {
		t.Fatal("empty directory accepted")
	}
}

func TestFileModeOption(t *testing.T) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	b := newBackend(t, "", WithFileMode(0o640))
	l := mustTry(t)(b.TryLock(bg(), "x"))
	defer l.Release(bg())
	if st, err := os.Stat(l.Path()); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("lock file mode %v, %v; want 0640", st.Mode(), err)
	}
}

func TestClose(t *testing.T) {
	b := newBackend(t, "")
	l := mustTry(t)(b.TryLock(bg(), "x"))
	waited := make(chan error)
	go func() {
		_, err := b.Lock(bg(), "x")
		waited <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; !errors.Is(err, ErrClosed) {
		t.Fatalf("wait at Close: %v", err)
	}
	waitLost(t, l, time.Second)
	if err := l.Release(bg()); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release after Close: %v", err)
	}
	if _, _, err := b.TryLock(bg(), "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("TryLock after Close: %v", err)
	}
	b2 := newBackend(t, b.Dir()) // Close freed the lock
	mustRelease(t, mustTry(t)(b2.TryLock(bg(), "x")))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestMonitorStopsWhenIdle(t *testing.T) {
	b, err := New(t.TempDir(), WithLossInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	opt := goleak.IgnoreCurrent()
	l := mustTry(t)(b.TryLock(bg(), "x"))
	mustRelease(t, l)
	// No Close: the monitor ends on its own after a quiet interval.
	goleak.VerifyNone(t, opt)
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(entries)
}

func TestNoDescriptorLeak(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	before := openFDs(t)
	ok := func(l *Lease, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		mustRelease(t, l)
	}
	fails := func(l *Lease, err error) {
		t.Helper()
		if err == nil {
			l.Release(bg())
			t.Fatal("a wait for a held lock succeeded")
		}
	}
	for range 3 {
		ctx, cancel := context.WithTimeout(bg(), 5*time.Millisecond)
		l := mustTry(t)(b.TryLock(bg(), "x"))
		mustBusy(t)(b.TryLock(bg(), "x"))
		fails(b.Lock(ctx, "x"))
		ok(b.WLock(bg(), "x"))
		mustRelease(t, l)
		cancel()

		ctx, cancel = context.WithTimeout(bg(), 5*time.Millisecond)
		r := mustTry(t)(b.TryRLock(bg(), "y"))
		fails(b.WLock(ctx, "y"))
		ok(b.RLock(bg(), "y")) // the failed writer let its gate go
		s1, s2 := mustTry(t)(b.TryAcquire(bg(), "z", 2)), mustTry(t)(b.TryAcquire(bg(), "z", 2))
		fails(b.Acquire(ctx, "z", 2))
		mustRelease(t, s1)
		ok(b.Acquire(bg(), "z", 2))
		mustRelease(t, s2)
		mustRelease(t, r)
		cancel()
		b.Close()
		b = newBackend(t, dir)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

// Helper processes for the direct tests.

const childEnv = "DLOCK_FS_TEST_CHILD"

type childSpec struct{ Dir, Kind, Name string }

// runChild takes a lock, says "locked TOKEN", and holds it until stdin
// ends; it then releases and says "released".
func runChild() int {
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if spec.Kind == "posix" {
		return runPosixLocker(spec.Name)
	}
	b, err := New(spec.Dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer b.Close()
	var l *Lease
	switch spec.Kind {
	case "mutex":
		l, err = b.Lock(bg(), spec.Name)
	case "read":
		l, err = b.RLock(bg(), spec.Name)
	case "write":
		l, err = b.WLock(bg(), spec.Name)
	default:
		l, err = b.Acquire(bg(), spec.Name, 1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("locked %d\n", l.Token())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
	}
	if err := l.Release(bg()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("released")
	return 0
}

// runPosixLocker holds a classic fcntl read lock over the whole file path
// (not a lock of this backend's) until stdin ends.
func runPosixLocker(path string) int {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("locked 0")
	_, _ = io.Copy(io.Discard, os.Stdin)
	fmt.Println("released")
	return 0
}

type helper struct {
	cmd  *exec.Cmd
	in   interface{ Close() error }
	out  *bufio.Scanner
	once sync.Once
}

func startHelper(t *testing.T, dir, kind, name string) (*helper, uint64) {
	t.Helper()
	h := spawnHelper(t, dir, kind, name)
	return h, h.locked(t)
}

// spawnHelper starts a helper process that takes (waiting if need be) the
// lock of kind on name; its "locked" line comes later (see locked).
func spawnHelper(t *testing.T, dir, kind, name string) *helper {
	t.Helper()
	spec, _ := json.Marshal(childSpec{Dir: dir, Kind: kind, Name: name})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(h.kill)
	return h
}

// locked waits until the helper says it holds its lock and returns its
// fencing token.
func (h *helper) locked(t *testing.T) uint64 {
	t.Helper()
	if !h.out.Scan() {
		t.Fatal("helper ended before locking")
	}
	var token uint64
	if _, err := fmt.Sscanf(h.out.Text(), "locked %d", &token); err != nil {
		t.Fatalf("helper said %q", h.out.Text())
	}
	return token
}

func (h *helper) kill() {
	h.once.Do(func() {
		_ = h.cmd.Process.Signal(syscall.SIGKILL)
		_ = h.cmd.Wait()
	})
}

func (h *helper) release(t *testing.T) {
	t.Helper()
	h.in.Close()
	if !h.out.Scan() || h.out.Text() != "released" {
		t.Fatalf("helper did not release: %q", h.out.Text())
	}
	h.once.Do(func() {
		if err := h.cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
	})
}

func TestAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	for _, kind := range []string{"mutex", "write", "read", "semaphore"} {
		t.Run(kind, func(t *testing.T) {
			h, token := startHelper(t, dir, kind, "p")
			try := func() (*Lease, bool, error) {
				switch kind {
				case "mutex":
					return b.TryLock(bg(), "p")
				case "semaphore":
					return b.TryAcquire(bg(), "p", 1)
				}
				return b.TryWLock(bg(), "p")
			}
			mustBusy(t)(try())
			if kind == "read" {
				mustRelease(t, mustTry(t)(b.TryRLock(bg(), "p")))
			}
			h.release(t)
			l := mustTry(t)(try())
			if l.Token() <= token {
				t.Fatalf("token %d after the helper's %d", l.Token(), token)
			}
			mustRelease(t, l)

			// A killed holder's lock is free at once: a waiter hears of it.
			h, _ = startHelper(t, dir, kind, "p")
			mustBusy(t)(try())
			got := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(bg(), 30*time.Second)
				defer cancel()
				var l *Lease
				var err error
				switch kind {
				case "mutex":
					l, err = b.Lock(ctx, "p")
				case "semaphore":
					l, err = b.Acquire(ctx, "p", 1)
				default:
					l, err = b.WLock(ctx, "p")
				}
				if err == nil {
					err = l.Release(bg())
				}
				got <- err
			}()
			time.Sleep(10 * time.Millisecond)
			h.kill()
			if err := <-got; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// sweepRemoves runs the idle sweep's removal of the lock file of l, as
// if it had been noted, and reports whether it removed it.
func sweepRemoves(b *Backend, l *Lease) bool { return removeIdle(l.Path(), &b.trust, true, true) }
