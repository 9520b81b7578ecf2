package valkey

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/loss"
	"github.com/dlock-go/dlock/internal/pace"
)

// releaseTimeout bounds the clean-up of a failed acquisition (which runs
// even when the caller's ctx is done), and a Release called with a ctx that
// has no deadline.
const releaseTimeout = 5 * time.Second

var errClosed = backend.ErrClosed

// node is one independent server (or cluster) and its release notifier.
type node struct {
	client valkeygo.Client
	addr   string // for messages: the address(es) the client talks to
	notif  *notifier
	// authFailing is set while the node refuses this client's credentials
	// (logged once per episode).
	authFailing atomic.Bool
}

// core is what a Backend (one node) and a RedLock (several) share: the
// nodes, the quorum, the lease extender.
type core struct {
	cfg     config
	leaseMs string
	nodes   []*node
	quorum  int
	ext     *extender
	// fair is the acquire scripts' fair argument: "1" on one node, where
	// the waiter queue decides who is next; "0" for a RedLock, whose
	// nodes' queues could disagree (see the package documentation).
	fair string
	// self starts every token (and so every waiter id) this core makes:
	// 32 random hex digits and a '.', unique per core; seq numbers the
	// tokens after it.
	self string
	seq  atomic.Uint64
	// local is the scripts' argument that says which waiters are this
	// core's (self on one node, "" on a RedLock): a release whose next
	// waiter is one of them wakes it in this process instead of
	// publishing (see localWaiters).
	local  string
	near   localWaiters
	park   parkedWaiters // places kept across a wait's transient errors (waitid.go)
	closed atomic.Bool
	once   sync.Once
	repl   replWork // WithReplicas' confirmations in flight (replicas.go)
	strs   strCache // the keys of the locks asked for lately (keys.go)
	// epoch is when the core was made (monotonic clock): leases keep their
	// validity deadline as an offset from it, which IsLost reads without
	// a lock.
	epoch time.Time
}

func newCore(cfg config, clients []valkeygo.Client) *core {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	c := &core{cfg: cfg, leaseMs: strconv.FormatInt(cfg.lease.Milliseconds(), 10), quorum: len(clients)/2 + 1, fair: "1", self: hex.EncodeToString(b[:]) + ".", epoch: time.Now()}
	c.local = c.self
	if len(clients) > 1 {
		c.fair, c.local = "0", ""
	}
	for _, cl := range clients {
		c.nodes = append(c.nodes, &node{client: cl, addr: strings.Join(clientAddrs(cl), ","), notif: newNotifier(cl, cfg.logger)})
	}
	c.ext = newExtender(c)
	return c
}

func (c *core) close() {
	c.once.Do(func() {
		c.closed.Store(true)
		c.park.close()
		c.ext.close()
		c.repl.close()
		for _, n := range c.nodes {
			n.notif.close()
		}
	})
}

// reply is one node's answer to a script.
type reply struct {
	n   int64
	err error
	// next is the release scripts' other answer: the lease was owned (n
	// is 1), and the lock's next waiter, whose id this is, is this
	// core's: wake it here (see localWaiters), or, when fence is not 0,
	// hand it the lock, which the script granted it with that fencing
	// token.
	next  string
	fence uint64
}

// toReply reads a script's answer: an integer, a waiter id, or a waiter id
// and a fencing token (n is then 1).
func toReply(res valkeygo.ValkeyResult) reply {
	return msgReply(res.ToMessage())
}

// msgReply is toReply for an answer already read (one element of
// releaseAll's, say: err is then nil, and m may be an error).
func msgReply(m valkeygo.ValkeyMessage, err error) reply {
	if err == nil {
		err = m.Error()
	}
	if err != nil {
		return reply{err: err}
	}
	switch {
	case m.IsString():
		id, err := m.ToString()
		return reply{n: 1, next: id, err: err}
	case m.IsArray():
		a, err := m.ToArray()
		if err != nil || len(a) != 2 {
			return reply{err: fmt.Errorf("unexpected answer %v (%w)", m, err)}
		}
		id, err := a[0].ToString()
		if err != nil {
			return reply{err: err}
		}
		f, err := a[1].AsInt64()
		if err != nil || f <= 0 {
			return reply{err: fmt.Errorf("unexpected fencing token %v (%w)", a[1], err)}
		}
		return reply{n: 1, next: id, fence: uint64(f)}
	}
	n, err := m.AsInt64()
	return reply{n: n, err: err}
}

