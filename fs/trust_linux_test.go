//go:build linux && !dlock_portable

package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// plantVictim writes a file of this user outside the lock directory and
// returns its path and a function that asserts it is untouched.
func plantVictim(t *testing.T) (string, func()) {
	t.Helper()
	victim := filepath.Join(t.TempDir(), "victim")
	const content = "precious data, not a lock file\n"
	if err := os.WriteFile(victim, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(victim, old, old); err != nil {
		t.Fatal(err)
	}
	return victim, func() {
		t.Helper()
		raw, err := os.ReadFile(victim)
		if err != nil || string(raw) != content {
			t.Fatalf("the hard-linked file was written: %q, %v", raw, err)
		}
		st, err := os.Stat(victim)
		if err != nil || !st.ModTime().Equal(old) {
			t.Fatalf("the hard-linked file was modified: %v, %v", st.ModTime(), err)
		}
	}
}

// TestHardLinkRefused: a hard link planted under a lock file's name,
// pointing at another file of the same user, is refused (by a try and by a
// wait, at once, marked permanent), and nothing is written to that file:
// not for a mutex, a read or write lock, a semaphore slot or a semaphore's
// fencing counter.
func TestHardLinkRefused(t *testing.T) {
	for _, tc := range []struct {
		kind string
		file string // the lock file name the link is planted at
		try  func(b *Backend, name string) (*Lease, bool, error)
		wait func(b *Backend, ctx context.Context, name string) (*Lease, error)
	}{
		{"mutex", fileName(kindMutex, "hl"),
			func(b *Backend, n string) (*Lease, bool, error) { return b.TryLock(bg(), n) },
			func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.Lock(ctx, n) }},
		{"read", fileName(kindRW, "hl"),
			func(b *Backend, n string) (*Lease, bool, error) { return b.TryRLock(bg(), n) },
			func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.RLock(ctx, n) }},
		{"write", fileName(kindRW, "hl"),
			func(b *Backend, n string) (*Lease, bool, error) { return b.TryWLock(bg(), n) },
			func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.WLock(ctx, n) }},
		{"semaphore-slot", slotName(fileName(kindSemSlot, "hl"), 0),
			func(b *Backend, n string) (*Lease, bool, error) { return b.TryAcquire(bg(), n, 1) },
			func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.Acquire(ctx, n, 1) }},
		{"semaphore-counter", fileName(kindSemCounter, "hl"),
			func(b *Backend, n string) (*Lease, bool, error) { return b.TryAcquire(bg(), n, 1) },
			func(b *Backend, ctx context.Context, n string) (*Lease, error) { return b.Acquire(ctx, n, 1) }},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			b := newBackend(t, "")
			victim, untouched := plantVictim(t)
			if err := os.Link(victim, filepath.Join(b.Dir(), tc.file)); err != nil {
				t.Fatal(err)
			}
			l, ok, err := tc.try(b, "hl")
			if ok {
				l.Release(bg())
			}
			if ok || err == nil || !strings.Contains(err.Error(), "hard links") || !backend.IsPermanent(err) {
				t.Fatalf("try on a hard-linked lock file = %v, %v; want a permanent refusal", ok, err)
			}
			untouched()
			ctx, cancel := context.WithTimeout(bg(), 30*time.Second)
			defer cancel()
			t0 := time.Now()
			if l, err := tc.wait(b, ctx, "hl"); err == nil || !strings.Contains(err.Error(), "hard links") || !backend.IsPermanent(err) {
				if err == nil {
					l.Release(bg())
				}
				t.Fatalf("wait on a hard-linked lock file = %v; want a permanent refusal", err)
			}
			if d := time.Since(t0); d > 5*time.Second {
				t.Fatalf("the refusal took %v", d)
			}
			untouched()
		})
	}
}

