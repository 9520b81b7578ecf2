//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly

package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// What both implementations share on Unix (see common.go).

// maxSymlinks bounds the symbolic links followed while resolving the lock
// directory (the kernel's own limit on Linux).
const maxSymlinks = 40

// handle is an open lock file: a file descriptor.
type handle = int

// transient are the errors of a local file system that may heal by
// themselves: out of descriptors (EMFILE, ENFILE), memory or kernel lock
// records (ENOMEM, ENOBUFS, ENOLCK), disk space or quota for a new lock
// file (ENOSPC, EDQUOT), an interrupted call.
var transient = []error{unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.ENOBUFS, unix.ENOLCK, unix.ENOSPC, unix.EDQUOT, unix.EINTR, unix.EAGAIN}

// euid is this process's effective uid.
var euid = uint32(os.Geteuid())

func infoOf(st *unix.Stat_t) fileInfo {
	return fileInfo{
		dev:     uint64(st.Dev),
		ino:     uint64(st.Ino),
		regular: st.Mode&unix.S_IFMT == unix.S_IFREG,
		mode:    uint32(st.Mode),
		nlink:   uint64(st.Nlink),
		uid:     st.Uid,
		gid:     st.Gid,
		owned:   true,
		perm:    uint32(st.Mode) & 0o777,
	}
}

// statHandle is fstat.
func statHandle(h handle) (fileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(h, &st); err != nil {
		return fileInfo{}, err
	}
	return infoOf(&st), nil
}

// chmodHandle gives h the permission bits perm.
func chmodHandle(h handle, perm uint32) error { return unix.Fchmod(h, perm) }

// readAt is pread, retried on EINTR.
func readAt(h handle, p []byte, off int64) (int, error) {
	for {
		n, err := unix.Pread(h, p, off)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// writeAt is pwrite, retried on EINTR.
func writeAt(h handle, p []byte, off int64) (int, error) {
	for {
		n, err := unix.Pwrite(h, p, off)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// checkAncestor checks that the directory at path, whose status is st, is
// one that no other user can change entries of (see the resolution of the
// lock directory: openDir on Linux, prepareDir otherwise). inPrivate says
// that a directory above it is private; it returns whether this one or
// one above is.
func checkAncestor(dir, path string, st *unix.Stat_t, inPrivate bool) (bool, error) {
	if st.Uid != 0 && st.Uid != euid {
		return false, fmt.Errorf("fs: lock directory %q: its ancestor %q is owned by uid %d (neither root nor this process's uid %d), who could rename the lock directory away and plant their own: refused", dir, path, st.Uid, euid)
	}
	private := inPrivate || st.Uid == euid && st.Mode&0o011 == 0
	if !private && st.Mode&unix.S_ISVTX == 0 {
		switch {
		case st.Mode&0o002 != 0:
			return false, fmt.Errorf("fs: lock directory %q: its ancestor %q is world-writable without the sticky bit (mode %#o): any user could rename the lock directory away and plant their own: refused", dir, path, st.Mode&0o7777)
		case st.Mode&0o020 != 0:
			return false, fmt.Errorf("fs: lock directory %q: its ancestor %q is group-writable without the sticky bit (mode %#o): another user of group %d could rename the lock directory away and plant their own: refused", dir, path, st.Mode&0o7777, st.Gid)
		}
	}
	return private, nil
}

// checkDir verifies that dir, whose status is st, is a safe lock directory
// (its owner and mode; the caller checks its file system), and returns
// whose lock files it may hold (see WithSharedGroup).
func checkDir(dir string, st *unix.Stat_t, shared bool) (trust, error) {
	tr := trust{euid: euid, owners: true}
	if st.Mode&0o002 != 0 {
		return trust{}, fmt.Errorf("fs: lock directory %q is world-writable (mode %#o): refused", dir, st.Mode&0o7777)
	}
	if shared {
		member, err := inGroup(st.Gid)
		if err != nil {
			return trust{}, fmt.Errorf("fs: lock directory %q: %w", dir, err)
		}
		if st.Uid != euid && !member {
			return trust{}, fmt.Errorf("fs: lock directory %q is owned by uid %d and group %d; this process (uid %d) is in neither: refused", dir, st.Uid, st.Gid, euid)
		}
		tr.shared, tr.gid = true, st.Gid
	} else {
		if st.Uid != euid {
			return trust{}, fmt.Errorf("fs: lock directory %q is owned by uid %d, not by this process's uid %d: refused (see WithSharedGroup)", dir, st.Uid, euid)
		}
		if st.Mode&0o020 != 0 {
			return trust{}, fmt.Errorf("fs: lock directory %q is group-writable (mode %#o): any member of group %d could remove or replace its lock files: refused unless WithSharedGroup", dir, st.Mode&0o7777, st.Gid)
		}
	}
	return tr, nil
}

// inGroup reports whether gid is this process's effective or a
// supplementary group.
func inGroup(gid uint32) (bool, error) {
	if uint32(os.Getegid()) == gid {
		return true, nil
	}
	groups, err := os.Getgroups()
	if err != nil {
		return false, fmt.Errorf("getgroups: %w", err)
	}
	for _, g := range groups {
		if uint32(g) == gid {
			return true, nil
		}
	}
	return false, nil
}

// splitPath returns the non-empty components of p.
func splitPath(p string) []string {
	var out []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