// evalAll runs s on every node in parallel (one node: in this goroutine).
func (c *core) evalAll(ctx context.Context, s *script, keys, args []string) []reply {
	out := make([]reply, len(c.nodes))
	if len(c.nodes) == 1 {
		out[0] = c.evalOne(ctx, s, keys, args)
		return out
	}
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Go(func() {
			out[i] = toReply(s.exec(ctx, n.client, keys, args))
			c.noteAuth(n, out[i].err)
		})
	}
	wg.Wait()
	return out
}

// evalInto is evalAll with the answer put in buf on one node (buf has
// room for one answer).
func (c *core) evalInto(ctx context.Context, buf []reply, s *script, keys, args []string) []reply {
	if len(c.nodes) != 1 {
		return c.evalAll(ctx, s, keys, args)
	}
	buf[0] = c.evalOne(ctx, s, keys, args)
	return buf[:1]
}

// evalOne runs s on the only node.
func (c *core) evalOne(ctx context.Context, s *script, keys, args []string) reply {
	r := toReply(s.exec(ctx, c.nodes[0].client, keys, args))
	c.noteAuth(c.nodes[0], r.err)
	return r
}

// newToken returns a token naming one acquisition: the core's random
// prefix and a sequence number (one allocation).
func (c *core) newToken() string {
	var b [64]byte
	t := strconv.AppendUint(append(b[:0], c.self...), c.seq.Add(1), 36)
	return string(t)
}

// attempt is one try's outcome: a lease, or a hint how long to wait.
type attempt struct {
	lease *Lease
	hint  time.Duration // when not acquired: how long the lock stays taken, if known (0: unknown)
	sent  time.Time     // a moment before the attempt was sent (see waitWith)
}

// request is what attempts to take one lock send: the lock, its acquire
// script and keys, and the script's arguments after the common ones (see
// the acquire scripts).
type request struct {
	k    kind
	name string
	s    *script
	*lockStrs
	extra []string
	// args is where an attempt puts the acquire script's arguments (the
	// attempts of one request are sequential).
	args [7]string
}

func newRequest(k kind, name, base string, s *script) *request {
	keys, ch := lockKeys(base, k)
	return &request{k: k, name: name, s: s, lockStrs: newLockStrs(base, keys, ch, k)}
}

// newRequestFor is newRequest for the lock name of kind k of c: the key
// base, keys and channel come from c's strCache.
func newRequestFor(c *core, k kind, name string, s *script) (*request, error) {
	ls, err := c.strs.get(c.cfg.prefix, name, k)
	if err != nil {
		return nil, err
	}
	return &request{k: k, name: name, s: s, lockStrs: ls}, nil
}

// releaseKeys are the release script's keys of a lease of kind k whose
// lock's acquire keys are keys: the key the lease is recorded in (the one
// extended and released), the lock's waiter queue, its deadlines, its
// fencing counter and its holder records.
func releaseKeys(keys []string, k kind) [5]string {
	held, fence := keys[0], keys[1]
	switch k {
	case kindRead:
		fence = keys[4]
	case kindWrite:
		held, fence = keys[1], keys[4]
	case kindUpgrade:
		held, fence = keys[upgradeKeyIndex], keys[4]
	}
	return [5]string{held, keys[2], keys[3], fence, holdersKey(keys, k)}
}

// try makes one attempt to take the lock of r with a new token. waiter is
// the id the attempt queues under if it fails ("" for a try, which never
// queues and fails while others wait).
func (c *core) try(ctx context.Context, r *request, waiter string) (attempt, error) {
	return c.tryAs(ctx, r, c.newToken(), waiter)
}

