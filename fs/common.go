//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// What both implementations share: the Linux one (flock, OFD locks,
// inotify: *_linux.go, built on Linux without the tag dlock_portable) and
// the portable one (portable*.go, built elsewhere and with the tag). Each
// defines Backend, Lease (with the fields used here: cfg, mu, leases, closed
// of a Backend; b, path, token, lost, mu, state, loss and f of a Lease), the
// handle type of an open lock file with readAt, writeAt and syncHandle, and
// transient.

const (
	whatMutex = "mutex"
	whatRead  = "read lock"
	whatWrite = "write lock"
	whatSem   = "semaphore"

	whatUpgradeable = "upgradeable read lock"
)

var (
	_ backend.Locker[*Lease]          = (*Backend)(nil)
	_ backend.LockWaiter[*Lease]      = (*Backend)(nil)
	_ backend.RWLocker[*Lease]        = (*Backend)(nil)
	_ backend.RWWaiter[*Lease]        = (*Backend)(nil)
	_ backend.Semaphore[*Lease]       = (*Backend)(nil)
	_ backend.SemaphoreWaiter[*Lease] = (*Backend)(nil)
	_ backend.Fencer                  = (*Lease)(nil)
	_ backend.LossNotifier            = (*Lease)(nil)
	_ backend.LostChecker             = (*Lease)(nil)
)

// prepare is the start of New: the options applied and checked, and dir
// made absolute.
func prepare(dir string, opts []Option) (string, config, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.sharedGroup && !cfg.fileModeSet {
		cfg.fileMode = 0o660
	}
	if err := cfg.validate(); err != nil {
		return "", cfg, err
	}
	if dir == "" {
		return "", cfg, errors.New("fs: empty directory name")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", cfg, fmt.Errorf("fs: directory %q: %w", dir, err)
	}
	return abs, cfg, nil
}

// Dir returns the absolute path of the lock directory, with every symbolic
// link resolved on Unix: the path New checked, which the backend uses.
func (b *Backend) Dir() string { return b.dir }

// Close stops the backend's background work and frees every lease still
// held: each one's lock is dropped and its Lost channel closed (a callback
// running under it sees its ctx cancelled with cause backend.ErrLockLost; its
// Release returns an error wrapping backend.ErrLockLost). Waits in progress
// return ErrClosed, and so does every later call. Close then removes the
// lock files the backend let go of and had not removed yet, those that are
// idle (see the package documentation, Lock-file lifecycle). Close is
// idempotent.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.done.Store(true)
	close(b.stopc)
	stop := b.stopMonitorLocked()
	held := make([]*Lease, 0, len(b.leases))
	for l := range b.leases {
		held = append(held, l)
	}
	clear(b.leases)
	b.mu.Unlock()
	if stop != nil {
		stop()
	}
	b.wg.Wait()
	for _, l := range held {
		l.drop()
		b.noteFreed(l)
	}
	b.sweepIdle()
	return nil
}

func (b *Backend) mode() uint32 { return uint32(b.cfg.fileMode) }

// begin checks the arguments common to every acquisition.
func (b *Backend) begin(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil && name != "" {
		return fmt.Errorf("%w: %w", backend.ErrNotAcquired, err)
	}
	return b.describeBegin(name)
}

// semBegin checks the arguments common to every semaphore acquisition.
func (b *Backend) semBegin(ctx context.Context, name string, limit int) error {
	if err := b.begin(ctx, name); err != nil {
		return err
	}
	if limit < 1 {
		return backend.Permanent(fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit))
	}
	return nil
}

// classify marks err backend.Permanent unless it may heal by itself (see
// transient; a lock file that keeps being replaced) or is a wait's ctx
// ending: a local file system does not have outages, so a refused
// permission, a refused lock file (symbolic link, hard link, owner, not a
// regular file), a corrupt counter or a closed backend would fail every
// retry of a wait the same way.
func classify(err error) error {
	if err == nil || errors.Is(err, backend.ErrNotAcquired) || errors.Is(err, errReplaced) {
		return err
	}
	for _, t := range transient {
		if errors.Is(err, t) {
			return err
		}
	}
	return backend.Permanent(err)
}

