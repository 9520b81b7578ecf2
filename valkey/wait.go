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
	// notifications); a lock expected to expire sooner is retried then.
	maxPoll = 500 * time.Millisecond
	// writerMark is how long a waiting writer's mark holds readers off
	// without being renewed; a waiting writer renews it at least every
	// maxPoll.
	writerMark = 2 * time.Second
)

// wait takes a lock by repeated attempts: after a failed one it subscribes
// to the lock's release channel (on every node) and tries again, so a
// release in between is not missed; then it tries again whenever a release
// is announced, when the lock's holder is due to expire, and, in case a
// notification was lost, at a bounded backoff.
//
// A mutex's or semaphore's release notification wakes one waiter of this
// Backend (see notifier): a waiter that stops without the lock passes its
// turn on, and a semaphore waiter that takes a ticket passes one on too.
func (c *core) wait(ctx context.Context, k kind, name, base string, try func(context.Context) (attempt, error)) (l *Lease, err error) {
	a, err := try(ctx) // the uncontended path builds nothing to wait with
	if err != nil || a.lease != nil {
		return a.lease, err
	}
	wake := make(chan struct{}, 1)
	subs := make([]*subscription, len(c.nodes))
	one := k == kindMutex || k == kindSem
	defer func() {
		for _, s := range subs {
			if s == nil {
				continue
			}
			if one && (l == nil || k == kindSem) {
				s.passOn()
			}
			s.close()
		}
	}()
	ch := channel(base, k)
	subscribed := false
	poll := pace.New(minPoll, maxPoll)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for first := true; ; first = false {
		if !first {
			if a, err = try(ctx); err != nil {
				return nil, err
			}
			if a.lease != nil {
				return a.lease, nil
			}
		}
		if !subscribed || c.dropDead(subs) {
			subscribed = true
			if c.subscribe(ctx, subs, ch, one, wake) > 0 && ctx.Err() == nil {
				continue // try again now that a release cannot be missed
			}
		}
		d := min(poll.Next(), maxPoll) // jittered, never beyond maxPoll
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

// subscribe subscribes to ch on every node where subs has no
// subscription, and returns how many it made; failures leave the waiter
// polling.
func (c *core) subscribe(ctx context.Context, subs []*subscription, ch string, one bool, wake chan struct{}) int {
	made := 0
	for i, n := range c.nodes {
		if subs[i] != nil {
			continue
		}
		s, err := n.notif.subscribe(ctx, ch, one, wake)
		if err != nil {
			c.cfg.logger.Debug("dlock/valkey: subscribe failed; polling", "err", err)
			continue
		}
		subs[i] = s
		made++
	}
	return made
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
