package valkey

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
)

var (
	_ backend.MultiLocker[*Lease]    = (*Backend)(nil)
	_ backend.MultiRWLocker[*Lease]  = (*Backend)(nil)
	_ backend.MultiSemaphore[*Lease] = (*Backend)(nil)
	_ backend.MultiReleaser[*Lease]  = (*Backend)(nil)
	_ backend.MultiReleaser[*Lease]  = (*RedLock)(nil)
)

// errCrossSlot says that a set of names has no atomic path on a cluster.
var errCrossSlot = fmt.Errorf("%w: the names' keys are in several cluster slots, which one script cannot take", errors.ErrUnsupported)

// TryLockAll implements backend.MultiLocker: one script takes every mutex
// of names or none (see the package documentation, Composite locks). On a
// cluster, names whose keys are in several hash slots return an error
// matching errors.ErrUnsupported.
func (b *Backend) TryLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return b.c.tryAll(ctx, kindMutex, names, 0)
}

// TryRLockAll implements backend.MultiRWLocker for readers.
func (b *Backend) TryRLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return b.c.tryAll(ctx, kindRead, names, 0)
}

// TryWLockAll implements backend.MultiRWLocker for writers.
func (b *Backend) TryWLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return b.c.tryAll(ctx, kindWrite, names, 0)
}

// TryAcquireAll implements backend.MultiSemaphore: a ticket of each
// semaphore of names, every one of limit limit.
func (b *Backend) TryAcquireAll(ctx context.Context, names []string, limit int) ([]*Lease, int, error) {
	if limit < 1 {
		return nil, -1, fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit)
	}
	return b.c.tryAll(ctx, kindSem, names, limit)
}

// tryAll makes one attempt to take a lock of kind k of every name of names
// (limit: a semaphore's) by one script on the only node.
func (c *core) tryAll(ctx context.Context, k kind, names []string, limit int) ([]*Lease, int, error) {
	if c.closed.Load() {
		return nil, -1, backend.Permanent(errClosed)
	}
	if len(c.nodes) != 1 {
		return nil, -1, fmt.Errorf("%w: several nodes", errors.ErrUnsupported) // (a RedLock does not offer it)
	}
	if len(names) == 0 {
		return nil, -1, nil
	}
	rs := make([]*request, len(names))
	stride := len(suffixes(k)) - 1
	keys := make([]string, 0, stride*len(names))
	args := make([]string, 3, 3+2*len(names))
	args[0], args[1] = c.leaseMs, recordOf(ctx)
	if k == kindSem {
		args[2] = strconv.Itoa(limit)
	}
	cluster := c.nodes[0].client.Mode() == valkeygo.ClientModeCluster
	slot := -1
	for i, name := range names {
		r, err := newRequestFor(c, k, name, nil)
		if err != nil {
			return nil, -1, fmt.Errorf("lock %q: %w", name, err)
		}
		if cluster {
			s := int(c.slotOf(r.base))
			if slot >= 0 && s != slot {
				return nil, -1, errCrossSlot
			}
			slot = s
		}
		rs[i] = r
		keys = append(keys, r.keys...)
		args = append(args, c.newToken(), r.ch)
	}
	s := acquireMutexAll
	switch k {
	case kindRead:
		s = acquireReadAll
	case kindWrite:
		s = acquireWriteAll
	case kindSem:
		s = acquireSemAll
	}
	t0 := time.Now()
	res := s.exec(ctx, c.nodes[0].client, keys, args)
	c.noteAuth(c.nodes[0], res.Error())
	if err := res.Error(); err != nil {
		if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", backend.ErrNotAcquired, err)
		} else if wrongType(err) {
			err = fmt.Errorf("a key of one of the locks has the wrong type (a value dlock did not write): %w", err)
		}
		// Whatever the script did is unknown (its answer may have been
		// lost): release what it may have taken.
		c.cleanupAll(ctx, rs, args, 0)
		return nil, -1, fmt.Errorf("%d %s locks from %q: %w", len(names), k, names[0], err)
	}
	if n, err := res.AsInt64(); err == nil {
		if n >= 0 || -n > int64(len(names)) {
			return nil, -1, fmt.Errorf("%d %s locks: unexpected answer %d", len(names), k, n)
		}
		return nil, int(-n - 1), nil
	}
	fences, err := res.AsIntSlice()
	if err != nil || len(fences) != len(names) {
		c.cleanupAll(ctx, rs, args, 0)
		return nil, -1, fmt.Errorf("%d %s locks: unexpected answer %v (%w)", len(names), k, fences, err)
	}
	leases := make([]*Lease, 0, len(names))
	for i, r := range rs {
		l := c.newLease(r, args[3+2*i])
		rep := []reply{{n: fences[i]}}
		a, err := c.decide(ctx, l, t0, rep, tally(rep))
		if err == nil && a.lease == nil {
			err = errors.New("not acquired")
		}
		if err != nil {
			// decide released this one; release the others, held or not.
			for _, h := range leases {
				_ = h.Release(context.WithoutCancel(ctx))
			}
			c.cleanupAll(ctx, rs, args, i+1)
			return nil, -1, fmt.Errorf("lock %q: %w", r.name, err)
		}
		leases = append(leases, a.lease)
	}
	return leases, -1, nil
}

