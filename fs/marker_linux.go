//go:build linux

package fs

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/dlock-go/dlock/backend"
	"golang.org/x/sys/unix"
)

const (
	markerLinux    = ".dlock-fs-linux"
	markerPortable = ".dlock-fs-portable"
)

// claimDir marks dir as used by this implementation (portable or not) and
// refuses it if the other one marked it: first its own marker, then a look
// for the other's, so that of two processes that claim one directory at
// the same moment with different implementations at least one sees the
// other's marker. Marker files are never removed by the library.
func claimDir(dir string, portable bool) error {
	own, other := markerLinux, markerPortable
	if portable {
		own, other = other, own
	}
	var st unix.Stat_t
	ownPath := filepath.Join(dir, own)
	err := unix.Lstat(ownPath, &st)
	if errors.Is(err, unix.ENOENT) {
		// Created, never opened again: any user of a shared directory sees
		// it without needing to open it.
		fd, cerr := unix.Open(ownPath, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if cerr == nil {
			unix.Close(fd)
		}
		if cerr != nil && !errors.Is(cerr, unix.EEXIST) {
			return fmt.Errorf("fs: lock directory %q: create marker %s: %w", dir, own, cerr)
		}
		err = unix.Lstat(ownPath, &st)
	}
	if err != nil {
		return fmt.Errorf("fs: lock directory %q: stat marker %s: %w", dir, own, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return backend.Permanent(fmt.Errorf("fs: lock directory %q: marker %s is not a regular file (mode %#o): refused", dir, own, st.Mode))
	}
	switch err := unix.Lstat(filepath.Join(dir, other), &st); {
	case err == nil:
		return fmt.Errorf("fs: lock directory %q: %w (it has %s; this process uses the %s implementation): refused, remove %s only if no process uses the directory: %w",
			dir, ErrOtherImplementation, other, implName(portable), other, backend.ErrInvalidOption)
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("fs: lock directory %q: stat marker %s: %w", dir, other, err)
	}
	return nil
}

func implName(portable bool) string {
	if portable {
		return "portable (tag dlock_portable)"
	}
	return "default Linux"
}
