package valkey

import (
	"context"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// parkFor is how long a wait that failed on a transient error keeps its
// place in the queue for the retry (see parkedWaiters). The dlock engine
// retries within its backoff's cap (dlock.DefaultMaxWait, 500ms, unless
// set otherwise).
const parkFor = 2 * time.Second

// parkedWaiters keeps the places in the queue of waits that failed on a
// transient error (a broken connection, a failover), for the retry. A wait
// that fails leaves the queue; but the server that refused the attempt
// (or never answered) may refuse the leave too, and a wait that then
// queued again under a new id would leave its old place behind, first in
// the queue and kept by the replicas, granted the lock by the next
// release and holding every waiter up until it expired, a lease later.
// So a wait that fails on an error that is not permanent, while its ctx
// lives, does not leave: it parks its id, and the next wait for the same
// lock with the same ctx (the engine's retry) resumes it, with its place
// (and a lock a release granted it meanwhile, which its first attempt
// takes over). A parked id nobody resumed leaves the queue when its ctx
// ends or after parkFor, as the wait would have. Waits are told apart by
// their ctx (a ctx whose type is not comparable is never parked): two
// waits of one lock with one ctx may swap places, in this process only.
type parkedWaiters struct {
	mu     sync.Mutex
	m      map[parkKey][]*parkedWaiter
	closed bool
	wg     sync.WaitGroup // leaves of parked ids in flight
	// parked counts the parked ids (written under mu): a wait that finds
	// none looks no further (the uncontended path stays as it was).
	parked atomic.Int64
}

// parkKey is a parked wait's ctx and lock.
type parkKey struct {
	ctx  context.Context
	k    kind
	base string
}

// parkedWaiter is one parked id and what ends its parking.
type parkedWaiter struct {
	id      string
	timer   *time.Timer
	stopCtx func() bool
}

// park keeps the place of waiter, whose wait for the lock of r with ctx
// failed on a transient error, for the next such wait; it reports false
// (the caller leaves the queue) when it cannot.
func (p *parkedWaiters) park(c *core, ctx context.Context, r *request, waiter string) bool {
	if !reflect.ValueOf(ctx).Comparable() {
		return false
	}
	key := parkKey{ctx: ctx, k: r.k, base: r.base}
	pw := &parkedWaiter{id: waiter}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if p.m == nil {
		p.m = make(map[parkKey][]*parkedWaiter)
	}
	p.m[key] = append(p.m[key], pw)
	p.parked.Add(1)
	expire := func() {
		if p.unpark(key, pw) {
			defer p.wg.Done()
			c.leave(context.Background(), r, waiter)
		}
	}
	pw.timer = time.AfterFunc(parkFor, expire)
	pw.stopCtx = context.AfterFunc(ctx, expire)
	return true
}

// unpark forgets pw if it is still parked under key (and then counts a
// leave in flight, unless the parking ended with the core).
func (p *parkedWaiters) unpark(key parkKey, pw *parkedWaiter) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ws := p.m[key]
	i := -1
	for j, w := range ws {
		if w == pw {
			i = j
		}
	}
	if i < 0 || p.closed {
		return false
	}
	p.drop(key, i)
	p.wg.Add(1)
	return true
}

// drop removes the i-th parked id of key; p.mu is held.
func (p *parkedWaiters) drop(key parkKey, i int) {
	p.parked.Add(-1)
	ws := p.m[key]
	if len(ws) == 1 {
		delete(p.m, key)
		return
	}
	p.m[key] = append(ws[:i:i], ws[i+1:]...)
}

// resume returns the id parked longest for a wait for the lock of r with
// ctx, and forgets it; "" when there is none.
func (p *parkedWaiters) resume(ctx context.Context, r *request) string {
	if p.parked.Load() == 0 || !reflect.ValueOf(ctx).Comparable() {
		return ""
	}
	key := parkKey{ctx: ctx, k: r.k, base: r.base}
	p.mu.Lock()
	defer p.mu.Unlock()
	ws := p.m[key]
	if len(ws) == 0 {
		return ""
	}
	pw := ws[0]
	p.drop(key, 0)
	pw.timer.Stop()
	pw.stopCtx()
	return pw.id
}

// close forgets every parked id (the core is closing: its ids expire with
// their places) and waits for the leaves in flight.
func (p *parkedWaiters) close() {
	p.mu.Lock()
	p.closed = true
	for _, ws := range p.m {
		for _, pw := range ws {
			pw.timer.Stop()
			pw.stopCtx()
		}
	}
	p.m = nil
	p.parked.Store(0)
	p.mu.Unlock()
	p.wg.Wait()
}