// cleanupAll releases what an attempt of tryAll may hold of the locks of
// rs from the index from, whose tokens are args[3], args[5], ….
func (c *core) cleanupAll(ctx context.Context, rs []*request, args []string, from int) {
	for i := from; i < len(rs); i++ {
		c.cleanup(ctx, c.newLease(rs[i], args[3+2*i]))
	}
}

// ReleaseAll implements backend.MultiReleaser: one script releases the
// leases of one node (on a cluster: of one hash slot), each as its
// Release would (waking or granting the lock to its next waiter), and
// answers for each; a lease alone in its slot, and an upgradeable lock's,
// is released by itself.
func (b *Backend) ReleaseAll(ctx context.Context, leases []*Lease) []error {
	return b.c.releaseAll(ctx, leases)
}

// ReleaseAll implements backend.MultiReleaser: a RedLock releases the
// leases one after another (each on every node in parallel).
func (r *RedLock) ReleaseAll(ctx context.Context, leases []*Lease) []error {
	return r.c.releaseAll(ctx, leases)
}

// releaseAll releases leases, each as Release would, and returns Release's
// answer for each: on one node, those of one hash slot by one script
// (releaseAll); the others one by one.
func (c *core) releaseAll(ctx context.Context, leases []*Lease) []error {
	errs := make([]error, len(leases))
	rctx, cancel := backend.ReleaseContext(ctx, releaseTimeout)
	defer cancel()
	wasLost := make([]bool, len(leases))
	var batch []int // the leases released by a script of several
	for i, l := range leases {
		switch {
		case l == nil:
			errs[i] = fmt.Errorf("release: %w: nil lease", backend.ErrNotHeld)
			continue
		case l.c != c || len(c.nodes) != 1:
			// Another backend's lease (by its own Release, so that it is
			// never left held), or a RedLock's (one after another).
			errs[i] = l.Release(ctx)
			continue
		}
		var err error
		if wasLost[i], _, err = c.ext.finish(l); err != nil {
			errs[i] = fmt.Errorf("release: %w", err)
			continue
		}
		if l.kind == kindUpgrade {
			errs[i] = l.releaseHeld(rctx, wasLost[i], time.Time{})
			continue
		}
		batch = append(batch, i)
	}
	if c.nodes[0].client.Mode() != valkeygo.ClientModeCluster {
		c.releaseGroup(rctx, leases, batch, wasLost, errs)
		return errs
	}
	for len(batch) > 0 {
		// The leases of the first one's slot, in order; the others next.
		slot, rest, group := c.slotOf(leases[batch[0]].base), batch[:0:0], batch[:0:0]
		for _, i := range batch {
			if c.slotOf(leases[i].base) == slot {
				group = append(group, i)
			} else {
				rest = append(rest, i)
			}
		}
		c.releaseGroup(rctx, leases, group, wasLost, errs)
		batch = rest
	}
	return errs
}

// releaseGroup releases the leases of leases at the indexes idx, which the
// extender let go of (wasLost[i]: leases[i] was lost before), by one
// script when there are several, and puts their answers in errs. When the
// script's answer is lost to a connection's failure or a timeout, each is
// released again by itself: one that the script did release then reports
// its loss — a false alarm, never a loss hidden (see retryRelease).
func (c *core) releaseGroup(ctx context.Context, leases []*Lease, idx []int, wasLost []bool, errs []error) {
	if len(idx) == 1 {
		errs[idx[0]] = leases[idx[0]].releaseHeld(ctx, wasLost[idx[0]], time.Time{})
	}
	if len(idx) < 2 {
		return
	}
	keys := make([]string, 0, 5*len(idx))
	args := make([]string, 0, 5*len(idx))
	for _, i := range idx {
		l := leases[i]
		k := "s"
		if l.kind == kindRead || l.kind == kindSem {
			k = "m"
		}
		keys = append(keys, l.rkeys[:]...)
		args = append(append(args, k), l.rargs[:]...)
	}
	t0 := time.Now() // a lock granted to a waiter is valid from here
	res := releaseAll.exec(ctx, c.nodes[0].client, keys, args)
	c.noteAuth(c.nodes[0], res.Error())
	answers, err := res.ToArray()
	if err == nil && len(answers) != len(idx) {
		err = fmt.Errorf("unexpected answer to the release of %d locks: %d answers", len(idx), len(answers))
	}
	if err != nil {
		for _, i := range idx {
			if connErr(err) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				errs[i] = leases[i].releaseHeld(ctx, wasLost[i], time.Time{})
			} else {
				errs[i] = leases[i].releaseOutcome(wasLost[i], 0, 0, err)
			}
		}
		return
	}
	for j, i := range idx {
		owned, refused, err := leases[i].released(t0, []reply{msgReply(answers[j], nil)})
		errs[i] = leases[i].releaseOutcome(wasLost[i], owned, refused, err)
	}
}

// slotOf is the cluster hash slot of the keys of the lock whose key base
// is base.
func (c *core) slotOf(base string) uint16 {
	return hashSlot(base[len(c.cfg.prefix)+1 : len(base)-2])
}

// hashSlot is the cluster hash slot of a key whose hash tag is tag:
// CRC16 (XMODEM) of it, modulo 16384.
func hashSlot(tag string) uint16 {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 0x3fff
}