// tryAs is try with the lease's token given.
func (c *core) tryAs(ctx context.Context, r *request, token, waiter string) (attempt, error) {
	if c.closed.Load() {
		return attempt{}, backend.Permanent(errClosed)
	}
	var buf [1]reply
	t0 := time.Now()
	if r.s == acquireMutex && len(c.nodes) == 1 && (waiter == "" || waiter == token) && !r.busy(t0) {
		// Uncontended, most likely: acquireMutexFree takes a free lock
		// nobody waits for, or answers notFree.
		w := ""
		if waiter != "" {
			w = "="
		}
		r.args[0], r.args[1], r.args[2], r.args[3] = token, c.leaseMs, recordOf(ctx), w
		rs := c.evalInto(ctx, buf[:], acquireMutexFree, r.keys[:3], r.args[:4])
		if rs[0].err != nil || rs[0].n != 0 {
			a, err := c.decide(ctx, c.newLease(r, token), t0, rs, tally(rs))
			a.sent = t0
			return a, err
		}
		r.markBusy(t0)
		t0 = time.Now()
	}
	r.args[0], r.args[1], r.args[2], r.args[3], r.args[4] = token, c.leaseMs, waiter, c.fair, r.ch
	if r.s == acquireMutex {
		mutexArgs(r.args[:], token, waiter)
	}
	args := append(append(r.args[:5], r.extra...), recordOf(ctx)) // see holders.go
	actx := ctx
	if len(c.nodes) > 1 {
		// One slow node must not eat the validity of the others' answers.
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, c.cfg.lease-c.cfg.drift)
		defer cancel()
	}
	rs := c.evalInto(actx, buf[:], r.s, r.keys, args)
	a, err := c.decide(ctx, c.newLease(r, token), t0, rs, tally(rs))
	a.sent = t0
	if a.lease == nil && err == nil {
		r.markBusy(t0) // refused
	}
	return a, err
}

// mutexArgs shortens acquireMutex's arguments args where the script
// knows them anyway: a waiter that is the token (a wait's first attempt)
// is sent as "=", and the channel, the lock's key and ":n", as "". (Every
// byte of a request costs the server and the client, in the throughput
// rows most.)
func mutexArgs(args []string, token, waiter string) {
	if waiter == token {
		args[2] = "="
	}
	args[4] = ""
}

// releaseCh is the channel argument of the release of a lease of kind k
// whose lock's channel is ch: "" for a mutex, whose release script
// derives it from the lock's key (see releaseString).
func releaseCh(k kind, ch string) string {
	if k == kindMutex {
		return ""
	}
	return ch
}

// newLease returns the lease an acquisition of the lock of r with token
// would be.
func (c *core) newLease(r *request, token string) *Lease {
	return &Lease{c: c, kind: r.k, name: r.name, lockStrs: r.lockStrs, rargs: [4]string{token, releaseCh(r.k, r.ch), releaseLocal(c, r.k), c.leaseMs}, token: token, idx: -1}
}

// votes is the tally of the nodes' answers to an acquire script.
type votes struct {
	got, refused int    // nodes that granted, that refused
	atMax        int    // granting nodes whose token is fence
	fence        uint64 // the largest token granted
	hint         int64  // the longest hint of the refusing nodes, ms
	firstErr     error  // the first node's error
}

// tally counts the nodes' answers to an acquire script.
func tally(rs []reply) votes {
	var v votes
	for _, r := range rs {
		switch {
		case r.err != nil:
			if v.firstErr == nil {
				v.firstErr = r.err
			}
		case r.n > 0:
			v.got++
			v.fence = max(v.fence, uint64(r.n))
		default:
			v.refused++
			v.hint = max(v.hint, -1-r.n)
		}
	}
	for _, r := range rs {
		if r.err == nil && r.n > 0 && uint64(r.n) == v.fence {
			v.atMax++
		}
	}
	return v
}

