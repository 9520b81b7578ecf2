package valkey

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// scriptLog passes every command through to its client and records how
// many keys each script declared, by its EVALSHA (the EVAL that follows a
// NOSCRIPT answer is the same script).
type scriptLog struct {
	valkeygo.Client
	mu   sync.Mutex
	keys []int
}

func (s *scriptLog) Do(ctx context.Context, cmd valkeygo.Completed) valkeygo.ValkeyResult {
	if c := cmd.Commands(); len(c) > 2 && c[0] == "EVALSHA" {
		n, _ := strconv.Atoi(c[2])
		s.mu.Lock()
		s.keys = append(s.keys, n)
		s.mu.Unlock()
	}
	return s.Client.Do(ctx, cmd)
}

// take returns the key counts recorded since the last take.
func (s *scriptLog) take() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys
	s.keys = nil
	return k
}

// A mutex taken and released with nobody waiting costs two scripts that
// declare only the keys they touch (lock, fence, queue; lock, queue). Once
// the lock is seen contended, its acquisitions and releases go straight to
// the full scripts, with no detour (one script per release that hands the
// lock on); once it has been quiet for busyFor, the short ones again. The
// hand-offs stay what they are: granted by the release, in queue order.
func TestMutexFreePath(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	space := t.TempDir()
	logA := &scriptLog{Client: testClient(t, addr)}
	a, err := New(logA, testOpts(space)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b := newTestBackendLike(t, a, addr)
	name := "free-path"
	check := func(what string, want ...int) {
		t.Helper()
		if got := logA.take(); !slices.Equal(got, want) {
			t.Fatalf("%s: scripts declared %v keys, want %v", what, got, want)
		}
	}
	// marked is when a's Backend last saw the lock contended (at most):
	// on a machine slow enough that busyFor passed since, the short
	// scripts are right again.
	var marked time.Time
	checkBusy := func(what string, want, lapsed []int) {
		t.Helper()
		got := logA.take()
		if !slices.Equal(got, want) && (time.Since(marked) < busyFor || !slices.Equal(got, lapsed)) {
			t.Fatalf("%s: scripts declared %v keys, want %v", what, got, want)
		}
	}

	l, err := a.Lock(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	check("uncontended Lock and Release", 3, 2)
	l, ok, err := a.TryLock(testCtx(t), name)
	if err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	check("uncontended TryLock", 3)

	// Another process waits: the release that does not know it yet
	// learns it from the short script, and hands the lock on.
	handOff := func(holder *Lease) {
		t.Helper()
		got := lockAsync(testCtx(t), b, name)
		waitQueued(t, a, kindMutex, name, 1)
		time.Sleep(20 * time.Millisecond) // let the waiter subscribe
		logA.take()
		before := marked
		marked = time.Now()
		if err := holder.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if before.IsZero() {
			check("the first release to a waiting process", 2, 5)
		} else {
			checkBusy("a release to a waiting process", []int{5}, []int{2, 5})
		}
		w := <-got
		if w == nil {
			t.Fatal("the waiter failed")
		}
		if w.Token() <= holder.Token() {
			t.Fatalf("the waiter's token %d is not above the holder's %d", w.Token(), holder.Token())
		}
		if err := w.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	handOff(l)
	for range 3 {
		l = mustLock(t, a, name)
		handOff(l)
	}
	// While it counts as contended, a try goes straight to the full script.
	w := mustLock(t, b, name)
	logA.take()
	if _, ok, err := a.TryLock(testCtx(t), name); ok || err != nil {
		t.Fatalf("TryLock of a held lock = %v, %v", ok, err)
	}
	checkBusy("a try of a contended lock", []int{5}, []int{3})
	if err := w.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}

	// Quiet for busyFor: the short scripts again.
	time.Sleep(busyFor + 100*time.Millisecond)
	l = mustLock(t, a, name)
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	check("Lock and Release after a quiet while", 3, 2)
}
