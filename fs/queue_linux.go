//go:build linux && !dlock_portable

package fs

import (
	"errors"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/sys/unix"
)

// The waiters' queue of a lock lives in its lock file (for a semaphore, in
// slot 0), as OFD locks of one byte each, past every byte the file will
// ever hold: a waiter's ticket is the byte queueBase+t, where t is the
// system's monotonic clock (in nanoseconds) when it began to wait. Nothing
// is written to the file, and no other file is made. OFD locks belong to an
// open file description, like the flock of a holder (on Linux the two
// kinds never interact): a waiter that gives up unlocks its byte (and
// closes the file, which wakes the others through inotify), and a waiter
// that dies loses its byte with its descriptors, so a dead waiter blocks
// nobody.
//
// A waiter takes the lock only when no older ticket is left (one
// F_OFD_GETLK over the bytes before its own), a try only when there is no
// ticket at all (one F_OFD_GETLK over the whole queue): nobody jumps the
// queue. A reader's ticket is a read lock, everyone else's a write lock, so
// that a reader's test (for a read lock) sees only older writers' tickets,
// and a writer's sees every older ticket: readers that arrived before a
// waiting writer go in before it, together, and readers that arrive after
// it wait behind it.
const queueBase = 1 << 32

// gateStart is where a holder that removes the lock file as it lets go
// gates the queue: an OFD write lock from gateStart to the end of the file
// (see lockFile.remove), which it can take only while no ticket is there
// and which keeps tickets out until the removed file is closed. The byte
// before the queue makes it unlike any ticket: a waiter that meets it opens
// the file that has the name next, a try (which never holds a ticket) does
// not count it as a waiter.
const gateStart = queueBase - 1

// errGated is placeTicket's answer when the file is being removed.
var errGated = errors.New("lock file is being removed")

// isGate reports whether lk, a lock F_OFD_GETLK found, is a removal's gate.
func isGate(lk *unix.Flock_t) bool {
	return lk.Pid == -1 && lk.Start == gateStart && lk.Len == 0
}

// maxTicketMoves bounds how far a waiter moves its ticket past tickets
// taken at the same nanosecond.
const maxTicketMoves = 1 << 12

// monotonicNow returns the system's monotonic clock in nanoseconds, which
// every process of the machine shares, at least 1.
func monotonicNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 1 // cannot fail on Linux; a ticket of 1 is still a valid one
	}
	return max(ts.Nano(), 1)
}

// join puts f's waiter in the queue with a ticket of type typ (F_RDLCK for
// a reader, F_WRLCK otherwise) stamped now. From here on, every attempt on
// f lets older tickets go first, and whenever f is (re)opened the ticket
// is placed on the new descriptor, keeping its place.
func (f *lockFile) join(typ int16) error {
	f.ticket, f.ticketType = monotonicNow(), typ
	if f.fd < 0 {
		return nil // open places it
	}
	if err := f.placeTicket(); err != nil {
		if errors.Is(err, errGated) {
			// The file is being removed: the next attempt opens the one
			// that has the name then, and places the ticket there.
			f.close()
			return nil
		}
		f.ticket = 0
		return err
	}
	return nil
}

// placeTicket takes f's ticket on f.fd, moving it up past tickets of other
// waiters that began at the same nanosecond.
func (f *lockFile) placeTicket() error {
	for range maxTicketMoves {
		lk := unix.Flock_t{Type: f.ticketType, Whence: io.SeekStart, Start: queueBase + f.ticket, Len: 1}
		err := fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("join the waiters' queue of %s: %w", f.path, err)
		}
		// Taken: by another waiter's ticket, or by a lock that is none?
		lk = unix.Flock_t{Type: f.ticketType, Whence: io.SeekStart, Start: queueBase + f.ticket, Len: 1}
		if err := fcntlRetry(f.fd, unix.F_OFD_GETLK, &lk); err != nil {
			return fmt.Errorf("test the waiters' queue of %s: %w", f.path, err)
		}
		if lk.Type == unix.F_UNLCK {
			continue // let go in the meantime: try the same byte again
		}
		if isGate(&lk) {
			return errGated
		}
		if err := f.checkTicket(&lk); err != nil {
			return err
		}
		f.ticket++
	}
	return fmt.Errorf("join the waiters' queue of %s: %d tickets in a row are taken", f.path, maxTicketMoves)
}

// leave takes f's waiter out of the queue: it unlocks its ticket. Whoever
// waits behind it learns of it at its next attempt (a close of the file
// wakes them).
func (f *lockFile) leave() {
	if f.ticket == 0 {
		return
	}
	if f.fd >= 0 {
		f.dropTicket()
	}
	f.ticket = 0
}

// dropTicket unlocks every byte of the queue f.fd holds.
func (f *lockFile) dropTicket() {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart, Start: queueBase}
	_ = fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk)
}

// queueBusy reports whether f's attempt must let others go first: for a
// waiter, whether a ticket older than its own that it must not pass is
// held (for a reader: an older writer's); for a try (no ticket), whether
// anyone waits at all. It costs one F_OFD_GETLK. It remembers the answer
// in f.behind.
func (f *lockFile) queueBusy() (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: queueBase}
	if f.ticket != 0 {
		lk.Type, lk.Len = f.ticketType, f.ticket
	}
	if err := fcntlRetry(f.fd, unix.F_OFD_GETLK, &lk); err != nil {
		return false, fmt.Errorf("test the waiters' queue of %s: %w", f.path, err)
	}
	if lk.Type == unix.F_UNLCK || isGate(&lk) {
		// Nobody waits (a gate is only ever taken while no ticket is
		// there: its holder is letting go, and the flock decides).
		f.behind = false
		return false, nil
	}
	if err := f.checkTicket(&lk); err != nil {
		return false, err
	}
	f.behind = true
	return true, nil
}

// checkTicket returns an error unless lk, a lock F_OFD_GETLK found in the
// queue, can be another waiter's ticket: an OFD lock (pid -1) of one byte
// within the queue. A classic fcntl (POSIX) lock of any process, or an OFD
// lock of a whole range, is not dlock's: a wait would never end and no try
// would succeed, so it is reported at once.
func (f *lockFile) checkTicket(lk *unix.Flock_t) error {
	if lk.Pid == -1 && lk.Start >= queueBase && lk.Len == 1 {
		return nil
	}
	who := "an open file description (OFD lock)"
	if lk.Pid != -1 {
		who = fmt.Sprintf("process %d (fcntl record lock)", lk.Pid)
	}
	end := "end of file and beyond"
	if lk.Len != 0 {
		end = fmt.Sprint(lk.Start + lk.Len)
	}
	return fmt.Errorf("lock file %s: bytes %d to %s are locked by %s, which is not a waiter of this backend: it would block every waiter and try: refused (remove the lock or the process holding it)", f.path, lk.Start, end, who)
}

// wake makes the inotify event that wakes the waiters of f's lock: it opens
// the file f has open once more (through /proc/self/fd, so it is surely
// that file) and closes it. A semaphore's waiter calls it when it leaves
// the queue with a ticket, so that the next waiter, who let it go first,
// tries the slots still free: no close of a slot file may follow.
func (f *lockFile) wake() {
	if f.fd < 0 {
		return
	}
	fd, err := openRetry("/proc/self/fd/"+strconv.Itoa(f.fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err == nil {
		unix.Close(fd)
	}
}
