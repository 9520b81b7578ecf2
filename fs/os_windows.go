//go:build windows

package fs

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/windows"
)

// The portable implementation's OS layer on Windows: LockFileEx on one
// byte far past any data (Windows byte-range locks are mandatory: a lock
// over the fencing counter would keep even its holder's readers from
// reading it), exclusive or shared. Locks belong to the file handle, so two
// holders inside one process exclude each other.

// handle is an open lock file.
type handle = windows.Handle

const noHandle = windows.InvalidHandle

// foldNames: NTFS and the other Windows file systems compare names
// without regard to case and strip trailing dots (see encodeFold).
const foldNames = true

// pathSep separates the lock directory from a file name.
const pathSep = `\`

// lockOffsetHigh puts the lock byte at offset 2^62.
const lockOffsetHigh = 1 << 30

// longPath returns p in the \\?\ form, which lifts the MAX_PATH limit
// (p is absolute and clean).
func longPath(p string) string {
	switch {
	case strings.HasPrefix(p, `\\?\`):
		return p
	case strings.HasPrefix(p, `\\`):
		return `\\?\UNC\` + p[2:]
	case len(p) >= 2 && p[1] == ':':
		return `\\?\` + p
	}
	return p
}

func openRaw(path string, access, disposition uint32) (handle, error) {
	p, err := windows.UTF16PtrFromString(longPath(path))
	if err != nil {
		return noHandle, err
	}
	return windows.CreateFile(p, access,
		windows.FILE_SHARE_READ|windows.FILE_SHARE_WRITE|windows.FILE_SHARE_DELETE,
		nil, disposition,
		windows.FILE_ATTRIBUTE_NORMAL|windows.FILE_FLAG_OPEN_REPARSE_POINT|windows.FILE_FLAG_BACKUP_SEMANTICS, 0)
}

// openHandle opens path for reading and writing, never following a
// reparse point (symbolic link, junction: it is opened itself, and refused
// by the regular-file check), creating it if create is set (mode is not
// used: the file inherits the directory's ACL). A missing path without
// create is an error matching os.ErrNotExist.
func openHandle(path string, create bool, mode uint32) (handle, error) {
	disp := uint32(windows.OPEN_EXISTING)
	if create {
		disp = windows.OPEN_ALWAYS
	}
	h, err := openRaw(path, windows.GENERIC_READ|windows.GENERIC_WRITE, disp)
	if err != nil {
		return noHandle, fmt.Errorf("open lock file %s: %w", path, err)
	}
	return h, nil
}

// openIfExists is openHandle without create, for a file that is usually
// missing: a missing path is (noHandle, nil), without building an error.
func openIfExists(path string) (handle, error) {
	h, err := openRaw(path, windows.GENERIC_READ|windows.GENERIC_WRITE, windows.OPEN_EXISTING)
	switch {
	case err == nil:
		return h, nil
	case errors.Is(err, windows.ERROR_FILE_NOT_FOUND), errors.Is(err, windows.ERROR_PATH_NOT_FOUND):
		return noHandle, nil
	}
	return noHandle, fmt.Errorf("open lock file %s: %w", strings.Clone(path), err) // path stays the caller's
}

func lockHandle(h handle, exclusive bool) (bool, error) {
	flags := uint32(windows.LOCKFILE_FAIL_IMMEDIATELY)
	if exclusive {
		flags |= windows.LOCKFILE_EXCLUSIVE_LOCK
	}
	ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
	err := windows.LockFileEx(h, flags, 0, 1, 0, &ol)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, windows.ERROR_LOCK_VIOLATION), errors.Is(err, windows.ERROR_IO_PENDING):
		return false, nil
	}
	return false, fmt.Errorf("LockFileEx: %w", err)
}

// convertHandle makes one non-blocking attempt to turn the shared lock
// held through h into an exclusive one. LockFileEx cannot convert: it lets
// go of the shared lock and tries the exclusive one, so when it fails
// (false, or an error) h holds no lock.
func convertHandle(h handle) (bool, error) {
	if err := unlockHandle(h); err != nil {
		return false, fmt.Errorf("UnlockFileEx: %w", err)
	}
	return lockHandle(h, true)
}

func unlockHandle(h handle) error {
	ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
	return windows.UnlockFileEx(h, 0, 1, 0, &ol)
}

func closeHandle(h handle) { windows.CloseHandle(h) }

// unlockOnClose is false: Windows may drop the locks of a closed handle
// some time after the close; unlock explicitly.
const unlockOnClose = false

func statHandle(h handle) (fileInfo, error) {
	var d windows.ByHandleFileInformation
	if err := windows.GetFileInformationByHandle(h, &d); err != nil {
		return fileInfo{}, err
	}
	const notRegular = windows.FILE_ATTRIBUTE_DIRECTORY | windows.FILE_ATTRIBUTE_REPARSE_POINT | windows.FILE_ATTRIBUTE_DEVICE
	return fileInfo{
		dev:     uint64(d.VolumeSerialNumber),
		ino:     uint64(d.FileIndexHigh)<<32 | uint64(d.FileIndexLow),
		regular: d.FileAttributes&notRegular == 0,
		nlink:   uint64(d.NumberOfLinks),
	}, nil
}

// statPath identifies the file path names, without following a reparse
// point. A missing path, or one whose file is being deleted (Windows keeps
// the name of a deleted file until its last handle closes, and refuses to
// open it), is (_, false, nil).
func statPath(path string) (fileInfo, bool, error) {
	h, err := openRaw(path, 0, windows.OPEN_EXISTING)
	switch {
	case errors.Is(err, windows.ERROR_FILE_NOT_FOUND), errors.Is(err, windows.ERROR_PATH_NOT_FOUND), errors.Is(err, windows.ERROR_ACCESS_DENIED):
		return fileInfo{}, false, nil
	case err != nil:
		return fileInfo{}, false, err
	}
	defer windows.CloseHandle(h)
	fi, err := statHandle(h)
	return fi, err == nil, err
}

func removePath(path string) error {
	p, err := windows.UTF16PtrFromString(longPath(path))
	if err != nil {
		return err
	}
	return windows.DeleteFile(p)
}

func readAt(h handle, p []byte, off int64) (int, error) {
	var n uint32
	ol := windows.Overlapped{Offset: uint32(off), OffsetHigh: uint32(off >> 32)}
	err := windows.ReadFile(h, p, &n, &ol)
	if errors.Is(err, windows.ERROR_HANDLE_EOF) {
		err = nil
	}
	return int(n), err
}

func writeAt(h handle, p []byte, off int64) (int, error) {
	var n uint32
	ol := windows.Overlapped{Offset: uint32(off), OffsetHigh: uint32(off >> 32)}
	err := windows.WriteFile(h, p, &n, &ol)
	return int(n), err
}

func syncHandle(h handle) error { return windows.FlushFileBuffers(h) }

func chmodHandle(h handle, perm uint32) error { return nil }

// transient are the errors that may heal by themselves: out of handles or
// memory, a full disk, a sharing violation (another program, such as a
// virus scanner, has the file open without sharing), and access denied,
// which is also what Windows answers for a lock file that another holder
// is deleting (it stays until its last handle closes).
var transient = []error{windows.ERROR_TOO_MANY_OPEN_FILES, windows.ERROR_NOT_ENOUGH_MEMORY, windows.ERROR_OUTOFMEMORY, windows.ERROR_NO_SYSTEM_RESOURCES, windows.ERROR_DISK_FULL, windows.ERROR_SHARING_VIOLATION, windows.ERROR_ACCESS_DENIED, windows.ERROR_LOCK_VIOLATION}

// busyOpen reports whether an error opening a lock file means only that
// the file is being deleted: Windows keeps the name of a deleted file until
// its last handle closes and refuses to open it meanwhile (access denied).
// The lock is then reported busy; a waiter tries again.
func busyOpen(err error) bool { return errors.Is(err, windows.ERROR_ACCESS_DENIED) }
