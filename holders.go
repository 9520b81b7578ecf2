package dlock

import (
	"context"
	"errors"
	"fmt"

	"github.com/dlock-go/dlock/backend"
	holderrec "github.com/dlock-go/dlock/internal/holder"
)

// Holder is what a backend recorded about one holder of a lock when it took
// it: host, process id and start, the owner text given with WithOwner or
// ContextWithOwner, and since when it holds. Fields a backend cannot
// record are zero; each backend's documentation says which it fills in.
type Holder = backend.Holder

// MaxOwner is the longest owner text, in bytes, that WithOwner and
// ContextWithOwner accept.
const MaxOwner = holderrec.MaxOwner

// WithOwner sets the text a Guard's acquisitions record to describe their
// holder ("deploy job 4411"), shown by Holders and by `dlock status`. The
// text may carry user data: it is stored beside the lock, readable by
// anyone who can read the backend. A text longer than MaxOwner bytes makes
// every call of the Guard fail with an error matching ErrInvalidOption.
// ContextWithOwner overrides it for one call.
func WithOwner(text string) Option {
	return func(o *options) { o.owner = text }
}

// ContextWithOwner returns ctx carrying owner text for the acquisitions
// made with it, overriding the Guard's WithOwner; a text longer than
// MaxOwner bytes makes them fail with an error matching ErrInvalidOption.
func ContextWithOwner(ctx context.Context, text string) context.Context {
	return backend.ContextWithOwner(ctx, text)
}

// Holders returns the current holders of name for this Guard's kind of
// lock, as recorded by the backend, without taking the lock or waiting for
// it: none when the lock is free; for a mutex or a write side, its holder;
// for a reader-writer lock (either side), its readers (Shared set) or its
// writer; for a semaphore, one entry per ticket held. A backend that does
// not record holders makes it return an error matching
// errors.ErrUnsupported.
func (g *Guard[L]) Holders(ctx context.Context, name string) ([]Holder, error) {
	if g.err != nil {
		return nil, g.errorf(name, g.err)
	}
	if name == "" {
		return nil, g.errorf(name, fmt.Errorf("%w: empty", ErrInvalidName))
	}
	if g.describe == nil {
		return nil, g.errorf(name, fmt.Errorf("%w: the %s backend does not record holders", errors.ErrUnsupported, g.backend))
	}
	hs, err := g.describe(ctx, name)
	if err != nil {
		return nil, g.errorf(name, err)
	}
	return hs, nil
}

// withOwner returns the ctx of an acquisition: carrying the Guard's owner
// text unless ctx already carries one; an error if the text is too long.
func (g *Guard[L]) withOwner(ctx context.Context) (context.Context, error) {
	owner := backend.OwnerFromContext(ctx)
	if owner == "" {
		if g.opts.owner == "" {
			return ctx, nil
		}
		owner = g.opts.owner
		ctx = backend.ContextWithOwner(ctx, owner)
	}
	if len(owner) > MaxOwner {
		return ctx, fmt.Errorf("%w: owner text of %d bytes (at most %d)", ErrInvalidOption, len(owner), MaxOwner)
	}
	return ctx, nil
}
