package backend

import (
	"context"
	"time"
)

// Holder is what a backend recorded about one holder of a lock when it took
// it. Fields the backend could not record are zero; each backend documents
// which it fills in.
type Holder struct {
	Host         string    // host name of the holder's machine
	PID          int       // the holder's process id on Host
	ProcessStart time.Time // when that process started: tells a reused pid apart
	Owner        string    // the text the holder gave (dlock.WithOwner)
	Since        time.Time // when the lock was taken
	Shared       bool      // a reader of a reader-writer lock
}

// LockDescriber is implemented by a Locker that can tell who holds a mutex.
type LockDescriber interface {
	// DescribeLock returns the holder of the mutex name, or none when it is
	// free, without taking or disturbing it.
	DescribeLock(ctx context.Context, name string) ([]Holder, error)
}

// RWDescriber is implemented by an RWLocker that can tell who holds a
// reader-writer lock.
type RWDescriber interface {
	// DescribeRW returns the holders of the reader-writer lock name: its
	// readers (Shared set) or its writer; none when it is free.
	DescribeRW(ctx context.Context, name string) ([]Holder, error)
}

// SemaphoreDescriber is implemented by a Semaphore that can tell who holds
// a semaphore's tickets.
type SemaphoreDescriber interface {
	// DescribeSemaphore returns the holders of the tickets of the semaphore
	// name of limit limit, one entry per ticket held.
	DescribeSemaphore(ctx context.Context, name string, limit int) ([]Holder, error)
}

type ownerKey struct{}

// ContextWithOwner returns ctx carrying owner, the text a holder gives to
// describe itself (dlock.WithOwner). The dlock package passes such a ctx
// to a backend's acquisitions; a backend that records holders reads it with
// OwnerFromContext.
func ContextWithOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

// OwnerFromContext returns the owner text ContextWithOwner put in ctx, or
// "".
func OwnerFromContext(ctx context.Context) string {
	s, _ := ctx.Value(ownerKey{}).(string)
	return s
}
