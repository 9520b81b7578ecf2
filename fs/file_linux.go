//go:build linux && !dlock_portable

package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// lockFile is one lock file, open (fd >= 0) or not, and the lock this
// process holds on it through fd, if any.
type lockFile struct {
	path     string
	zpath    *byte  // path's bytes and a NUL (see zpath); nil: use path
	tr       *trust // whose files are accepted
	fd       int    // -1 when not open
	dev, ino uint64 // the open file's identity, once known
	known    bool   // dev and ino are known (see identify)
	held     bool   // fd holds a flock
	// withUpgrade: a lock of the file comes with the upgrade byte (see
	// upgradeByte), for a writer or an upgradeable reader of an RW lock.
	withUpgrade bool

	// The waiters' queue (see queue_linux.go).
	ticket     int64 // this waiter's place; 0: not waiting (a try, or not yet)
	ticketType int16 // F_RDLCK for a reader, else F_WRLCK
	behind     bool  // the last attempt found others to let go first
}

// newLockFile returns the lock file whose path is the concatenation of
// parts, not open.
func newLockFile(tr *trust, parts ...string) lockFile {
	path, z := zpath(parts...)
	return lockFile{path: path, zpath: z, tr: tr, fd: -1}
}

// zpath returns the concatenation of parts, and a pointer to the same bytes
// followed by a NUL for the raw system calls of the hot path (open, lstat):
// x/sys copies every string argument, one allocation per call; this is one
// per lock file.
func zpath(parts ...string) (string, *byte) { return zpathIn(nil, parts...) }

// zpathIn is zpath in buf (empty) if the path and its NUL fit in its
// capacity; otherwise in a new buffer.
func zpathIn(buf []byte, parts ...string) (string, *byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n+1 > cap(buf) {
		buf = make([]byte, 0, n+1)
	}
	for _, p := range parts {
		buf = append(buf, p...)
	}
	buf = append(buf, 0)
	return unsafe.String(&buf[0], n), &buf[0]
}

// atFDCWD is unix.AT_FDCWD as a variable, for converting it to uintptr.
var atFDCWD = unix.AT_FDCWD

// openZ is openat(AT_FDCWD, path, flags, mode), retried on EINTR.
func openZ(path *byte, flags int, mode uint32) (int, error) {
	for {
		r, _, e := syscall.Syscall6(unix.SYS_OPENAT, uintptr(atFDCWD), uintptr(unsafe.Pointer(path)), uintptr(flags|unix.O_LARGEFILE), uintptr(mode), 0, 0)
		if e == 0 {
			return int(r), nil
		}
		if e != syscall.EINTR {
			return -1, e
		}
	}
}

// noStatx is set once statx(2) turns out to be unavailable (ENOSYS: an old
// kernel or a seccomp filter); stillNamedZ then uses lstat.
var noStatx atomic.Bool

// stillNamedZ is stillNamed with path also given as zpath.
func stillNamedZ(path string, z *byte, dev, ino uint64) (bool, error) {
	if z == nil || noStatx.Load() {
		return stillNamed(path, dev, ino)
	}
	for {
		var stx unix.Statx_t
		_, _, e := syscall.Syscall6(unix.SYS_STATX, uintptr(atFDCWD), uintptr(unsafe.Pointer(z)), uintptr(unix.AT_SYMLINK_NOFOLLOW), uintptr(unix.STATX_TYPE|unix.STATX_INO), uintptr(unsafe.Pointer(&stx)), 0)
		switch e {
		case 0:
			return stx.Ino == ino && stx.Dev_major == unix.Major(dev) && stx.Dev_minor == unix.Minor(dev), nil
		case syscall.EINTR:
			continue
		case syscall.ENOENT, syscall.ENOTDIR:
			return false, nil
		case syscall.ENOSYS:
			noStatx.Store(true)
			return stillNamed(path, dev, ino)
		}
		return false, fmt.Errorf("stat %s: %w", path, e)
	}
}