// register records a new lease so that the monitor checks it. It fails (and
// the caller must free the lease's file) once the backend is closed.
func (b *Backend) register(l *Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.leases[l] = struct{}{}
	b.ensureMonitorLocked(false)
	return nil
}

// adopt registers the new lease l, which owns its open file l.f; once the
// backend is closed it frees the file and fails.
func (b *Backend) adopt(l *Lease) (*Lease, error) {
	if err := b.register(l); err != nil {
		l.f.close()
		return nil, classify(err)
	}
	return l, nil
}

// unregister forgets a lease.
func (b *Backend) unregister(l *Lease) {
	b.mu.Lock()
	delete(b.leases, l)
	b.mu.Unlock()
}

// The states of a lease.
const (
	leaseHeld uint8 = iota
	leaseLost
	leaseReleased
)

// Release gives the lock up: it drops the lock and closes the file, which
// stays, noted for removal once idle (see the package documentation,
// Lock-file lifecycle). It returns nil only if the lease held its lock
// until then; for a lease that was lost (its file removed or replaced, or
// the backend closed) it returns an error wrapping backend.ErrLockLost,
// and for a second Release one wrapping backend.ErrNotHeld. It frees the
// lease's descriptor in every case and never touches the lock or the file
// of another holder. It runs even when ctx is already cancelled; it is
// local and never blocks (a stat, an unlock, a close), so it ends well
// within any release timeout (ctx's deadline, set by
// dlock.WithReleaseTimeout) and needs no bound of its own.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch l.state {
	case leaseReleased:
		return backend.ErrNotHeld
	case leaseLost:
		l.state = leaseReleased
		l.f.close()
		l.b.unregister(l)
		return backend.ErrLockLost
	}
	l.state = leaseReleased
	same, err := l.f.named()
	l.f.close()
	l.closeLostLocked()
	// Only a file that was still ours is noted: otherwise the name is
	// someone else's now. afterRelease also unregisters the lease (a
	// monitor's check meanwhile finds it released: no loss reported).
	l.b.afterRelease(l, err == nil && same)
	if err != nil {
		return fmt.Errorf("cannot verify ownership: %w: %w", backend.ErrLockLost, err)
	}
	if !same {
		return fmt.Errorf("lock file %s was removed or replaced: %w", l.path, backend.ErrLockLost)
	}
	return nil
}

// AfterLost implements backend.LossNotifier: f runs, in its own
// goroutine, once Lost is closed (on loss, Release or Close; at once if it
// already is), unless stop is called first.
func (l *Lease) AfterLost(f func()) (stop func() bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loss.Add(f, l.state != leaseHeld, &l.mu)
}

// closeLostLocked closes Lost (if anyone asked for it) and starts
// AfterLost's functions; l.mu is held.
func (l *Lease) closeLostLocked() {
	if l.lost != nil {
		close(l.lost)
	}
	l.loss.Fire()
}

// Lost returns a channel closed when the lease can no longer guarantee its
// lock — its lock file was removed or replaced (the path no longer names the
// locked file), or the backend was closed — and by Release. The channel is
// made at the first call (dlock's Do watches a lease through AfterLost, and
// never calls it).
func (l *Lease) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostLocked()
}

// IsLost reports whether Lost's channel is closed (or would be, were it
// made now): it implements backend.LostChecker, so that dlock never makes
// the channel of a lease whose loss nobody waits for.
func (l *Lease) IsLost() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state != leaseHeld
}

// upgradable checks, l.mu held, that the lease can be upgraded: an
// upgradeable read lock still held; done reports one already upgraded.
func (l *Lease) upgradable() (done bool, err error) {
	switch {
	case l.what != whatUpgradeable:
		return false, backend.Permanent(fmt.Errorf("%w: %s of %s is not an upgradeable read lock", errors.ErrUnsupported, l.what, l.path))
	case l.state == leaseLost:
		return false, fmt.Errorf("upgrade of %s: %w", l.path, backend.ErrLockLost)
	case l.state == leaseReleased:
		return false, backend.ErrNotHeld
	}
	return l.upgraded, nil
}

