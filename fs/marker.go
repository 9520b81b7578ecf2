package fs

import "errors"

// ErrOtherImplementation is returned (wrapped) by New for a lock directory
// that a process using the other implementation of this package has
// claimed. On Linux the package has two implementations that must never
// share a directory — the default one (flock and OFD locks, inotify) and
// the portable one (built with the tag dlock_portable; flock only) — since
// their holders would not always exclude each other. Each marks the
// directories it uses with a file (.dlock-fs-linux or .dlock-fs-portable)
// and refuses a directory that has the other's. Remove the marker only
// when no process uses the directory.
var ErrOtherImplementation = errors.New("lock directory is in use by the other implementation of package fs")
