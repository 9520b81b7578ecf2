package valkey

import (
	"context"
	"fmt"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
)

// Waiting.
const (
	minPoll = 10 * time.Millisecond
	// maxPoll bounds the fallback poll of a waiter (for lost
	// notifications); a lock expected to expire sooner is retried then. A
	// waiter also polls at least three times per lease, as every attempt
	// renews its place in the queue.
	maxPoll = 500 * time.Millisecond
	// targetedPoll is the first poll of a waiter that releases wake by
	// name (see wait).
	targetedPoll = 100 * time.Millisecond
)

// wait takes the lock of r by repeated attempts. The first failed attempt
// puts the waiter in the lock's queue (under the first attempt's token as
// its id), and every later one renews its place there (see luaQueue);
// after it the waiter subscribes to the lock's release channel (on every
// node) and tries again, so a release in between is not missed; then it
// tries again whenever it is woken, when the lock's holder is due to
// expire, and, in case a notification was lost, at a bounded backoff.
// A waiter that ends without the lock leaves the queue at once (bounded by
// releaseTimeout, even when ctx is done); if that fails, its place expires
// after the lease.
//
// On one node a release is announced only when someone waits, with the id
// of the queue's first waiter, and wakes only that waiter (a reader-writer
// lock's wakes every waiter of the lock in this process: several readers
// may enter together). On a RedLock a release wakes one waiter of this
// RedLock (see notifier): a waiter that stops without the lock passes its
// turn on.
func (c *core) wait(ctx context.Context, r *request) (*Lease, error) {
	return c.waitWith(ctx, r, nil)
}

// tryFunc makes an attempt (core.tryAs, or a test's stand-in).
type tryFunc func(ctx context.Context, r *request, token, waiter string) (attempt, error)