// open opens (creating if needed) the lock file. The final path element is
// never followed if it is a symbolic link. That it is a regular file is
// checked by identify, once the file is locked (an attempt that finds the
// lock busy saves the fstat). A waiter's ticket is placed on the new
// descriptor; if the file is being removed (see remove), the waiter waits
// for the removal to end and opens the file that then has the name.
func (f *lockFile) open(mode uint32) error {
	return briefly(f.path, "the lock file stayed gated for removal", func() (bool, error) {
		flags := unix.O_RDWR | unix.O_CREAT | unix.O_NOFOLLOW | unix.O_CLOEXEC
		var fd int
		var err error
		if f.zpath != nil {
			fd, err = openZ(f.zpath, flags, mode)
		} else {
			fd, err = openRetry(f.path, flags, mode)
		}
		if err != nil {
			if errors.Is(err, unix.ELOOP) {
				return false, fmt.Errorf("lock file %s is a symbolic link: refusing to follow it: %w", f.path, err)
			}
			return false, fmt.Errorf("open lock file %s: %w", f.path, err)
		}
		f.fd, f.known, f.held = fd, false, false
		if f.ticket == 0 {
			return true, nil
		}
		// A waiter keeps its place across a replaced lock file.
		err = f.placeTicket()
		if err == nil {
			return true, nil
		}
		f.close()
		if errors.Is(err, errGated) {
			return false, nil // removed in a moment: open the next file
		}
		return false, err
	})
}

// waitAttempt is a waiter's attempt on a file that keeps the waiters' queue
// (a mutex's, an RW lock's): tryFlock, and after an attempt that finds the
// lock busy, the look whether the file still has a name (dropIfOrphan). A
// waiter that leaves a removed file tries the file that has the name at
// once. An attempt that takes the lock needs no such look: lockNamed then
// checks that the path names the locked file, which saves the hand-off an
// fstat.
func (f *lockFile) waitAttempt(how int, mode uint32) (bool, error) {
	ok, err := f.tryFlock(how, mode, true)
	if ok || err != nil || f.fd < 0 {
		return ok, err
	}
	if f.dropIfOrphan(true); f.fd < 0 {
		return f.tryFlock(how, mode, true)
	}
	return false, nil
}

// dropIfOrphan closes f if the file it has open has no name left (its
// holder removed it as it let go, see remove): a waiter's next attempt then
// opens the file that has the name now, and takes its ticket along, at once
// rather than after an attempt on a file nobody else will lock.
//
// A waiter looks after every attempt that finds the lock busy: a file
// removed by hand while a holder that never lets go (a hung process) still
// locks it must be left at once, or its waiters would wait for a lock that
// guards nothing (TestWaiterLeavesRemovedFileHeldByHungHolder). With queued
// (the file keeps the waiters' queue: a mutex's, an RW lock's) its first
// look is the fstat that identifies the file (see identify), which the
// attempt that takes the lock then saves.
func (f *lockFile) dropIfOrphan(queued bool) {
	if f.fd < 0 {
		return
	}
	if queued && !f.known {
		fi, err := f.tr.identify(f.fd, f.path)
		switch {
		case err != nil:
			// Left to the identify of the attempt that takes the lock,
			// which reports it before anything is written.
		case fi.nlink == 0:
			f.close()
		default:
			f.dev, f.ino, f.known = fi.dev, fi.ino, true
		}
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err == nil && st.Nlink == 0 {
		f.close()
	}
}

// remove removes the lock file f holds exclusively, whose path still names
// it (the caller checked both), if nobody else needs it. It removes the
// file only
//
//   - with queue set (the file keeps a waiters' queue), while no waiter
//     holds a ticket in it, and it gates the queue (an OFD lock of the whole
//     queue, taken only if no ticket is there, which makes a waiter that
//     would join now wait and join the next file) until the file is closed:
//     no waiter's ticket is ever left in a removed file;
//   - with counter set (the file keeps a fencing counter), while the wall
//     clock is past the stored counter, so that the next token, floored on
//     the clock and taken from a new file, still exceeds every token given.
//
// Anyone else who has the old file open and locks it after the removal
// finds that the path no longer names it (see lockNamed) and opens the new
// one, so removal never lets two holders in. It reports whether it removed
// the file; the caller closes f after.
func (f *lockFile) remove(queue, counter bool) bool {
	if counter {
		var buf counterBuf
		// A corrupt counter is left to the next holder's error.
		if stored, err := readCounter(f.fd, f.path, &buf); err != nil || !removable(stored) {
			return false
		}
	}
	if queue {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: gateStart}
		if err := fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk); err != nil {
			return false // a waiter holds a ticket (or the queue cannot be gated)
		}
	}
	for {
		err := unix.Unlink(f.path)
		if err == nil {
			// The file is nobody's now: its close drops the lock (and the
			// gate), and a waiter that has it open finds it has no name
			// (see dropIfOrphan) without trying it: no unlock first.
			f.held = false
			return true
		}
		if !errors.Is(err, unix.EINTR) {
			return false
		}
	}
}

