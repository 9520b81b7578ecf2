package valkey

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
)

// releaseTimeout bounds a release (and the clean-up of a failed
// acquisition), which runs even when the caller's ctx is done.
const releaseTimeout = 5 * time.Second

// detached returns a context for a release: not cancelled with
// ctx (it must run even when ctx is done), bounded by releaseTimeout, and
// by ctx's deadline when that is still ahead and sooner (so a caller's
// shorter release timeout is honoured).
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	d := releaseTimeout
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left > 0 && left < d {
			d = left
		}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

var errClosed = errors.New("dlock/valkey: backend closed")

// node is one independent server (or cluster) and its release notifier.
type node struct {
	client valkeygo.Client
	notif  *notifier
}

// core is what a Backend (one node) and a RedLock (several) share: the
// nodes, the quorum, the lease extender.
type core struct {
	cfg     config
	leaseMs string
	nodes   []*node
	quorum  int
	ext     *extender
	closed  atomic.Bool
	once    sync.Once
}

func newCore(cfg config, clients []valkeygo.Client) *core {
	c := &core{cfg: cfg, leaseMs: strconv.FormatInt(cfg.lease.Milliseconds(), 10), quorum: len(clients)/2 + 1}
	for _, cl := range clients {
		c.nodes = append(c.nodes, &node{client: cl, notif: newNotifier(cl, cfg.logger)})
	}
	c.ext = newExtender(c)
	return c
}

func (c *core) close() {
	c.once.Do(func() {
		c.closed.Store(true)
		c.ext.close()
		for _, n := range c.nodes {
			n.notif.close()
		}
	})
}

// reply is one node's answer to a script.
type reply struct {
	n   int64
	err error
}

// evalAll runs s on every node in parallel (one node: in this goroutine).
func (c *core) evalAll(ctx context.Context, s *script, keys, args []string) []reply {
	out := make([]reply, len(c.nodes))
	one := func(i int) {
		out[i].n, out[i].err = s.exec(ctx, c.nodes[i].client, keys, args).AsInt64()
	}
	if len(c.nodes) == 1 {
		one(0)
		return out
	}
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Go(func() { one(i) })
	}
	wg.Wait()
	return out
}

// newToken returns a random token naming one acquisition.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// attempt is one try's outcome: a lease, or a hint how long to wait.
type attempt struct {
	lease *Lease
	hint  time.Duration // when not acquired: how long the lock stays taken, if known (0: unknown)
}

// try makes one attempt to take a lock of kind k on name. args are the
// acquire script's arguments after the token and lease.
func (c *core) try(ctx context.Context, k kind, name string, s *script, keys []string, base string, extra ...string) (attempt, error) {
	if c.closed.Load() {
		return attempt{}, fmt.Errorf("%w (taking %s %s)", errClosed, k, shortName(name))
	}
	token := newToken()
	args := append([]string{token, c.leaseMs}, extra...)
	t0 := time.Now()
	actx := ctx
	if len(c.nodes) > 1 {
		// One slow node must not eat the validity of the others' answers.
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, c.cfg.lease-c.cfg.drift)
		defer cancel()
	}
	rs := c.evalAll(actx, s, keys, args)
	var got, refused int
	var fence uint64
	var hint int64
	var firstErr error
	for _, r := range rs {
		switch {
		case r.err != nil:
			if firstErr == nil {
				firstErr = r.err
			}
		case r.n > 0:
			got++
			if f := uint64(r.n); f > fence {
				fence = f
			}
		default:
			refused++
			if h := -1 - r.n; h > hint {
				hint = h
			}
		}
	}
	l := &Lease{c: c, kind: k, name: name, base: base, token: token, fence: fence, lost: make(chan struct{}), idx: -1}
	atMax := 0
	for _, r := range rs {
		if r.err == nil && r.n > 0 && uint64(r.n) == fence {
			atMax++
		}
	}
	if got >= c.quorum && atMax < c.quorum {
		// RedLock: make the token stick on a majority (see RedLock).
		if err := c.raiseFence(ctx, l, rs); err != nil {
			c.cleanup(ctx, l)
			if cerr := ctx.Err(); cerr != nil {
				return attempt{}, fmt.Errorf("dlock/valkey: taking %s %s: %w: %w", k, shortName(name), dlock.ErrNotAcquired, cerr)
			}
			return attempt{}, fmt.Errorf("dlock/valkey: taking %s %s: %w", k, shortName(name), err)
		}
	}
	if got >= c.quorum {
		if d := t0.Add(c.cfg.lease - c.cfg.drift); time.Now().Before(d) {
			l.deadline = d
			if err := c.ext.add(l); err != nil {
				c.cleanup(ctx, l)
				return attempt{}, fmt.Errorf("%w (taking %s %s)", err, k, shortName(name))
			}
			return attempt{lease: l}, nil
		}
		firstErr = fmt.Errorf("acquired too late: the lease's validity had passed")
	}
	if got > 0 || firstErr != nil {
		// Release what was taken (and what may have been taken by a
		// request whose answer was lost).
		c.cleanup(ctx, l)
	}
	if refused > len(c.nodes)-c.quorum {
		return attempt{hint: time.Duration(hint) * time.Millisecond}, nil
	}
	if err := ctx.Err(); err != nil {
		return attempt{}, fmt.Errorf("dlock/valkey: taking %s %s: %w: %w", k, shortName(name), dlock.ErrNotAcquired, err)
	}
	if errors.Is(firstErr, context.DeadlineExceeded) || errors.Is(firstErr, context.Canceled) {
		// valkey-go may see ctx's deadline pass before ctx reports it.
		return attempt{}, fmt.Errorf("dlock/valkey: taking %s %s: %w: %w", k, shortName(name), dlock.ErrNotAcquired, firstErr)
	}
	if len(c.nodes) > 1 {
		return attempt{}, fmt.Errorf("dlock/valkey: taking %s %s: %d of %d nodes agreed, %d needed: %w", k, shortName(name), got, len(c.nodes), c.quorum, firstErr)
	}
	return attempt{}, fmt.Errorf("dlock/valkey: taking %s %s: %w", k, shortName(name), firstErr)
}