// lostLocked is Lost; l.mu is held.
func (l *Lease) lostLocked() <-chan struct{} {
	if l.lost == nil {
		l.lost = make(chan struct{})
		if l.state != leaseHeld {
			close(l.lost)
		}
	}
	return l.lost
}

// Token returns the lease's fencing token (0 when fencing is off): for each
// name and kind of lock, tokens strictly increase across all acquisitions by
// all processes using the directory.
func (l *Lease) Token() uint64 { return l.token }

// Path returns the path of the lock file the lease holds (for a semaphore,
// its slot file).
func (l *Lease) Path() string { return l.path }

// markLostLocked reports the loss of the lease if it is held; l.mu is
// held.
func (l *Lease) markLostLocked() {
	if l.state == leaseHeld {
		l.state = leaseLost
		l.closeLostLocked()
	}
}

// drop is Close's end of a lease: it reports the loss and frees the lock.
func (l *Lease) drop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.markLostLocked()
	l.f.close()
}

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

// fileInfo is what the backend needs to know of a lock file.
type fileInfo struct {
	dev, ino uint64 // identity (Windows: volume serial number, file index)
	regular  bool
	mode     uint32 // the file's type and permission bits as the system gives them (Unix)
	nlink    uint64
	uid, gid uint32
	owned    bool   // uid and gid are known (Unix)
	perm     uint32 // permission bits
}

