//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"errors"
	"fmt"
	"io/fs"
)

// errNoFile: a file opened without creating it does not exist.
var errNoFile = errors.New("no such file")

// pfile is one lock file of the portable implementation, open or not, and
// the lock held on it through its handle, if any.
type pfile struct {
	path  string
	tr    *trust
	h     handle
	fi    fileInfo // once known
	known bool
	held  bool
	// side is a file held along with this one, closed with it: a
	// reader's holder record file (see Backend.claimRecord).
	side *pfile
}

func newPFile(path string, tr *trust) pfile { return pfile{path: path, tr: tr, h: noHandle} }

func (f *pfile) isOpen() bool { return f.h != noHandle }

// identify learns and checks (trust.check) the open file's identity, once.
func (f *pfile) identify() error {
	if f.known {
		return nil
	}
	fi, err := f.tr.identify(f.h, f.path)
	if err != nil {
		return err
	}
	f.fi, f.known = fi, true
	return nil
}

// named reports whether the path still names the open file.
func (f *pfile) named() (bool, error) {
	if err := f.identify(); err != nil {
		return false, err
	}
	fi, ok, err := statPath(f.path)
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", f.path, err)
	}
	return ok && fi.dev == f.fi.dev && fi.ino == f.fi.ino, nil
}

// lock opens the file if needed (creating it with mode if create; without,
// a missing file is errNoFile) and makes one non-blocking attempt to lock
// it. On success it checks that the path still names the locked file; if
// the file was removed or replaced meanwhile (its last holder deleted it),
// it locks the file that now has the name instead. When the lock is busy
// the file stays open. Its loop is that of lockFile.lockNamed (Linux), kept
// apart on purpose: the Linux one opens through raw system calls and
// carries a waiter's queue ticket to each new file, and a shared version
// over an interface would cost the Linux hot path an allocation.
func (f *pfile) lock(exclusive, create bool, mode uint32) (bool, error) {
	for range maxReplaced {
		if !f.isOpen() {
			h, err := openHandle(f.path, create, mode)
			if err != nil {
				if !create && errors.Is(err, fs.ErrNotExist) {
					return false, errNoFile
				}
				if busyOpen(err) {
					return false, nil
				}
				return false, err
			}
			f.h, f.known, f.held = h, false, false
		}
		ok, err := lockHandle(f.h, exclusive)
		if err != nil {
			return false, fmt.Errorf("lock %s: %w", f.path, err)
		}
		if !ok {
			return false, nil
		}
		f.held = true
		same, err := f.named()
		if err != nil {
			f.close()
			return false, err
		}
		if same {
			return true, nil
		}
		f.close()
	}
	return false, fmt.Errorf("%w: %s", errReplaced, f.path)
}

// unlock drops the lock, keeping the file open.
func (f *pfile) unlock() {
	if f.held {
		_ = unlockHandle(f.h)
		f.held = false
	}
}

// close drops the lock and closes the file, and its side file.
func (f *pfile) close() {
	if f.side != nil {
		f.side.close()
	}
	if !f.isOpen() {
		return
	}
	f.unlock()
	closeHandle(f.h)
	f.h, f.held = noHandle, false
}

// remove deletes the file, which the caller holds exclusively and has
// checked is still named by its path, then closes it. Deleting a file only
// while holding it exclusively is what keeps the delete safe: anyone who
// opened the file before and locks it later finds that the path no longer
// names it (see lock) and locks the new file instead.
func (f *pfile) remove() {
	_ = removePath(f.path)
	if unlockOnClose {
		f.held = false // the close drops it: one system call less
	}
	f.close()
}
