//go:build linux && !dlock_portable

package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mkdirMode makes a directory with exactly mode (the umask does not apply).
func mkdirMode(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// exposedTempDir is t.TempDir() made reachable by every user (0755 and its
// parent too): t.TempDir's parent is private (0700), under which New rightly
// ignores writable bits.
func exposedTempDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// mustRefuse asserts that New(dir) fails naming culprit and saying why, and
// creates nothing at dir.
func mustRefuse(t *testing.T, dir, culprit, why string) {
	t.Helper()
	b, err := New(dir)
	if err == nil {
		b.Close()
		t.Fatalf("New(%q) accepted a lock directory another user could replace", dir)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("%q", culprit)) || !strings.Contains(err.Error(), why) {
		t.Fatalf("New(%q): %v\nwant an error naming %q and saying %q", dir, err, culprit, why)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New(%q) refused, yet created it: %v", dir, err)
	}
}

func mustAccept(t *testing.T, dir string) *Backend {
	t.Helper()
	b, err := New(dir)
	if err != nil {
		t.Fatalf("New(%q): %v", dir, err)
	}
	t.Cleanup(func() { b.Close() })
	mustRelease(t, mustTry(t)(b.TryLock(bg(), "x")))
	return b
}

// TestReplaceableParentRefused: a lock directory that another user could
// rename away and replace (through any ancestor) is refused.
func TestReplaceableParentRefused(t *testing.T) {
	parent := exposedTempDir(t)

	world := mkdirMode(t, filepath.Join(parent, "world"), 0o777)
	mustRefuse(t, filepath.Join(world, "locks"), world, "world-writable without the sticky bit")
	// Any ancestor, not only the parent.
	mustRefuse(t, filepath.Join(world, "a", "b", "locks"), world, "world-writable")

	group := mkdirMode(t, filepath.Join(parent, "group"), 0o770)
	mustRefuse(t, filepath.Join(group, "locks"), group, "group-writable without the sticky bit")

	// With the sticky bit only an entry's owner (we), the directory's owner
	// (root or we) and root can rename it: accepted, like /tmp.
	sticky := mkdirMode(t, filepath.Join(parent, "sticky"), os.ModeSticky|0o777)
	mustAccept(t, filepath.Join(sticky, "locks"))
	gsticky := mkdirMode(t, filepath.Join(parent, "gsticky"), os.ModeSticky|0o770)
	mustAccept(t, filepath.Join(gsticky, "a", "locks"))
	// Parents New creates are never group- or world-writable.
	if st, err := os.Stat(filepath.Join(gsticky, "a")); err != nil || st.Mode().Perm()&0o022 != 0 {
		t.Fatalf("created parent: %v, %v", st.Mode(), err)
	}

	// An existing lock directory under a bad parent is refused too.
	mkdirMode(t, filepath.Join(world, "existing"), 0o700)
	if _, err := New(filepath.Join(world, "existing")); err == nil || !strings.Contains(err.Error(), "world-writable") {
		t.Fatalf("existing directory under a world-writable parent: %v", err)
	}

	if os.Geteuid() != 0 {
		t.Log("not root: the parts owned by another user are skipped")
		return
	}
	const nobody = 65534
	other := mkdirMode(t, filepath.Join(parent, "other"), 0o755)
	if err := os.Chown(other, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(other, "locks"), other, "owned by uid 65534")
	// The sticky bit does not help against the directory's owner.
	otherSticky := mkdirMode(t, filepath.Join(parent, "othersticky"), os.ModeSticky|0o777)
	if err := os.Chown(otherSticky, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(otherSticky, "locks"), otherSticky, "owned by uid 65534")
}

// TestPrivateAncestor: below a directory of ours that nobody else may
// search, nobody else can reach a component to replace it, so writable
// directories there (a umask of 002 or 0) are accepted; owners still count.
func TestPrivateAncestor(t *testing.T) {
	parent := exposedTempDir(t)
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	world := mkdirMode(t, filepath.Join(parent, "world"), 0o777)
	group := mkdirMode(t, filepath.Join(world, "group"), 0o775)
	mustAccept(t, filepath.Join(group, "locks"))
	// Search permission for the group is enough to lose privacy.
	if err := os.Chmod(parent, 0o710); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(group, "locks2"), world, "world-writable")
	if os.Geteuid() != 0 {
		return
	}
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	other := mkdirMode(t, filepath.Join(parent, "other"), 0o755)
	if err := os.Chown(other, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(other, "locks"), other, "owned by uid 65534")
}

