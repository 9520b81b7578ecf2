//go:build unix

package valkey

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

// Upgradeable read locks (upgrade.go): what the conformance suite cannot
// see — the keys they leave, an upgrade waiting for a reader in another
// process (alive or killed), a cancelled upgrade leaving nothing in the
// way, extension and loss of an upgraded lease, fencing, replicas.

// mustTry takes name by try (a Backend's TryULock, TryRLock, TryWLock).
func mustTry(t testing.TB, try func(context.Context, string) (*Lease, bool, error), name string) *Lease {
	t.Helper()
	l, ok, err := try(testCtx(t), name)
	if err != nil || !ok {
		t.Fatalf("taking %q: %v, %v", name, ok, err)
	}
	return l
}

// twoBackends returns two Backends (own clients) over the standalone
// server, with the same options.
func twoBackends(t testing.TB) (a, b *Backend) {
	t.Helper()
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	space := t.TempDir()
	return newTestBackend(t, space, addr), newTestBackend(t, space, addr)
}

// refused checks that every try in tries fails (held or waited for), and
// releases what one took.
func refused(t testing.TB, b *Backend, name string, tries ...kind) {
	t.Helper()
	for _, k := range tries {
		var (
			l   *Lease
			ok  bool
			err error
		)
		switch k {
		case kindRead:
			l, ok, err = b.TryRLock(testCtx(t), name)
		case kindWrite:
			l, ok, err = b.TryWLock(testCtx(t), name)
		default:
			l, ok, err = b.TryULock(testCtx(t), name)
		}
		if err != nil {
			t.Fatalf("try %v: %v", k, err)
		}
		if ok {
			_ = l.Release(testCtx(t))
			t.Fatalf("a %v was taken; it should wait", k)
		}
	}
}

// rwKeysLeft returns the keys of the RW lock name that exist, by suffix,
// but for its fencing counter (which outlives its locks, see
// fenceIdleMs).
func rwKeysLeft(t testing.TB, b *Backend, name string) []string {
	t.Helper()
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		t.Fatal(err)
	}
	cl := b.c.nodes[0].client
	var left []string
	for _, suf := range []string{"rw:r", "rw:w", "rw:u", "rw:a", "rw:d"} {
		n, err := cl.Do(testCtx(t), cl.B().Exists().Key(base+suf).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			left = append(left, suf)
		}
	}
	return left
}

func noKeysLeft(t testing.TB, b *Backend, name string) {
	t.Helper()
	if left := rwKeysLeft(t, b, name); len(left) > 0 {
		t.Errorf("keys of %q left after every holder released: %v", name, left)
	}
}

