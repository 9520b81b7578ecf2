package valkey

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/holder"
)

// Holder records.
//
// A mutex taken free with nobody waiting stores who took it in the lock's
// value, after its token (see luaOwner): one SET, nothing else to extend or
// delete. Every other acquisition stores who took the lock in a hash beside the lease,
// in the lock's slot (m:h, rw:h, s:h; see keys.go): field = the lease's
// token, value = internal/holder's stored form, written by the acquire
// script itself (no extra round trip). The client sends the record
// without its time (selfRecord when no owner text is given: one string
// per process, no allocation); the script puts the server's TIME in it.
// The hash lives as long as the longest lease in it: the acquire and
// extension scripts keep its expiry at least a lease ahead, a release
// deletes the lease's field, a mutex's or writer's acquisition on a free
// lock starts the hash afresh, and an acquisition prunes the fields of
// expired holders when they pile up. Describing reads the live holders
// (the lock's value, the readers' or holders' members scored past now)
// and their fields in one read-only script, so a dead holder is never
// listed once its lease has expired, whatever fields remain.

var (
	_ backend.LockDescriber      = (*Backend)(nil)
	_ backend.RWDescriber        = (*Backend)(nil)
	_ backend.SemaphoreDescriber = (*Backend)(nil)
	_ backend.LockDescriber      = (*RedLock)(nil)
)

// holdersKey is the holder records' key among keys, the acquire keys of
// a lock of kind k (lockKeys): the acquire scripts take it at this index
// (KEYS[5] of a mutex and a semaphore, KEYS[6] of an RW lock, KEYS[7] of
// an upgradeable reader, whose rw:u comes before it).
func holdersKey(keys []string, k kind) string {
	switch k {
	case kindRead, kindWrite:
		return keys[5]
	case kindUpgrade:
		return keys[upgradeHoldersIndex]
	}
	return keys[4]
}

// selfRecord is this process's record without an owner or a time.
var selfRecord = sync.OnceValue(func() string {
	return string(holder.Encode(holder.Self("", time.Time{})))
})

// recordOf is the record an acquisition made with ctx stores (the
// script adds the time). An owner text longer than holder.MaxOwner (which
// the dlock package refuses) is cut to it.
func recordOf(ctx context.Context) string {
	owner := backend.OwnerFromContext(ctx)
	if owner == "" {
		return selfRecord()
	}
	if r := lastRecord.Load(); r != nil && r.owner == owner {
		return r.rec
	}
	r := &ownerRecord{owner: owner}
	if len(owner) > holder.MaxOwner {
		owner = strings.ToValidUTF8(owner[:holder.MaxOwner], "")
	}
	r.rec = string(holder.Encode(holder.Self(owner, time.Time{})))
	lastRecord.Store(r)
	return r.rec
}

// ownerRecord is the record of an owner text.
type ownerRecord struct{ owner, rec string }

// lastRecord is the record recordOf made last: a Guard's acquisitions
// give the same owner text again and again.
var lastRecord atomic.Pointer[ownerRecord]

// luaHold defines the acquire scripts' recording of holders:
//
//	hold(h, tok, rec, lease, fresh, t)  records rec (a record without its
//	    time; nothing when rec is nil or "") as the holder tok in the hash
//	    h, with the server's time (t: TIME already read, or nil), and keeps h alive for at least lease
//	    ms; fresh deletes every other field first (a mutex or writer that
//	    took a free lock nobody waits for).
//	pruneHolders(h, live)  when h has many more fields than live holders
//	    (n), deletes those for which live(field) is false.
//
// A hash of the wrong type (a value dlock did not write) records nothing
// and fails nothing: the lock is taken without a record.
const luaHold = luaStamp + luaHoldRest

// luaStamp defines stamp(rec, t, pre): the record rec with the server's
// time (t: TIME already read, or nil) put in it, after pre (nil: nothing),
// made in one concatenation (each string a script makes costs the server).
const luaStamp = `
local function stamp(rec, t, pre)
  t = t or redis.call('TIME')
  pre = pre or ''
  local us = string.format('%06d', tonumber(t[2]))
  if #rec > 2 then return pre .. '{"t":' .. t[1] .. us .. '000,' .. string.sub(rec, 2) end
  return pre .. '{"t":' .. t[1] .. us .. '000}'
end
`

// luaHoldRest is luaHold past stamp (acquireMutex defines it after its
// uncontended path, which needs only stamp).
const luaHoldRest = `
local function holdStamped(h, tok, srec, lease, fresh)
  if not h or not srec then return end
  if fresh then
    redis.call('DEL', h)
    redis.call('HSET', h, tok, srec)
    redis.call('PEXPIRE', h, lease)
    return
  end
  redis.pcall('HSET', h, tok, srec)
  if redis.call('PTTL', h) < tonumber(lease) then redis.call('PEXPIRE', h, lease) end
end
local function hold(h, tok, rec, lease, fresh, t)
  if not h or not rec or rec == '' then return end
  holdStamped(h, tok, stamp(rec, t), lease, fresh)
end
local function pruneHolders(h, n, live)
  if not h then return end
  local m = redis.pcall('HLEN', h)
  if type(m) ~= 'number' or m <= 2 * n + 32 then return end
  for _, f in ipairs(redis.call('HKEYS', h)) do
    if not live(f) then redis.call('HDEL', h, f) end
  end
end
`