// raiseFence is RedLock's second phase when the nodes answered different
// counters: every node where the acquisition holds the lock raises its
// counter to the largest; a majority must confirm. Then any later
// acquisition, which needs a majority too, meets a node whose counter is at
// least this token and gets a larger one.
func (c *core) raiseFence(ctx context.Context, l *Lease, rs []reply) error {
	keys := mutexKeys(l.base)
	floor := strconv.FormatUint(l.fence, 10)
	ok := make([]bool, len(c.nodes))
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, r := range rs {
		if r.err != nil || r.n <= 0 {
			continue
		}
		if uint64(r.n) == l.fence {
			ok[i] = true
			continue
		}
		wg.Go(func() {
			n, err := raiseFence.exec(ctx, c.nodes[i].client, keys, []string{l.token, floor}).AsInt64()
			ok[i] = err == nil && n == 1
			if err == nil && n != 1 {
				err = errors.New("the lock was no longer held there")
			}
			errs[i] = err
		})
	}
	wg.Wait()
	var n int
	for _, b := range ok {
		if b {
			n++
		}
	}
	if n < c.quorum {
		return fmt.Errorf("fencing token confirmed on %d of %d nodes, %d needed: %w", n, len(c.nodes), c.quorum, errors.Join(errs...))
	}
	return nil
}

// cleanup releases whatever an acquisition that failed may hold.
func (c *core) cleanup(ctx context.Context, l *Lease) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	l.releaseOnNodes(rctx)
}

// Lease is one held lock of a Backend or a RedLock. It is extended in the
// background until released or lost.
type Lease struct {
	c     *core
	kind  kind
	name  string
	base  string
	token string
	fence uint64
	lost  chan struct{}

	// Guarded by c.ext.mu.
	state    leaseState
	deadline time.Time // validity: Lost closes when it passes unconfirmed
	due      time.Time // next extension
	idx      int       // index in the extender's heap; -1 when not in it
}

type leaseState uint8

const (
	held leaseState = iota
	lost
	released
)

// Lost implements backend.Lease: the channel closes when the lease can no
// longer be guaranteed (the key was deleted or taken over, or no extension
// was confirmed before the validity deadline), and on Release.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Token implements backend.Fencer: a fencing token, strictly increasing per
// name and kind of lock across all acquisitions.
func (l *Lease) Token() uint64 { return l.fence }

// Name returns the name of the lock.
func (l *Lease) Name() string { return l.name }

// Release implements backend.Lease. It deletes the lease's key if this
// lease still owns it and wakes the waiters. It returns an error wrapping
// dlock.ErrLockLost if the lease had been lost (even if its key was still
// there), dlock.ErrNotHeld if it was released before, or the server's
// error (the lock then frees when its lease runs out). It runs even when
// ctx is done, bounded by a timeout of its own (5s) or by ctx's deadline
// if that is still ahead and sooner.
func (l *Lease) Release(ctx context.Context) error {
	wasLost, err := l.c.ext.finish(l)
	if err != nil {
		return fmt.Errorf("dlock/valkey: releasing %s %s: %w", l.kind, shortName(l.name), err)
	}
	rctx, cancel := detached(ctx)
	defer cancel()
	owned, refused, rerr := l.releaseOnNodes(rctx)
	switch {
	case wasLost:
		return fmt.Errorf("dlock/valkey: releasing %s %s: %w", l.kind, shortName(l.name), dlock.ErrLockLost)
	case owned >= l.c.quorum:
		return nil
	case refused > len(l.c.nodes)-l.c.quorum:
		return fmt.Errorf("dlock/valkey: releasing %s %s: %w (it had been deleted or taken over)", l.kind, shortName(l.name), dlock.ErrLockLost)
	default:
		return fmt.Errorf("dlock/valkey: releasing %s %s (it will expire): %w", l.kind, shortName(l.name), rerr)
	}
}

// releaseOnNodes runs the release script on every node: it counts the nodes
// where the lease was still owned and those where it was not.
func (l *Lease) releaseOnNodes(ctx context.Context) (owned, refused int, err error) {
	var s *script
	switch l.kind {
	case kindMutex, kindWrite:
		s = releaseString
	default:
		s = releaseMember
	}
	for _, r := range l.c.evalAll(ctx, s, []string{heldKey(l.base, l.kind)}, []string{l.token, channel(l.base, l.kind)}) {
		switch {
		case r.err != nil:
			err = r.err
		case r.n == 1:
			owned++
		default:
			refused++
		}
	}
	return owned, refused, err
}

// extendCall is the script call that extends l.
func (l *Lease) extendCall() call {
	s := extendString
	if l.kind == kindRead || l.kind == kindSem {
		s = extendMember
	}
	return call{s: s, keys: []string{heldKey(l.base, l.kind)}, args: []string{l.token, l.c.leaseMs}}
}
