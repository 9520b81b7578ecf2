package dlocktest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

// The suite must fail a backend that breaks a guarantee. Each case runs the
// suite over a broken Memory in a child process and expects it to fail
// with the named complaint.
func TestSuiteCatchesBrokenBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite several times")
	}
	cases := map[string]string{
		"shared":    "TryAcquire took a lock that should be held elsewhere",
		"silent":    "Lost() not closed",
		"leaky":     "found unexpected goroutines",
		"stale":     "tokens must strictly increase",
		"fairreads": "new readers still got in",
		"hoarding":  "of a free name",
		"hiding":    "Release right after the lock was revoked",
		"unordered": "waiters must be served in arrival order",
		"ghost":     "the cancelled waiter held the line up",
		"upgrade":   "new readers still got in 20s after an upgrade began to wait",
		"partial":   "its attempts are not atomic",
		"stopping":  "is not free right after the Release of a set with one lock lost",
	}
	for mode, want := range cases {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			exe, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			run := "^TestBrokenBackend$"
			switch mode {
			case "ghost": // its abandoned waits slow every other subtest down
				run += "/Mutex/CancelledWaiter"
			case "upgrade":
				run += "/RWMutex/Upgradeable/WriterPreference"
			case "partial":
				run += "/Mutex/AllAtomic"
			case "stopping":
				run += "/Mutex/AllRelease"
			}
			cmd := exec.Command(exe, "-test.run="+run, "-test.count=1")
			cmd.Env = append(os.Environ(), "DLOCKTEST_BROKEN="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a %q backend:\n%s", mode, out)
			}
			if !strings.Contains(string(out), want) {
				t.Fatalf("the suite failed a %q backend, but without %q:\n%s", mode, want, out)
			}
		})
	}
}

// TestBrokenBackend runs the suite over a broken backend; only
// TestSuiteCatchesBrokenBackends runs it.
func TestBrokenBackend(t *testing.T) {
	mem := dlocktest.NewMemory()
	h := dlocktest.Harness[*dlocktest.MemoryLease]{
		Lose:       func(_ testing.TB, l *dlocktest.MemoryLease) { mem.Lose(l) },
		LossWithin: 200 * time.Millisecond,
		Fencing:    true,
		InProcess:  true,
	}
	switch os.Getenv("DLOCKTEST_BROKEN") {
	case "":
		t.Skip("run by TestSuiteCatchesBrokenBackends")
	case "shared":
		h.New = func(testing.TB, string) any { return &sharedLocker{m: mem} }
	case "silent":
		h.New = func(testing.TB, string) any { return mem }
		h.Lose = func(testing.TB, *dlocktest.MemoryLease) {}
	case "leaky":
		h.New = func(testing.TB, string) any { return leakyLocker{mem} }
	case "fairreads":
		h.New = func(testing.TB, string) any { return pollingRW{mem} }
	case "unordered":
		h.New = func(testing.TB, string) any { return pollingLocker{mem} }
	case "ghost":
		h.New = func(testing.TB, string) any { return ghostLocker{mem} }
	case "partial":
		h.New = func(testing.TB, string) any { return partialLocker{mem} }
	case "hoarding":
		h.New = func(testing.TB, string) any { return &hoardingLocker{m: mem, conns: make(chan struct{}, 4)} }
	case "stopping":
		h.New = func(testing.TB, string) any { return stoppingReleaser{mem} }
	case "hiding":
		dlocktest.Run(t, dlocktest.Harness[*hidingLease]{
			New: func(testing.TB, string) any { return hidingLocker{mem} },
			Lose: func(_ testing.TB, l *hidingLease) {
				mem.Lose(l.MemoryLease)
				time.AfterFunc(100*time.Millisecond, l.tell) // a monitor that notices later
			},
			LossWithin: time.Second,
			InProcess:  true,
		})
		return
	case "upgrade":
		dlocktest.Run(t, dlocktest.Harness[pollingUpgrade]{
			New:       func(testing.TB, string) any { return pollingUpgrader{mem} },
			InProcess: true,
		})
		return
	case "stale":
		dlocktest.Run(t, dlocktest.Harness[staleLease]{
			New:       func(testing.TB, string) any { return staleLocker{mem} },
			InProcess: true,
		})
		return
	}
	dlocktest.Run(t, h)
}

// sharedLocker grants every try: no exclusion at all.
type sharedLocker struct {
	m *dlocktest.Memory
	n atomic.Int64
}

func (s *sharedLocker) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return s.m.TryLock(ctx, fmt.Sprint(name, s.n.Add(1)))
}

// leakyLocker starts a goroutine per lock that nobody stops.
type leakyLocker struct{ m *dlocktest.Memory }

func (l leakyLocker) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	lease, ok, err := l.m.TryLock(ctx, name)
	if ok {
		go func() { time.Sleep(time.Hour) }()
	}
	return lease, ok, err
}

// pollingRW is an RW lock without a native wait, so no writer preference.
type pollingRW struct{ m *dlocktest.Memory }

func (p pollingRW) TryRLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryRLock(ctx, name)
}

func (p pollingRW) TryWLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryWLock(ctx, name)
}

// staleLocker's leases all carry token 1.
type staleLocker struct{ m *dlocktest.Memory }

type staleLease struct{ *dlocktest.MemoryLease }

