package fs

import (
	"fmt"
	"os"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// ErrClosed is returned by the methods of a Backend after Close. It is
// backend.ErrClosed (and dlock.ErrClosed), which every backend returns.
var ErrClosed = backend.ErrClosed

// Option configures a Backend made by New.
type Option func(*config)

type config struct {
	fileMode     os.FileMode
	dirMode      os.FileMode
	lossInterval time.Duration
	waitFallback time.Duration
	fencing      bool
	sync         bool
	sharedGroup  bool
	fileModeSet  bool // WithFileMode was given
}

func defaultConfig() config {
	return config{
		fileMode:     0o600,
		dirMode:      0o700,
		lossInterval: time.Second,
		waitFallback: time.Second,
		fencing:      true,
	}
}

func (c *config) validate() error {
	if c.fileMode&^os.ModePerm != 0 || c.fileMode&0o600 != 0o600 {
		return fmt.Errorf("fs: %w: file mode %v: want permission bits only, including owner read and write (0600)", backend.ErrInvalidOption, c.fileMode)
	}
	if c.dirMode&^os.ModePerm != 0 || c.dirMode&0o700 != 0o700 {
		return fmt.Errorf("fs: %w: directory mode %v: want permission bits only, including owner rwx (0700)", backend.ErrInvalidOption, c.dirMode)
	}
	if c.dirMode&0o002 != 0 {
		return fmt.Errorf("fs: %w: directory mode %v: a world-writable lock directory is refused", backend.ErrInvalidOption, c.dirMode)
	}
	if c.dirMode&0o020 != 0 && !c.sharedGroup {
		return fmt.Errorf("fs: %w: directory mode %v: a group-writable lock directory is refused unless WithSharedGroup", backend.ErrInvalidOption, c.dirMode)
	}
	if c.lossInterval <= 0 {
		return fmt.Errorf("fs: %w: loss interval %v: must be positive", backend.ErrInvalidOption, c.lossInterval)
	}
	if c.waitFallback <= 0 {
		return fmt.Errorf("fs: %w: wait fallback %v: must be positive", backend.ErrInvalidOption, c.waitFallback)
	}
	return nil
}

// WithFileMode sets the permission bits of lock files the backend creates
// (default 0600; the process umask applies, as for os.OpenFile). The mode
// must include owner read and write. Existing files keep their mode.
func WithFileMode(mode os.FileMode) Option {
	return func(c *config) { c.fileMode, c.fileModeSet = mode, true }
}

// WithSharedGroup lets the users of one group share a lock directory. By
// default New refuses a group-writable lock directory (a member of its
// group could remove or replace lock files), one owned by another user,
// and every lock file not owned by this process's effective uid. With
// WithSharedGroup:
//
//   - the lock directory may be group-writable (make it mode 2770:
//     set-group-ID, so that lock files get its group) and may be owned by
//     another user, if this process is a member of its group (effective or
//     supplementary gid); it must still not be world-writable, and its
//     ancestors are checked as always;
//   - a lock file is accepted if this process's uid or the directory's
//     group owns it (still never a file with more than one hard link);
//   - lock files are created with mode 0660 unless WithFileMode says
//     otherwise, so that the other members can open them; a lock file of
//     this user whose mode lacks bits of it (the umask took them) is given
//     them (fchmod) when it is first locked.
//
// Who is then trusted: the directory's owner and every member of its group,
// as much as this process's own user. Any of them can remove or replace a
// lock file, which makes its holder lose the lock (reported through Lost),
// and can plant a file of the group under a lock file's name, which is then
// locked and its fencing counter written. Use it only for a group whose
// members all run cooperating dlock users.
func WithSharedGroup() Option {
	return func(c *config) { c.sharedGroup = true }
}

// WithDirMode sets the permission bits of the lock directory (and missing
// parents) when New creates it (default 0700; the umask applies). It must
// include owner rwx and must not be world-writable. An existing directory
// keeps its mode.
func WithDirMode(mode os.FileMode) Option {
	return func(c *config) { c.dirMode = mode }
}

// WithLossInterval sets how often held leases are checked for loss: that the
// path of each lock file still names the file that is locked (default 1 s).
// Removal or renaming of a lock file inside the directory is noticed at once
// through inotify; the interval bounds the detection of every other change
// (the directory itself moved or replaced, a missed notification).
func WithLossInterval(d time.Duration) Option {
	return func(c *config) { c.lossInterval = d }
}

// WithWaitFallback bounds how long a waiter sleeps without hearing of a
// release before it tries again anyway (default 1 s). Waiters normally learn
// of a release at once through inotify; the fallback only covers a
// notification that cannot arrive (inotify unavailable, its queue
// overflowed, the lock file replaced).
func WithWaitFallback(d time.Duration) Option {
	return func(c *config) { c.waitFallback = d }
}

// WithFencing turns fencing tokens on (the default) or off. Off saves a read
// and a write of the counter on every acquisition (and, for read locks, the
// brief OFD lock of the counter; for semaphores, the brief lock of a counter
// file); leases then report token 0.
func WithFencing(on bool) Option {
	return func(c *config) { c.fencing = on }
}

// WithSync makes every fencing-counter update durable (fdatasync) before the
// lease is handed out (default off). Without it a counter survives the
// restart of any process but may lose its last updates in an operating
// system crash; tokens still increase after such a crash unless the wall
// clock also went backwards (see the package documentation).
func WithSync(on bool) Option {
	return func(c *config) { c.sync = on }
}