// TestForeignLockFileRefused: a lock file owned by another user is
// refused; with WithSharedGroup, one of the directory's group is accepted.
func TestForeignLockFileRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	b := newBackend(t, "")
	path := filepath.Join(b.Dir(), fileName(kindMutex, "foreign"))
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.TryLock(bg(), "foreign"); ok || err == nil || !strings.Contains(err.Error(), "owned by uid 4242") || !backend.IsPermanent(err) {
		t.Fatalf("lock file of another user = %v, %v; want a permanent refusal", ok, err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Fatalf("the foreign lock file was written: %v, %v", st.Size(), err)
	}

	// Shared group: the directory's group counts, another group does not.
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o770); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, os.ModeSetgid|0o770); err != nil {
		t.Fatal(err)
	}
	sb := newBackend(t, dir, WithSharedGroup())
	ours := filepath.Join(dir, fileName(kindMutex, "group"))
	theirs := filepath.Join(dir, fileName(kindMutex, "other-group"))
	for _, p := range []string{ours, theirs} {
		if err := os.WriteFile(p, nil, 0o660); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(ours, 4242, os.Getegid()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	mustRelease(t, mustTry(t)(sb.TryLock(bg(), "group")))
	if _, ok, err := sb.TryLock(bg(), "other-group"); ok || err == nil || !strings.Contains(err.Error(), "lock directory's group") {
		t.Fatalf("lock file of another user and group in a shared directory = %v, %v; want a refusal", ok, err)
	}
	// The lock files it creates are group-writable.
	l := mustTry(t)(sb.TryLock(bg(), "new"))
	if st, err := os.Stat(l.Path()); err != nil || st.Mode().Perm()&0o060 != 0o060 {
		t.Fatalf("lock file created under WithSharedGroup: %v, %v; want group read and write", st.Mode(), err)
	}
	mustRelease(t, l)
}

// TestGroupWritableDirRefused: a group-writable lock directory is refused
// unless WithSharedGroup; a group-writable directory mode too.
func TestGroupWritableDirRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "group")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o770); err != nil {
		t.Fatal(err)
	}
	if b, err := New(dir); err == nil {
		b.Close()
		t.Fatal("a group-writable lock directory was accepted")
	} else if !strings.Contains(err.Error(), "group-writable") || !strings.Contains(err.Error(), "WithSharedGroup") {
		t.Fatalf("group-writable lock directory: %v; want a refusal naming WithSharedGroup", err)
	}
	b := newBackend(t, dir, WithSharedGroup())
	mustRelease(t, mustTry(t)(b.TryLock(bg(), "x")))

	if _, err := New(filepath.Join(t.TempDir(), "new"), WithDirMode(0o770)); err == nil || !strings.Contains(err.Error(), "WithSharedGroup") {
		t.Fatalf("WithDirMode(0770) without WithSharedGroup: %v; want a refusal", err)
	}
	// Still never world-writable.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir, WithSharedGroup()); err == nil || !strings.Contains(err.Error(), "world-writable") {
		t.Fatalf("world-writable directory with WithSharedGroup: %v; want a refusal", err)
	}

	if os.Geteuid() != 0 {
		return
	}
	// Another user's shared directory: accepted if we are in its group.
	other := filepath.Join(t.TempDir(), "other")
	if err := os.Mkdir(other, 0o770); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(other, os.ModeSetgid|0o770); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(other, 4242, os.Getegid()); err != nil {
		t.Fatal(err)
	}
	if _, err := New(other); err == nil || !strings.Contains(err.Error(), "owned by uid 4242") {
		t.Fatalf("another user's directory without WithSharedGroup: %v", err)
	}
	ob := newBackend(t, other, WithSharedGroup())
	mustRelease(t, mustTry(t)(ob.TryLock(bg(), "x")))
	if err := os.Chown(other, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if _, err := New(other, WithSharedGroup()); err == nil || !strings.Contains(err.Error(), "in neither") {
		t.Fatalf("another user's directory of another group: %v; want a refusal", err)
	}
}

// TestPermanentErrors: errors that a retry cannot heal are marked
// backend.Permanent, so that a wait through dlock ends at once.
func TestPermanentErrors(t *testing.T) {
	b := newBackend(t, "")
	if err := os.Symlink("/nonexistent", filepath.Join(b.Dir(), fileName(kindMutex, "link"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	_, err := dlock.NewMutex(b).Acquire(ctx, "link")
	if err == nil || !strings.Contains(err.Error(), "symbolic link") || !backend.IsPermanent(err) {
		t.Fatalf("Acquire of a symlinked lock file = %v; want a permanent refusal", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("the refusal took %v", d)
	}
	if _, _, err := b.TryAcquire(bg(), "x", 0); !errors.Is(err, dlock.ErrInvalidLimit) || !backend.IsPermanent(err) {
		t.Fatalf("limit 0: %v", err)
	}
	// A wait whose ctx ends is not permanent (it is the wait's end).
	l := mustTry(t)(b.TryLock(bg(), "held"))
	sctx, scancel := context.WithTimeout(bg(), 20*time.Millisecond)
	defer scancel()
	if _, err := b.Lock(sctx, "held"); !errors.Is(err, dlock.ErrNotAcquired) || backend.IsPermanent(err) {
		t.Fatalf("a wait whose ctx ended = %v", err)
	}
	mustRelease(t, l)
	b.Close()
	if _, _, err := b.TryLock(bg(), "y"); !errors.Is(err, ErrClosed) || !backend.IsPermanent(err) {
		t.Fatalf("TryLock after Close = %v; want a permanent ErrClosed", err)
	}
	if err := classify(os.NewSyscallError("open", unix.EMFILE)); backend.IsPermanent(err) {
		t.Fatalf("EMFILE marked permanent: %v", err)
	}
	if err := classify(os.NewSyscallError("open", unix.EACCES)); !backend.IsPermanent(err) {
		t.Fatalf("EACCES not marked permanent: %v", err)
	}
}
