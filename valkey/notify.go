package valkey

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"
)

// subscribeTimeout bounds a SUBSCRIBE or UNSUBSCRIBE on the notifier's
// connection.
const subscribeTimeout = 5 * time.Second

// notifier wakes waiters when a lock they wait for is released: release
// scripts PUBLISH on the lock's channel, and the notifier, one dedicated
// pub/sub connection per node, subscribes to the channels of the locks
// waited for in this process (counted, so each is subscribed once) and
// signals the waiters of a channel when a message arrives: all of them for
// a reader-writer lock (a writer's release may let every reader in). For a
// mutex or a semaphore on one node, a message is the id of the lock's
// first queued waiter, and wakes only that waiter, in whichever process it
// is: a release under contention costs one attempt in all. On a RedLock
// (whose waiters have no id here) a message wakes only the first waiter
// not yet signalled, in the order they began waiting (one release frees
// room for one), so that a release costs one attempt per process, not one
// per waiter; a signalled waiter that stops waiting without the lock
// passes its turn to the next (wait does that). Every waiter also polls,
// so none is stranded by a lost message.
//
// On a cluster there is one such connection per node that serves a
// channel waited for, and a channel is subscribed on the node that serves
// its slot (the lock's keys' slot, where the scripts that PUBLISH on it
// run; see slotMap). A PUBLISH reaches every node of a cluster, but a
// subscriber on another node gets it over the cluster bus, which delays
// many messages by tens of milliseconds (PUBLISH every 2ms: 13% to 68%
// of them 10ms or more late, p99 25-56ms; on the serving node at most
// 0.6%, see BenchmarkClusterMessageDelay): a granted lock would sit unused
// that long. When the serving node is not known
// (the slot map could not be read, or names a node the client does not
// know), any node does, as messages still reach it. When a connection
// breaks, its waiters are woken (they retry, then re-subscribe on a new
// connection); in between, they fall back to polling.
type notifier struct {
	client valkeygo.Client
	log    *slog.Logger
	slots  *slotMap // on a cluster; nil otherwise

	mu     sync.Mutex
	conns  map[string]*subConn // by node address ("" off a cluster)
	subs   map[string]*subEntry
	shut   bool
	rotate int // which cluster node to use next when the serving one is unknown
	// gen counts the SUBSCRIBEs answered (written under mu).
	gen atomic.Uint64
	wg  sync.WaitGroup
}

// subConn is one dedicated pub/sub connection.
type subConn struct {
	dc     valkeygo.DedicatedClient
	cancel func()
	addr   string // its key in notifier.conns
}

// subEntry is one subscribed channel.
type subEntry struct {
	conn    *subConn
	waiters waitQueue
	one     bool          // a message wakes one waiter (mutex, semaphore), not all
	ready   chan struct{} // closed when the SUBSCRIBE is answered
	err     error         // its error
	closing chan struct{} // non-nil while unsubscribing; closed when done
	dead    bool          // its connection broke
	// targeted: the waiters have ids, which messages name (every waiter
	// of a channel of one Backend waits the same way).
	targeted bool
	// readyGen is the notifier's gen when the SUBSCRIBE was answered.
	readyGen uint64
	// unclaimed are the latest messages that named a waiter id no waiter
	// of this process had: a waiter that joins the entry just after the
	// message arrived takes its wake-up (and grant) from here.
	unclaimed [8]string
	nextSlot  int
}

// subscription is one waiter's interest in a channel.
type subscription struct {
	n          *notifier
	ch         string
	e          *subEntry
	c          chan struct{} // receives a value when the channel gets a message
	id         string        // the waiter's id in the lock's queue; "" for any
	prev, next *subscription // in e.waiters; guarded by n.mu
	queued     bool
	grant      uint64 // a message granted the lock to the waiter, with this fencing token; guarded by n.mu
}

// waitQueue is the waiters of a channel in the order they subscribed (an
// intrusive doubly-linked list: O(1) removal).
type waitQueue struct {
	head, tail *subscription
	n          int
}

func (q *waitQueue) push(s *subscription) {
	s.prev, s.next, s.queued = q.tail, nil, true
	if q.tail != nil {
		q.tail.next = s
	} else {
		q.head = s
	}
	q.tail = s
	q.n++
}

func (q *waitQueue) remove(s *subscription) {
	if !s.queued {
		return
	}
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		q.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		q.tail = s.prev
	}
	s.prev, s.next, s.queued = nil, nil, false
	q.n--
}

