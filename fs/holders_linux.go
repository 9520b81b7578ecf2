//go:build linux && !dlock_portable

package fs

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
)

// Which records are live: each holder keeps an OFD lock of one byte, its
// mark, at markBase+slot in the file it locks, taken through its own
// descriptor, so it goes with the holder's close or death. An exclusive
// holder writes its record (slot 0) first and then takes the write mark 0.
// A reader claims the first slot i > 0 whose mark it can take as a write
// lock, writes its record there, then turns its mark into a read lock: a
// describer lists a slot only while its mark is read-locked (a reader's)
// or, for slot 0, locked at all, so it never lists a record its holder
// has not finished writing, nor one whose holder let go or died. The
// marks lie between the fencing counter's bytes and the removal gate (see
// gateStart), apart from the tickets of the waiters' queue.
const markBase = 1 << 31

// setMark locks (typ F_WRLCK or F_RDLCK) or unlocks (F_UNLCK) the mark of
// slot through fd. It reports false when another holder's mark is in the
// way.
func setMark(fd, slot int, typ int16) (bool, error) {
	lk := unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: markBase + int64(slot), Len: 1}
	err := fcntlRetry(fd, unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return false, nil
	}
	return err == nil, err
}

// claimSlot claims a reader's record slot in the file open as fd: the
// first slot i > 0 whose mark it can write-lock. It returns -1 when every
// slot is taken.
func claimSlot(fd int, path string) (int, error) {
	for i := 1; i < maxRecordSlots; i++ {
		ok, err := setMark(fd, i, unix.F_WRLCK)
		if err != nil {
			return -1, fmt.Errorf("claim a holder record slot of %s: %w", path, err)
		}
		if ok {
			return i, nil
		}
	}
	return -1, nil
}

// record writes the holder record rec of the lease's file f, which holds
// its lock, and marks it live: for a reader in a slot it claims (slot is
// -1 if none was free: no record), for an exclusive holder in slot 0.
// written says rec went with the fencing counter already.
func record(f *lockFile, slot int, rec []byte, written bool) error {
	if slot < 0 {
		return nil
	}
	if !written {
		if err := writeRecord(f.fd, f.path, slot, rec); err != nil {
			return err
		}
	}
	typ := int16(unix.F_WRLCK)
	if slot > 0 {
		typ = unix.F_RDLCK // a reader's slot, claimed with a write lock
	}
	// An exclusive holder's mark may still be its predecessor's, which
	// unlocked its flock and is closing the file (see lockFile.close).
	err := briefly(f.path, "the holder mark stayed locked", func() (bool, error) {
		return setMark(f.fd, slot, typ)
	})
	if err != nil {
		return fmt.Errorf("mark the holder record of %s: %w", f.path, err)
	}
	return nil
}

// DescribeLock implements backend.LockDescriber: the holder of the mutex
// name, as it recorded itself, or none. It takes no lock: it opens the
// lock file (if there is one; never creating it), tests the holder's mark
// with F_OFD_GETLK and reads the record.
func (b *Backend) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	if err := b.describeBegin(name); err != nil {
		return nil, err
	}
	return b.describe(b.prefix+fileName(kindMutex, name), true, false, nil)
}

// DescribeRW implements backend.RWDescriber: the readers of the RW lock
// name (Shared set; an upgradeable reader among them) or its writer, as
// they recorded themselves.
func (b *Backend) DescribeRW(ctx context.Context, name string) ([]backend.Holder, error) {
	if err := b.describeBegin(name); err != nil {
		return nil, err
	}
	return b.describe(b.prefix+fileName(kindRW, name), true, true, nil)
}

// describeExclusive appends to hs the exclusive holder recorded in the
// lock file path, if it holds (a semaphore's slot).
func (b *Backend) describeExclusive(path string, hs []backend.Holder) ([]backend.Holder, error) {
	return b.describe(path, true, false, hs)
}

// path is the path of the file of kind k for name (for kindSemSlot, the
// prefix of its slot files).
func (b *Backend) path(k kind, name string) string { return b.prefix + fileName(k, name) }

// describe appends to hs the live holders recorded in the lock file path:
// its exclusive holder's (slot 0), and with readers its readers'.
func (b *Backend) describe(path string, exclusive, readers bool, hs []backend.Holder) ([]backend.Holder, error) {
	fd, err := openRetry(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return hs, nil // never locked, or removed while idle
		}
		if errors.Is(err, unix.ELOOP) {
			return nil, backend.Permanent(fmt.Errorf("lock file %s is a symbolic link: refusing to follow it: %w", path, err))
		}
		return nil, classify(fmt.Errorf("open lock file %s: %w", path, err))
	}
	defer unix.Close(fd)
	fi, err := statHandle(fd)
	if err != nil {
		return nil, classify(fmt.Errorf("stat lock file %s: %w", path, err))
	}
	if err := b.trust.check(path, &fi); err != nil {
		return nil, backend.Permanent(err)
	}
	if exclusive {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: markBase, Len: 1}
		if err := fcntlRetry(fd, unix.F_OFD_GETLK, &lk); err != nil {
			return nil, classify(fmt.Errorf("test holder mark of %s: %w", path, err))
		}
		if lk.Type != unix.F_UNLCK {
			hs = append(hs, readRecord(fd, 0))
		}
	}
	if readers {
		return readersOf(fd, path, markBase+1, markBase+maxRecordSlots, hs)
	}
	return hs, nil
}

// readersOf appends to hs the readers whose marks lie in [lo, hi) of the
// file open as fd: F_OFD_GETLK finds one lock in a range, and the search
// goes on on either side of it (about two calls per reader).
func readersOf(fd int, path string, lo, hi int64, hs []backend.Holder) ([]backend.Holder, error) {
	if lo >= hi {
		return hs, nil
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: lo, Len: hi - lo}
	if err := fcntlRetry(fd, unix.F_OFD_GETLK, &lk); err != nil {
		return nil, classify(fmt.Errorf("test holder marks of %s: %w", path, err))
	}
	if lk.Type == unix.F_UNLCK {
		return hs, nil
	}
	start, end := max(lk.Start, lo), hi
	if lk.Len != 0 {
		end = min(lk.Start+lk.Len, hi)
	}
	var err error
	if hs, err = readersOf(fd, path, lo, start, hs); err != nil {
		return nil, err
	}
	if lk.Type == unix.F_RDLCK && lk.Len == 1 && lk.Pid == -1 {
		h := readRecord(fd, int(lk.Start-markBase))
		h.Shared = true
		hs = append(hs, h)
	}
	return readersOf(fd, path, end, hi, hs)
}