// getKey returns the string at the RW lock name's key suffix ("" if none).
func getKey(t testing.TB, b *Backend, name, suffix string) string {
	t.Helper()
	base, _ := keyBase(b.c.cfg.prefix, name)
	cl := b.c.nodes[0].client
	v, err := cl.Do(testCtx(t), cl.B().Get().Key(base+suffix).Build()).ToString()
	if valkeygo.IsValkeyNil(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitAsync starts wait(ctx, name) (a Backend's RLock, WLock or ULock)
// and returns, once the queue of a's lock name holds n waiters, where its
// lease is sent (nil after an error, which fails t).
func waitAsync(t testing.TB, a *Backend, name string, n int64, wait func(context.Context, string) (*Lease, error)) <-chan *Lease {
	t.Helper()
	out := make(chan *Lease, 1)
	go func() {
		l, err := wait(testCtx(t), name)
		if err != nil {
			t.Errorf("waiting for %q: %v", name, err)
		}
		out <- l
	}()
	waitQueued(t, a, kindWrite, name, n)
	return out
}

func release(t testing.TB, l *Lease) {
	t.Helper()
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatalf("Release of the %v: %v", l.kind, err)
	}
}

// An upgradeable reader leaves nothing behind (but the fencing counter),
// upgraded or not, and its keys are what the package documents.
func TestUpgradeKeys(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	ctx := testCtx(t)
	name := "keys"
	u := mustTry(t, b.TryULock, name)
	if got := getKey(t, b, name, "rw:u"); got != u.token {
		t.Errorf("rw:u = %q, want the lease's token %q", got, u.token)
	}
	if left := rwKeysLeft(t, b, name); strings.Join(left, " ") != "rw:r rw:u" {
		t.Errorf("keys of an upgradeable reader: %v, want rw:r rw:u", left)
	}
	release(t, u)
	noKeysLeft(t, b, name)

	u = mustTry(t, b.TryULock, name)
	if err := u.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	if left := rwKeysLeft(t, b, name); strings.Join(left, " ") != "rw:w rw:u" {
		t.Errorf("keys of an upgraded reader: %v, want rw:w rw:u (and its reader member gone)", left)
	}
	if got := getKey(t, b, name, "rw:w"); got != u.token {
		t.Errorf("rw:w = %q, want the lease's token %q", got, u.token)
	}
	release(t, u)
	noKeysLeft(t, b, name)
}

// A reader that waits for the upgrade, and readers and writers that come
// during it: all served once the upgraded lease is released; nothing left.
func TestUpgradeThenWaitersServed(t *testing.T) {
	a, b := twoBackends(t)
	ctx := testCtx(t)
	name := "served"
	u := mustTry(t, a.TryULock, name)
	r := mustTry(t, b.TryRLock, name)
	upgraded := make(chan error, 1)
	go func() { upgraded <- u.Upgrade(ctx) }()
	waitQueued(t, a, kindWrite, name, 1)
	refused(t, b, name, kindRead, kindWrite, kindUpgrade)
	writer := waitAsync(t, a, name, 2, b.WLock)
	reader := waitAsync(t, a, name, 3, b.RLock)
	release(t, r)
	if err := <-upgraded; err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if n := queueLen(t, a, kindWrite, name); n != 2 {
		t.Errorf("after the upgrade the queue holds %d waiters, want the writer and the reader", n)
	}
	release(t, u)
	w := <-writer // first in line after the upgrade
	if w == nil {
		t.Fatal("the waiting writer failed")
	}
	select {
	case <-reader:
		t.Fatal("the reader queued behind the writer got in beside it")
	case <-time.After(50 * time.Millisecond):
	}
	release(t, w)
	rd := <-reader
	if rd == nil {
		t.Fatal("the waiting reader failed")
	}
	release(t, rd)
	noKeysLeft(t, a, name)
}

// A cancelled Upgrade and a failed TryUpgrade leave nothing in the way:
// readers enter at once after them, a writer that queued behind the
// cancelled upgrade is served at the release, and no key is left.
func TestUpgradeCancelledLeavesNoTrace(t *testing.T) {
	a, b := twoBackends(t)
	ctx := testCtx(t)
	name := "cancelled"
	u := mustTry(t, a.TryULock, name)
	r := mustTry(t, b.TryRLock, name)
	if ok, err := u.TryUpgrade(ctx); ok || err != nil {
		t.Fatalf("TryUpgrade beside a reader: %v, %v; want false, nil", ok, err)
	}
	if n := queueLen(t, a, kindWrite, name); n != 0 {
		t.Fatalf("a failed TryUpgrade left %d queue entries", n)
	}
	uctx, cancel := context.WithCancel(ctx)
	upgraded := make(chan error, 1)
	go func() { upgraded <- u.Upgrade(uctx) }()
	waitQueued(t, a, kindWrite, name, 1)
	writer := waitAsync(t, a, name, 2, b.WLock)
	cancel()
	if err := <-upgraded; !errors.Is(err, backend.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Upgrade: %v, want ErrNotAcquired and context.Canceled", err)
	}
	if n := queueLen(t, a, kindWrite, name); n != 1 {
		t.Fatalf("after a cancelled upgrade the queue holds %d waiters, want the writer alone", n)
	}
	notLost(t, u)
	refused(t, b, name, kindUpgrade, kindWrite)
	// A reader may come in beside the upgradeable one (no writer holds),
	// but the writer that waits is first: readers wait behind it.
	refused(t, b, name, kindRead)
	release(t, r)
	release(t, u)
	select {
	case w := <-writer:
		if w == nil {
			t.Fatal("the waiting writer failed")
		}
		release(t, w)
	case <-time.After(testLease):
		t.Fatalf("the writer behind a cancelled upgrade was not served within the lease %v", testLease)
	}
	noKeysLeft(t, a, name)

	// Without a writer behind it, readers get in right after the cancel.
	u = mustTry(t, a.TryULock, name)
	r = mustTry(t, b.TryRLock, name)
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	err := u.Upgrade(short)
	cancel2()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Upgrade past its deadline: %v", err)
	}
	r2 := mustTry(t, b.TryRLock, name) // a reader gets in after a cancelled upgrade
	release(t, r2)
	release(t, r)
	if err := u.Upgrade(ctx); err != nil {
		t.Fatalf("Upgrade after a cancelled one: %v", err)
	}
	release(t, u)
	noKeysLeft(t, a, name)
}

const upgradeHelperEnv = "DLOCK_VALKEY_UPGRADE_HELPER"

// upgradeHelper is the helper process of the upgrade tests (spec:
// "space|name|role"): it takes name as a reader (role "reader"), as an
// upgradeable reader ("ulock"), as an upgradeable reader that then
// upgrades ("upgrader"), or as one that upgrades before it says so
// ("upgraded"), with the owner text "helper " + role; says "held", and
// releases when its stdin closes.
func upgradeHelper(t *testing.T, addr, spec string) {
	parts := strings.SplitN(spec, "|", 3)
	if len(parts) != 3 {
		t.Fatalf("bad %s %q", upgradeHelperEnv, spec)
	}
	space, name, role := parts[0], parts[1], parts[2]
	b := newTestBackend(t, space, addr)
	ctx := backend.ContextWithOwner(testCtx(t), "helper "+role)
	wait := b.RLock
	if role != "reader" {
		wait = b.ULock
	}
	l, err := wait(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if role == "upgraded" {
		if err := l.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("held")
	if role == "upgrader" {
		if err := l.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// startUpgradeHelper starts the helper process of test (which must call
// upgradeHelper) in role on name, and returns once it holds; closing
// stdin makes it release.
func startUpgradeHelper(t *testing.T, test, space, name, role string) (cmd *exec.Cmd, stdin io.WriteCloser) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(exe, "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), upgradeHelperEnv+"="+space+"|"+name+"|"+role)
	if stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "held" {
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return cmd, stdin
}

// An upgrade waits for a reader in another process, is woken by its
// release, and outlasts a reader whose process is killed (its member
// expires with its lease). Readers of other clients wait meanwhile.
func TestUpgradeAcrossProcesses(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	if spec := os.Getenv(upgradeHelperEnv); spec != "" {
		upgradeHelper(t, addr, spec)
		return
	}
	for _, end := range []string{"release", "kill"} {
		t.Run(end, func(t *testing.T) {
			space := t.TempDir()
			name := "procs-" + end
			a, b := newTestBackend(t, space, addr), newTestBackend(t, space, addr)
			ctx := testCtx(t)
			u := mustTry(t, a.TryULock, name)
			cmd, stdin := startUpgradeHelper(t, "TestUpgradeAcrossProcesses", space, name, "reader")
			upgraded := make(chan error, 1)
			go func() { upgraded <- u.Upgrade(ctx) }()
			waitQueued(t, a, kindWrite, name, 1)
			refused(t, b, name, kindRead, kindWrite, kindUpgrade)
			select {
			case err := <-upgraded:
				t.Fatalf("Upgrade returned while another process reads: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
			var bound time.Duration
			start := time.Now()
			if end == "release" {
				_ = stdin.Close()
				bound = 10 * time.Second // a hand-off takes a round trip; generous for a loaded machine
			} else {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				// The dead reader's member lasts the lease after its last
				// extension; the upgrade polls at least every maxPoll.
				bound = testLease + maxPoll + time.Second
			}
			select {
			case err := <-upgraded:
				if err != nil {
					t.Fatalf("Upgrade: %v", err)
				}
				t.Logf("upgraded %v after the reader's %s", time.Since(start).Round(time.Millisecond), end)
			case <-time.After(bound):
				t.Fatalf("the upgrade did not complete within %v of the reader's %s", bound, end)
			}
			refused(t, b, name, kindRead, kindWrite, kindUpgrade)
			release(t, u)
			_ = cmd.Wait()
			noKeysLeft(t, a, name)
		})
	}
}

// An upgradeable reader whose process is killed while its upgrade waits
// holds nobody up for longer than the lease: its queued upgrade stops
// new readers only until its place expires, and its keys expire too.
func TestDeadUpgraderFrees(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	if spec := os.Getenv(upgradeHelperEnv); spec != "" {
		upgradeHelper(t, addr, spec)
		return
	}
	space := t.TempDir()
	name := "dead-upgrader"
	b := newTestBackend(t, space, addr)
	r := mustTry(t, b.TryRLock, name)
	cmd, _ := startUpgradeHelper(t, "TestDeadUpgraderFrees", space, name, "upgrader")
	waitQueued(t, b, kindWrite, name, 1) // its upgrade waits for r
	refused(t, b, name, kindRead, kindWrite, kindUpgrade)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = cmd.Wait()
	// Its place in the queue and its keys last the lease after its last
	// attempt or extension (before the kill).
	bound := testLease + maxPoll + time.Second
	takeBy(t, b.TryRLock, name, killed.Add(bound))
	release(t, r)
	takeBy(t, b.TryWLock, name, killed.Add(bound))
	t.Logf("free %v after the kill", time.Since(killed).Round(time.Millisecond))
	noKeysLeft(t, b, name)
}

// takeBy tries name by try (then releases it) until it is taken, which
// must happen by deadline.
func takeBy(t testing.TB, try func(context.Context, string) (*Lease, bool, error), name string, deadline time.Time) {
	t.Helper()
	for {
		l, ok, err := try(testCtx(t), name)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			release(t, l)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q still not free at the deadline", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An upgradeable reader's lease, and the write lock it upgraded to, are
// extended like any other: held over several leases, never lost,
// excluding what they exclude all along.
func TestUpgradeExtended(t *testing.T) {
	a, b := twoBackends(t)
	ctx := testCtx(t)
	name := "extended"
	u := mustTry(t, a.TryULock, name)
	time.Sleep(2 * testLease)
	notLost(t, u)
	refused(t, b, name, kindWrite, kindUpgrade)
	if err := u.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * testLease)
	notLost(t, u)
	refused(t, b, name, kindRead, kindWrite, kindUpgrade)
	release(t, u)
	noKeysLeft(t, a, name)
}

// Deleting a key that records an upgradeable reader — the upgradeable
// key or the readers' set before the upgrade, the upgradeable key or the
// writer key after it — is a loss, reported within the lease; Upgrade
// and Release then say so, and the name is free afterwards.
func TestUpgradeLoss(t *testing.T) {
	a, b := twoBackends(t)
	ctx := testCtx(t)
	for _, c := range []struct {
		suffix   string
		upgraded bool
	}{{"rw:u", false}, {"rw:r", false}, {"rw:u", true}, {"rw:w", true}} {
		name := fmt.Sprintf("lost-%s-%v", c.suffix, c.upgraded)
		u := mustTry(t, a.TryULock, name)
		if c.upgraded {
			if err := u.Upgrade(ctx); err != nil {
				t.Fatal(err)
			}
		}
		do(t, a, func(bb valkeygo.Builder) valkeygo.Completed { return bb.Del().Key(u.base + c.suffix).Build() })
		waitLost(t, u, 5*time.Second)
		if err := u.Upgrade(ctx); !errors.Is(err, backend.ErrLockLost) {
			t.Errorf("%s: Upgrade of the lost lease: %v, want ErrLockLost", name, err)
		}
		if err := u.Release(ctx); !errors.Is(err, backend.ErrLockLost) {
			t.Errorf("%s: Release: %v, want ErrLockLost", name, err)
		}
		release(t, mustTry(t, b.TryWLock, name))
		noKeysLeft(t, a, name)
	}
}

// The fencing token is the upgradeable acquisition's, before and after
// the upgrade: above every earlier holder's (writers included), below
// every later one's.
func TestUpgradeFencing(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	ctx := testCtx(t)
	name := "fencing"
	w := mustTry(t, b.TryWLock, name)
	release(t, w)
	u := mustTry(t, b.TryULock, name)
	if u.Token() <= w.Token() {
		t.Fatalf("upgradeable reader's token %d after a writer's %d", u.Token(), w.Token())
	}
	before := u.Token()
	if err := u.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	if u.Token() != before {
		t.Errorf("token changed by the upgrade: %d, then %d", before, u.Token())
	}
	release(t, u)
	w2 := mustTry(t, b.TryWLock, name)
	if w2.Token() <= u.Token() {
		t.Errorf("a writer's token %d after the upgraded lease's %d", w2.Token(), u.Token())
	}
	release(t, w2)
}

// An upgrade whose answer was lost is undone (downgrade): the lease is
// the upgradeable reader again, readers get in, and it can upgrade anew.
func TestUpgradeUndone(t *testing.T) {
	a, b := twoBackends(t)
	ctx := testCtx(t)
	name := "undone"
	u := mustTry(t, a.TryULock, name)
	// The upgrade's script ran, but its caller did not learn it (as when
	// the answer is lost): the failure path undoes it.
	var unsure bool
	if at, err := u.upgradeTry(upgradeAttemptKeys(u.base), &unsure)(ctx, nil, "", ""); err != nil || at.lease == nil {
		t.Fatalf("the upgrade script: %v, %v", at.lease, err)
	}
	if got := getKey(t, a, name, "rw:w"); got != u.token {
		t.Fatalf("rw:w = %q after the upgrade script, want the lease's token", got)
	}
	u.downgrade(ctx)
	if left := rwKeysLeft(t, a, name); strings.Join(left, " ") != "rw:r rw:u" {
		t.Errorf("keys after the downgrade: %v, want rw:r rw:u", left)
	}
	r := mustTry(t, b.TryRLock, name) // a reader gets in after the downgrade
	refused(t, b, name, kindWrite, kindUpgrade)
	if ok, err := u.TryUpgrade(ctx); ok || err != nil {
		t.Fatalf("TryUpgrade beside a reader: %v, %v", ok, err)
	}
	release(t, r)
	if ok, err := u.TryUpgrade(ctx); !ok || err != nil {
		t.Fatalf("TryUpgrade alone: %v, %v", ok, err)
	}
	u.downgrade(ctx) // and a downgrade of a lease that is not upgraded does nothing
	u.downgrade(ctx)
	notLost(t, u)
	release(t, u)
	noKeysLeft(t, a, name)
}

// Upgrade of anything but a held upgradeable reader fails clearly.
func TestUpgradeUnsupported(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	ctx := testCtx(t)
	r, _, _ := b.TryRLock(ctx, "r")
	m := mustLock(t, b, "m")
	for _, l := range []*Lease{r, m} {
		if err := l.Upgrade(ctx); !errors.Is(err, errors.ErrUnsupported) || !backend.IsPermanent(err) {
			t.Errorf("Upgrade of a %v: %v, want a permanent errors.ErrUnsupported", l.kind, err)
		}
		if _, err := l.TryUpgrade(ctx); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("TryUpgrade of a %v: %v, want errors.ErrUnsupported", l.kind, err)
		}
		release(t, l)
	}
	u := mustTry(t, b.TryULock, "u")
	release(t, u)
	if err := u.Upgrade(ctx); !errors.Is(err, backend.ErrNotHeld) {
		t.Errorf("Upgrade after Release: %v, want ErrNotHeld", err)
	}
	u = mustTry(t, b.TryULock, "u")
	_ = b.Close()
	if err := u.Upgrade(ctx); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Upgrade after Close: %v, want ErrClosed", err)
	}
	nodes := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES"))
	var rl any = newTestRedLock(t, t.Name(), nodes)
	if _, ok := rl.(backend.UpgradeableLocker[*Lease]); ok {
		t.Error("RedLock offers upgradeable read locks; it offers no RW lock")
	}
}

// With WithReplicas, an upgrade counts only once the replicas have it:
// when Upgrade returns, every replica has the lease as the writer.
func TestUpgradeWithReplicas(t *testing.T) {
	sentinels := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_SENTINEL"))
	replicas := sentinelReplicas(t, sentinels)
	b, err := New(sentinelClient(t, sentinels), WithKeyPrefix(testPrefix(t.Name())), WithLease(3*time.Second),
		WithExtendEvery(300*time.Millisecond), WithReplicas(len(replicas), time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := testCtx(t)
	u := mustTry(t, b.TryULock, "replicated")
	for _, r := range replicas {
		if !onReplica(t, r, u) {
			t.Errorf("upgradeable reader held, but not on replica %s", r)
		}
	}
	if err := u.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	for _, addr := range replicas {
		c := testClient(t, addr)
		v, err := c.Do(ctx, c.B().Get().Key(u.base+"rw:w").Build()).ToString()
		if err != nil || v != u.token {
			t.Errorf("upgraded, but replica %s has writer %q (%v), want the lease's token", addr, v, err)
		}
	}
	time.Sleep(time.Second) // extensions, each confirmed
	notLost(t, u)
	release(t, u)
}

// A reader whose first attempt finds a writer waiting (not holding) queues
// behind it, and gets in after it. (The readers' script once compared
// ZRANK's answer for a waiter not yet queued — false in Lua, not nil —
// with a number: the attempt failed with a script error instead, and a
// plain RLock returned it. An upgrade waiting for readers queues as such
// a writer.)
func TestReaderQueuesBehindWaitingWriter(t *testing.T) {
	a, b := twoBackends(t)
	name := "reader-behind-writer"
	r := mustTry(t, a.TryRLock, name)
	writer := waitAsync(t, a, name, 1, b.WLock)
	reader := waitAsync(t, a, name, 2, b.RLock)
	release(t, r)
	w := <-writer
	if w == nil {
		t.Fatal("the writer failed")
	}
	release(t, w)
	if l := <-reader; l != nil {
		release(t, l)
	}
	noKeysLeft(t, a, name)
}

// BenchmarkUpgrade compares, on a free lock, a write lock (TryWLock,
// Release: two round trips) with an upgradeable reader that upgrades
// (TryULock, TryUpgrade, Release: three) and one that does not (two).
// Run with -count >= 6 and compare the sub-benchmarks of one run.
func BenchmarkUpgrade(b *testing.B) {
	be, ctx := benchBackend(b)
	for _, c := range []struct {
		name string
		f    func(name string) error
	}{
		{"write", func(name string) error {
			l, _, err := be.TryWLock(ctx, name)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		{"upgradeable", func(name string) error {
			l, _, err := be.TryULock(ctx, name)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		{"upgraded", func(name string) error {
			l, _, err := be.TryULock(ctx, name)
			if err != nil {
				return err
			}
			if ok, err := l.TryUpgrade(ctx); !ok || err != nil {
				return fmt.Errorf("TryUpgrade: %v, %w", ok, err)
			}
			return l.Release(ctx)
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if err := c.f("bench-" + c.name); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUpgradeHandOff measures the time from a reader's release (on
// another Backend, as another process would be) to the waiting upgrade's
// return.
func BenchmarkUpgradeHandOff(b *testing.B) {
	be, ctx := benchBackend(b)
	addr := dlocktest.RequireEnv(b, "DLOCK_TEST_VALKEY_ADDR")
	readers, err := New(testClient(b, addr), WithKeyPrefix(be.c.cfg.prefix))
	if err != nil {
		b.Fatal(err)
	}
	defer readers.Close()
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		u := mustTry(b, be.TryULock, "handoff")
		r, ok, err := readers.TryRLock(ctx, "handoff")
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
		got := make(chan time.Time, 1)
		go func() {
			err := u.Upgrade(ctx)
			at := time.Now()
			if err != nil {
				b.Error(err)
			}
			got <- at
		}()
		waitQueued(b, be, kindWrite, "handoff", 1)
		time.Sleep(2 * time.Millisecond) // let the upgrade subscribe and wait
		t0 := time.Now()
		_ = r.Release(ctx)
		lat = append(lat, (<-got).Sub(t0))
		_ = u.Release(ctx)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// Concurrent upgrades of one lock: on the lease, the second fails while
// the first is under way (it never undoes what the first did); through
// the dlock package, which rides that out, both return nil once the
// readers have left, and the lock is the writer.
func TestUpgradeConcurrent(t *testing.T) {
	a, b := twoBackends(t)
	ctx := testCtx(t)
	name := "concurrent"
	u := mustTry(t, a.TryULock, name)
	r := mustTry(t, b.TryRLock, name)
	first := make(chan error, 1)
	go func() { first <- u.Upgrade(ctx) }()
	waitQueued(t, a, kindWrite, name, 1)
	if err := u.Upgrade(ctx); !errors.Is(err, errUpgrading) {
		t.Fatalf("Upgrade beside another: %v, want %v", err, errUpgrading)
	}
	if ok, err := u.TryUpgrade(ctx); ok || !errors.Is(err, errUpgrading) {
		t.Fatalf("TryUpgrade beside an Upgrade: %v, %v; want %v", ok, err, errUpgrading)
	}
	release(t, r)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if ok, err := u.TryUpgrade(ctx); !ok || err != nil {
		t.Fatalf("TryUpgrade after an Upgrade: %v, %v", ok, err)
	}
	release(t, u)

	g := dlock.NewRWMutex(a).Upgradeable()
	lk, err := g.TryAcquire(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	r = mustTry(t, b.TryRLock, name)
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- lk.Upgrade(ctx) }()
	}
	time.Sleep(100 * time.Millisecond)
	release(t, r)
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("one of two concurrent Upgrades: %v", err)
		}
	}
	refused(t, b, name, kindRead, kindWrite, kindUpgrade)
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	noKeysLeft(t, a, name)
}

// An upgradeable reader's holder record: listed as a reader (Shared)
// beside the plain readers, then as the writer after its upgrade (same
// holder, same Since), kept alive by the extensions, gone after the
// release; and a holder that stops extending (its process killed, or its
// key deleted) is not listed once its lease has expired.
func TestUpgradeHolderRecord(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	if spec := os.Getenv(upgradeHelperEnv); spec != "" {
		upgradeHelper(t, addr, spec)
		return
	}
	cl := testClient(t, addr)
	space := t.TempDir()
	a, b := newTestBackend(t, space, addr), newTestBackend(t, space, addr)
	pid := os.Getpid()
	describe := func(t *testing.T, name string, want ...backend.Holder) []backend.Holder {
		t.Helper()
		hs, err := b.DescribeRW(testCtx(t), name)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != len(want) {
			t.Fatalf("DescribeRW: %+v, want %+v", hs, want)
		}
		left := append([]backend.Holder(nil), want...)
	next:
		for _, h := range hs {
			for i, w := range left {
				if h.PID == w.PID && h.Owner == w.Owner && h.Shared == w.Shared {
					left = append(left[:i], left[i+1:]...)
					continue next
				}
			}
			t.Fatalf("DescribeRW listed %+v, which is none of %+v", h, want)
		}
		return hs
	}
	// gone waits until name has no holder listed, which must happen by
	// deadline.
	gone := func(t *testing.T, name string, deadline time.Time) {
		t.Helper()
		for {
			hs, err := b.DescribeRW(testCtx(t), name)
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q: %+v still listed at the deadline", name, hs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	t.Run("upgrade", func(t *testing.T) {
		name := "holder-upgrade"
		ctx := testCtx(t)
		u, ok, err := a.TryULock(backend.ContextWithOwner(ctx, "upgrader"), name)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		r, ok, err := b.TryRLock(backend.ContextWithOwner(ctx, "reader"), name)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		hs := describe(t, name, backend.Holder{PID: pid, Owner: "upgrader", Shared: true}, backend.Holder{PID: pid, Owner: "reader", Shared: true})
		var since time.Time
		for _, h := range hs {
			if h.Owner == "upgrader" {
				since = h.Since
			}
		}
		if time.Since(since).Abs() > 5*time.Second {
			t.Errorf("Since %v, want about now", since)
		}
		recs, pttl := holderRecords(t, cl, b, kindUpgrade, name)
		if len(recs) != 2 || recs[u.token] == "" || pttl <= 0 || pttl > testLease.Milliseconds() {
			t.Fatalf("records %v, PTTL %d: want the upgradeable reader's and the reader's, expiring within the lease", recs, pttl)
		}
		release(t, r)
		if ok, err := u.TryUpgrade(ctx); err != nil || !ok {
			t.Fatalf("TryUpgrade: %v, %v", ok, err)
		}
		hs = describe(t, name, backend.Holder{PID: pid, Owner: "upgrader"})
		if !hs[0].Since.Equal(since) {
			t.Errorf("Since after the upgrade %v, want the acquisition's %v", hs[0].Since, since)
		}
		// Extensions keep the record alive past the first lease.
		time.Sleep(testLease + testLease/2)
		notLost(t, u)
		describe(t, name, backend.Holder{PID: pid, Owner: "upgrader"})
		if recs, pttl := holderRecords(t, cl, b, kindUpgrade, name); len(recs) != 1 || recs[u.token] == "" || pttl <= 0 {
			t.Fatalf("records after a lease of extensions: %v (PTTL %d)", recs, pttl)
		}
		release(t, u)
		describe(t, name)
		if recs, pttl := holderRecords(t, cl, b, kindUpgrade, name); len(recs) != 0 || pttl != -2 {
			t.Fatalf("records after the release: %v (PTTL %d), want no hash", recs, pttl)
		}
	})

	// A killed helper, before or after its upgrade, beside a live reader
	// of this process before (which keeps the records' hash alive).
	for _, role := range []string{"ulock", "upgraded"} {
		t.Run("kill-"+role, func(t *testing.T) {
			name := "holder-kill-" + role
			cmd, _ := startUpgradeHelper(t, "TestUpgradeHolderRecord", space, name, role)
			child := backend.Holder{PID: cmd.Process.Pid, Owner: "helper " + role, Shared: role == "ulock"}
			var r *Lease
			if role == "ulock" {
				r = mustTry(t, a.TryRLock, name)
				describe(t, name, child, backend.Holder{PID: pid, Shared: true})
			} else {
				describe(t, name, child)
			}
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			_ = cmd.Wait()
			// Its keys last the lease after its last extension (before
			// the kill).
			by := killed.Add(testLease + time.Second)
			if r == nil {
				gone(t, name, by)
				return
			}
			for {
				hs, err := b.DescribeRW(testCtx(t), name)
				if err != nil {
					t.Fatal(err)
				}
				if len(hs) == 1 && hs[0].PID == pid {
					break
				}
				if time.Now().After(by) {
					t.Fatalf("the killed holder is still listed: %+v", hs)
				}
				time.Sleep(20 * time.Millisecond)
			}
			release(t, r)
			describe(t, name)
		})
	}

	// An in-process holder whose key is deleted: not listed once its
	// lease has expired (at once when its writer key goes: its record is
	// still there then); its release (which reports the loss) deletes
	// the record.
	for _, upgraded := range []bool{false, true} {
		t.Run(fmt.Sprintf("deleted-upgraded=%v", upgraded), func(t *testing.T) {
			name := fmt.Sprintf("holder-deleted-%v", upgraded)
			ctx := testCtx(t)
			u, ok, err := a.TryULock(backend.ContextWithOwner(ctx, "upgrader"), name)
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			del := "rw:u"
			if upgraded {
				if err := u.Upgrade(ctx); err != nil {
					t.Fatal(err)
				}
				del = "rw:w"
			}
			describe(t, name, backend.Holder{PID: pid, Owner: "upgrader", Shared: !upgraded})
			base, _ := keyBase(b.c.cfg.prefix, name)
			if err := cl.Do(ctx, cl.B().Del().Key(base+del).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			deleted := time.Now()
			if upgraded {
				describe(t, name)
				if recs, _ := holderRecords(t, cl, b, kindUpgrade, name); recs[u.token] == "" {
					t.Fatalf("records right after the writer key's deletion: %v, want the lease's still there", recs)
				}
			}
			gone(t, name, deleted.Add(testLease+time.Second))
			select {
			case <-u.Lost():
			case <-time.After(testLease + time.Second):
				t.Fatal("the lease whose key was deleted is not lost")
			}
			if err := u.Release(ctx); !errors.Is(err, backend.ErrLockLost) {
				t.Fatalf("Release of a lease whose key was deleted: %v, want ErrLockLost", err)
			}
			if recs, _ := holderRecords(t, cl, b, kindUpgrade, name); len(recs) != 0 {
				t.Fatalf("records after the release: %v", recs)
			}
			noKeysLeft(t, b, name)
		})
	}
}
