//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"os"
	"strings"
	"testing"

	"github.com/dlock-go/dlock/backend"
)

// A holder whose locks are gone without a Release (as when its process
// dies) leaves its record, which is no longer listed; each reader has a
// record file of its own, reused once free.
func TestPortableHoldersStale(t *testing.T) {
	b := newBackend(t, "")
	ctx := backend.ContextWithOwner(bg(), "me")
	w := mustTry(t)(b.TryWLock(ctx, "n"))
	hs, err := b.DescribeRW(bg(), "n")
	if err != nil || len(hs) != 1 || hs[0].Shared || hs[0].Owner != "me" || hs[0].PID != os.Getpid() {
		t.Fatalf("holders %+v, %v: want the writer", hs, err)
	}
	w.mu.Lock()
	w.f.close() // as if its process died
	w.mu.Unlock()
	if hs, err := b.DescribeRW(bg(), "n"); err != nil || len(hs) != 0 {
		t.Fatalf("holders %+v, %v after the writer's lock went", hs, err)
	}
	if raw, _ := os.ReadFile(w.Path()); !strings.Contains(string(raw), `"o":"me"`) {
		t.Fatalf("no stale record in %q", raw)
	}
	_ = w.Release(bg())

	var rs []*Lease
	for range 3 {
		rs = append(rs, mustTry(t)(b.TryRLock(ctx, "n")))
	}
	if hs, err := b.DescribeRW(bg(), "n"); err != nil || len(hs) != 3 || !hs[0].Shared {
		t.Fatalf("holders %+v, %v: want 3 readers", hs, err)
	}
	side := rs[1].f.side.path
	rs[1].mu.Lock()
	rs[1].f.close()
	rs[1].mu.Unlock()
	if hs, err := b.DescribeRW(bg(), "n"); err != nil || len(hs) != 2 {
		t.Fatalf("holders %+v, %v: want 2 readers", hs, err)
	}
	_ = rs[1].Release(bg())
	rs[1] = mustTry(t)(b.TryRLock(ctx, "n"))
	if rs[1].f.side.path != side {
		t.Fatalf("a new reader took %s, want the free %s", rs[1].f.side.path, side)
	}
	for _, r := range rs {
		mustRelease(t, r)
	}
	if hs, err := b.DescribeRW(bg(), "n"); err != nil || len(hs) != 0 {
		t.Fatalf("holders %+v, %v after every release", hs, err)
	}
	if _, err := b.DescribeSemaphore(bg(), "s", 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
	if _, err := b.DescribeLock(bg(), ""); err == nil {
		t.Fatal("empty name accepted")
	}
	b.Close()
	if left := lockFiles(t, b.Dir()); len(left) != 0 {
		t.Fatalf("files left after Close: %v", left)
	}
}
