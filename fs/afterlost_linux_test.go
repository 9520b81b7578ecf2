//go:build linux && !dlock_portable

package fs

import (
	"os"
	"testing"
	"time"
)

// TestAfterLost: AfterLost's function runs once Lost closes — on loss, on
// Release, at once when already closed — and stop keeps it from running.
func TestAfterLost(t *testing.T) {
	b := newBackend(t, "")
	ran := func() (func(), <-chan struct{}) {
		c := make(chan struct{})
		return func() { close(c) }, c
	}
	within := func(c <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(5 * time.Second):
			t.Fatalf("AfterLost's function did not run %s", what)
		}
	}

	l := mustTry(t)(b.TryLock(bg(), "lost"))
	f, c := ran()
	l.AfterLost(f)
	stopped := false
	stop := l.AfterLost(func() { stopped = true })
	if !stop() {
		t.Fatal("stop before the loss returned false")
	}
	if err := os.Remove(l.Path()); err != nil {
		t.Fatal(err)
	}
	within(c, "on loss")
	f, c = ran()
	l.AfterLost(f)
	within(c, "at once after the loss")
	_ = l.Release(bg())
	if stopped {
		t.Fatal("a stopped function ran")
	}

	l = mustTry(t)(b.TryLock(bg(), "released"))
	f, c = ran()
	stop = l.AfterLost(f)
	mustRelease(t, l)
	within(c, "on Release")
	if stop() {
		t.Fatal("stop after the function started returned true")
	}
}
