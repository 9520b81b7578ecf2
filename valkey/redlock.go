package valkey

import (
	"context"
	"fmt"
	"reflect"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
)

// RedLock is a mutex backend over several independent servers (not
// replicas of each other, not one cluster), by the RedLock algorithm: a
// lock is taken with the same random token on every node in parallel and
// held when a majority took it within its validity (lease minus the time
// the acquisition took minus the drift allowance); otherwise what was taken
// is released at once. Extensions need a majority too, and a lease is lost
// when a majority says it is not owned, or when no majority confirms it
// before its deadline. Any majority of nodes can fail without breaking
// exclusion, and a minority can be down without stopping the locks.
//
// Fencing tokens: each node advances its counter to max(counter + 1, its
// clock in milliseconds × 1000) for every acquisition it grants (see the
// package documentation), and the token is the largest value among the nodes
// that granted this one. When the granting nodes disagree, the acquisition
// raises the counters of a majority of them to that token (one more round
// trip) before returning; since any later acquisition needs a majority too,
// it meets one of these nodes and gets a larger token. So tokens strictly
// increase per name while the nodes keep their counters. A node restarted
// without persistence forgets its counter and starts again from its clock,
// so tokens still increase if, at the next acquisition, the clocks of the
// nodes it meets are ahead of the last token — that is, when the nodes'
// clocks differ by less than the time between that token and the next
// acquisition (a restart takes longer than NTP-kept clocks differ).
//
// RedLock offers only the mutex. A semaphore is not offered because a
// majority vote does not bound a count: with three nodes A, B, C and limit
// 2, holders X on {A, B}, Y on {A, C} and Z on {B, C} each hold a majority,
// and every node has only two holders — three holders of a two-ticket
// semaphore. A reader-writer lock would be safe in principle (a writer and
// a reader must each win a majority, and two majorities share a node that
// admits only one of them), but writer preference and per-reader expiry
// over a majority add states this package does not yet prove; it is not
// offered either.
type RedLock struct {
	c *core
}

var (
	_ backend.Locker[*Lease]     = (*RedLock)(nil)
	_ backend.LockWaiter[*Lease] = (*RedLock)(nil)
)

// NewRedLock returns a RedLock over clients, one per independent node (use
// 3 or 5). Options are as for New; a client must not be nil.
//
// NewRedLock refuses the same client given twice, and two clients that talk
// to the same address (as valkey-go's Client.Nodes reports it: the address
// given to the client, so "localhost:6379" and "127.0.0.1:6379" are not
// recognised as one server): one server counted as several nodes would let
// a lock be taken with fewer real nodes than a majority — or, as the
// same token cannot be set twice on one server, never be taken at all.
//
// A node that refuses the client's credentials (WRONGPASS, NOAUTH, NOPERM)
// counts as down; it is logged with the logger of WithLogger when it starts
// refusing them and when it accepts them again, and the error of an
// acquisition that misses its majority names each failing node by address.
// When so many nodes refuse the credentials that no majority is possible,
// the error is marked backend.Permanent, so a wait ends at once.
func NewRedLock(clients []valkeygo.Client, opts ...Option) (*RedLock, error) {
	if len(clients) == 0 {
		return nil, fmt.Errorf("%w: NewRedLock needs at least one client", errBadOption)
	}
	owner := make(map[string]int) // address -> index of the client using it
	for i, c := range clients {
		if c == nil {
			return nil, fmt.Errorf("%w: NewRedLock: client %d is nil", errBadOption, i)
		}
		for j := range i {
			if sameClient(clients[j], c) {
				return nil, fmt.Errorf("%w: NewRedLock: clients %d and %d are the same client: RedLock needs one client per independent node", errBadOption, j, i)
			}
		}
		for _, a := range clientAddrs(c) {
			if j, dup := owner[a]; dup && j != i {
				return nil, fmt.Errorf("%w: NewRedLock: clients %d and %d both talk to %s: RedLock needs one client per independent node", errBadOption, j, i, a)
			}
			owner[a] = i
		}
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &RedLock{c: newCore(cfg, clients)}, nil
}

// sameClient reports whether a and b are the same client (without
// panicking on a client type that cannot be compared).
func sameClient(a, b valkeygo.Client) bool {
	t := reflect.TypeOf(a)
	return t == reflect.TypeOf(b) && t.Comparable() && a == b
}

// Close stops extending leases and closes the pub/sub connections; leases
// still held are reported lost. It does not close the clients. Close is
// idempotent and returns nil.
func (r *RedLock) Close() error {
	r.c.close()
	return nil
}

// TryLock implements backend.Locker.
func (r *RedLock) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	b := Backend{c: r.c}
	return b.TryLock(ctx, name)
}

// Lock implements backend.LockWaiter.
func (r *RedLock) Lock(ctx context.Context, name string) (*Lease, error) {
	b := Backend{c: r.c}
	return b.Lock(ctx, name)
}
