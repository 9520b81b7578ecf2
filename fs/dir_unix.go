//go:build darwin || freebsd || openbsd || netbsd || dragonfly || (linux && dlock_portable)

package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

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
// Its loop follows openDir's (Linux), kept apart because that one holds a
// descriptor of each directory and resolves the next name relative to it;
// the checks themselves are shared (checkAncestor, checkDir).
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
			var st unix.Stat_t
			if err := unix.Stat(cur, &st); err != nil {
				return "", trust{}, fmt.Errorf("fs: lock directory %q: stat %q: %w", dir, cur, err)
			}
			priv, err := checkAncestor(dir, cur, &st, len(private) > 0 && private[len(private)-1])
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
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return "", trust{}, fmt.Errorf("fs: stat lock directory %q: %w", path, err)
	}
	tr, err := checkDir(path, &st, cfg.sharedGroup)
	if err != nil {
		return "", trust{}, err
	}
	net, err := networkFS(path)
	if err != nil {
		return "", trust{}, fmt.Errorf("fs: statfs lock directory %q: %w", path, err)
	}
	if net != "" {
		return "", trust{}, fmt.Errorf("fs: lock directory %q is on a network file system (%s): flock there is not per open file description: refused", path, net)
	}
	return path, tr, nil
}
