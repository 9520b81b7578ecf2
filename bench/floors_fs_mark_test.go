package bench

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFSSameCallsFloorMarkRace: a holder of the same-calls floors takes
// the holder mark right after its flock, while its predecessor, which has
// unlocked the flock, may still hold the mark until its close. The take
// must wait that moment out, not report the file busy while it holds the
// flock: a fair floor's waiter then waited for a close holding the lock
// itself, and every other client with it (6 of 8 fairness clients stuck
// in a published run).
func TestFSSameCallsFloorMarkRace(t *testing.T) {
	dir := t.TempDir()
	path := lockPath(dir, "mark")
	// The predecessor: its flock let go, its mark still held.
	pred, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	mark := unix.Flock_t{Type: unix.F_WRLCK, Start: 1 << 31, Len: 1}
	if err := unix.FcntlFlock(uintptr(pred), unix.F_OFD_SETLK, &mark); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = unix.Close(pred)
		close(closed)
	}()
	h, err := fsSameCalls{dir}.lock(context.Background(), "mark")
	<-closed
	if err != nil {
		t.Fatalf("a take while the predecessor still held the mark: %v; want it taken once the predecessor closed", err)
	}
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Nothing is left locked: a new holder takes it at once.
	h, err = fsSameCalls{dir}.lock(context.Background(), "mark")
	if err != nil {
		t.Fatalf("the lock after a release: %v", err)
	}
	_ = h.Release(context.Background())
}
