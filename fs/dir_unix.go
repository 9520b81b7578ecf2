//go:build darwin || freebsd || openbsd || netbsd || dragonfly || (linux && dlock_portable)

package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSymlinks bounds the symbolic links followed while resolving the lock
// directory.
const maxSymlinks = 40

// prepareDir resolves the absolute, clean path dir one component at a
// time from "/", creating missing components (the lock directory with mode
// cfg.dirMode, missing parents without group and world write), and checks
// it as the Linux implementation does (see New): every directory on the
// way owned by root or this process's uid and not writable by others
// unless sticky or below a private directory of ours; symbolic links on
// the way followed only if owned by root or us; the lock directory itself
// not a link, owned by us (or, with WithSharedGroup, of a group we are in),
// not world-writable, group-writable only with WithSharedGroup, and not on
// a network file system. Unlike on Linux, where each component is held
// open (O_PATH) while the next is resolved, the checks here go by path
// (lstat): a component replaced between two checks is not noticed.
// It returns the resolved physical path and whose lock files are trusted.
func prepareDir(dir string, cfg *config) (string, trust, error) {
	var names []string
	var private []bool // private[i]: the directory of names[:i] (or one above) is private
	physical := func() string { return "/" + strings.Join(names, "/") }
	rest := splitPath(dir)
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "..":
			if len(names) > 0 {
				names = names[:len(names)-1]
				private = private[:min(len(private), len(names)+1)]
			}
			continue
		case ".":
			continue
		}
		cur := physical()
		if len(private) < len(names)+1 {
			priv, err := checkAncestor(dir, cur, len(private) > 0 && private[len(private)-1])
			if err != nil {
				return "", trust{}, err
			}
			private = append(private, priv)
		}
		last := len(rest) == 0
		at := joinPath(cur, c)
		var st unix.Stat_t
		err := unix.Lstat(at, &st)
		if errors.Is(err, unix.ENOENT) {
			mode := cfg.dirMode
			if !last {
				mode &^= 0o022
			}
			if err := unix.Mkdir(at, uint32(mode.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", trust{}, fmt.Errorf("fs: create lock directory %q: mkdir %q: %w", dir, at, err)
			}
			err = unix.Lstat(at, &st)
		}
		if err != nil {
			return "", trust{}, fmt.Errorf("fs: lock directory %q: stat %q: %w", dir, at, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			names = append(names, c)
		case unix.S_IFLNK:
			target, err := os.Readlink(at)
			switch {
			case last:
				return "", trust{}, fmt.Errorf("fs: lock directory %q is a symbolic link (to %q): refused", dir, target)
			case err != nil:
				return "", trust{}, fmt.Errorf("fs: lock directory %q: read symbolic link %q: %w", dir, at, err)
			case st.Uid != 0 && st.Uid != euid:
				return "", trust{}, fmt.Errorf("fs: lock directory %q: path component %q is a symbolic link owned by uid %d (neither root nor this process's uid %d), who could point it elsewhere: refused", dir, at, st.Uid, euid)
			}
			if links++; links > maxSymlinks {
				return "", trust{}, fmt.Errorf("fs: lock directory %q: too many symbolic links: %w", dir, unix.ELOOP)
			}
			if strings.HasPrefix(target, "/") {
				names, private = names[:0], private[:min(len(private), 1)]
			}
			rest = append(splitPath(target), rest...)
		default:
			return "", trust{}, fmt.Errorf("fs: lock directory %q: %q is not a directory (mode %#o): %w", dir, at, st.Mode, unix.ENOTDIR)
		}
	}
	path := physical()
	tr, err := checkDir(path, cfg.sharedGroup)
	if err != nil {
		return "", trust{}, err
	}
	return path, tr, nil
}

// checkAncestor checks that the directory path is one that no other user
// can change entries of (see prepareDir). inPrivate says that a directory
// above it is private; it returns whether this one or one above is.
func checkAncestor(dir, path string, inPrivate bool) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, fmt.Errorf("fs: lock directory %q: stat %q: %w", dir, path, err)
	}
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

// checkDir verifies that dir is a safe lock directory, and returns whose
// lock files it may hold (see WithSharedGroup).
func checkDir(dir string, shared bool) (trust, error) {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return trust{}, fmt.Errorf("fs: stat lock directory %q: %w", dir, err)
	}
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
	net, err := networkFS(dir)
	if err != nil {
		return trust{}, fmt.Errorf("fs: statfs lock directory %q: %w", dir, err)
	}
	if net != "" {
		return trust{}, fmt.Errorf("fs: lock directory %q is on a network file system (%s): flock there is not per open file description: refused", dir, net)
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