// waitWith is wait with its attempts made by try (nil: core.tryAs).
func (c *core) waitWith(ctx context.Context, r *request, try tryFunc) (l *Lease, err error) {
	token := c.newToken()
	var gen uint64 // see subscribeSince
	if len(c.nodes) == 1 {
		gen = c.nodes[0].notif.Gen()
	}
	// A wait that the previous one (with this ctx, for this lock) handed
	// its place to, failing on a transient error, resumes it (see
	// parkedWaiters); else the first attempt's token is the waiter's id.
	waiter := c.park.resume(ctx, r)
	resumed := waiter != ""
	if !resumed {
		waiter = token
	}
	a, err := c.attempt(ctx, try, r, token, waiter) // the uncontended path builds nothing to wait with
	if a.lease != nil {
		return a.lease, err
	}
	defer func() {
		if l != nil {
			return
		}
		if err != nil && ctx.Err() == nil && !backend.IsPermanent(err) && c.park.park(c, ctx, r, waiter) {
			return // the retry resumes the place
		}
		c.leave(ctx, r, waiter)
	}()
	if err != nil {
		return nil, err
	}
	wake := make(chan struct{}, 1)
	subs := make([]*subscription, len(c.nodes))
	one := r.k == kindMutex || r.k == kindSem
	id := ""
	var near *localWaiter
	if one && c.fair == "1" {
		id = queueMember(r.k, waiter)
		// A release in this process wakes the waiter directly, or grants
		// it the lock (see localWaiters).
		near = c.near.add(id, wake)
		defer c.near.remove(near)
	}
	defer func() {
		for _, s := range subs {
			if s == nil {
				continue
			}
			if one && id == "" && (l == nil || r.k == kindSem) {
				s.passOn()
			}
			s.close()
		}
	}()
	ch := r.ch
	subscribed := false
	poll := pace.New(minPoll, maxPoll)
	if id != "" {
		// A release names the waiter it wakes: polling only renews the
		// waiter's place and covers a lost message, and a queue of many
		// waiters must not flood the server with attempts.
		poll = pace.New(targetedPoll, maxPoll)
	}
	most := min(maxPoll, c.cfg.lease/3)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for first := true; ; first = false {
		if !first {
			// A resumed waiter takes a grant only by its attempt, which
			// finds the lock granted to it (acquireMutex): a message
			// could be older than its previous wait, whose attempt took
			// that grant over and then failed.
			if g, ok := c.near.take(near); ok && !resumed {
				return c.takeGrant(ctx, r, waiter, g)
			}
			if f := takeGrant(subs, id); f != 0 && !resumed {
				// Granted by another process's release (see releaseString),
				// for what remained of the waiter's place, which its latest
				// attempt renewed.
				// a.sent: a lock granted to the waiter since its latest
				// attempt, which renewed its place, is valid from before
				// that attempt was sent.
				return c.takeGrant(ctx, r, waiter, granted{fence: f, t0: a.sent})
			}
			if a, err = c.attempt(ctx, try, r, c.newToken(), waiter); err != nil {
				return nil, err
			}
			if a.lease != nil {
				return a.lease, nil
			}
		}
		if !subscribed || c.dropDead(subs) {
			subscribed = true
			made, live := c.subscribe(ctx, subs, ch, one, id, wake, gen)
			gen = 0
			if made > 0 && !live && ctx.Err() == nil {
				continue // try again now that a release cannot be missed
			}
		}
		d := min(poll.Next(), most) // jittered, never beyond most
		if a.hint > 0 && a.hint+time.Millisecond < d {
			d = a.hint + time.Millisecond
		}
		timer.Reset(d)
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// takeGrant makes the lease of the lock of r that a release in this
// process granted to waiter (whose id is the lease's token), as an attempt
// that acquired it would.
func (c *core) takeGrant(ctx context.Context, r *request, waiter string, g granted) (*Lease, error) {
	l := c.newLease(r, waiter)
	rs := []reply{{n: int64(g.fence)}}
	a, err := c.decide(ctx, l, g.t0, rs, tally(rs))
	return a.lease, err
}

// takeGrant returns the fencing token of a lock that a release's message
// granted the waiter id (not ""), or 0.
func takeGrant(subs []*subscription, id string) uint64 {
	if id == "" {
		return 0
	}
	for _, s := range subs {
		if s != nil {
			if f := s.takeGrant(); f != 0 {
				return f
			}
		}
	}
	return 0
}

// attempt makes an attempt by try, or by c.tryAs when try is nil.
// The attempt's sent is a moment before it was sent.
func (c *core) attempt(ctx context.Context, try tryFunc, r *request, token, waiter string) (attempt, error) {
	if try == nil {
		return c.tryAs(ctx, r, token, waiter) // (which sets sent)
	}
	sent := time.Now()
	a, err := try(ctx, r, token, waiter)
	a.sent = sent
	return a, err
}

// leave takes waiter out of the queue of r's lock (waking the next waiter
// if it was first), detached from ctx and bounded by releaseTimeout; a
// failure is left to the queue's expiry of waiters that stop renewing.
func (c *core) leave(ctx context.Context, r *request, waiter string) {
	if c.closed.Load() {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	keys := r.keys[2:4]
	if r.k == kindMutex {
		keys = []string{r.keys[2], r.keys[3], r.keys[0]} // and the lock, which may have been granted to the waiter
	}
	for _, rep := range c.evalAll(lctx, leaveQueue, keys, []string{queueMember(r.k, waiter), r.ch, releaseLocal(c, r.k)}) {
		if rep.next != "" {
			c.near.wake(rep.next)
		}
		if rep.err != nil {
			c.cfg.logger.Debug("dlock/valkey: leaving the waiter queue failed; the place expires after the lease", "kind", r.k.String(), "name", r.name, "err", rep.err)
		}
	}
}

// subscribe subscribes to ch on every node where subs has no
// subscription (as the waiter id, "" for any), and returns how many it
// made; failures leave the waiter polling. live reports that, on one node
// with a waiter id, the channel was already subscribed when the attempt
// that queued the waiter was sent (gen, see subscribeSince): a release
// announced since then reaches the waiter, which need not try again.
func (c *core) subscribe(ctx context.Context, subs []*subscription, ch string, one bool, id string, wake chan struct{}, gen uint64) (made int, live bool) {
	if id == "" || len(c.nodes) > 1 {
		gen = 0
	}
	for i, n := range c.nodes {
		if subs[i] != nil {
			continue
		}
		s, l, err := n.notif.subscribeSince(ctx, ch, one, id, wake, gen)
		if err != nil {
			c.cfg.logger.Debug("dlock/valkey: subscribe failed; polling", "err", err)
			continue
		}
		subs[i] = s
		made++
		live = l
	}
	return made, live
}

// dropDead drops the subscriptions whose connection broke and reports
// whether there were any.
func (c *core) dropDead(subs []*subscription) bool {
	found := false
	for i, s := range subs {
		if s != nil && s.dead() {
			s.close()
			subs[i] = nil
			found = true
		}
	}
	return found
}