func (staleLease) Token() uint64 { return 1 }

func (s staleLocker) TryLock(ctx context.Context, name string) (staleLease, bool, error) {
	l, ok, err := s.m.TryLock(ctx, name)
	return staleLease{l}, ok, err
}

// hoardingLocker has a pool of four connections; a try takes one, waiting
// for it, and its lease keeps it until released: with more than four held
// locks a try waits for a connection the backend itself holds.
type hoardingLocker struct {
	m     *dlocktest.Memory
	conns chan struct{}
}

func (h *hoardingLocker) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	select {
	case h.conns <- struct{}{}:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	l, ok, err := h.m.TryLock(ctx, name)
	if !ok || err != nil {
		<-h.conns
		return l, ok, err
	}
	go func() { <-l.Lost(); <-h.conns }()
	return l, ok, err
}

// hidingLocker's leases learn of a loss only from a monitor, 100ms late,
// and their Release says nothing of a loss it did not know of.
type hidingLocker struct{ m *dlocktest.Memory }

type hidingLease struct {
	*dlocktest.MemoryLease
	lost chan struct{}
	once sync.Once
}

func (h *hidingLease) tell()                 { h.once.Do(func() { close(h.lost) }) }
func (h *hidingLease) Lost() <-chan struct{} { return h.lost }
func (h *hidingLease) Release(ctx context.Context) error {
	defer h.tell()
	select {
	case <-h.lost:
		return dlock.ErrLockLost
	default:
	}
	if err := h.MemoryLease.Release(ctx); err != nil && !errors.Is(err, dlock.ErrLockLost) {
		return err
	}
	return nil
}

func (h hidingLocker) TryLock(ctx context.Context, name string) (*hidingLease, bool, error) {
	l, ok, err := h.m.TryLock(ctx, name)
	if !ok || err != nil {
		return nil, ok, err
	}
	return &hidingLease{MemoryLease: l, lost: make(chan struct{})}, true, nil
}

// pollingLocker is a mutex without a native wait: waiters poll, and
// whoever tries first after a release gets the lock.
type pollingLocker struct{ m *dlocktest.Memory }

func (p pollingLocker) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryLock(ctx, name)
}

// ghostLocker's waits stay in line when their ctx ends: the abandoned wait
// goes on, and when it is served its lock is held for a while (as a dead
// waiter's place is kept until its lease runs out) before it is let go.
type ghostLocker struct{ m *dlocktest.Memory }

func (g ghostLocker) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return g.m.TryLock(ctx, name)
}

func (g ghostLocker) Lock(ctx context.Context, name string) (*dlocktest.MemoryLease, error) {
	got := make(chan *dlocktest.MemoryLease, 1)
	go func() {
		l, err := g.m.Lock(context.Background(), name)
		if err == nil {
			got <- l
		}
	}()
	select {
	case l := <-got:
		return l, nil
	case <-ctx.Done():
		go func() {
			l := <-got
			time.Sleep(6 * time.Second)
			_ = l.Release(context.Background())
		}()
		return nil, ctx.Err()
	}
}

// pollingUpgrader's upgradeable read locks upgrade by polling, so readers
// that come while an upgrade waits get in (no writer preference).
type pollingUpgrader struct{ m *dlocktest.Memory }

type pollingUpgrade struct{ *dlocktest.MemoryLease }

func (p pollingUpgrade) Upgrade(ctx context.Context) error {
	for {
		if ok, err := p.TryUpgrade(ctx); ok || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func wrap(l *dlocktest.MemoryLease, ok bool, err error) (pollingUpgrade, bool, error) {
	return pollingUpgrade{l}, ok, err
}

func (p pollingUpgrader) TryRLock(ctx context.Context, name string) (pollingUpgrade, bool, error) {
	return wrap(p.m.TryRLock(ctx, name))
}

func (p pollingUpgrader) TryWLock(ctx context.Context, name string) (pollingUpgrade, bool, error) {
	return wrap(p.m.TryWLock(ctx, name))
}

func (p pollingUpgrader) TryULock(ctx context.Context, name string) (pollingUpgrade, bool, error) {
	return wrap(p.m.TryULock(ctx, name))
}

// stoppingReleaser releases a set in one call, but stops at the first
// lease that was lost and leaves the rest held.
type stoppingReleaser struct{ *dlocktest.Memory }

func (s stoppingReleaser) ReleaseAll(ctx context.Context, leases []*dlocktest.MemoryLease) []error {
	errs := make([]error, len(leases))
	for i, l := range leases {
		if errs[i] = l.Release(ctx); errs[i] != nil {
			break
		}
	}
	return errs
}

// partialLocker claims an atomic path for several names but takes them one
// after another, letting go of those it took when one is busy.
type partialLocker struct{ *dlocktest.Memory }

func (p partialLocker) TryLockAll(ctx context.Context, names []string) ([]*dlocktest.MemoryLease, int, error) {
	var leases []*dlocktest.MemoryLease
	for i, n := range names {
		l, ok, err := p.TryLock(ctx, n)
		if err != nil || !ok {
			time.Sleep(time.Millisecond) // as a round trip would
			for _, l := range leases {
				_ = l.Release(ctx)
			}
			return nil, i, err
		}
		leases = append(leases, l)
	}
	return leases, -1, nil
}
