//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"
)

// trust says whose lock files a Backend accepts: its own user's, and with
// WithSharedGroup also those of the lock directory's group. On Windows
// owners are not checked (owners is false).
type trust struct {
	euid   uint32
	owners bool   // check owners (Unix)
	shared bool   // WithSharedGroup
	gid    uint32 // with shared: the lock directory's group
	mode   uint32 // with shared: the lock files' mode (WithFileMode)
}

// check refuses a lock file that is not a regular file, that has more than
// one name, or whose owner is not trusted (see the Linux implementation).
func (tr *trust) check(path string, fi *fileInfo) error {
	if !fi.regular {
		return fmt.Errorf("lock file %s is not a regular file: refused", path)
	}
	if fi.nlink > 1 {
		return fmt.Errorf("lock file %s has %d hard links (another name points at the same file, which is not a lock file of this backend's): refused, nothing written", path, fi.nlink)
	}
	if tr.owners && fi.owned && fi.uid != tr.euid && !(tr.shared && fi.gid == tr.gid) {
		if tr.shared {
			return fmt.Errorf("lock file %s is owned by uid %d and group %d, neither this process's uid %d nor the lock directory's group %d: refused, nothing written", path, fi.uid, fi.gid, tr.euid, tr.gid)
		}
		return fmt.Errorf("lock file %s is owned by uid %d, not by this process's uid %d: refused, nothing written (see WithSharedGroup)", path, fi.uid, tr.euid)
	}
	return nil
}

// maxReplaced bounds how many times one attempt follows a lock file that is
// replaced under it before it gives up with an error.
const maxReplaced = 8

var errReplaced = errors.New("lock file keeps being replaced")

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
}

func newPFile(path string, tr *trust) pfile { return pfile{path: path, tr: tr, h: noHandle} }

func (f *pfile) isOpen() bool { return f.h != noHandle }

// identify learns and checks (trust.check) the open file's identity, once.
func (f *pfile) identify() error {
	if f.known {
		return nil
	}
	fi, err := statHandle(f.h)
	if err != nil {
		return fmt.Errorf("stat lock file %s: %w", f.path, err)
	}
	if err := f.tr.check(f.path, &fi); err != nil {
		return err
	}
	if f.tr.shared && fi.uid == f.tr.euid && fi.perm&f.tr.mode != f.tr.mode {
		if err := chmodHandle(f.h, (fi.perm|f.tr.mode)&0o777); err != nil {
			return fmt.Errorf("chmod lock file %s for the shared group: %w", f.path, err)
		}
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
// the file stays open.
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

// close drops the lock and closes the file.
func (f *pfile) close() {
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

// The fencing counter: 20 decimal digits and a newline at the start of the
// file. An empty file counts as 0.
const counterLen = 21

// readCounter reads the counter of the open file.
func (f *pfile) readCounter() (uint64, error) {
	var buf [counterLen + 8]byte
	n, err := readAt(f.h, buf[:], 0)
	if err != nil && err != io.EOF {
		return 0, fmt.Errorf("read fencing counter %s: %w", f.path, err)
	}
	if n == 0 {
		return 0, nil
	}
	v, ok := parseCounter(buf[:n])
	if !ok {
		return 0, fmt.Errorf("corrupt fencing counter in %s (%q): fix or remove the file", f.path, buf[:n])
	}
	return v, nil
}

// bumpCounter stores and returns the next token of the counter in the
// open file, which the caller holds so that no one else bumps it at the
// same time: one more than the stored value, or the wall clock in
// nanoseconds since 1970 if that is larger — so tokens keep increasing when
// the file is deleted (see removable) or loses its last updates in a crash,
// unless the clock also went back.
func (f *pfile) bumpCounter(sync bool) (uint64, error) {
	stored, err := f.readCounter()
	if err != nil {
		return 0, err
	}
	if stored == ^uint64(0) {
		return 0, fmt.Errorf("fencing counter in %s is exhausted", f.path)
	}
	token := stored + 1
	if now := time.Now().UnixNano(); now > 0 && uint64(now) > token {
		token = uint64(now)
	}
	out := formatCounter(nil, token)
	if w, err := writeAt(f.h, out, 0); err != nil || w != len(out) {
		if err == nil {
			err = io.ErrShortWrite
		}
		return 0, fmt.Errorf("write fencing counter %s: %w", f.path, err)
	}
	if sync {
		if err := syncHandle(f.h); err != nil {
			return 0, fmt.Errorf("sync fencing counter %s: %w", f.path, err)
		}
	}
	return token, nil
}

// removable reports whether a file whose counter holds last may be deleted
// without letting a later token fall to or below it: the next token of a
// new file is at least the wall clock, so the clock must have passed last.
// On a system whose clock is coarse (Windows advances it about every
// millisecond or more) a file locked and released again within one tick
// stays, and goes at a later release.
func removable(last uint64) bool {
	now := time.Now().UnixNano()
	return now > 0 && uint64(now) > last
}

// counterPatience bounds how long a holder waits for a file that others
// hold only for a moment (a fencing counter, a waiters' file being
// checked): past it, something else holds it, and waiting on would hang.
const counterPatience = 10 * time.Second

// briefly runs try, which takes a lock that others hold only for a moment,
// until it succeeds or fails, pausing between attempts (50 µs growing to
// 1 ms), for at most counterPatience.
func briefly(path string, try func() (bool, error)) error {
	pause := 50 * time.Microsecond
	deadline := time.Now().Add(counterPatience)
	for {
		ok, err := try()
		if ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s stayed locked for %v (a moment is the most anyone keeps it): refused", path, counterPatience)
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
}