// signalAll signals every waiter.
func (q *waitQueue) signalAll() {
	for s := q.head; s != nil; s = s.next {
		s.signal()
	}
}

// signalOne signals the first waiter without an id other than skip that
// has no signal pending (one it has not yet taken), if any.
func (q *waitQueue) signalOne(skip *subscription) {
	for s := q.head; s != nil; s = s.next {
		if s != skip && s.id == "" && len(s.c) == 0 {
			s.signal()
			return
		}
	}
}

// signalID signals the waiter with id, if any, handing it the lock the
// release granted it with fencing token fence (0: none), and reports
// whether there was one.
func (q *waitQueue) signalID(id string, fence uint64) bool {
	for s := q.head; s != nil; s = s.next {
		if s.id == id {
			if fence != 0 {
				s.grant = fence
			}
			s.signal()
			return true
		}
	}
	return false
}

// parseWake splits a release's message: the id of the waiter it wakes,
// and the fencing token of the lock it granted it, if any (see
// releaseString).
func parseWake(msg string) (id string, fence uint64) {
	id, f, ok := strings.Cut(msg, " ")
	if !ok {
		return msg, 0
	}
	n, err := strconv.ParseUint(f, 10, 64)
	if err != nil {
		return msg, 0
	}
	return id, n
}

// wake signals the waiters of e for one message, msg: the waiter whose id
// it is, else the first waiter without an id (mutex, semaphore), or every
// waiter (reader-writer lock).
func (e *subEntry) wake(msg string) {
	switch {
	case !e.one:
		e.waiters.signalAll()
	case msg != "" && e.waiters.signalID(parseWake(msg)):
	case msg != "" && e.targeted:
		e.unclaimed[e.nextSlot] = msg
		e.nextSlot = (e.nextSlot + 1) % len(e.unclaimed)
	default:
		e.waiters.signalOne(nil)
	}
}

// claim signals s if a message named it before it joined e.
func (e *subEntry) claim(s *subscription) {
	if s.id == "" {
		return
	}
	for i, msg := range e.unclaimed {
		if id, fence := parseWake(msg); msg != "" && id == s.id {
			e.unclaimed[i] = ""
			s.grant = fence
			s.signal()
			return
		}
	}
}

// Gen returns the count of SUBSCRIBEs answered so far: a subscription
// whose entry was answered at or before a Gen read before an attempt was
// sent was live when the attempt ran (see subscribe's live).
func (n *notifier) Gen() uint64 { return n.gen.Load() }

func newNotifier(c valkeygo.Client, log *slog.Logger) *notifier {
	n := &notifier{client: c, log: log, conns: make(map[string]*subConn), subs: make(map[string]*subEntry)}
	if c.Mode() == valkeygo.ClientModeCluster {
		n.slots = &slotMap{client: c, log: log}
	}
	return n
}

// connLocked returns the live pub/sub connection to the node at addr (""
// off a cluster, or a cluster node whose address is not known), making
// one if needed; n.mu is held. On a cluster, when addr is not a node the
// client knows, it is any live connection, else one to the next node in
// turn.
func (n *notifier) connLocked(addr string) (*subConn, error) {
	if sc := n.conns[addr]; sc != nil {
		return sc, nil
	}
	src := n.client
	if n.slots != nil {
		nodes := n.client.Nodes()
		if c, ok := nodes[addr]; ok && addr != "" {
			src = c
		} else {
			for _, sc := range n.conns {
				return sc, nil
			}
			addrs := make([]string, 0, len(nodes))
			for a := range nodes {
				addrs = append(addrs, a)
			}
			addr = ""
			if len(addrs) > 0 {
				slices.Sort(addrs)
				addr = addrs[n.rotate%len(addrs)]
				src = nodes[addr]
				n.rotate++
			}
		}
	}
	dc, _ := src.Dedicate()
	// Close (not the release Dedicate returns): a connection that carried
	// subscriptions is dropped, not handed back to the client's pool.
	sc := &subConn{dc: dc, cancel: dc.Close, addr: addr}
	errs := dc.SetPubSubHooks(valkeygo.PubSubHooks{OnMessage: n.onMessage})
	n.conns[addr] = sc
	n.wg.Go(func() { n.watch(sc, errs) })
	return sc, nil
}

