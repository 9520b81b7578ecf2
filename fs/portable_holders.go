//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/dlock-go/dlock/backend"
)

// Holder records in the portable implementation (see holders.go): whole-file
// locks cannot mark one slot of a file, so an exclusive holder's record is
// live while its lock file is locked exclusively, and a reader keeps its
// record in a file of its own (rh-NAME+i), which it holds exclusively for
// as long as it holds the read lock.

// claimRecord gives the reader holding f a record file: the first of
// rh-NAME+1, +2, ... it can lock exclusively, kept open with f (the last
// of f's side files: an upgradeable reader's u-NAME comes first) and
// closed with it. It writes rec there.
func (b *Backend) claimRecord(f *pfile, name string, rec []byte) error {
	prefix := b.path(kindRWHolder, name)
	for i := 1; i < maxRecordSlots; i++ {
		hf := newPFile(slotName(prefix, i), &b.trust)
		ok, err := hf.lock(true, true, b.mode())
		if err != nil {
			return err
		}
		if !ok {
			hf.close()
			continue
		}
		if err := writeRecord(hf.h, hf.path, 0, rec); err != nil {
			hf.close()
			return err
		}
		tail := f
		for tail.side != nil {
			tail = tail.side
		}
		tail.side = &hf
		return nil
	}
	return nil // every slot taken: this reader has no record
}

// DescribeLock implements backend.LockDescriber: the holder of the mutex
// name, as it recorded itself, or none. While the mutex is free it takes
// its lock file shared for a moment (whole-file locks cannot be tested
// otherwise): a try of the name in that moment fails as if it were held.
func (b *Backend) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	if err := b.describeBegin(name); err != nil {
		return nil, err
	}
	return b.describeFile(b.path(kindMutex, name), false, nil)
}

// DescribeRW implements backend.RWDescriber: the writer of the RW lock
// name, or its readers (Shared set), as they recorded themselves. It
// takes the lock file shared for a moment, as DescribeLock does, and
// reads the directory to find the readers' record files.
func (b *Backend) DescribeRW(ctx context.Context, name string) ([]backend.Holder, error) {
	if err := b.describeBegin(name); err != nil {
		return nil, err
	}
	hs, err := b.describeFile(b.path(kindRW, name), false, nil)
	if err != nil || len(hs) > 0 {
		return hs, err
	}
	d, err := os.Open(b.dir)
	if err != nil {
		return nil, classify(fmt.Errorf("read lock directory %s: %w", b.dir, err))
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, classify(fmt.Errorf("read lock directory %s: %w", b.dir, err))
	}
	prefix := b.path(kindRWHolder, name)[len(b.prefix):]
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		if i, err := strconv.Atoi(rest); err != nil || i < 1 || strconv.Itoa(i) != rest {
			continue
		}
		if hs, err = b.describeFile(b.prefix+n, true, hs); err != nil {
			return nil, err
		}
	}
	return hs, nil
}

// describeExclusive appends to hs the exclusive holder recorded in the
// lock file path, if it holds (a semaphore's slot: see describeFile, a free
// slot is taken for a moment).
func (b *Backend) describeExclusive(path string, hs []backend.Holder) ([]backend.Holder, error) {
	return b.describeFile(path, false, hs)
}

// describeFile appends to hs the holder recorded in slot 0 of the file
// path if someone holds the file exclusively (a shared lock of it, tried
// without waiting, fails); shared marks a reader's record file.
func (b *Backend) describeFile(path string, shared bool, hs []backend.Holder) ([]backend.Holder, error) {
	h, err := openHandle(path, false, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || busyOpen(err) {
			return hs, nil // never locked, removed while idle, or being removed
		}
		return nil, classify(err)
	}
	defer closeHandle(h)
	fi, err := statHandle(h)
	if err != nil {
		return nil, classify(fmt.Errorf("stat lock file %s: %w", path, err))
	}
	if err := b.trust.check(path, &fi); err != nil {
		return nil, backend.Permanent(err)
	}
	free, err := lockHandle(h, false)
	if err != nil {
		return nil, classify(fmt.Errorf("lock %s: %w", path, err))
	}
	if free {
		_ = unlockHandle(h)
		return hs, nil
	}
	hd := readRecord(h, 0)
	hd.Shared = shared
	return append(hs, hd), nil
}