// removeIdle removes the lock file path if nobody holds it or waits for
// it: it opens the file (never creating it), locks it exclusively without
// waiting, checks that the path still names it and that it is a lock file
// of this backend's (see trust.check), and removes it as remove says. While
// it holds the lock (a few system calls), a try of the name fails as if
// another holder held it; a waiter waits for the close.
func removeIdle(path string, tr *trust, queue, counter bool) bool {
	fd, err := openRetry(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return false // gone already, or not ours to open
	}
	f := lockFile{path: path, tr: tr, fd: fd}
	defer f.close()
	if flockRetry(fd, unix.LOCK_EX|unix.LOCK_NB) != nil {
		return false // held: its holder notes it again as it lets go
	}
	f.held = true
	if same, err := f.named(); err != nil || !same {
		return false
	}
	return f.remove(queue, counter)
}

// identify learns the identity of the open file, and checks it (see
// trust.check), if not done yet. It runs before anything is written to the
// file.
func (f *lockFile) identify() error {
	if f.known {
		return nil
	}
	fi, err := f.tr.identify(f.fd, f.path)
	if err != nil {
		return err
	}
	f.dev, f.ino, f.known = fi.dev, fi.ino, true
	return nil
}

// close drops the lock held through the file and the waiter's ticket, if
// any, and closes it (a waiter that reopens the file keeps its place; see
// leave). The explicit unlocks come first: the kernel announces a close
// (inotify) before it drops the locks of the closed file, and a waiter
// woken by the announcement must find the lock free and the ticket gone.
func (f *lockFile) close() {
	if f.fd < 0 {
		return
	}
	if f.held {
		_ = flockRetry(f.fd, unix.LOCK_UN)
	}
	if f.ticket != 0 {
		f.dropTicket()
	}
	unix.Close(f.fd)
	f.fd, f.held = -1, false
}

// named reports whether f's path still names the file f has open (which
// must be a regular file).
func (f *lockFile) named() (bool, error) {
	if err := f.identify(); err != nil {
		return false, err
	}
	return stillNamedZ(f.path, f.zpath, f.dev, f.ino)
}

// lockNamed opens the lock file if needed and takes a lock on it with
// lock, which reports false when the lock is busy. On success it checks that
// the path still names the locked file; if the file was removed or replaced
// meanwhile, it locks the file that now has the name instead. When the lock
// is busy the file stays open (for a waiter's next attempt). pfile.lock
// (portable) has the same loop, kept apart on purpose (see there).
func (f *lockFile) lockNamed(mode uint32, lock func(fd int) (bool, error)) (bool, error) {
	for range maxReplaced {
		if f.fd < 0 {
			if err := f.open(mode); err != nil {
				return false, err
			}
		}
		ok, err := lock(f.fd)
		if err != nil || !ok {
			return false, err
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

// tryFlock makes one non-blocking flock attempt (how is LOCK_EX or LOCK_SH)
// on the lock file, as lockNamed describes. With queued, the attempt is
// made only if the waiters' queue lets it (see queueBusy): a try fails
// while anyone waits, a waiter while an older one it must not pass waits.
func (f *lockFile) tryFlock(how int, mode uint32, queued bool) (bool, error) {
	return f.lockNamed(mode, func(fd int) (bool, error) {
		if queued {
			if busy, err := f.queueBusy(); busy || err != nil {
				return false, err
			}
		}
		if err := flockRetry(fd, how|unix.LOCK_NB); err != nil {
			if errors.Is(err, unix.EWOULDBLOCK) {
				return false, nil
			}
			return false, fmt.Errorf("flock %s: %w", f.path, err)
		}
		if f.withUpgrade {
			ok, err := lockUpgradeByte(fd)
			if err != nil || !ok {
				_ = flockRetry(fd, unix.LOCK_UN)
				if err != nil {
					err = fmt.Errorf("lock the upgrade byte of %s: %w", f.path, err)
				}
				return false, err
			}
		}
		return true, nil
	})
}

// stillNamed reports whether path names the file (dev, ino) without
// following a final symbolic link. A missing path is (false, nil).
func stillNamed(path string, dev, ino uint64) (bool, error) {
	var st unix.Stat_t
	for {
		err := unix.Lstat(path, &st)
		if err == nil {
			return uint64(st.Dev) == dev && uint64(st.Ino) == ino, nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return false, nil
		}
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
}

func openRetry(path string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Open(path, flags, mode)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func fcntlRetry(fd, cmd int, lk *unix.Flock_t) error {
	for {
		err := unix.FcntlFlock(uintptr(fd), cmd, lk)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// syncHandle is fdatasync (the portable implementation, which also
// builds for systems without it, uses fsync).
func syncHandle(h handle) error { return unix.Fdatasync(h) }

func hostUint32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

// cString returns b up to its first NUL byte.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
