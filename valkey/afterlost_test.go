package valkey

import (
	"testing"
	"time"

	"github.com/dlock-go/dlock/dlocktest"
)

// TestAfterLost: AfterLost's function runs once Lost closes — on loss, on
// Release, at once when already closed — and stop keeps it from running.
func TestAfterLost(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	ctx := testCtx(t)
	ran := func() (func(), <-chan struct{}) {
		c := make(chan struct{})
		return func() { close(c) }, c
	}
	within := func(c <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatalf("AfterLost's function did not run %s", what)
		}
	}

	l := mustLock(t, b, "lost")
	f, c := ran()
	l.AfterLost(f)
	stopped := make(chan struct{})
	stop := l.AfterLost(func() { close(stopped) })
	if !stop() {
		t.Fatal("stop before the loss returned false")
	}
	loseLease(t, l)
	within(c, "on loss")
	f, c = ran()
	l.AfterLost(f)
	within(c, "at once after the loss")
	_ = l.Release(ctx)
	select {
	case <-stopped:
		t.Fatal("a stopped function ran")
	default:
	}

	l = mustLock(t, b, "released")
	f, c = ran()
	stop = l.AfterLost(f)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	within(c, "on Release")
	if stop() {
		t.Fatal("stop after the function started returned true")
	}
}
