package pg

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Semaphore waits are woken by notifications, not by polling.
//
// Releasing a semaphore lease runs pg_notify(semChannel, <the semaphore's
// fencing key>) in the same statement, hence the same round trip, as its
// pg_advisory_unlock. A Backend with waiting semaphore acquisitions keeps
// ONE listener connection (LISTEN semChannel), whatever the number of
// waiters, and wakes one waiter of the semaphore per notification (the
// oldest without a pending wake-up); a waiter that leaves without using its
// wake-up hands it on. A waiter registers before its next try, so a release
// that commits after that try began wakes it. Slots freed without a
// notification (a holder whose session died, a release by other code, a
// listener reconnecting) are found by a slow fallback poll.
//
// The listener starts with the first waiter and stops when it has had no
// waiter for about a loss interval (two wait slices), or at Close; it gives
// its connection back by closing it (a pooled connection must not stay
// subscribed).

// semChannel is the notification channel of semaphore releases.
const semChannel = "dlock_sem"

// Fallback poll of a semaphore wait: from pollMin, doubling to pollMax.
const (
	pollMin = 50 * time.Millisecond
	pollMax = 500 * time.Millisecond
)

// semWaiter is one waiting semaphore acquisition.
type semWaiter struct {
	topic string
	wake  chan struct{} // buffered 1: a pending wake-up
}

// listenState is the Backend's listener, guarded by Backend.lnMu.
type listenState struct {
	waiters map[string][]*semWaiter // by topic, oldest first
	n       int                     // waiters registered
	running bool                    // the listener goroutine runs
	ready   bool                    // LISTEN is in effect
	cancel  context.CancelFunc      // stops the running listener
}

// listen registers a waiter of topic (starting the listener if needed) and
// reports whether the listener is ready: then every release committed from
// now on wakes a waiter of topic.
func (b *Backend) listen(topic string) (*semWaiter, bool) {
	w := &semWaiter{topic: topic, wake: make(chan struct{}, 1)}
	b.lnMu.Lock()
	defer b.lnMu.Unlock()
	ln := &b.ln
	if ln.waiters == nil {
		ln.waiters = make(map[string][]*semWaiter)
	}
	ln.waiters[topic] = append(ln.waiters[topic], w)
	ln.n++
	if !ln.running && !b.isClosed() {
		ctx, cancel := context.WithCancel(context.Background())
		ln.running, ln.cancel = true, cancel
		b.lnWG.Add(1)
		go b.listener(ctx)
	}
	return w, ln.ready
}

// unlisten removes w; a wake-up w did not use goes to another waiter.
func (b *Backend) unlisten(w *semWaiter) {
	b.lnMu.Lock()
	defer b.lnMu.Unlock()
	ws := b.ln.waiters[w.topic]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(b.ln.waiters, w.topic)
	} else {
		b.ln.waiters[w.topic] = ws
	}
	b.ln.n--
	select {
	case <-w.wake:
		b.wakeOneLocked(w.topic)
	default:
	}
}

// wakeOneLocked wakes the oldest waiter of topic without a pending wake-up.
func (b *Backend) wakeOneLocked(topic string) {
	for _, w := range b.ln.waiters[topic] {
		select {
		case w.wake <- struct{}{}:
			return
		default:
		}
	}
}

// wakeAllLocked wakes every waiter (the listener became ready, or lost its
// connection: notifications may have been missed).
func (b *Backend) wakeAllLocked() {
	for _, ws := range b.ln.waiters {
		for _, w := range ws {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

func (b *Backend) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// stopListener stops the listener (Close) and waits for it.
func (b *Backend) stopListener() {
	b.lnMu.Lock()
	if b.ln.cancel != nil {
		b.ln.cancel()
	}
	b.lnMu.Unlock()
	b.lnWG.Wait()
}

// listener runs the listener connection while there are waiters.
func (b *Backend) listener(ctx context.Context) {
	defer b.lnWG.Done()
	slice := max(b.cfg.lossInterval/2, 10*time.Millisecond)
	retry := pollMin
	var pc *pgxpool.Conn
	defer func() {
		if pc != nil {
			destroy(pc)
		}
	}()
	// exit ends the listener if it has no waiters (or ctx is done); it
	// holds lnMu when it returns true.
	exit := func() bool {
		b.lnMu.Lock()
		if b.ln.n == 0 || ctx.Err() != nil {
			b.ln.running, b.ln.ready = false, false
			b.ln.cancel()
			b.ln.cancel = nil
			b.lnMu.Unlock()
			return true
		}
		b.lnMu.Unlock()
		return false
	}
	idle := 0
	for {
		if pc == nil {
			var err error
			pc, err = b.subscribe(ctx)
			if err != nil {
				pc = nil
				if exit() {
					return
				}
				t := time.NewTimer(retry)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
				retry = min(2*retry, pollMax)
				continue
			}
			retry = pollMin
			b.lnMu.Lock()
			b.ln.ready = true
			b.wakeAllLocked() // they try once now that LISTEN is in effect
			b.lnMu.Unlock()
		}
		wctx, cancel := context.WithTimeout(ctx, slice)
		n, err := pc.Conn().WaitForNotification(wctx)
		cancel()
		switch {
		case n != nil:
			idle = 0
			b.lnMu.Lock()
			b.wakeOneLocked(n.Payload)
			b.lnMu.Unlock()
			continue
		case err == nil:
			continue
		case ctx.Err() == nil && !pc.Conn().IsClosed() && wctx.Err() != nil:
			// A slice without a notification. Stop after a whole idle
			// slice without waiters.
			b.lnMu.Lock()
			if b.ln.n == 0 {
				idle++
			} else {
				idle = 0
			}
			b.lnMu.Unlock()
			if idle >= 2 && exit() {
				return
			}
			continue
		}
		// The connection failed (or Close): wake everyone, reconnect.
		destroy(pc)
		pc = nil
		b.lnMu.Lock()
		b.ln.ready = false
		b.wakeAllLocked()
		b.lnMu.Unlock()
		if exit() {
			return
		}
	}
}

// subscribe takes a pool connection and runs LISTEN on it.
func (b *Backend) subscribe(ctx context.Context) (*pgxpool.Conn, error) {
	actx, cancel := context.WithTimeout(ctx, b.cfg.opTimeout)
	defer cancel()
	pc, err := b.acquire(actx) // never waits for a connection
	if err != nil {
		return nil, err
	}
	if _, err := pc.Conn().PgConn().Exec(actx, "LISTEN "+semChannel).ReadAll(); err != nil {
		destroy(pc)
		return nil, err
	}
	return pc, nil
}
