//go:build !linux && !darwin && !freebsd && !openbsd && !netbsd && !dragonfly && !windows

package fs

import (
	"context"
	"errors"
	"runtime"
)

// errUnsupported is returned by New on systems without flock or LockFileEx (Plan 9, js, WASI, Solaris, AIX).
var errUnsupported = errors.New("fs: the file-system backend supports Linux, macOS, the BSDs and Windows only (not " + runtime.GOOS + ")")

// Backend keeps locks as files in one directory. On this system it is not
// supported: New returns an error.
type Backend struct{}

// Lease is one lock held by a Backend.
type Lease struct{ lost chan struct{} }

// New returns an error: the backend needs Linux (flock per open file
// description, OFD locks and inotify).
func New(dir string, opts ...Option) (*Backend, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return nil, errUnsupported
}

// Dir returns the lock directory.
func (b *Backend) Dir() string { return "" }

// Close does nothing.
func (b *Backend) Close() error { return nil }

// TryLock returns an error: unsupported system.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	return nil, false, errUnsupported
}

// Lock returns an error: unsupported system.
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	return nil, errUnsupported
}

// TryRLock returns an error: unsupported system.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	return nil, false, errUnsupported
}

// RLock returns an error: unsupported system.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	return nil, errUnsupported
}

// TryWLock returns an error: unsupported system.
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	return nil, false, errUnsupported
}

// WLock returns an error: unsupported system.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	return nil, errUnsupported
}

// TryAcquire returns an error: unsupported system.
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	return nil, false, errUnsupported
}

// Acquire returns an error: unsupported system.
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	return nil, errUnsupported
}

// Release returns an error: unsupported system.
func (l *Lease) Release(ctx context.Context) error { return errUnsupported }

// Lost returns a channel that is never closed.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Token returns 0.
func (l *Lease) Token() uint64 { return 0 }

// Path returns "".
func (l *Lease) Path() string { return "" }
