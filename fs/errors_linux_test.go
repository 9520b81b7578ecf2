//go:build linux && !dlock_portable

package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/internal/golden"
)

// TestErrorMessages: every refusal and failure of the backend prints one
// readable message, compared with testdata/errors.golden (temporary paths
// shown as $DIR, the process's group as $GID). The release of a lock whose
// file was removed is left out: its message depends on whether the
// monitor saw the removal first. After an intended change, rewrite it with
// go test -run TestErrorMessages -update ./fs.
func TestErrorMessages(t *testing.T) {
	// in runs f against a fresh backend and shows its directory as $DIR.
	in := func(f func(t *testing.T, b *Backend) error, opts ...Option) func(t *testing.T) error {
		return func(t *testing.T) error {
			b := newBackend(t, "", opts...)
			return hideDir(f(t, b), b.Dir())
		}
	}
	plant := func(t *testing.T, b *Backend, file string, how func(path string) error) {
		t.Helper()
		if err := how(filepath.Join(b.Dir(), file)); err != nil {
			t.Fatal(err)
		}
	}
	hardLink := func(t *testing.T) func(string) error {
		victim, _ := plantVictim(t)
		return func(p string) error { return os.Link(victim, p) }
	}
	newIn := func(mode os.FileMode, opts ...Option) func(t *testing.T) error {
		return func(t *testing.T) error {
			dir := filepath.Join(t.TempDir(), "locks")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			_, err := New(dir, opts...)
			return hideDir(err, dir)
		}
	}
	golden.Check(t, "testdata/errors.golden", []golden.Case{
		golden.C("try on a hard-linked lock file", in(func(t *testing.T, b *Backend) error {
			plant(t, b, fileName(kindMutex, "job"), hardLink(t))
			_, _, err := b.TryLock(bg(), "job")
			return err
		})),
		golden.C("through dlock, a wait on a hard-linked lock file", in(func(t *testing.T, b *Backend) error {
			plant(t, b, fileName(kindMutex, "job"), hardLink(t))
			_, err := dlock.NewMutex(b).Acquire(bg(), "job")
			return err
		})),
		golden.C("a hard-linked semaphore counter", in(func(t *testing.T, b *Backend) error {
			plant(t, b, fileName(kindSemCounter, "job"), hardLink(t))
			_, _, err := b.TryAcquire(bg(), "job", 2)
			return err
		})),
		golden.C("a symbolic link as lock file", in(func(t *testing.T, b *Backend) error {
			plant(t, b, fileName(kindRW, "job"), func(p string) error { return os.Symlink("/etc/passwd", p) })
			_, _, err := b.TryWLock(bg(), "job")
			return err
		})),
		golden.C("a fifo as lock file", in(func(t *testing.T, b *Backend) error {
			plant(t, b, fileName(kindMutex, "job"), func(p string) error { return unix.Mkfifo(p, 0o600) })
			_, _, err := b.TryLock(bg(), "job")
			return err
		})),
		golden.C("a group-writable lock directory", newIn(0o770)),
		golden.C("a world-writable lock directory, shared group", newIn(0o777, WithSharedGroup())),
		golden.C("a group-writable directory mode", func(t *testing.T) error {
			_, err := New(t.TempDir(), WithDirMode(0o770))
			return err
		}),
		golden.C("an empty name", in(func(t *testing.T, b *Backend) error {
			_, _, err := b.TryLock(bg(), "")
			return err
		})),
		golden.C("a semaphore limit of 0", in(func(t *testing.T, b *Backend) error {
			_, _, err := b.TryAcquire(bg(), "job", 0)
			return err
		})),
		golden.C("a wait ended by its deadline", in(func(t *testing.T, b *Backend) error {
			l := mustTry(t)(b.TryLock(bg(), "job"))
			defer l.Release(bg())
			ctx, cancel := context.WithTimeout(bg(), 10*time.Millisecond)
			defer cancel()
			_, err := b.Lock(ctx, "job")
			return err
		})),
		golden.C("a release after Close", in(func(t *testing.T, b *Backend) error {
			l := mustTry(t)(b.TryLock(bg(), "job"))
			b.Close()
			return l.Release(bg())
		})),
		golden.C("a second release", in(func(t *testing.T, b *Backend) error {
			l := mustTry(t)(b.TryLock(bg(), "job"))
			mustRelease(t, l)
			return l.Release(bg())
		})),
		golden.C("a try after Close", in(func(t *testing.T, b *Backend) error {
			b.Close()
			_, _, err := b.TryLock(bg(), "job")
			return err
		})),
	})
}

// hideDir shows dir as $DIR and this process's group as $GID in err's
// message.
func hideDir(err error, dir string) error {
	if err == nil {
		return nil
	}
	msg := strings.ReplaceAll(err.Error(), dir, "$DIR")
	msg = strings.ReplaceAll(msg, "group "+strconv.Itoa(os.Getegid())+" ", "group $GID ")
	return errors.New(msg)
}