// check refuses a lock file that is not a regular file, that has more than
// one name (a hard link planted under a lock file's name would make dlock
// lock, and write its fencing counter into, a file that is not its own), or
// whose owner is not trusted. A file with no name left (removed since it
// was opened) is left to the caller's check that the path still names it.
func (tr *trust) check(path string, fi *fileInfo) error {
	if !fi.regular {
		return fmt.Errorf("lock file %s is not a regular file (mode %#o): refused", path, fi.mode)
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

// identify learns the identity of the lock file open as h, at path, and
// checks it (see check). With WithSharedGroup, a file of ours whose mode
// lacks bits the other members of the group need to open it (the umask
// took them) is given them (only its mode changes).
func (tr *trust) identify(h handle, path string) (fileInfo, error) {
	fi, err := statHandle(h)
	if err != nil {
		return fileInfo{}, fmt.Errorf("stat lock file %s: %w", path, err)
	}
	if err := tr.check(path, &fi); err != nil {
		return fileInfo{}, err
	}
	if tr.shared && fi.uid == tr.euid && fi.perm&tr.mode != tr.mode {
		if err := chmodHandle(h, (fi.perm|tr.mode)&0o777); err != nil {
			return fileInfo{}, fmt.Errorf("chmod lock file %s for the shared group: %w", path, err)
		}
	}
	return fi, nil
}

// maxReplaced bounds how many times one attempt follows a lock file that is
// replaced under it before it gives up with an error. Idle lock files are
// removed (see the package documentation, Lock-file lifecycle), so under
// heavy churn an attempt may find the file it opened removed a few times in
// a row before it locks one that stays.
const maxReplaced = 64

var errReplaced = errors.New("lock file keeps being replaced")

// The fencing counter: 20 decimal digits and a newline at the start of the
// file (readable with cat). An empty file counts as 0.
const counterLen = 21

// counterBuf holds a counter read, and more (to tell a longer file).
type counterBuf [counterLen + 8]byte

// readCounter reads the counter of the lock file open as h.
func readCounter(h handle, path string, buf *counterBuf) (uint64, error) {
	n, err := readAt(h, buf[:], 0)
	if err != nil && err != io.EOF {
		return 0, fmt.Errorf("read fencing counter %s: %w", path, err)
	}
	if n == 0 {
		return 0, nil
	}
	if n > counterLen {
		n = counterLen // holder records follow (see holders.go)
	}
	if n == counterLen && allZero(buf[:n]) {
		return 0, nil // a record written with fencing off left a hole
	}
	v, ok := parseCounter(buf[:n])
	if !ok {
		return 0, fmt.Errorf("corrupt fencing counter in %s (%q): fix or remove the file", path, buf[:n])
	}
	return v, nil
}

// bumpCounter reads the counter of the file open as h (which the caller
// holds so that no one else bumps it at the same time), and stores and
// returns the next token: one more than the stored value, or the wall
// clock in nanoseconds since 1970 if that is larger — so tokens keep
// increasing even when the counter file is removed (see removable) or loses
// its last updates in a crash, unless the clock also went back.
//
// rec, if not nil, is a holder's record made by appendRecord: it is written
// with the counter (in its first counterLen bytes) in the same write.
func bumpCounter(h handle, path string, sync bool, buf *counterBuf, rec []byte) (uint64, error) {
	stored, err := readCounter(h, path, buf)
	if err != nil {
		return 0, err
	}
	if stored == ^uint64(0) {
		return 0, fmt.Errorf("fencing counter in %s is exhausted", path)
	}
	token := stored + 1
	if now := time.Now().UnixNano(); now > 0 && uint64(now) > token {
		token = uint64(now)
	}
	out := formatCounter(buf[:0], token)
	if rec != nil {
		out = formatCounter(rec[:0], token)[:len(rec)]
	}
	if w, err := writeAt(h, out, 0); err != nil || w != len(out) {
		if err == nil {
			err = io.ErrShortWrite
		}
		return 0, fmt.Errorf("write fencing counter %s: %w", path, err)
	}
	if sync {
		if err := syncHandle(h); err != nil {
			return 0, fmt.Errorf("sync fencing counter %s: %w", path, err)
		}
	}
	return token, nil
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// removable reports whether a file whose counter holds last may be removed
// without letting a later token fall to or below it: the next token of a
// new file is at least the wall clock, so the clock must have passed last.
// On a system whose clock is coarse (Windows advances it about every
// millisecond or more) a file locked again within one tick stays, and goes
// at a later sweep.
func removable(last uint64) bool {
	now := time.Now().UnixNano()
	return now > 0 && uint64(now) > last
}

// parseCounter parses a counter: exactly 20 decimal digits and a newline.
func parseCounter(b []byte) (uint64, bool) {
	if len(b) != counterLen || b[counterLen-1] != '\n' {
		return 0, false
	}
	var v uint64
	for _, c := range b[:counterLen-1] {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false // overflows
		}
		v = v*10 + d
	}
	return v, true
}

// formatCounter appends v as a counter: 20 decimal digits, zero-padded,
// and a newline.
func formatCounter(dst []byte, v uint64) []byte {
	var d [counterLen]byte
	for i := counterLen - 2; i >= 0; i-- {
		d[i] = byte('0' + v%10)
		v /= 10
	}
	d[counterLen-1] = '\n'
	return append(dst, d[:]...)
}

// counterPatience bounds how long a holder waits for something others hold
// only for a moment (a fencing counter, a waiters' file being checked, a
// lock file being removed): past it, something else holds it, and waiting
// on would hang.
const counterPatience = 10 * time.Second

// counterStuck is briefly's complaint about a fencing counter.
const counterStuck = "the fencing counter stayed locked"

// briefly runs try, which waits for something others do only for a moment
// (hold a lock, remove a file), until it succeeds or fails, pausing between
// attempts (50 µs growing to 1 ms), for at most counterPatience; then it
// fails with an error saying what stuck.
func briefly(path, stuck string, try func() (bool, error)) error {
	pause := 50 * time.Microsecond
	deadline := time.Now().Add(counterPatience)
	for {
		ok, err := try()
		if ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s for %v (a moment is the most any holder keeps it): refused", path, stuck, counterPatience)
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
}