// TestSymlinkAncestors: a symbolic link on the way to the lock directory is
// followed if its owner is root or us and its target is safe; the backend
// uses the resolved path.
func TestSymlinkAncestors(t *testing.T) {
	parent := exposedTempDir(t)
	real := mkdirMode(t, filepath.Join(parent, "real"), 0o755)
	link := filepath.Join(parent, "link")
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	b := mustAccept(t, filepath.Join(link, "locks"))
	if want := filepath.Join(real, "locks"); b.Dir() != want {
		t.Fatalf("Dir() = %q, want the resolved %q", b.Dir(), want)
	}
	// A relative target with "..", and a chain of links.
	if err := os.Symlink("../"+filepath.Base(parent)+"/link", filepath.Join(parent, "link2")); err != nil {
		t.Fatal(err)
	}
	b = mustAccept(t, filepath.Join(parent, "link2", "locks2"))
	if want := filepath.Join(real, "locks2"); b.Dir() != want {
		t.Fatalf("Dir() = %q, want %q", b.Dir(), want)
	}
	// ".." after a component not yet entered.
	if err := os.Symlink("real/../real/./", filepath.Join(parent, "link3")); err != nil {
		t.Fatal(err)
	}
	if b = mustAccept(t, filepath.Join(parent, "link3", "locks3")); b.Dir() != filepath.Join(real, "locks3") {
		t.Fatalf("Dir() = %q", b.Dir())
	}
	// A link into an unsafe directory is checked at its target.
	world := mkdirMode(t, filepath.Join(parent, "world"), 0o777)
	if err := os.Symlink(world, filepath.Join(parent, "toworld")); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, filepath.Join(parent, "toworld", "locks"), world, "world-writable")
	// A loop ends with an error.
	if err := os.Symlink("loop", filepath.Join(parent, "loop")); err != nil {
		t.Fatal(err)
	}
	if _, err := New(filepath.Join(parent, "loop", "locks")); err == nil || !strings.Contains(err.Error(), "too many symbolic links") {
		t.Fatalf("symlink loop: %v", err)
	}
	// A file on the way.
	if err := os.WriteFile(filepath.Join(parent, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(filepath.Join(parent, "file", "locks")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file on the way: %v", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	// A link owned by another user, in a sticky directory where that user
	// may replace it, is not followed.
	sticky := mkdirMode(t, filepath.Join(parent, "sticky"), os.ModeSticky|0o777)
	theirs := filepath.Join(sticky, "theirs")
	if err := os.Symlink(real, theirs); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := New(filepath.Join(theirs, "locks")); err == nil || !strings.Contains(err.Error(), "symbolic link owned by uid 65534") {
		t.Fatalf("another user's symlink: %v", err)
	}
}

// TestCommonLockDirectories: the usual places stay accepted.
func TestCommonLockDirectories(t *testing.T) {
	mustAccept(t, t.TempDir())
	mustAccept(t, filepath.Join(t.TempDir(), "a", "b", "c"))
	// Straight under /tmp (1777 root), as the dlock command's default.
	tmp := filepath.Join(os.TempDir(), fmt.Sprintf("dlock-test-%d-%d", os.Getuid(), os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(tmp) })
	mustAccept(t, tmp)
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
		d := filepath.Join(rt, fmt.Sprintf("dlock-test-%d", os.Getpid()))
		t.Cleanup(func() { os.RemoveAll(d) })
		mustAccept(t, d)
	}
	// /var/lock is a symbolic link to /run/lock (1777 root) on most systems.
	if st, err := os.Stat("/var/lock"); err == nil && st.IsDir() && (st.Mode()&os.ModeSticky != 0 || st.Mode().Perm()&0o022 == 0) {
		d := filepath.Join("/var/lock", fmt.Sprintf("dlock-test-%d", os.Getpid()))
		if b, err := New(d); err != nil && strings.Contains(err.Error(), "permission denied") {
			t.Logf("/var/lock: %v", err)
		} else {
			if b != nil {
				b.Close()
			}
			t.Cleanup(func() { os.RemoveAll(d) })
			mustAccept(t, d)
		}
	}
}
