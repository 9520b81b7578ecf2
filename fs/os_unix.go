//go:build darwin || freebsd || openbsd || netbsd || dragonfly || (linux && dlock_portable)

package fs

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// The portable implementation's OS layer on Unix: whole-file flock(2)
// locks, which belong to the open file description on every Unix (so two
// holders inside one process exclude each other).

// noHandle is no open file.
const noHandle handle = -1

// foldNames: Unix file systems are case-sensitive (see the package
// documentation for case-folding directories).
const foldNames = false

// pathSep separates the lock directory from a file name.
const pathSep = "/"

// openHandle opens path for reading and writing, never following a final
// symbolic link, creating it with mode if create is set. A missing path
// without create is an error matching os.ErrNotExist.
func openHandle(path string, create bool, mode uint32) (handle, error) {
	flags := unix.O_RDWR | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if create {
		flags |= unix.O_CREAT
	}
	for {
		fd, err := unix.Open(path, flags, mode)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOENT):
			return noHandle, fmt.Errorf("open lock file %s: %w", path, err)
		}
		// O_NOFOLLOW on a symbolic link fails with ELOOP (Linux, macOS),
		// EMLINK (FreeBSD, DragonFly) or EFTYPE (NetBSD): look.
		var st unix.Stat_t
		if unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return noHandle, fmt.Errorf("lock file %s is a symbolic link: refusing to follow it: %w", path, err)
		}
		return noHandle, fmt.Errorf("open lock file %s: %w", path, err)
	}
}

// openIfExists is openHandle without create, for a file that is usually
// missing: a missing path is (noHandle, nil), without building an error.
func openIfExists(path string) (handle, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOENT):
			return noHandle, nil
		}
		return openHandle(strings.Clone(path), false, 0) // the error, described (path stays the caller's)
	}
}

// lockHandle makes one non-blocking attempt to lock h, exclusive or
// shared; it reports false when another holder's lock is in the way.
func lockHandle(h handle, exclusive bool) (bool, error) {
	how := unix.LOCK_SH | unix.LOCK_NB
	if exclusive {
		how = unix.LOCK_EX | unix.LOCK_NB
	}
	for {
		err := unix.Flock(h, how)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		}
		return false, fmt.Errorf("flock: %w", err)
	}
}

// convertHandle makes one non-blocking attempt to turn the shared lock
// held through h into an exclusive one. flock converts by letting go of
// the shared lock first: when it fails (false, or an error) h may hold no
// lock at all.
func convertHandle(h handle) (bool, error) { return lockHandle(h, true) }

// unlockHandle drops the lock held through h.
func unlockHandle(h handle) error {
	for {
		err := unix.Flock(h, unix.LOCK_UN)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func closeHandle(h handle) { unix.Close(h) }

// unlockOnClose: closing the last descriptor of an open file description
// drops its flock at once, so a deleted file needs no unlock first.
const unlockOnClose = true

// statPath is lstat; a missing path is (_, false, nil).
func statPath(path string) (fileInfo, bool, error) {
	var st unix.Stat_t
	for {
		err := unix.Lstat(path, &st)
		switch {
		case err == nil:
			return infoOf(&st), true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			return fileInfo{}, false, nil
		}
		return fileInfo{}, false, err
	}
}

// removePath unlinks path.
func removePath(path string) error { return unix.Unlink(path) }

func syncHandle(h handle) error { return unix.Fsync(h) }

// busyOpen reports whether an error opening a lock file means only that
// the file is being deleted (never on Unix: an unlinked name is gone).
func busyOpen(err error) bool { return false }