// decide settles an attempt by its tally v (rs are the answers, t0 the
// moment before it was sent): l, the lease the attempt would be, is held
// (and extended from now on), or what it took is released.
func (c *core) decide(ctx context.Context, l *Lease, t0 time.Time, rs []reply, v votes) (attempt, error) {
	l.fence = v.fence
	if v.got >= c.quorum && v.atMax < c.quorum {
		// RedLock: make the token stick on a majority (see RedLock).
		if err := c.raiseFence(ctx, l, rs); err != nil {
			c.cleanup(ctx, l)
			if cerr := ctx.Err(); cerr != nil {
				return attempt{}, fmt.Errorf("%w: %w", backend.ErrNotAcquired, cerr)
			}
			return attempt{}, err
		}
	}
	late := false
	if v.got >= c.quorum {
		// WithReplicas: held only once replicas have it (replicas.go).
		if err := c.confirmReplicas(ctx, l, rs); err != nil {
			c.cleanup(ctx, l)
			return attempt{}, err
		}
		if d := t0.Add(c.cfg.lease - c.cfg.drift); time.Now().Before(d) {
			l.setDeadline(d)
			if err := c.ext.add(l); err != nil {
				c.cleanup(ctx, l)
				return attempt{}, backend.Permanent(err)
			}
			return attempt{lease: l}, nil
		}
		late = true
	}
	if v.got > 0 || v.firstErr != nil {
		// Release what was taken (and what may have been taken by a
		// request whose answer was lost).
		c.cleanup(ctx, l)
	}
	// Held elsewhere: too many nodes refused for a majority, or a majority
	// answered and the lock was not free on enough of them (RedLock with a
	// node down, racing a release). Otherwise the errors decided it.
	if v.refused > len(c.nodes)-c.quorum || v.refused > 0 && v.got+v.refused >= c.quorum {
		return attempt{hint: time.Duration(v.hint) * time.Millisecond}, nil
	}
	if err := ctx.Err(); err != nil {
		return attempt{}, fmt.Errorf("%w: %w", backend.ErrNotAcquired, err)
	}
	if errors.Is(v.firstErr, context.DeadlineExceeded) || errors.Is(v.firstErr, context.Canceled) {
		// valkey-go may see ctx's deadline pass before ctx reports it.
		return attempt{}, fmt.Errorf("%w: %w", backend.ErrNotAcquired, v.firstErr)
	}
	if late {
		return attempt{}, errors.New("acquired too late: the lease's validity had passed")
	}
	return attempt{}, c.nodesError(v.got, rs)
}

// nodesError is the error of an attempt that neither took the lock nor
// found it held: every node's error, named by the node's address, and how
// many nodes agreed. It is marked backend.Permanent when so many nodes
// failed with errors that retrying cannot heal (authentication refused, a
// closed client) that a majority can never be reached; a wait then ends at
// once instead of retrying until its ctx ends.
func (c *core) nodesError(got int, rs []reply) error {
	var errs nodeErrors
	perm := 0
	for i, r := range rs {
		if r.err == nil {
			continue
		}
		if permanentErr(r.err) {
			perm++
		}
		if wrongType(r.err) {
			errs = append(errs, fmt.Errorf("node %s: a key of the lock has the wrong type (a value dlock did not write): %w", c.nodes[i].addr, r.err))
			continue
		}
		errs = append(errs, fmt.Errorf("node %s: %w", c.nodes[i].addr, r.err))
	}
	var err error
	switch {
	case len(errs) == 0:
		err = fmt.Errorf("%d of %d nodes agreed, %d needed", got, len(c.nodes), c.quorum)
	case len(c.nodes) == 1:
		err = errs[0]
	default:
		err = fmt.Errorf("%d of %d nodes agreed, %d needed: %w", got, len(c.nodes), c.quorum, errs)
	}
	if perm > len(c.nodes)-c.quorum {
		err = backend.Permanent(err)
	}
	return err
}

// nodeErrors is the errors of several nodes, each naming its node.
type nodeErrors []error

