package dlocktest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
	}
	for mode, want := range cases {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			exe, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe, "-test.run=^TestBrokenBackend$", "-test.count=1")
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