// Describing scripts: read only, they return the live holders as {kind,
// token, record, token, record, ...}: kind "r" for readers (Shared), "x"
// otherwise; record "" when none was stored (a lease taken by an older
// version, say).

// KEYS: the lock (a string holding its holder's token, and its record
// when it was taken free: see luaOwner), holder records.
var describeString = newScript(luaOwner + `
local v = redis.call('GET', KEYS[1])
if not v then return {'x'} end
local t = owner(v)
if #t < #v then return {'x', t, string.sub(v, #t + 1)} end
return {'x', t, redis.call('HGET', KEYS[2], t) or ''}
`)

// luaMembers defines members(set, h, out): it appends to out the live
// members of the sorted set set (scored by expiry, server ms) and their
// records in h.
const luaMembers = luaNow + `
local function members(set, h, out)
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', set, '(' .. now, '+inf')) do
    out[#out + 1] = t
    out[#out + 1] = redis.call('HGET', h, t) or ''
  end
  return out
end
`

// KEYS: a sorted set of holders scored by expiry, holder records.
var describeMembers = newScript(luaMembers + `
return members(KEYS[1], KEYS[2], {'x'})
`)

// KEYS: readers, writer, holder records. The writer, or the readers.
var describeRW = newScript(luaMembers + `
local t = redis.call('GET', KEYS[2])
if t then return {'x', t, redis.call('HGET', KEYS[3], t) or ''} end
return members(KEYS[1], KEYS[3], {'r'})
`)

// describe returns the holders of the lock name of kind k (kindRead: an
// RW lock's readers or writer): on a RedLock, those that hold it on a
// majority of the nodes, a majority of which must answer.
func (c *core) describe(ctx context.Context, k kind, name string) ([]backend.Holder, error) {
	if c.closed.Load() {
		return nil, backend.Permanent(errClosed)
	}
	_, keys, _, err := lockStrings(nil, c.cfg.prefix, name, k)
	if err != nil {
		return nil, err
	}
	h := holdersKey(keys, k)
	s, dkeys := describeString, []string{keys[0], h}
	switch k {
	case kindSem:
		s = describeMembers
	case kindRead, kindWrite:
		s, dkeys = describeRW, []string{keys[0], keys[1], h}
	}
	rs, res := c.evalStrings(ctx, s, dkeys)
	type found struct {
		rec    string
		shared bool
		nodes  int
	}
	var order []string
	byToken := map[string]*found{}
	ok := 0
	for i, r := range rs {
		if r.err != nil {
			continue
		}
		ok++
		a := res[i]
		if len(a) == 0 || len(a)%2 != 1 {
			return nil, fmt.Errorf("holders of the %s %q: unexpected answer %q", k, name, a)
		}
		for j := 1; j+1 < len(a); j += 2 {
			f := byToken[a[j]]
			if f == nil {
				f = &found{rec: a[j+1], shared: a[0] == "r"}
				byToken[a[j]] = f
				order = append(order, a[j])
			}
			f.nodes++
		}
	}
	if ok < c.quorum {
		return nil, fmt.Errorf("holders of the %s %q: %w", k, name, c.nodesError(ok, rs))
	}
	out := make([]backend.Holder, 0, len(order))
	for _, t := range order {
		f := byToken[t]
		if f.nodes < c.quorum {
			continue
		}
		var hd backend.Holder
		if f.rec != "" {
			if hd, err = holder.Decode([]byte(f.rec)); err != nil {
				return nil, fmt.Errorf("holders of the %s %q: %w", k, name, err)
			}
		}
		hd.Shared = f.shared
		out = append(out, hd)
	}
	return out, nil
}

// evalStrings runs s (a describing script) on every node and reads each
// answer as a list of strings.
func (c *core) evalStrings(ctx context.Context, s *script, keys []string) ([]reply, [][]string) {
	rs := make([]reply, len(c.nodes))
	res := make([][]string, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Go(func() {
			res[i], rs[i].err = s.exec(ctx, n.client, keys, nil).AsStrSlice()
			c.noteAuth(n, rs[i].err)
		})
	}
	wg.Wait()
	return rs, res
}

// DescribeLock implements backend.LockDescriber: the holder of the mutex
// name, as its acquisition recorded it (host, process, owner text, and
// since when, in the server's time), or none when it is free. A lock
// granted to a waiter by a release (see Waiting and order) was recorded by
// the waiter's latest attempt, which gives its Since.
func (b *Backend) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	return b.c.describe(ctx, kindMutex, name)
}

// DescribeRW implements backend.RWDescriber: the readers of the
// reader-writer lock name (Shared), or its writer.
func (b *Backend) DescribeRW(ctx context.Context, name string) ([]backend.Holder, error) {
	return b.c.describe(ctx, kindRead, name)
}

// DescribeSemaphore implements backend.SemaphoreDescriber: one entry per
// ticket held, whatever limit its holder asked with.
func (b *Backend) DescribeSemaphore(ctx context.Context, name string, limit int) ([]backend.Holder, error) {
	if limit < 1 {
		return nil, fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit)
	}
	return b.c.describe(ctx, kindSem, name)
}

// DescribeLock implements backend.LockDescriber: the holder that holds
// the mutex name on a majority of the nodes (a majority must answer).
func (r *RedLock) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	return r.c.describe(ctx, kindMutex, name)
}
