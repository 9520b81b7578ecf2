//go:build linux && !dlock_portable

package fs

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// monitor is the backend's one background goroutine: it watches the lock
// directory through inotify, wakes waiters when a file they wait for is
// closed, and checks held leases for loss (at once when a lock file is
// removed or renamed, and every lossInterval in any case). It runs while
// leases are held or waits are in progress, and exits after a quiet
// interval or at Close.
type monitor struct {
	b       *Backend
	f       *os.File        // the inotify instance; nil if unavailable
	raw     syscall.RawConn // f's raw connection, for updating the watch
	closeOn bool            // the watch includes close events
}

const (
	lossMask  = unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW
	closeMask = unix.IN_CLOSE_WRITE | unix.IN_CLOSE_NOWRITE
)

// ensureMonitorLocked starts the monitor if none runs and, when waiting is
// set, makes sure its watch reports close events before returning. b.mu is
// held.
func (b *Backend) ensureMonitorLocked(waiting bool) {
	m := b.mon
	if m == nil {
		m = &monitor{b: b}
		m.open()
		b.mon = m
		b.wg.Add(1)
		go m.run()
	}
	if waiting && !m.closeOn && m.f != nil {
		if m.setMask(lossMask | closeMask) {
			m.closeOn = true
		}
	}
}

// open creates the inotify instance. Failure (say, the per-user limit of
// instances is reached) leaves f nil: leases are then checked every
// interval and waiters rely on their fallback timer.
func (m *monitor) open() {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return
	}
	if _, err := unix.InotifyAddWatch(fd, m.b.dir, lossMask); err != nil {
		unix.Close(fd)
		return
	}
	f := os.NewFile(uintptr(fd), "inotify:"+m.b.dir)
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return
	}
	m.f, m.raw = f, raw
}

// setMask replaces the watch's event mask. b.mu is held.
func (m *monitor) setMask(mask uint32) bool {
	var werr error
	err := m.raw.Control(func(fd uintptr) {
		_, werr = unix.InotifyAddWatch(int(fd), m.b.dir, mask)
	})
	return err == nil && werr == nil
}

func (m *monitor) run() {
	b := m.b
	defer b.wg.Done()
	defer func() {
		// Closing an inotify instance takes milliseconds (the kernel waits
		// for a grace period): never do it under b.mu.
		if m.f != nil {
			m.f.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	next := time.Now().Add(b.cfg.lossInterval)
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	if m.f == nil {
		t = time.NewTimer(b.cfg.lossInterval)
	}
	idle := false
	for {
		if m.f != nil {
			_ = m.f.SetReadDeadline(next)
			n, err := m.f.Read(buf)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				select {
				case <-b.stopc:
					return
				default:
				}
				// The instance broke: carry on with the timer alone.
				b.mu.Lock()
				f := m.f
				m.f = nil
				b.mu.Unlock()
				f.Close()
				t = time.NewTimer(time.Until(next))
			}
			if n > 0 {
				m.dispatch(buf[:n])
			}
		} else {
			t.Reset(time.Until(next))
			select {
			case <-b.stopc:
				return
			case <-t.C:
			}
		}
		select {
		case <-b.stopc:
			return
		default:
		}
		if now := time.Now(); !now.Before(next) {
			next = now.Add(b.cfg.lossInterval)
			b.checkLeases(nil)
			if m.tick(&idle) {
				return
			}
		}
	}
}

// tick runs once per interval: it turns close events off when nobody waits,
// and ends the monitor after an interval with neither leases nor waiters.
func (m *monitor) tick(idle *bool) (exit bool) {
	b := m.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return true
	}
	if b.nwait == 0 && m.closeOn && m.f != nil {
		if m.setMask(lossMask) {
			m.closeOn = false
		}
	}
	b.rotateIdleLocked()
	if len(b.leases) > 0 || b.nwait > 0 || b.idle.pending() {
		*idle = false
		return false
	}
	if !*idle {
		*idle = true
		return false
	}
	b.mon = nil // run closes the instance on its way out
	return true
}

