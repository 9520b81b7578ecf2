package valkey

import (
	"strconv"
	"testing"
	"time"

	"github.com/dlock-go/dlock/dlocktest"
)

// A fencing counter expires a day after its lock's last acquisition, and
// later by as much as it ran ahead of the clock floor, so that its expiry
// never makes a token go back.
func TestFenceCounterExpires(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	cl := b.c.nodes[0].client
	idle, _ := strconv.ParseInt(fenceIdleMs, 10, 64)
	name := "fence-expiry"
	base, _ := keyBase(b.c.cfg.prefix, name)
	fence := mutexKeys(base)[1]
	pttl := func() int64 {
		t.Helper()
		n, err := cl.Do(testCtx(t), cl.B().Pttl().Key(fence).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	take := func() uint64 {
		t.Helper()
		l := mustLock(t, b, name)
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		return l.Token()
	}
	first := take()
	if p := pttl(); p <= idle-5000 || p > idle {
		t.Fatalf("the counter's PTTL is %dms, want about %dms", p, idle)
	}
	// A counter 1.5s ahead of the clock floor lives 1.5s longer.
	const aheadMs = 1500
	ahead := uint64(time.Now().UnixMilli()+aheadMs) * 1000
	if err := cl.Do(testCtx(t), cl.B().Set().Key(fence).Value(strconv.FormatUint(ahead, 10)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	second := take()
	if second != ahead+1 || second <= first {
		t.Fatalf("token %d after the counter was set to %d (first %d)", second, ahead, first)
	}
	extra := pttl() - idle
	if extra < aheadMs-200 || extra > aheadMs+200 {
		t.Fatalf("a counter %dms ahead of the floor lives %dms beyond the idle time, want about %dms", aheadMs, extra, aheadMs)
	}
	// Were the idle time zero, it would expire when the floor has passed
	// it: let it expire then, and the next token is still larger.
	if err := cl.Do(testCtx(t), cl.B().Pexpire().Key(fence).Milliseconds(extra).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Duration(extra+20) * time.Millisecond)
	if n, err := cl.Do(testCtx(t), cl.B().Exists().Key(fence).Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("the counter still exists (%d, %v)", n, err)
	}
	if third := take(); third <= second {
		t.Fatalf("token %d after the counter expired, not above %d", third, second)
	}
}