func (e nodeErrors) Error() string {
	var b strings.Builder
	for i, err := range e {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e nodeErrors) Unwrap() []error { return e }

// permanentErr reports whether a node's error is one that retrying cannot
// heal: the backend was closed, or the server refuses the client's
// credentials or permissions. valkey-go's ErrClosing is not among them:
// it says "closing or unable to connect", and valkey-go also reports it
// for a connection that could not be made, which an outage's end heals.
func permanentErr(err error) bool {
	return errors.Is(err, errClosed) || isAuthErr(err)
}

// connErr reports whether err (non-nil) is a broken or refused
// connection: not an answer of the server, not a ctx ending.
func connErr(err error) bool {
	var ve *valkeygo.ValkeyError
	return !errors.As(err, &ve) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// sleepCtx sleeps for d, or less if ctx ends first; it reports whether
// ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// wrongType reports whether err is the server's WRONGTYPE: a key holds a
// value of another type than the script expects.
func wrongType(err error) bool {
	var ve *valkeygo.ValkeyError
	return errors.As(err, &ve) && strings.Contains(ve.Error(), "WRONGTYPE")
}

// isAuthErr reports whether err is the server refusing the client's
// credentials (WRONGPASS, NOAUTH) or the user's permissions (NOPERM).
func isAuthErr(err error) bool {
	var ve *valkeygo.ValkeyError
	if !errors.As(err, &ve) || ve.IsNil() {
		return false
	}
	msg := ve.Error()
	return strings.HasPrefix(msg, "WRONGPASS") || strings.HasPrefix(msg, "NOAUTH") || strings.HasPrefix(msg, "NOPERM")
}

// noteAuth logs, with the backend's logger, when node n starts refusing
// the client's credentials (once per episode) and when it accepts them
// again.
func (c *core) noteAuth(n *node, err error) {
	switch {
	case err != nil && isAuthErr(err):
		if !n.authFailing.Swap(true) {
			c.cfg.logger.Error("dlock/valkey: node refuses authentication; it counts as down until it accepts it", "node", n.addr, "err", err)
		}
	case err == nil && n.authFailing.Load():
		if n.authFailing.Swap(false) {
			c.cfg.logger.Info("dlock/valkey: node accepts authentication again", "node", n.addr)
		}
	}
}

// clientAddrs returns the addresses client talks to (valkey-go's Nodes),
// sorted.
func clientAddrs(client valkeygo.Client) []string {
	nodes := client.Nodes()
	out := make([]string, 0, len(nodes))
	for a := range nodes {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// raiseFence is RedLock's second phase when the nodes answered different
// counters: every node where the acquisition holds the lock raises its
// counter to the largest; a majority must confirm. Then any later
// acquisition, which needs a majority too, meets a node whose counter is at
// least this token and gets a larger one.
func (c *core) raiseFence(ctx context.Context, l *Lease, rs []reply) error {
	keys := mutexKeys(l.base)[:2]
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
	l.releaseOnNodes(rctx, time.Time{})
}

// Lease is one held lock of a Backend or a RedLock. It is extended in the
// background until released or lost.
type Lease struct {
	c    *core
	kind kind
	name string
	// The lock's keys (shared): rkeys are the release script's keys (see
	// releaseKeys).
	*lockStrs
	// rargs are the release script's arguments: the token, the lock's channel (see releaseCh), the waiter
	// prefix whose waiters the release wakes (or grants the lock to) in
	// this process (see releaseLocal), and the lease in ms.
	rargs [4]string
	token string
	fence uint64
	// over is set when Lost closes (or would close, were its channel
	// made), with state, under c.ext.mu: IsLost reads it without the lock.
	over atomic.Bool
	// until is deadline as an offset from c.epoch, for IsLost.
	until atomic.Int64

	// Guarded by c.ext.mu.
	lost      chan struct{} // Lost's channel, made when first asked for
	state     leaseState
	upgrading bool          // an Upgrade or TryUpgrade of it is under way (upgrade.go)
	upgraded  bool          // an Upgrade or TryUpgrade of it returned success
	loss      loss.Notifier // AfterLost's functions
	deadline  time.Time     // validity: Lost closes when it passes unconfirmed (set with setDeadline)
	due       time.Time     // next extension
	idx       int           // index in the extender's heap; -1 when not in it
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
// The channel is made when first asked for.
func (l *Lease) Lost() <-chan struct{} {
	e := l.c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expireLocked(l, time.Now())
	if l.lost == nil {
		l.lost = make(chan struct{})
		if l.state != held {
			close(l.lost)
		}
	}
	return l.lost
}

// IsLost implements backend.LostChecker: it reports whether Lost's
// channel is closed, or would be, were it made now (lost or released),
// without making it.
//
// A lease past its validity deadline is declared lost here, even when the
// extender has not run since (a process or machine stalled longer than the
// lease): its key may have expired and been taken, and Lock.Err must say
// so before the new holder could act. Once declared, it stays lost, whatever
// an extension in flight then reports.
func (l *Lease) IsLost() bool {
	if l.over.Load() {
		return true
	}
	now := time.Now()
	if now.Sub(l.c.epoch) < time.Duration(l.until.Load()) {
		return false
	}
	e := l.c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expireLocked(l, now)
	return l.over.Load()
}

// setDeadline sets l's validity deadline; c.ext.mu is held, or l is not
// shared yet.
func (l *Lease) setDeadline(d time.Time) {
	l.deadline = d
	l.until.Store(int64(d.Sub(l.c.epoch)))
}

// AfterLost implements backend.LossNotifier: f runs, in its own
// goroutine, once Lost is closed (on loss or Release; at once if it
// already is), unless stop is called first.
func (l *Lease) AfterLost(f func()) (stop func() bool) {
	e := l.c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	return l.loss.Add(f, l.state != held, &e.mu)
}

// closeLostLocked closes Lost and starts AfterLost's functions; c.ext.mu
// is held.
func (l *Lease) closeLostLocked() {
	l.over.Store(true)
	if l.lost != nil {
		close(l.lost)
	}
	l.loss.Fire()
}

// Token implements backend.Fencer: a fencing token, strictly increasing per
// name and kind of lock across all acquisitions.
func (l *Lease) Token() uint64 { return l.fence }

// Name returns the name of the lock.
func (l *Lease) Name() string { return l.name }

// Release implements backend.Lease. It deletes the lease's key if this
// lease still owns it and wakes the waiters. It returns an error wrapping
// backend.ErrLockLost if the lease had been lost (even if its key was still
// there) or if the release finds its key gone or owned by another,
// backend.ErrNotHeld if it was released before, or the server's error (the
// lock then frees when its lease runs out). It runs even when ctx is
// already cancelled, and ends by ctx's deadline, whatever it is (the
// dlock package's Lock.Release sets it from dlock.WithReleaseTimeout); a
// ctx without a deadline is bounded by 5s.
func (l *Lease) Release(ctx context.Context) error {
	wasLost, at, err := l.c.ext.finish(l)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	rctx, cancel := backend.ReleaseContext(ctx, releaseTimeout)
	defer cancel()
	return l.releaseHeld(rctx, wasLost, at)
}

// releaseHeld is Release after the extender let go of l (wasLost: l was
// lost before) at t0 (zero: unknown), within ctx.
func (l *Lease) releaseHeld(ctx context.Context, wasLost bool, t0 time.Time) error {
	owned, refused, err := l.releaseOnNodes(ctx, t0)
	return l.releaseOutcome(wasLost, owned, refused, err)
}

// releaseOutcome is Release's answer when the release script found l
// owned on owned nodes, not owned on refused nodes, and failed with err
// on the others.
func (l *Lease) releaseOutcome(wasLost bool, owned, refused int, err error) error {
	switch {
	case wasLost:
		return backend.ErrLockLost
	case owned >= l.c.quorum:
		return nil
	case refused > len(l.c.nodes)-l.c.quorum:
		return fmt.Errorf("%w (its key had been deleted or taken over)", backend.ErrLockLost)
	default:
		return fmt.Errorf("release failed (the key will expire): %w", err)
	}
}

// releaseOnNodes runs the release script on every node: it counts the nodes
// where the lease was still owned and those where it was not. t0 is a
// moment before the script is sent (zero: now).
func (l *Lease) releaseOnNodes(ctx context.Context, t0 time.Time) (owned, refused int, err error) {
	s, keys := releaseString, l.rkeys[:]
	switch l.kind {
	case kindRead, kindSem:
		s = releaseMember
	case kindUpgrade:
		s, keys = releaseUpgradeable, upgradeLeaseKeys(l.base)
	}
	var buf [1]reply
	if t0.IsZero() {
		t0 = time.Now() // a lock granted to a waiter is valid from here
	}
	args := l.rargs[:]
	free := l.kind == kindMutex && len(l.c.nodes) == 1 && !l.busy(t0)
	if free {
		// Uncontended, most likely: releaseMutexFree deletes a lock taken
		// free that nobody waits for, or answers notFree.
		s, keys, args = releaseMutexFree, keys[:2], args[:1]
	}
	rs := l.c.evalInto(ctx, buf[:], s, keys, args)
	retryRelease(ctx, l.c, s, keys, args, rs)
	if free && rs[0].err == nil && rs[0].n == 0 {
		l.markBusy(t0)
		s, keys, args = releaseString, l.rkeys[:], l.rargs[:]
		rs = l.c.evalInto(ctx, buf[:], s, keys, args)
		retryRelease(ctx, l.c, s, keys, args, rs)
	}
	if l.kind == kindMutex && rs[0].next != "" {
		l.markBusy(t0) // a waiter was woken or granted the lock
	}
	return l.released(t0, rs)
}

// released reads the nodes' answers rs to l's release script, sent at
// t0: it hands a lock granted to a waiter of this process to it (or wakes
// it), and counts the nodes where l was owned and those where it was not.
func (l *Lease) released(t0 time.Time, rs []reply) (owned, refused int, err error) {
	for _, r := range rs {
		switch {
		case r.next != "" && r.fence > 0:
			l.c.near.grant(r.next, granted{fence: r.fence, t0: t0})
		case r.next != "":
			l.c.near.wake(r.next)
		}
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

// releaseLocal is the release scripts' waiter prefix argument for a lock
// of kind k: the core's own on one node for a mutex and a semaphore, whose
// releases wake one waiter by its id; "" (publish always) otherwise.
func releaseLocal(c *core, k kind) string {
	if k == kindMutex || k == kindSem {
		return c.local
	}
	return ""
}

// retryRelease runs the release script s again on the nodes whose answer
// in rs was an error that a retry may heal, and puts the new answers in
// rs.
func retryRelease(ctx context.Context, c *core, s *script, keys, args []string, rs []reply) {
	// Try again, within ctx's deadline, the nodes that did not answer:
	//   - a connection that broke since it was last used (the server
	//     restarted, say) fails its next command, and valkey-go replaces it
	//     soon after: up to three more tries over some 70ms, so that the
	//     release learns whether it still owned the lock rather than
	//     reporting the broken connection (a server that is down is not
	//     waited for);
	//   - a timeout of valkey-go's own (its dial timeout, 5s, when it had
	//     to open a connection) while ctx is still live: again, until ctx's
	//     deadline, which is the release's only bound.
	// (Pauses: 10ms doubling to 500ms, jittered.) If a failed try did run and only its answer was lost, the next finds
	// the key gone and the release reports a loss that was not one: a false
	// alarm, never a loss hidden.
	var pauses pace.Pacer
	for tries := 0; ; tries++ {
		var again []int
		for i, r := range rs {
			switch {
			case r.err == nil:
			case errors.Is(r.err, context.DeadlineExceeded) && ctx.Err() == nil:
				again = append(again, i)
			case connErr(r.err) && tries < 3:
				again = append(again, i)
			}
		}
		if len(again) == 0 {
			break
		}
		if tries == 0 {
			pauses = pace.New(10*time.Millisecond, 500*time.Millisecond)
		}
		if !sleepCtx(ctx, pauses.Next()) {
			break
		}
		res := make([]reply, len(again)) // (rs itself stays out of the goroutines: it may be on the caller's stack)
		var wg sync.WaitGroup
		for j, i := range again {
			wg.Go(func() {
				res[j] = toReply(s.exec(ctx, c.nodes[i].client, keys, args))
			})
		}
		wg.Wait()
		for j, i := range again {
			rs[i] = res[j]
		}
	}
}

// extendCall is the script call that extends l.
func (l *Lease) extendCall() call {
	if l.kind == kindUpgrade {
		return call{s: extendUpgradeable, keys: upgradeLeaseKeys(l.base), args: []string{l.token, l.c.leaseMs}}
	}
	s := extendString
	if l.kind == kindRead || l.kind == kindSem {
		s = extendMember
	}
	return call{s: s, keys: []string{l.rkeys[0], l.rkeys[4]}, args: []string{l.token, l.c.leaseMs}}
}
