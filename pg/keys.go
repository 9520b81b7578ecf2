package pg

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/dlock-go/dlock/backend"
)

// Key is a PostgreSQL advisory lock key. PostgreSQL has two separate key
// spaces: a single bigint (pg_advisory_lock(bigint)) and a pair of integers
// (pg_advisory_lock(int, int)); the same numbers in the two spaces are
// different locks. The zero Key is Int64Key(0).
//
// Named locks use keys of the bigint space derived from their kind and name
// (see MutexKey, RWKey). Code that already uses advisory locks by number
// addresses them with Int64Key and PairKey, through Backend.Keys or the
// transaction-scoped functions (LockTx and friends).
type Key struct {
	pair bool
	v    int64 // the bigint key, or the pair as a<<32 | uint32(b)
}

// Int64Key returns the advisory key k of the bigint space: the lock of
// pg_advisory_lock(k). In pg_locks it shows as classid = k>>32, objid =
// k&0xffffffff, objsubid = 1.
func Int64Key(k int64) Key { return Key{v: k} }

// PairKey returns the advisory key (a, b) of the two-integer space: the lock
// of pg_advisory_lock(a, b). In pg_locks it shows as classid = a, objid = b,
// objsubid = 2.
func PairKey(a, b int32) Key {
	return Key{pair: true, v: int64(uint64(uint32(a))<<32 | uint64(uint32(b)))}
}

// Int64 returns the key's bigint and true if k is in the bigint space.
func (k Key) Int64() (int64, bool) { return k.v, !k.pair }

// Pair returns the key's two integers and true if k is in the pair space.
func (k Key) Pair() (a, b int32, ok bool) {
	return int32(uint64(k.v) >> 32), int32(uint32(uint64(k.v))), k.pair
}

// String returns the key as the lock name Backend.Keys accepts: the decimal
// bigint ("42", "-7") or the pair as two decimals joined by a comma ("1,2").
// It is also exactly the argument list of the advisory lock functions.
func (k Key) String() string {
	if k.pair {
		a, b, _ := k.Pair()
		return strconv.FormatInt(int64(a), 10) + "," + strconv.FormatInt(int64(b), 10)
	}
	return strconv.FormatInt(k.v, 10)
}

// parseKey parses the canonical form that Key.String returns. Any other
// spelling ("+1", "01", " 1", "1, 2") is refused with an error wrapping
// backend.ErrInvalidName, so that distinct names never share a key.
func parseKey(s string) (Key, error) {
	var k Key
	if a, b, ok := strings.Cut(s, ","); ok {
		x, err1 := strconv.ParseInt(a, 10, 32)
		y, err2 := strconv.ParseInt(b, 10, 32)
		if err1 == nil && err2 == nil {
			k = PairKey(int32(x), int32(y))
		}
	} else if x, err := strconv.ParseInt(s, 10, 64); err == nil {
		k = Int64Key(x)
	}
	if k.String() != s {
		return Key{}, fmt.Errorf("%w: %s is not an advisory key (want \"<int64>\" or \"<int32>,<int32>\")", backend.ErrInvalidName, shortName(s))
	}
	return k, nil
}

// Keys is a view of a Backend whose lock names are advisory keys, written
// as Key.String writes them: "42" for Int64Key(42), "1,2" for PairKey(1, 2).
// It takes exactly the locks that pg_advisory_lock(42) and
// pg_advisory_lock(1, 2) take, so it excludes (and is excluded by) existing
// SQL that uses advisory locks by number:
//
//	mu := dlock.NewMutex(b.Keys())
//	err := mu.Do(ctx, pg.Int64Key(42).String(), fn)
//
// Unlike named locks, the kinds share the key: a Mutex of "42" and the
// write side of an RWMutex of "42" are the same lock (pg_advisory_lock(42)),
// and the read side is pg_advisory_lock_shared(42). A name that is not a
// canonical key gets an error matching backend.ErrInvalidName. Keys has no
// semaphore: a semaphore needs several keys. Leases are the Backend's, with
// its connections, registry and monitor.
type Keys struct{ b *Backend }

var (
	_ backend.Locker[*Lease]     = (*Keys)(nil)
	_ backend.LockWaiter[*Lease] = (*Keys)(nil)
	_ backend.RWLocker[*Lease]   = (*Keys)(nil)
	_ backend.RWWaiter[*Lease]   = (*Keys)(nil)
)

// Keys returns the view of b addressed by advisory keys.
func (b *Backend) Keys() *Keys { return &Keys{b: b} }

