//go:build linux && !dlock_portable

package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// openDir resolves the absolute, clean path dir one component at a time from
// "/", creating the missing components (the lock directory with mode perm,
// missing parents with perm minus group and world write), and returns the
// physical path of the lock directory (no symbolic link in it) and an O_PATH
// descriptor of it, which the caller closes.
//
// Every directory the resolution passes through must be one that no other
// user can change: owned by root or by this process's effective uid, and
// not group- or world-writable unless it has the sticky bit (then only the
// owner of an entry, the directory's owner — root or us — and root can
// rename or remove the entry). Otherwise another user could rename a
// component away and plant their own directory, with their own lock files,
// at the path. Below a private directory — ours, with no search permission
// for group or others (like the 0700 directories of t.TempDir and
// $XDG_RUNTIME_DIR) — no other user can reach anything, so the writable
// bits of deeper directories do not matter (a umask of 002 then does no
// harm); their owners are still checked. A symbolic link on the way is followed only if it is owned by
// root or by this process's uid (it sits in a directory that passed the
// check, so nobody else can replace it); the lock directory itself must not
// be a symbolic link. The lock directory's own checks are checkDir's.
func openDir(dir string, perm os.FileMode) (string, int, error) {
	root, err := openatRetry(unix.AT_FDCWD, "/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", -1, fmt.Errorf("fs: lock directory %q: open /: %w", dir, err)
	}
	// stack holds the descriptors of the directories resolved so far, from
	// "/" down; names the component names below "/".
	stack := []int{root}
	var names []string
	// private[i]: stack[i] or a directory above it is private (see above).
	var private []bool
	defer func() {
		for _, fd := range stack {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	physical := func() string { return "/" + strings.Join(names, "/") }
	rest := splitPath(dir)
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "..":
			if len(names) > 0 {
				unix.Close(stack[len(stack)-1])
				stack = stack[:len(stack)-1]
				names = names[:len(names)-1]
				private = private[:min(len(private), len(stack))]
			}
			continue
		case ".":
			continue
		}
		cur := stack[len(stack)-1]
		if len(private) < len(stack) { // not checked yet
			var st unix.Stat_t
			if err := unix.Fstat(cur, &st); err != nil {
				return "", -1, fmt.Errorf("fs: lock directory %q: stat %q: %w", dir, physical(), err)
			}
			priv, err := checkAncestor(dir, physical(), &st, len(private) > 0 && private[len(private)-1])
			if err != nil {
				return "", -1, err
			}
			private = append(private, priv)
		}
		last := len(rest) == 0
		at := joinPath(physical(), c)
		fd, err := openatRetry(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			mode := perm
			if !last {
				mode &^= 0o022
			}
			if err := unix.Mkdirat(cur, c, uint32(mode.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", -1, fmt.Errorf("fs: create lock directory %q: mkdir %q: %w", dir, at, err)
			}
			fd, err = openatRetry(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return "", -1, fmt.Errorf("fs: lock directory %q: open %q: %w", dir, at, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return "", -1, fmt.Errorf("fs: lock directory %q: stat %q: %w", dir, at, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			stack = append(stack, fd)
			names = append(names, c)
		case unix.S_IFLNK:
			target, err := readlinkFD(fd)
			unix.Close(fd)
			switch {
			case last:
				return "", -1, fmt.Errorf("fs: lock directory %q is a symbolic link (to %q): refused", dir, target)
			case err != nil:
				return "", -1, fmt.Errorf("fs: lock directory %q: read symbolic link %q: %w", dir, at, err)
			case st.Uid != 0 && st.Uid != euid:
				return "", -1, fmt.Errorf("fs: lock directory %q: path component %q is a symbolic link owned by uid %d (neither root nor this process's uid %d), who could point it elsewhere: refused", dir, at, st.Uid, euid)
			}
			if links++; links > maxSymlinks {
				return "", -1, fmt.Errorf("fs: lock directory %q: too many symbolic links: %w", dir, unix.ELOOP)
			}
			if strings.HasPrefix(target, "/") {
				for _, fd := range stack[1:] {
					unix.Close(fd)
				}
				stack, names, private = stack[:1], names[:0], private[:min(len(private), 1)]
			}
			rest = append(splitPath(target), rest...)
		default:
			unix.Close(fd)
			return "", -1, fmt.Errorf("fs: lock directory %q: %q is not a directory (mode %#o): %w", dir, at, st.Mode, unix.ENOTDIR)
		}
	}
	fd := stack[len(stack)-1]
	stack[len(stack)-1] = -1 // the caller's now
	return physical(), fd, nil
}

// readlinkFD reads the target of the symbolic link open (O_PATH|O_NOFOLLOW)
// as fd.
func readlinkFD(fd int) (string, error) {
	buf := make([]byte, unix.PathMax)
	for {
		n, err := unix.Readlinkat(fd, "", buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", err
		}
		if n >= len(buf) {
			return "", unix.ENAMETOOLONG
		}
		return string(buf[:n]), nil
	}
}

func openatRetry(dirfd int, path string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, path, flags, mode)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}