// dispatch handles a batch of inotify events.
func (m *monitor) dispatch(buf []byte) {
	b := m.b
	var gone []string // names removed or renamed
	all := false
	var wake []*waiter
	b.mu.Lock()
	for len(buf) >= unix.SizeofInotifyEvent {
		mask := hostUint32(buf[4:8])
		nlen := int(hostUint32(buf[12:16]))
		end := unix.SizeofInotifyEvent + nlen
		if end > len(buf) {
			break
		}
		name := cString(buf[unix.SizeofInotifyEvent:end])
		buf = buf[end:]
		switch {
		case mask&(unix.IN_Q_OVERFLOW|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
			all = true
		case mask&closeMask != 0:
			wake = b.afterCloseLocked(wake, name)
		case mask&(unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO) != 0:
			gone = append(gone, name)
			// A holder that lets go removes its lock file when nobody
			// waits; a waiter about to join must move to the new file.
			wake = b.afterCloseLocked(wake, name)
		}
	}
	if all {
		for _, m := range b.waiters {
			for w := range m {
				wake = append(wake, w)
			}
		}
	}
	b.mu.Unlock()
	for _, w := range wake {
		w.signal()
	}
	if all {
		b.checkLeases(nil)
	} else if len(gone) > 0 {
		b.checkLeases(gone)
	}
}

// checkLeases verifies that the path of each held lease (of those whose file
// name is in only, or of all when only is nil) still names its locked file,
// and reports loss for those whose does not.
func (b *Backend) checkLeases(only []string) {
	var names map[string]bool
	if only != nil {
		names = make(map[string]bool, len(only))
		for _, n := range only {
			names[n] = true
		}
	}
	b.mu.Lock()
	var check []*Lease
	for l := range b.leases {
		if only == nil || names[l.file] {
			check = append(check, l)
		}
	}
	b.mu.Unlock()
	for _, l := range check {
		if same, _ := stillNamed(l.path, l.dev, l.ino); !same {
			b.unregister(l)
			l.markLost()
		}
	}
}

// afterCloseLocked appends to wake the waiters that a close of the lock
// file name may let in; b.mu is held.
func (b *Backend) afterCloseLocked(wake []*waiter, name string) []*waiter {
	wake = appendNext(wake, b.waiters[name])
	if k := slotKey(name); k != "" {
		// A semaphore's waiters: the oldest takes a slot, then wakes the
		// next if others wait (see semLease).
		wake = appendNext(wake, b.waiters[k])
	}
	return wake
}

// appendNext appends to wake the waiters of m that may take the lock after
// a close of its file: every waiter without a ticket, and of those with
// one only those that can be next: every reader older than the oldest
// writer (readers that may go in together), and that writer if no reader
// is older. A mutex's waiters are all writers: only the oldest is woken.
// A younger waiter cannot go in before these take the lock or give up,
// and either is followed by a close (their release, their giving up) that
// wakes it then. Waking only these, not all, keeps a hot lock with many
// waiters in one process from spending its time on attempts that must
// fail. A waiter that is not woken still retries on its own timer.
func appendNext(wake []*waiter, m map[*waiter]struct{}) []*waiter {
	var writer *waiter // the oldest writer with a ticket
	readers := false
	for w := range m {
		switch {
		case w.ticket == 0:
			wake = append(wake, w)
		case w.reader:
			readers = true
		case writer == nil || w.ticket < writer.ticket:
			writer = w
		}
	}
	older := false // a reader older than writer waits
	if readers {
		for w := range m {
			if w.ticket != 0 && w.reader && (writer == nil || w.ticket < writer.ticket) {
				wake = append(wake, w)
				older = true
			}
		}
	}
	if writer != nil && !older {
		wake = append(wake, writer)
	}
	return wake
}
