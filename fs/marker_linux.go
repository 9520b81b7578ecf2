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
	fd, err := unix.Open(filepath.Join(dir, own), unix.O_RDONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return backend.Permanent(fmt.Errorf("fs: lock directory %q: marker %s is a symbolic link: refused", dir, own))
		}
		return fmt.Errorf("fs: lock directory %q: create marker %s: %w", dir, own, err)
	}
	unix.Close(fd)
	var st unix.Stat_t
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