// watch waits until sc breaks (or is closed) and then forgets it.
func (n *notifier) watch(sc *subConn, errs <-chan error) {
	err, ok := <-errs
	n.mu.Lock()
	if !ok && n.conns[sc.addr] != sc {
		n.mu.Unlock()
		return // closed by us
	}
	n.log.Debug("dlock/valkey: pub/sub connection ended", "node", sc.addr, "err", err)
	mine := n.conns[sc.addr] == sc
	if mine {
		delete(n.conns, sc.addr)
	}
	if n.slots != nil {
		n.slots.invalidate() // the node may have failed over
	}
	defer func() {
		if mine {
			sc.cancel() // outside n.mu: it may talk to the connection
		}
	}()
	defer n.mu.Unlock()
	for ch, e := range n.subs {
		if e.conn != sc {
			continue
		}
		e.dead = true
		delete(n.subs, ch)
		e.waiters.signalAll()
	}
}

func (n *notifier) onMessage(m valkeygo.PubSubMessage) {
	n.mu.Lock()
	if e := n.subs[m.Channel]; e != nil {
		e.wake(m.Message)
	}
	n.mu.Unlock()
}

// passOn signals the next waiter of the subscription's channel (not s
// itself) when the channel wakes one waiter per message: s was perhaps
// signalled and stops waiting without using its turn, or it took a
// semaphore ticket and there may be room for one more.
func (s *subscription) passOn() {
	n := s.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if s.e.one {
		s.e.waiters.signalOne(s)
	}
}

func (s *subscription) signal() { signal(s.c) }

// takeGrant returns the fencing token of the lock a message granted the
// waiter (0: none), and forgets it.
func (s *subscription) takeGrant() uint64 {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	f := s.grant
	s.grant = 0
	return f
}

// dead reports whether the subscription's connection broke.
func (s *subscription) dead() bool {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	return s.e.dead
}

// subscribe subscribes to ch and returns once the server has confirmed the
// subscription, so that a release published afterwards is not missed. one
// says a message wakes one waiter, not all (see notifier); every
// subscriber of a channel passes the same. id is the waiter's id in the
// lock's queue, which a release names to wake just that waiter ("" for a
// waiter woken in turn with the others without an id).
func (n *notifier) subscribe(ctx context.Context, ch string, one bool, id string, wake chan struct{}) (*subscription, error) {
	s, _, err := n.subscribeSince(ctx, ch, one, id, wake, 0)
	return s, err
}

// subscribeSince is subscribe, and also reports whether the channel was
// subscribed (answered) at or before gen (0: never), that is, whether
// every message published after an attempt that was sent after gen was
// read reaches the subscription: then a waiter need not try again.
func (n *notifier) subscribeSince(ctx context.Context, ch string, one bool, id string, wake chan struct{}, gen uint64) (*subscription, bool, error) {
	s := &subscription{n: n, ch: ch, c: wake, id: id}
	addr, located := "", n.slots == nil
	n.mu.Lock()
	for {
		if n.shut {
			n.mu.Unlock()
			return nil, false, errClosed
		}
		e := n.subs[ch]
		if e != nil && e.closing != nil {
			done := e.closing
			n.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
			n.mu.Lock()
			continue
		}
		if e != nil {
			s.e = e
			e.waiters.push(s)
			e.claim(s)
			n.mu.Unlock()
			select {
			case <-e.ready:
			case <-ctx.Done():
				s.close()
				return nil, false, ctx.Err()
			}
			if e.err != nil {
				s.close()
				return nil, false, e.err
			}
			return s, gen > 0 && e.readyGen <= gen, nil
		}
		if !located {
			// Where the channel's messages are published: looked up
			// outside n.mu (it may ask the server), then look again.
			n.mu.Unlock()
			addr, located = n.slots.nodeFor(ctx, ch), true
			n.mu.Lock()
			continue
		}
		sc, err := n.connLocked(addr)
		if err != nil {
			n.mu.Unlock()
			return nil, false, err
		}
		e = &subEntry{conn: sc, one: one, targeted: id != "", ready: make(chan struct{})}
		e.waiters.push(s)
		s.e = e
		n.subs[ch] = e
		n.mu.Unlock()
		// Bounded by the waiter's ctx too: a server that stopped answering
		// must not hold a wait past its ctx.
		sctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
		err = sc.dc.Do(sctx, sc.dc.B().Subscribe().Channel(ch).Build()).Error()
		cancel()
		n.mu.Lock()
		e.err = err
		e.readyGen = n.gen.Add(1)
		close(e.ready)
		if err != nil && n.subs[ch] == e {
			delete(n.subs, ch)
		}
		n.mu.Unlock()
		if err != nil {
			s.close()
			return nil, false, err
		}
		return s, false, nil
	}
}

