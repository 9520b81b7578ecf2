package valkey

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
)

// WithReplicas makes every acquisition and every extension wait until n
// replicas of the primary have it (WAIT n timeout, on the connection that
// wrote it) before it counts: a lock is held only once n replicas have its
// key, and a lease's validity is only pushed forward by an extension that n
// replicas have. n must be at least 1, and timeout at least 1ms and at
// most half of lease - drift allowance - extension period (with the
// default lease of 30s: 9.8s).
//
// When fewer than n replicas confirm within timeout, an acquisition fails
// (what it took is released; the error says how many replicas confirmed
// and is not permanent, so a wait tries again until its ctx ends), and an
// extension counts as not confirmed: it is retried, and the lease is lost
// when its validity deadline passes without a confirmed one — the holder
// never believes in a lease that the replicas do not have.
//
// It protects against a failover after an acquisition (or extension)
// returned: a replica that confirmed has the key and its expiry, so if it
// is promoted nobody else is granted the lock before the holder's
// deadline. It does not protect against (see the package documentation,
// Replicas and failover): asynchronous replication during the WAIT window
// (the write is not synchronous; only the claim that the lock is held
// waits for it), a replica that confirmed not being the one promoted when
// n is below the number of replicas (use n = all replicas for the
// guarantee), split brain before the sentinels agree (a primary cut off
// from them keeps granting until demoted), and replicas that lose what
// they confirmed (restarted without persistence).
// On a RedLock it applies per node: each node that granted the lock must
// have n of its own replicas confirm, and a majority of nodes must.
func WithReplicas(n int, timeout time.Duration) Option {
	return func(c *config) {
		if n < 1 {
			c.fail(fmt.Errorf("%w: replicas %d is below 1", errBadOption, n))
			return
		}
		if timeout < time.Millisecond {
			c.fail(fmt.Errorf("%w: replica timeout %v is below 1ms (WAIT 0 would wait for ever)", errBadOption, timeout))
			return
		}
		c.replicas, c.replicaTimeout = n, timeout
	}
}

// checkReplicas checks the replica options against the lease (after
// newConfig settled the drift allowance and the extension period). An
// acquisition's lease is first extended an extension period after its
// confirmation, and must be by then within its validity: the timeout may
// take at most half of what the validity leaves after that period, the
// other half being room for the confirmation's own round trips.
func (c *config) checkReplicas() error {
	if c.replicas == 0 {
		return nil
	}
	if most := (c.lease - c.drift - c.extendEvery) / 2; c.replicaTimeout > most {
		return fmt.Errorf("%w: replica timeout %v is above %v, half of what the lease's validity (%v - %v drift) leaves after the first extension (%v)",
			errBadOption, c.replicaTimeout, most, c.lease, c.drift, c.extendEvery)
	}
	return nil
}

// touchHeld makes sure the connection it runs on writes something that
// replicates, after everything the lease's acquisition or extension wrote,
// so that a WAIT that follows on the same connection counts the replicas
// that have those writes: it re-sets the held key's expiry to what it is
// (PEXPIRE always propagates, as PEXPIREAT), if the lease still owns it.
// KEYS: the held key. ARGV: token, "1" for a sorted set of members.
// Returns 1 if owned, 0 if not (then nothing is written).
var touchHeld = newScript(luaOwner + `
if ARGV[2] == '1' then
  if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
elseif owner(redis.call('GET', KEYS[1])) ~= ARGV[1] then
  return 0
end
local t = redis.call('PTTL', KEYS[1])
if t <= 0 then return 0 end
redis.call('PEXPIRE', KEYS[1], t)
return 1
`)

// errReplicas is the cause of an acquisition or extension that too few
// replicas confirmed.
var errReplicas = errors.New("too few replicas confirmed")