func keyReq(name string, m mode) (req, error) {
	k, err := parseKey(name)
	if err != nil {
		return req{}, backend.Permanent(fmt.Errorf("pg: key: %w", err))
	}
	return req{kind: "key", name: name, key: k, mode: m, fence: k}, nil
}

// TryLock makes one attempt at pg_advisory_lock of the key name.
func (v *Keys) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	r, err := keyReq(name, exclusive)
	if err != nil {
		return nil, false, err
	}
	return v.b.try(ctx, r)
}

// Lock takes the key name exclusively, waiting in the server's queue.
func (v *Keys) Lock(ctx context.Context, name string) (*Lease, error) {
	r, err := keyReq(name, exclusive)
	if err != nil {
		return nil, err
	}
	return v.b.wait(ctx, r)
}

// TryRLock makes one attempt at pg_advisory_lock_shared of the key name.
func (v *Keys) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	r, err := keyReq(name, shared)
	if err != nil {
		return nil, false, err
	}
	return v.b.try(ctx, r)
}

// TryWLock is TryLock.
func (v *Keys) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	return v.TryLock(ctx, name)
}

// RLock takes the key name shared, waiting in the server's queue.
func (v *Keys) RLock(ctx context.Context, name string) (*Lease, error) {
	r, err := keyReq(name, shared)
	if err != nil {
		return nil, err
	}
	return v.b.wait(ctx, r)
}

// WLock is Lock.
func (v *Keys) WLock(ctx context.Context, name string) (*Lease, error) { return v.Lock(ctx, name) }

// Key derivation for named locks.
//
// The key of a named lock is the first 8 bytes, read as a big-endian two's
// complement int64, of SHA-256 over a tag and the name:
//
//	mutex:            SHA-256("dlock:mutex:" + name)
//	reader-writer:    SHA-256("dlock:rw:" + name)
//	its upgrade key:  SHA-256("dlock:rwu:" + name)
//	semaphore slot i: SHA-256("dlock:sem:" + decimal(i) + ":" + name)
//	semaphore (its fencing row only): SHA-256("dlock:sem:" + name)
//	semaphore's waiter queue: SHA-256("dlock:semq:" + name)
//
// This mapping is part of the package's compatibility promise: it never
// changes, so processes running different versions of dlock exclude each
// other, and other code can compute the key of a named lock.
const (
	tagMutex = "dlock:mutex:"
	tagRW    = "dlock:rw:"
	tagRWU   = "dlock:rwu:"
	tagSem   = "dlock:sem:"
	tagSemQ  = "dlock:semq:"
)

func hashKey(parts ...string) int64 {
	var buf [128]byte // most names: no allocation
	in := buf[:0]
	for _, p := range parts {
		in = append(in, p...)
	}
	sum := sha256.Sum256(in)
	return int64(binary.BigEndian.Uint64(sum[:]))
}

// MutexKey returns the advisory key that a Mutex of name takes with this
// package. A transaction-scoped lock of MutexKey(name) (LockTx) excludes the
// Mutex name held through a Backend, and the other way round.
func MutexKey(name string) Key { return Int64Key(hashKey(tagMutex, name)) }

// RWKey returns the advisory key that an RWMutex of name takes with this
// package: shared for readers, exclusive for writers.
func RWKey(name string) Key { return Int64Key(hashKey(tagRW, name)) }

// rwUpgradeKey returns the key that the upgradeable reader of the RWMutex
// name holds exclusively (besides RWKey(name) shared), so that there is at
// most one.
func rwUpgradeKey(name string) Key { return Int64Key(hashKey(tagRWU, name)) }

// semSlotKey returns the key of slot i of semaphore name.
func semSlotKey(name string, i int) Key {
	return Int64Key(hashKey(tagSem, strconv.Itoa(i), ":", name))
}

// semKey is the key of semaphore name's fencing row (never locked).
func semKey(name string) Key { return Int64Key(hashKey(tagSem, name)) }

// semQueueKey is the key that semaphore name's waiters queue on: the head
// of the queue holds it exclusively while it waits for a slot.
func semQueueKey(name string) Key { return Int64Key(hashKey(tagSemQ, name)) }

// shortName quotes name for an error message, cut to 64 bytes.
func shortName(name string) string {
	const max = 64
	if len(name) <= max {
		return fmt.Sprintf("%q", name)
	}
	return fmt.Sprintf("%q…(%d bytes)", name[:max], len(name))
}
