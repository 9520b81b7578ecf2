//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dlock-go/dlock/backend"
)

// While failed upgrade attempts let go of the flock for a moment, no
// writer ever gets in beside the upgradeable reader (readers come and go,
// writers try all along), the upgradeable reader keeps its lock, and the
// sweep never removes its file.
func TestUpgradeAttemptsKeepWritersOut(t *testing.T) {
	dir := t.TempDir()
	a, b := newBackend(t, dir), newBackend(t, dir)
	var uHeld atomic.Bool // set while an upgradeable reader holds "x"
	var beside, writers, upgrades atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r, ok, err := b.TryRLock(bg(), "x"); err == nil && ok {
					_ = r.Release(bg())
				}
				w, ok, err := b.TryWLock(bg(), "x")
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					writers.Add(1)
					if uHeld.Load() {
						beside.Add(1)
					}
					_ = w.Release(bg())
				}
			}
		})
	}
	for range 300 {
		u, ok, err := a.TryULock(bg(), "x")
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			continue
		}
		uHeld.Store(true)
		for range 20 {
			ok, err := u.TryUpgrade(bg())
			if err != nil {
				t.Fatalf("TryUpgrade: %v", err)
			}
			if sweepRemoves(b, u) {
				t.Fatal("the sweep removed the file of an upgradeable reader")
			}
			if ok {
				upgrades.Add(1)
				break
			}
		}
		uHeld.Store(false)
		mustRelease(t, u)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d writers, %d upgrades", writers.Load(), upgrades.Load())
	if n := beside.Load(); n != 0 {
		t.Fatalf("%d writers got in beside an upgradeable reader", n)
	}

	u := mustTry(t)(a.TryULock(bg(), "x"))
	r := mustTry(t)(b.TryRLock(bg(), "x"))
	if ok, err := u.TryUpgrade(bg()); ok || err != nil {
		t.Fatalf("TryUpgrade beside a reader: %v %v", ok, err)
	}
	mustBusy(t)(b.TryULock(bg(), "x"))
	mustBusy(t)(b.TryWLock(bg(), "x"))
	mustRelease(t, r)
	if ok, err := u.TryUpgrade(bg()); !ok || err != nil {
		t.Fatalf("TryUpgrade alone: %v %v", ok, err)
	}
	mustBusy(t)(b.TryRLock(bg(), "x"))
	hs, err := b.DescribeRW(bg(), "x")
	if err != nil || len(hs) != 1 || hs[0].Shared {
		t.Fatalf("holders after the upgrade: %+v, %v; want one writer", hs, err)
	}
	mustRelease(t, u)
	mustRelease(t, mustTry(t)(b.TryWLock(bg(), "x")))
}

// Upgrade of a lease of another kind is refused; Upgrade after Release
// reports it.
func TestUpgradeOtherKinds(t *testing.T) {
	b := newBackend(t, "")
	for _, l := range []*Lease{mustTry(t)(b.TryRLock(bg(), "o")), mustTry(t)(b.TryLock(bg(), "o"))} {
		if _, err := l.TryUpgrade(bg()); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("TryUpgrade of a %s: %v", l.what, err)
		}
		if err := l.Upgrade(bg()); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Upgrade of a %s: %v", l.what, err)
		}
		mustRelease(t, l)
	}
	u := mustTry(t)(b.TryULock(bg(), "o"))
	mustRelease(t, u)
	if err := u.Upgrade(bg()); !errors.Is(err, backend.ErrNotHeld) {
		t.Fatalf("Upgrade after Release: %v", err)
	}
}
