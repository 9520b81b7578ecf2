// Package fs is the dlock backend over the local file system: one lock file
// per name in a directory you choose, locked with flock(2).
//
//	b, err := fs.New("/var/lib/myapp/locks")
//	if err != nil { ... }
//	defer b.Close()
//	mu := dlock.NewMutex(b)
//	err = mu.Do(ctx, "nightly-report", func(ctx context.Context) error { ... })
//
// It serves every process of the machine that uses the same directory. On
// Linux it uses flock, OFD locks and inotify, as described below; on macOS,
// FreeBSD, OpenBSD, NetBSD, DragonFly BSD and Windows it runs a portable
// implementation over whole-file locks with weaker promises (see Other
// systems); elsewhere (Plan 9, js, WASI, Solaris, AIX) New returns an
// error.
//
// # Files and names
//
// Every lock name maps to a file name that is one safe path element (no
// '/', no NUL, never "." or "..", at most 255 bytes), case-preserving and
// injective. Bytes in [A-Za-z0-9._-] are kept (a leading '.' is not); every
// other byte is written %XX in upper-case hex, '%' included. If the escaped
// name would exceed 200 bytes, the file name keeps its first 64 bytes
// (never splitting an escape), then '~', then the hex SHA-256 of the whole
// name: two different long names then share a file only if SHA-256
// collides. A prefix keeps the kinds of lock apart, so a mutex, a
// reader-writer lock and a semaphore of one name never meet:
//
//	m-NAME       mutex; its fencing counter and waiters' queue are kept inside
//	r-NAME       reader-writer lock; its fencing counter and waiters' queue are kept inside
//	rg-NAME      the writers' gate of r-NAME (portable implementation; reserved on Linux)
//	rh-NAME+N    record file N (1, 2, ...) of a reader of r-NAME (portable implementation; reserved on Linux)
//	u-NAME       held by the upgradeable reader of r-NAME (portable implementation; reserved on Linux)
//	mw-NAME      waiters of mutex NAME (portable implementation)
//	sw-NAME      waiters of semaphore NAME (portable implementation)
//	rc-NAME      reserved (held the counter of r-NAME in earlier versions)
//	s-NAME+N     slot N (0, 1, ...) of a semaphore; slot 0 keeps its waiters' queue
//	sc-NAME      fencing counter of a semaphore
//
// The directory must be case-sensitive (as Linux file systems are unless a
// directory is made case-folding): in a case-folding directory names that
// differ only by case share a lock — too much exclusion, never too little.
//
// # Lock-file lifecycle
//
// A lock file is created (mode 0600 by default, see WithFileMode; the umask
// applies) when its name is locked and no file has the name. Lock files do
// not pile up: a Backend notes every file it lets go of (a release, or
// Close freeing a lease; in the portable implementation also a waiters'
// file a waiter leaves or a check looked at) and removes it once it is
// idle — after the monitor's next tick (see WithLossInterval: 1 to 2
// intervals after its last release; a file released again before the
// tick waits for the next one), and at Close for the rest. Both
// implementations (see Other systems) follow this lifecycle. A name locked again within that
// time keeps its file: on ext4, creating and removing a file costs several
// times a whole acquisition, so removing at every release would make a
// name locked over and over several times slower. The directory therefore
// holds the files of the locks held or waited for, plus those released
// within the last two intervals; a process that dies (or never calls
// Close) leaves the files it had not removed yet, and the next Backend to
// lock and release such a name removes its file.
//
// Removal never lets two holders in. The remover opens the file (never
// creating it), takes its lock exclusively without waiting (so nobody
// holds it, neither a holder nor a reader), checks that the path still
// names it, and removes it only
//
//   - while no waiter holds a ticket in its queue (see Order of service;
//     in the portable implementation: while no waiter holds the lock's
//     waiters' file, mw-, rg- or sw-NAME):
//     it gates the queue, with an OFD lock over all of it that it can take
//     only while no ticket is there and that keeps new tickets out until
//     the file is closed, so no waiter is ever left queued in a removed
//     file (a waiter about to join waits for the removal and joins the
//     new file);
//   - while the wall clock is past the fencing counter kept in the file
//     (see Fencing), so the next token exceeds every token given.
//
// Whoever has the old file open and locks it after the removal finds, by
// the check every acquisition makes after taking its lock (see
// Exclusion), that the path no longer names it, and locks the file that
// has the name then. While the remover holds the lock (a few system
// calls), a try of that name fails as if another holder held it. A
// semaphore's slot files and its counter file are removed the same way.
//
// You may also clean a directory yourself while no process uses it;
// removing the file of a held lock makes its holder lose it (see Loss).
// Fencing tokens keep increasing across removals (see Fencing).
//
// Every file is opened with O_NOFOLLOW|O_CLOEXEC: a symbolic link planted at
// a lock path is refused with a clear error, never followed. A lock file
// that is not a regular file, that has more than one hard link (another
// name for some other file, planted under a lock file's name), or that is
// not owned by the process's effective uid is refused too, before anything
// is written to it. New creates the directory (mode 0700, see WithDirMode)
// and refuses one that is a symbolic link, is owned by another user, is
// group- or world-writable, or is on NFS or SMB/CIFS (where flock is
// emulated with per-process locks). WithSharedGroup lets the users of one
// group share a directory (group-writable, files of the group accepted); it
// trusts every member of the group as much as yourself (see its
// documentation). It also refuses a
// directory that another user could replace: New resolves the path one
// component at a time from "/" (never following the lock directory itself
// if it is a symbolic link), and every directory on the way must be owned
// by root or by the process's effective uid and must not be group- or
// world-writable unless it has the sticky bit. Otherwise another user could
// rename the lock directory (or a parent) away and plant their own, with
// their own lock files. Below a directory of the process's uid that group
// and others may not search (mode 0700, as t.TempDir's and
// $XDG_RUNTIME_DIR are), nobody else can reach a component, so writable
// bits there do not matter. /tmp (1777, root), $XDG_RUNTIME_DIR and a
// directory of your own under /var/lock are fine; a directory inside a
// shared 0777 or 0775 directory is not. A symbolic link on the way is followed only if it
// is owned by root or by the process's uid; the backend then works under
// the resolved path (Dir returns it).
//
// # Exclusion
//
// A holder locks its own open file description with flock(2), exclusive for
// a mutex, a writer or a semaphore slot, shared for a reader. flock locks
// belong to the open file description, so two holders inside one process
// (two goroutines, two Backends) exclude each other exactly as two processes
// do; classic per-process fcntl locks, which would let them both in and
// which any close in the process would drop, are never used. The kernel
// drops the locks of a process that dies: its locks are free at once.
//
// After taking a lock, a holder checks that the path still names the file
// it locked (a file removed or replaced between open and flock would
// otherwise be a lock nobody else can see) and, if not, locks the file that
// now has the name instead.
//
// # Reader-writer locks
//
// Readers share a flock of r-NAME, a writer holds it exclusively. Writers
// are preferred: once a writer waits, readers that come after it wait too
// (see Order of service), so writers never starve behind a stream of
// readers; readers that began to wait before it go in before it.
//
// # Upgradeable read locks
//
// The Backend implements backend.UpgradeableLocker,
// UpgradeableWaiter and Upgrader (dlock's RWMutex.Upgradeable and
// Lock.Upgrade). On Linux an upgradeable reader holds the flock of r-NAME shared,
// as a reader does, and an OFD write lock of one byte, the upgrade byte
// (the first byte of the removal gate, 2^32-1), which every writer also
// takes, without waiting, right after its flock (a writer that finds it
// taken lets its flock go and counts as not acquired). So readers share
// the name with it, and writers and other upgradeable readers do not.
// Its waiters queue as writers do. Upgrade joins the queue with a
// writer's ticket (new readers, writers and upgradeable readers wait
// behind it) and tries, at every close of the file, to turn its shared
// flock into an exclusive one. Linux turns a flock around by dropping the
// shared lock first, and leaves the file unlocked when the exclusive one
// is not free: the lease then takes its shared lock back at once. No
// writer can get in in that moment (it would need the upgrade byte), nor
// can an idle-file sweep remove the file (its gate would need the upgrade
// byte too); at most a plain reader gets in, which upgrade then waits for
// as well. An upgrade whose ctx ends, or that fails otherwise, leaves the
// lease an upgradeable reader; a loss ends it with an error wrapping
// backend.ErrLockLost. After the upgrade the lease is the name's writer
// until Release (its fencing token stays the one it took as a reader,
// which exceeds every earlier writer's; Holders lists it as the writer).
// The upgrade byte costs a writer one fcntl per acquisition.
//
// The portable implementation has them too, with whole-file locks only
// (flock(2) on the BSDs and macOS also drops a shared lock whose
// conversion fails, and has no byte-range lock per open file description;
// LockFileEx cannot convert at all). An upgradeable reader holds r-NAME
// shared, as a reader does, and a file of its own, u-NAME, exclusively
// for as long as it holds the lease. Every writer, once it holds r-NAME
// exclusively, tries u-NAME exclusively without waiting (opened without
// creating it: a name that never had an upgradeable reader, or whose
// u-NAME the sweep removed, costs it one failed open) and lets it go at
// once; when u-NAME is held it lets r-NAME go and counts as not acquired.
// A second upgradeable reader fails on u-NAME. Upgradeable readers wait
// as writers do (holding the writers' gate rg-NAME shared, so new readers
// wait behind them), and poll. Upgrade holds rg-NAME shared too while it
// waits (new readers, writers and upgradeable readers wait: writer
// preference) and polls, trying each time to turn its shared lock into an
// exclusive one without waiting; a failed attempt leaves r-NAME unlocked,
// and the lease takes its shared lock back at once. In that moment no
// writer can get in (u-NAME), nor can the idle sweep remove r-NAME (it
// tries u-NAME as writers do); at most a plain reader gets in, which the
// upgrade then waits for as well. TryUpgrade makes one such attempt. A
// lease found lost lets go of u-NAME at once (and a reader of its record
// file), so the name's next writers and upgradeable readers are not kept
// out until its Release. Fencing tokens and Holders are as on Linux (the
// upgraded lease writes its record into r-NAME, where a writer's is, and
// closes its reader's record file).
//
// # Semaphores
//
// A semaphore of limit n is n slot files: a ticket is an exclusive flock of
// one of them, tried in order from slot 0. Holders that disagree on the
// limit each count only their own first slots: a holder with limit n gets in
// only while one of slots 0..n-1 is free, so at most max(limits) holders are
// inside at once, and holders with a smaller limit never get in while the
// first slots are taken. A waiting Acquire keeps every slot file open while
// it waits (n descriptors).
//
// # Order of service
//
// Waiters are served in the order they began to wait, across goroutines,
// Backends and processes: a Lock, WLock, RLock or Acquire that began to
// wait before another is granted before it (readers excepted, see below).
// Each waiter takes a ticket when its first attempt fails: a lock of one
// byte, through its own open file description (an OFD lock, fcntl
// F_OFD_SETLK), in the lock file (slot 0 for a semaphore), at an offset
// far past the file's data given by the machine's monotonic clock at that
// moment. It attempts the lock only while no older ticket is left (one
// F_OFD_GETLK over the bytes before its own). Nothing is written and no
// file is made.
//
//   - A waiter whose ctx ends (or whose Backend closes) unlocks its ticket
//     as its wait returns, before its close of the lock file wakes the
//     others: it never blocks the next one.
//   - A waiter that dies, even by SIGKILL, loses its ticket with its
//     descriptors, as a holder loses its lock: it blocks nobody, at any
//     moment.
//   - A try (TryLock, TryRLock, TryWLock, TryAcquire) never waits and
//     never jumps the queue: it fails (not acquired) while anyone waits for
//     the lock, also in the moment between a release and the next waiter's
//     taking it. Checking the queue is one F_OFD_GETLK, and the only cost
//     the queue adds to an uncontended acquisition.
//   - Reader-writer locks: a reader's ticket is a shared lock, a writer's
//     an exclusive one. A writer waits for every older ticket; a reader
//     waits only for older writers' tickets (and for a writer holding the
//     lock). So a reader that began to wait before a waiting writer goes in
//     before it, readers waiting together go in together, and readers that
//     come after a waiting writer wait behind it: writers keep their
//     preference and are served among themselves in arrival order.
//   - Semaphores: waiters for a ticket are served in arrival order, one
//     free slot each.
//
// Tickets of the same nanosecond are ordered by who placed theirs first.
// A waiter whose lock file is removed or replaced takes its ticket along to
// the new file, keeping its place as far as the others can see it.
// Processes in different time namespaces (containers with their own
// CLOCK_MONOTONIC) are ordered by their own clocks: still one queue, and
// never two holders, but arrival order holds only within one clock. The
// promise needs inotify to be prompt (otherwise waiters learn of their
// turn within the wait fallback) and /proc for a semaphore waiter to wake
// the next one when it takes a slot while others remain free.
//
// A lock in the queue's range that is no waiter's ticket — a classic fcntl
// record lock (lockf, F_SETLK) of any process over the lock file, or an
// OFD lock of a whole range — would block every waiter and try forever;
// it is refused instead, at once, with an error that names it (marked
// backend.Permanent). A stray one-byte OFD lock there looks like a waiter
// that never gives up, and holds waiters and tries back like a holder that
// never releases. Processes of the same directory must all run a version
// of this package with the queue: an earlier one neither takes tickets nor
// respects them (it still never lets two holders in).
//
// # Waiting
//
// Waits do not poll. A waiter learns of a release at once through inotify:
// the backend watches its directory (one inotify instance per Backend, one
// goroutine that runs only while leases are held, waits are in progress
// or released lock files wait to be removed)
// and wakes the waiters of a file when the file is closed or removed — by a release,
// by a waiter that gives up, or by the death of a holder or waiter
// process. Of a Backend's waiters in the queue it wakes only those that
// can be next: the oldest waiter of a mutex or a semaphore; for a
// reader-writer lock, every reader older than the oldest writer (they go
// in together), else that writer. The others cannot go in before these
// take the lock or give up, which closes the file again (a release, a
// waiter's leaving) and wakes them in turn; a semaphore waiter that takes
// a slot while others wait wakes the next (another slot may be free). An
// upgrade waiting for readers to leave is woken at every close. A
// release in the same Backend wakes them at once, without waiting for
// inotify, and yields its processor to them. The waiter arms
// before it joins the queue, so a release between its attempt and its
// sleep is not missed. A release unlocks before it
// closes (the kernel announces a close a moment before it drops the closed
// file's locks); for a dead holder or waiter, whose locks drop just after
// the announcement, a waiter that woke and found the lock still taken
// retries after about 2 ms, 4 ms, ... (jittered). In any case a waiter
// retries after at most the wait fallback (1 s, see WithWaitFallback),
// which only matters if a notification cannot arrive. Waiters keep their
// lock files open across attempts, so waiters do not wake each other.
// Measured in BenchmarkHandoff.
//
// A local file system has no outages, so nearly every error is one that a
// retry would meet again — a refused permission, a refused lock file
// (symbolic link, hard link, owner, not a regular file), a bad directory, a
// corrupt fencing counter, a closed Backend — and is marked
// backend.Permanent: a wait (the dlock package's Do and Acquire) ends with
// it at once. Only errors that may heal by themselves are left unmarked,
// and a wait rides them out until its ctx ends: out of file descriptors
// (EMFILE, ENFILE), of memory or kernel lock records (ENOMEM, ENOBUFS,
// ENOLCK), of disk space or quota for a new lock file (ENOSPC, EDQUOT), an
// interrupted call, a lock file that keeps being replaced.
//
// # Loss
//
// A lease is lost when its path no longer names the file it locked: the lock
// file (or the directory) was removed, renamed or replaced, so another
// process could create a new file there and lock it. The backend reports
// that at once when it happens inside the directory (inotify sees the
// removal or rename), and within the loss interval (1 s, see
// WithLossInterval) in every other case (the directory itself moved, a
// notification lost). Release also checks it, so Release returns nil only
// if the path still named the locked file when it let go; releasing a lost
// lease returns an error wrapping dlock.ErrLockLost and, since the lease's
// lock is on a file nobody else locks any more, disturbs no new holder.
// Nothing else takes a lock away from a living process. Close frees every
// lease still held (they report loss). Release is local and never blocks
// (an lstat, an unlock, a close), so it always ends well within its ctx's
// deadline (the dlock package's release timeout, WithReleaseTimeout), and
// it runs in full even when ctx is already cancelled.
//
// # Holders
//
// Backend implements backend.LockDescriber, RWDescriber and
// SemaphoreDescriber (dlock's Guard.Holders): every holder records itself
// (internal/holder's stored form: host, process id and start, owner text,
// since when) in the file it locks, and a describer lists the records of
// the holders that still hold, without taking the lock or waiting. A
// record is kept in a slot of the lock file: slot 0, right after the
// fencing counter, is the exclusive holder's (a mutex, a writer, a
// semaphore ticket in its slot file), written in the same pwrite as the
// counter; readers each claim a slot of their own (1, 2, ..., 8 KiB apart
// in the sparse file). A record stays in the file after its holder lets go
// or dies; what says it is live is a lock its holder keeps, never the
// record, so a holder killed by SIGKILL is never listed:
//
//   - Linux: each holder keeps an OFD lock of one byte, its mark (at 2^31
//     plus its slot), through its own descriptor. An exclusive holder
//     writes its record, then write-locks mark 0; a reader write-locks the
//     first free mark (its claim), writes its record there, then turns the
//     mark into a read lock. A describer opens the lock file (never
//     creating it) and tests the marks with F_OFD_GETLK: mark 0 locked
//     lists the exclusive holder; each read-locked mark lists a reader (a
//     slot still being claimed is not listed). It changes nothing and
//     blocks no one (its close wakes the file's waiters, who sleep again).
//     The cost: one fcntl per acquisition of a mutex, writer or semaphore
//     ticket (the mark; with WithFencing(false) a pwrite of the record
//     too; for a semaphore ticket, whose counter lives apart, always the
//     pwrite), three for a reader (claim, pwrite, mark); Release is
//     unchanged (the marks go with the close).
//   - Portable implementation: whole-file locks cannot mark a slot. An
//     exclusive holder's record is live while the lock file is locked
//     exclusively, which the describer tests by trying to lock it shared
//     without waiting: while the lock is free (or held by readers only) the
//     describer holds it shared for a moment, and a try of the writer or
//     mutex side in that moment fails as if the lock were held. A reader
//     keeps its record in a file of its own, rh-NAME+N, the first it can
//     lock exclusively, held until its Release (seven more system calls
//     per reader, and one more descriptor); the describer reads the
//     directory to find them. While a reader is claiming a record file
//     whose previous reader died, the describer may show that dead
//     reader's record in its place for the moment before the new one is
//     written. An exclusive holder costs nothing more (the record goes
//     with the counter's pwrite).
//
// Since is the holder's wall clock when it took the lock. An owner text
// whose escaped form would exceed the slot (about 8 KiB) is cut to fit.
// Processes of an earlier version of this package read a lock file that
// holds a record as a corrupt fencing counter: all processes using a
// directory must run a version with records.
//
// # Composite locks
//
// The file system has no atomic path for several names at once: the
// backend does not implement backend.MultiLocker, MultiRWLocker or
// MultiSemaphore, and dlock's DoAll and TryAcquireAll take the names one
// by one in their fixed order.
//
// # Fencing
//
// Every lease carries a fencing token (backend.Fencer), strictly increasing
// per name and kind across all acquisitions by all processes, and surviving
// their restarts: a counter kept in a file (inside the lock file of a mutex
// or a reader-writer lock — readers, who share the file, take turns under a
// brief OFD lock of the counter's bytes; in sc-NAME, under a brief exclusive
// flock, for semaphores), read, increased and written back while the lock is
// held.
// The next token is one more than the stored value, or the wall clock in
// nanoseconds since 1970 if that is larger: tokens therefore keep increasing
// even if the counter file is deleted (the backend removes idle lock files,
// see Lock-file lifecycle, but only while the clock is past their counter)
// or, after an operating-system crash, lost its last updates. The one
// caveat: a wall clock set back, between the removal of a name's file and
// the next acquisition of the name, by more than the time between them
// (the next token, floored on the clock, could then be smaller); a clock
// that steps back while a name's file is kept does no harm. The counter is
// fdatasync'ed only with WithSync. Readers of one name get
// distinct tokens, ordered as they took the counter. WithFencing(false)
// turns tokens off (token 0) and saves the counter's read and write.
// Holders keep a counter's lock only for a read and a write; one held for
// 10 s (a lock that is not a holder's, or a holder process stopped in that
// moment) is refused with an error rather than waited for without end.
//
// # Other systems
//
// On macOS, the BSDs and Windows the package runs its portable
// implementation; on Linux it is built instead of the default one with the
// build tag dlock_portable (go test -tags dlock_portable ./fs/), which is
// how it is tested. It keeps every guarantee of the dlock package — one
// holder, readers together and writers alone, at most limit tickets,
// strictly increasing fencing tokens, loss reported, a dead holder's locks
// free at once — with these differences:
//
//   - Locks: flock(2) on Unix (per open file description there too),
//     LockFileEx on Windows (on one byte at offset 2^62, past any data, per
//     handle), exclusive or shared, always tried without blocking.
//   - Waiting polls: a waiter tries again every 1 to 4 ms (jittered). A
//     waiter holds the lock's waiters' file (mw-, rg- for writers, sw-)
//     shared while it waits, and a try, or any reader's attempt, first
//     checks that nobody holds it: a try fails while anyone waits (for an
//     RW lock: while a writer waits; readers wait only behind a writer), so
//     it does not jump ahead of the waiters, and new readers wait while a
//     writer waits (writer preference). Among waiters, whoever polls first after a
//     release goes in: no waiter is preferred and none starves (the
//     conformance suite's NoStarvation check passes), but waiters are not
//     served in arrival order, and a hand-off takes up to the poll pause.
//   - Loss (the path no longer names the locked file) is found by a check
//     every loss interval (WithLossInterval) and at Release, not at once.
//     WithWaitFallback only bounds the longest poll pause. The monitor is
//     one goroutine per Backend that runs while leases are held or files
//     wait for removal, and a sweep runs in one more; Close stops both.
//   - Lock files are removed as on Linux (see Lock-file lifecycle): a
//     release notes its file, and the monitor (which then runs at each
//     loss interval, as it does while leases are held) removes it a tick
//     later if it is idle: opened without creating it, locked exclusively
//     without waiting, still named by its path, its waiters' file held by
//     no waiter, its fencing counter below the wall clock; Close removes
//     the rest. Waiters' files (mw-, rg-, sw-), readers' record files
//     (rh-) and upgradeable readers' files (u-) go the same way, once no
//     waiter or holder holds them; r-NAME only while no upgradeable
//     reader holds u-NAME.
//     The fencing counter lives in the lock file (a semaphore's in
//     sc-NAME, removed with its slots), so a removed file takes it along;
//     the next token is then the wall clock in nanoseconds, and a file is
//     removed only once the clock has passed its last token (on a coarse
//     clock, as Windows has, a file whose token is still ahead stays until
//     a later sweep), so tokens keep increasing unless the clock goes
//     back.
//   - A reader's fencing token is drawn while it holds the writers' gate
//     exclusively for a moment; an uncontended TryLock and Release costs
//     ten system calls: a failed open of the waiters' file, open, flock,
//     fstat and lstat, pread and pwrite of the counter, lstat, unlock and
//     close at Release (strace -f -c over 1000 Do of BenchmarkPortableDo);
//     the holder record adds none (see Holders; a reader's adds seven).
//     An RW writer adds one (the failed open of u-NAME, see Upgradeable
//     read locks; go test -tags dlock_portable -run '^$' -bench
//     PortableWrite ./fs: one allocation more), or five while an idle
//     u-NAME is left from an upgradeable reader (open, flock, fstat,
//     lstat, and a close that drops the flock).
//   - On Linux the two implementations must not share a directory (their
//     holders would not exclude each other): New marks the directory it
//     uses and refuses one the other implementation marked (see
//     ErrOtherImplementation).
//   - Unix directory checks are those described above (owner, mode,
//     ancestors, symbolic links, network file systems by type name), made
//     by path one component after another rather than through open
//     directory descriptors. Lock files are checked as on Linux (regular
//     file, one link, owner).
//   - Windows: lock-file names are mapped to legal Windows names (every
//     name has a kind prefix, so none is a device name such as CON or NUL;
//     upper-case letters and a trailing dot are escaped too, so names that
//     differ only by case, which Windows file systems do not tell apart,
//     never share a file). The lock directory must be a directory, not a
//     symbolic link or junction; nothing else is checked: not its ACL, not
//     its owner or its parents', not the owners of lock files (hard links
//     are refused). Keep it where only you may write, such as under
//     %LOCALAPPDATA%. WithFileMode and WithDirMode's permission bits are
//     not used (files inherit the directory's ACL); WithSharedGroup is
//     refused. A lock file being deleted cannot be opened until its last
//     handle closes: an attempt then reports the lock busy.
//
// Code shared by both implementations is in common.go (every supported
// system), sys_unix.go (Unix) and idle.go (the removal of idle files); the
// Linux implementation is in the files *_linux.go built without the tag,
// the portable one in portable*.go with os_unix.go or os_windows.go and
// dir_unix.go or dir_windows.go.
//
// What is verified by running, and what only by compiling: on Linux, CI
// runs every test of this package, the whole dlocktest conformance suite
// included, over both implementations (the default one, and the portable
// one with -tags dlock_portable). The portable code for macOS, the BSDs
// and Windows is the same code except for the system calls and directory
// checks of each system, which CI only compiles and vets (with the tests)
// for darwin (amd64, arm64), freebsd and windows; openbsd and netbsd are
// compiled and vetted by hand. None of it has been run on those systems.
//
// # Performance
//
// An uncontended TryLock and Release costs eleven system calls where the
// least flock-based lock costs four (open, flock, unlock, close). Each of
// the seven others keeps a guarantee: the holder record's mark (an
// fcntl, see Holders); an F_OFD_GETLK of the waiters' queue
// before flock (a try does not jump the queue, see Order of service);
// fstat and lstat (statx) after flock (the
// identity of the file locked, that it is a regular file, and that the path
// still names it: an unlink or rename between open and flock cannot let two
// holders in; an attempt that finds the lock busy skips both); pread and pwrite of the fencing counter, in
// the already-open lock file (WithFencing(false) saves them); lstat at
// Release (Release returns nil only if the lock was still held). Release
// also unlocks before it closes, so that a waiter woken by the close finds
// the lock free. A waiter's attempt that finds the lock busy adds an fstat
// (does its file still have a name? a file removed by hand while a hung
// holder locks it must be left); one that takes the lock needs none, so a
// hand-off costs the waiter the queue check, flock, lstat, the drop of its
// ticket, the counter and the mark. A writer costs one more (the upgrade byte, see
// Upgradeable read locks); a reader four more (the
// counter's OFD lock and unlock; its record's claim and pwrite; its mark
// takes the place of the exclusive holder's). Removing an idle lock file happens off
// the acquisition's path (see Lock-file lifecycle): eight system calls
// (open, flock, fstat, lstat, pread, the gate's OFD lock, unlink, close)
// in the monitor, once per name released and left alone for a tick; a
// name locked again within the tick costs nothing more, and a name locked
// over and over keeps its file until it rests for a tick.
//
// An uncontended acquisition allocates once (the Lease, which keeps its
// lock file's path and descriptor); the holder record is built on the
// stack from the last owner's stored form, encoded once (only Since is
// formatted per acquisition), and Lost's channel is made only if asked
// for (dlock's Do watches a lease through AfterLost). No goroutine wakes
// for an uncontended acquisition: the monitor's watch reports closes
// only while someone waits. BenchmarkDo reports the ratio to the floor (x-floor),
// BenchmarkTryLockRelease and BenchmarkTryRWRelease the backend alone, and
// BenchmarkHandoff the hand-off latency (p50-ns, p99-ns):
//
//	go test -run '^$' -bench . ./fs
package fs