// close ends the subscription; the last one of a channel unsubscribes it
// (in the background, so a waiter that got its lock returns at once).
func (s *subscription) close() {
	n := s.n
	n.mu.Lock()
	defer n.mu.Unlock()
	e := s.e
	e.waiters.remove(s)
	if e.waiters.n > 0 || e.dead || e.err != nil || e.closing != nil || n.subs[s.ch] != e || n.shut {
		return
	}
	select {
	case <-e.ready:
	default:
		return // the subscriber still waits for its answer and holds a reference
	}
	e.closing = make(chan struct{})
	n.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
		err := e.conn.dc.Do(ctx, e.conn.dc.B().Unsubscribe().Channel(s.ch).Build()).Error()
		cancel()
		n.mu.Lock()
		defer n.mu.Unlock()
		if err != nil {
			n.log.Debug("dlock/valkey: unsubscribe failed", "err", err)
		}
		if n.subs[s.ch] == e {
			delete(n.subs, s.ch)
		}
		close(e.closing)
	})
}

// close drops the pub/sub connection and waits for the notifier's
// goroutines.
func (n *notifier) close() {
	n.mu.Lock()
	n.shut = true
	conns := n.conns
	n.conns = make(map[string]*subConn)
	for ch, e := range n.subs {
		e.dead = true
		delete(n.subs, ch)
		e.waiters.signalAll()
	}
	n.mu.Unlock()
	for _, sc := range conns {
		sc.cancel()
	}
	n.wg.Wait()
}

// localWaiters are the waiters of one core (one node) that wait in this
// process, by id. A release (or a waiter leaving the queue) whose lock's
// next waiter is one of them is told so by its script, which then does not
// publish: the releaser wakes that waiter here, without a round trip
// through the server's pub/sub; a mutex's release grants it the lock at
// once, and the releaser hands it the grant (see releaseString). A waiter
// registers after its first failed attempt, which queued it; a wake-up or
// grant that comes in between is kept (the latest few) and taken when it
// registers.
type localWaiters struct {
	mu        sync.Mutex
	w         map[string]*localWaiter
	unclaimed [64]unclaimed
	next      int
}

// localWaiter is one registered waiter.
type localWaiter struct {
	id    string
	wake  chan struct{}
	grant granted // fence 0: none
}

// granted is a lock a release granted to a waiter: its fencing token, and
// a moment before the release was sent (the lease is valid from then).
type granted struct {
	fence uint64
	t0    time.Time
}

type unclaimed struct {
	id string
	g  granted
}

// add registers the waiter id, woken on wake; it is signalled at once if a
// wake-up or a grant named it before.
func (lw *localWaiters) add(id string, wake chan struct{}) *localWaiter {
	w := &localWaiter{id: id, wake: wake}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.w == nil {
		lw.w = make(map[string]*localWaiter)
	}
	lw.w[id] = w
	for i, u := range lw.unclaimed {
		if u.id == id {
			lw.unclaimed[i] = unclaimed{}
			w.grant = u.g
			signal(wake)
			break
		}
	}
	return w
}

// remove forgets w. A grant it did not take is given back by the waiter
// leaving the queue (leaveQueue).
func (lw *localWaiters) remove(w *localWaiter) {
	lw.mu.Lock()
	if lw.w[w.id] == w {
		delete(lw.w, w.id)
	}
	lw.mu.Unlock()
}

// take returns the grant handed to w (nil: none), if any.
func (lw *localWaiters) take(w *localWaiter) (granted, bool) {
	if w == nil {
		return granted{}, false
	}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	g := w.grant
	w.grant = granted{}
	return g, g.fence != 0
}

// wake signals the waiter id, or keeps the wake-up for it if it has not
// registered yet.
func (lw *localWaiters) wake(id string) { lw.hand(id, granted{}) }

// grant hands the waiter id the lock granted to it (and signals it), or
// keeps the grant for it if it has not registered yet.
func (lw *localWaiters) grant(id string, g granted) { lw.hand(id, g) }

func (lw *localWaiters) hand(id string, g granted) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if w, ok := lw.w[id]; ok {
		if g.fence != 0 {
			w.grant = g
		}
		signal(w.wake)
		return
	}
	lw.unclaimed[lw.next] = unclaimed{id: id, g: g}
	lw.next = (lw.next + 1) % len(lw.unclaimed)
}

// signal sends a wake-up on c unless one is pending.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
