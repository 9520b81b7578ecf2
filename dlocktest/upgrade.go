package dlocktest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// upgrade runs the subtests of the upgradeable read lock of an RWLocker
// that offers one (backend.UpgradeableLocker).
func (s *suite[L]) upgrade(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"SharesWithReaders", s.testUpgradeableShares},
		{"WaitsForReaders", s.testUpgradeWaitsForReaders},
		{"WriterPreference", s.testUpgradeWriterPreference},
		{"UpgradeLoss", s.testUpgradeLoss},
	} {
		s.test(t, c.name, c.f)
	}
}

// testUpgradeableShares checks that an upgradeable reader shares its name
// with plain readers but not with a writer or another upgradeable reader,
// on any client, and that its release frees the name.
func (s *suite[L]) testUpgradeableShares(t *testing.T) {
	a, b, c := s.rwOf(t), s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	u := tryAcquire(t, a.Upgradeable(), name)
	r1 := tryAcquire(t, b.Read(), name)
	r2 := tryAcquire(t, c.Read(), name)
	held(t, b.Write(), name, u, r1, r2)
	held(t, b.Upgradeable(), name, u)
	held(t, a.Upgradeable(), name, u)
	release(t, r1)
	release(t, r2)
	held(t, c.Upgradeable(), name, u) // still the first one's
	release(t, u)
	release(t, tryAcquire(t, c.Write(), name))
	w := tryAcquire(t, c.Write(), name)
	held(t, a.Upgradeable(), name, w) // a writer excludes it too
	release(t, w)
}

// testUpgradeWaitsForReaders checks that an upgrade waits for the plain
// readers, that one whose ctx ends still holds the upgradeable read lock
// (and lets readers in again), that TryUpgrade fails while readers hold,
// and that after the upgrade its holder is alone.
func (s *suite[L]) testUpgradeWaitsForReaders(t *testing.T) {
	a, b := s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	u := tryAcquire(t, a.Upgradeable(), name)
	r := tryAcquire(t, b.Read(), name)
	if err := u.TryUpgrade(s.ctx(t)); !errors.Is(err, dlock.ErrNotAcquired) {
		t.Fatalf("TryUpgrade while a reader holds: %v, want ErrNotAcquired", err)
	}
	ctx, cancel := context.WithTimeout(s.ctx(t), 200*time.Millisecond)
	err := u.Upgrade(ctx)
	cancel()
	notAcquired(t, err, context.DeadlineExceeded)
	if u.Err() != nil {
		t.Fatalf("after a failed upgrade: Err = %v, want still held", u.Err())
	}
	held(t, b.Upgradeable(), name, u)         // still the upgradeable reader
	release(t, tryAcquire(t, b.Read(), name)) // and readers may come in again
	release(t, r)
	if err := u.Upgrade(s.ctx(t)); err != nil {
		t.Fatalf("Upgrade with no reader left: %v", err)
	}
	held(t, b.Read(), name, u)
	held(t, b.Write(), name, u)
	held(t, b.Upgradeable(), name, u)
	if err := u.Upgrade(s.ctx(t)); err != nil {
		t.Fatalf("a second Upgrade: %v, want nil", err)
	}
	release(t, u)
	release(t, tryAcquire(t, b.Write(), name))
}

// testUpgradeWriterPreference checks that while an upgrade waits for a
// reader, new readers wait too, and that the upgrade wins once the
// reader leaves.
func (s *suite[L]) testUpgradeWriterPreference(t *testing.T) {
	a, b, c := s.rwOf(t), s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	u := tryAcquire(t, a.Upgradeable(), name)
	r := tryAcquire(t, b.Read(), name)
	upgraded := make(chan error, 1)
	go func() { upgraded <- u.Upgrade(s.ctx(t)) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lk, err := c.Read().TryAcquire(s.ctx(t), name)
		if err != nil {
			if !errors.Is(err, dlock.ErrNotAcquired) {
				t.Fatalf("reader: %v", err)
			}
			break
		}
		release(t, lk)
		if time.Now().After(deadline) {
			t.Fatal("new readers still got in 20s after an upgrade began to wait")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(s.ctx(t), 200*time.Millisecond)
	_, err := c.Read().Acquire(ctx, name)
	cancel()
	notAcquired(t, err, context.DeadlineExceeded)
	release(t, r)
	select {
	case err := <-upgraded:
		if err != nil {
			t.Fatalf("Upgrade: %v", err)
		}
	case <-time.After(serveWithin):
		t.Fatalf("the upgrade did not complete within %v of the last reader's release", serveWithin)
	}
	held(t, c.Read(), name, u)
	release(t, u)
	release(t, acquire(t, c.Read(), name))
}

// testUpgradeLoss checks that a loss while an upgrade waits ends it with
// ErrLockLost, and frees the name.
func (s *suite[L]) testUpgradeLoss(t *testing.T) {
	s.loses(t)
	a, b := s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	u := tryAcquire(t, a.Upgradeable(), name)
	r := tryAcquire(t, b.Read(), name)
	upgraded := make(chan error, 1)
	go func() { upgraded <- u.Upgrade(s.ctx(t)) }()
	time.Sleep(arrivalGap)
	s.h.Lose(t, u.Lease())
	select {
	case err := <-upgraded:
		if !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Upgrade of a lock lost meanwhile: %v, want ErrLockLost", err)
		}
	case <-time.After(s.h.LossWithin):
		t.Fatalf("the upgrade did not end within %v of the loss", s.h.LossWithin)
	}
	if err := u.Release(s.ctx(t)); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release after the loss: %v, want ErrLockLost", err)
	}
	if err := r.Release(s.ctx(t)); err != nil && !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release of the reader: %v", err)
	}
	release(t, tryAcquire(t, b.Write(), name))
}

// offersUpgradeable reports whether node offers the upgradeable read lock.
func offersUpgradeable[L backend.Lease](node any) bool {
	_, ok := node.(backend.UpgradeableLocker[L])
	return ok
}
