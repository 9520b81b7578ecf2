package faults

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	valkeygo "github.com/valkey-io/valkey-go"
	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
	dfs "github.com/dlock-go/dlock/fs"
	"github.com/dlock-go/dlock/valkey"
)

// TestFSSecurityBeyondUnitTests covers what fs's own TestSecurity does not:
// symbolic links planted at every auxiliary file (RW gate and counter,
// semaphore slots and counter), file modes under umask 0, and a lock
// directory whose parent lets others replace it.
func TestFSSecurityBeyondUnitTests(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	parent := t.TempDir()
	// Let other users reach parent (t.TempDir's own directory is private,
	// and nothing below a private directory can be replaced by another user).
	for _, d := range []string{filepath.Dir(parent), parent} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(parent, "locks")
	b, err := dfs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	take := func() {
		t.Helper()
		for _, f := range []func() error{
			func() error { return dlock.NewMutex(b).TryDo(ctx, "n", noop) },
			func() error { return dlock.NewRWMutex(b).Read().TryDo(ctx, "n", noop) },
			func() error { return dlock.NewRWMutex(b).Write().Do(ctx, "n", noop) },
			func() error { return dlock.NewSemaphore(b, 3).TryDo(ctx, "n", noop) },
		} {
			if err := f(); err != nil {
				t.Fatal(err)
			}
		}
	}
	take()
	// Nothing is world-writable, even with umask 0.
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		st, _ := os.Lstat(p)
		if st != nil && st.Mode().Perm()&0o002 != 0 {
			t.Errorf("%s is world-writable: %v", p, st.Mode())
		}
		return nil
	})
	// Replace every file by a symlink to a precious file: no lock may
	// follow one.
	target := filepath.Join(parent, "precious")
	if err := os.WriteFile(target, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The files the locks of "n" use (fs removes idle lock files in the
	// background, so the directory may no longer hold them), and any other.
	plant := map[string]bool{"m-n": true, "r-n": true, "s-n+0": true, "s-n+1": true, "s-n+2": true, "sc-n": true}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		plant[e.Name()] = true
	}
	for name := range plant {
		p := filepath.Join(dir, name)
		_ = os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []func() error{
		func() error { return dlock.NewMutex(b).TryDo(ctx, "n", noop) },
		func() error { return dlock.NewRWMutex(b).Read().TryDo(ctx, "n", noop) },
		func() error { return dlock.NewRWMutex(b).Write().TryDo(ctx, "n", noop) },
		func() error { return dlock.NewSemaphore(b, 3).TryDo(ctx, "n", noop) },
	} {
		if err := f(); err == nil {
			t.Errorf("a lock was taken through a planted symlink")
		}
	}
	if raw, _ := os.ReadFile(target); string(raw) != "precious" {
		t.Fatalf("the symlink target was written: %q", raw)
	}
	if st, _ := os.Stat(target); st.Mode().Perm() != 0o600 {
		t.Fatalf("the symlink target's mode changed: %v", st.Mode())
	}
	b.Close()

	// A directory whose parent anyone may write (without the sticky bit)
	// can be renamed away and replaced by another user.
	open := filepath.Join(parent, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := dfs.New(filepath.Join(open, "locks")); err == nil {
		t.Errorf("fs.New accepted a lock directory inside a world-writable, non-sticky parent (%s): another user could rename it away and plant their own", open)
	} else if !strings.Contains(err.Error(), "writable") {
		t.Errorf("refused, but not for the writable parent: %v", err)
	}
}

func noop(context.Context) error { return nil }

// TestValkeyKeysStayInPrefix takes every primitive with hostile names on a
// private server and checks that every key created starts with the prefix
// and a hash tag.
func TestValkeyKeysStayInPrefix(t *testing.T) {
	r := startRedis(t)
	c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{r.addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const prefix = "p:"
	b, err := valkey.New(c, valkey.WithKeyPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	names := []string{"}", "{", "{x}", "a}{b", "\x00", "*", "?", "\r\n", "../..", strings.Repeat("{", 300), strings.Repeat("}", 5000), "p:", ":"}
	for _, n := range names {
		for _, f := range []func() error{
			func() error { return dlock.NewMutex(b).TryDo(ctx, n, noop) },
			func() error { return dlock.NewRWMutex(b).Read().TryDo(ctx, n, noop) },
			func() error { return dlock.NewRWMutex(b).Write().TryDo(ctx, n, noop) },
			func() error { return dlock.NewSemaphore(b, 2).TryDo(ctx, n, noop) },
		} {
			if err := f(); err != nil {
				t.Fatalf("%q: %v", n, err)
			}
		}
	}
	keys, err := c.Do(ctx, c.B().Keys().Pattern("*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no keys were created")
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+"{") || strings.Count(k, "{") != 1 || strings.Count(k, "}") != 1 {
			t.Errorf("key %q is outside the prefix or has a second hash tag", k)
		}
	}
}