// confirmOn has n's replicas confirm the writes of l's acquisition or
// extension: the touchHeld script and WAIT, pipelined on one dedicated
// connection (valkey-go's Dedicated), so that the WAIT follows the write
// on the connection that made it. It returns nil when replicas confirmed
// and the lease still owned its key on n.
func (c *core) confirmOn(ctx context.Context, n *node, l *Lease) error {
	member := "0"
	if l.kind == kindRead || l.kind == kindSem {
		member = "1"
	}
	keys, args := []string{l.rkeys[0]}, []string{l.token, member}
	type answer struct {
		owned, acked int64
		err          error
	}
	done := make(chan answer, 1)
	// valkey-go's Dedicated takes its connection without a ctx (a dial to
	// an unreachable server waits for the client's dial timeout): it runs
	// in a goroutine of its own, which the caller stops waiting for when
	// ctx ends, and Close waits for.
	started := c.repl.start(func() {
		// Not the caller's ctx: a command cancelled midway closes its
		// dedicated connection, and the caller stops waiting anyway. WAIT
		// answers within replicaTimeout; the slack bounds a silent server.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.replicaTimeout+2*time.Second)
		defer cancel()
		var a answer
		a.err = n.client.Dedicated(func(d valkeygo.DedicatedClient) error {
			for _, byEval := range []bool{false, true} {
				b := d.B()
				var s valkeygo.Completed
				if byEval {
					s = b.Eval().Script(touchHeld.src).Numkeys(1).Key(keys...).Arg(args...).Build()
				} else {
					s = b.Evalsha().Sha1(touchHeld.sha).Numkeys(1).Key(keys...).Arg(args...).Build()
				}
				w := b.Wait().Numreplicas(int64(c.cfg.replicas)).Timeout(c.cfg.replicaTimeout.Milliseconds()).Build()
				res := d.DoMulti(dctx, s, w)
				var err error
				if a.owned, err = res[0].AsInt64(); err != nil {
					if e, ok := valkeygo.IsValkeyErr(err); ok && e.IsNoScript() && !byEval {
						continue
					}
					return err
				}
				a.acked, err = res[1].AsInt64()
				return err
			}
			return nil
		})
		done <- a
	})
	if !started {
		return errClosed
	}
	var a answer
	select {
	case a = <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	owned, acked, err := a.owned, a.acked, a.err
	switch {
	case err != nil:
		return err
	case owned != 1:
		return fmt.Errorf("%w: the lock was no longer held on the primary when its replicas were asked", errReplicas)
	case acked < int64(c.cfg.replicas):
		return fmt.Errorf("%w: %d of %d replicas confirmed within %v", errReplicas, acked, c.cfg.replicas, c.cfg.replicaTimeout)
	}
	return nil
}

// confirmReplicas is the acquisition's hook: with WithReplicas, the nodes
// that granted l (rs) must have their replicas confirm it, a quorum of
// them. Without the option it does nothing.
func (c *core) confirmReplicas(ctx context.Context, l *Lease, rs []reply) error {
	if c.cfg.replicas == 0 {
		return nil
	}
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, r := range rs {
		if r.err != nil || r.n <= 0 {
			errs[i] = errSkip
			continue
		}
		wg.Go(func() { errs[i] = c.confirmOn(ctx, c.nodes[i], l) })
	}
	wg.Wait()
	ok := 0
	var failed []error
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case err != errSkip:
			failed = append(failed, fmt.Errorf("node %s: %w", c.nodes[i].addr, err))
		}
	}
	if ok >= c.quorum {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %w", backend.ErrNotAcquired, cerr)
	}
	if len(c.nodes) == 1 {
		return fmt.Errorf("acquired on the primary, but not confirmed by its replicas (released): %w", errors.Join(failed...))
	}
	return fmt.Errorf("acquired, but confirmed by the replicas of %d of %d nodes, %d needed (released): %w", ok, len(c.nodes), c.quorum, errors.Join(failed...))
}

// replWork owns the goroutines of confirmations (confirmOn), which may
// outlive their caller's ctx: Close waits for them.
type replWork struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// start runs f in a goroutine unless the work is closed.
func (w *replWork) start(f func()) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.wg.Go(f)
	return true
}

// close refuses new work and waits for the work in flight.
func (w *replWork) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.wg.Wait()
}

// errSkip marks a node that did not grant the lock in confirmReplicas.
var errSkip = errors.New("not granted")

// confirmExtension is the extension's hook, run after a batch of
// extensions (calls) on node n answered res: with WithReplicas, n's
// replicas must confirm the batch, or it returns the error that makes
// every extension of the batch that n confirmed count as failed (retried,
// and lost at its validity deadline). Without the option, or when nothing
// was extended on n, it returns nil.
func (c *core) confirmExtension(ctx context.Context, n *node, batch []*Lease, res []valkeygo.ValkeyResult) error {
	if c.cfg.replicas == 0 {
		return nil
	}
	for i, r := range res {
		if v, err := r.AsInt64(); err == nil && v == 1 {
			// One touch after the batch covers all of it: the replication
			// stream is in order.
			if err := c.confirmOn(ctx, n, batch[i]); err != nil {
				return fmt.Errorf("extension not confirmed by replicas: %w", err)
			}
			return nil
		}
	}
	return nil
}
