package valkey

import (
	"context"
	"crypto/sha1"
	"encoding/hex"

	valkeygo "github.com/valkey-io/valkey-go"
)

// script is a Lua script run by EVALSHA with a fallback to EVAL (through
// valkey-go's Lua helper for single calls; by hand for pipelined batches).
type script struct {
	lua *valkeygo.Lua
	src string
	sha string
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{lua: valkeygo.NewLuaScript(src), src: src, sha: hex.EncodeToString(sum[:])}
}

// exec runs the script once on c.
func (s *script) exec(ctx context.Context, c valkeygo.Client, keys, args []string) valkeygo.ValkeyResult {
	return s.lua.Exec(ctx, c, keys, args)
}

// call is one execution of a script in a batch.
type call struct {
	s    *script
	keys []string
	args []string
}

// execBatch runs calls pipelined on c (DoMulti), by EVALSHA, and again by
// EVAL those the server did not know the script of.
func execBatch(ctx context.Context, c valkeygo.Client, calls []call) []valkeygo.ValkeyResult {
	cmds := make(valkeygo.Commands, len(calls))
	for i, k := range calls {
		cmds[i] = c.B().Evalsha().Sha1(k.s.sha).Numkeys(int64(len(k.keys))).Key(k.keys...).Arg(k.args...).Build()
	}
	res := c.DoMulti(ctx, cmds...)
	var again []int
	for i, r := range res {
		if e, ok := valkeygo.IsValkeyErr(r.Error()); ok && e.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, i := range again {
			k := calls[i]
			cmds = append(cmds, c.B().Eval().Script(k.s.src).Numkeys(int64(len(k.keys))).Key(k.keys...).Arg(k.args...).Build())
		}
		for j, r := range c.DoMulti(ctx, cmds...) {
			res[again[j]] = r
		}
	}
	return res
}

// luaNow sets now to the server's time in milliseconds.
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// luaOwner defines owner(v): the token of the lease that holds a lock
// whose value (a string key: a mutex's lock, an RW lock's writer, GET's
// answer, false when there is none) is v. A mutex taken free with nobody
// waiting (acquireMutex's first path) holds its token followed by its
// holder record ("{...}", see holders.go), which then lives and dies with
// the lock, with no hash to write, extend and delete; every other value is
// a token (or a granted waiter's id) alone, whose record is in the lock's
// hash of holder records. Tokens and waiter ids never hold a "{".
const luaOwner = `
local function owner(v)
  if not v then return v end
  local i = string.find(v, '{', 1, true)
  if i then return string.sub(v, 1, i - 1) end
  return v
end
`

// luaKeepTTL makes the sorted set KEYS[1] live at least lease ms.
const luaKeepTTL = `
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
`

// luaNextFence defines nextFence(key): it advances the fencing counter at
// key and returns the new token, max(counter + 1, floor), floor being the
// server's time (TIME) in microseconds — in whole milliseconds, times
// 1000, when the script set fenceMs (a RedLock's acquisition). The floor keeps
// tokens increasing when the counter is forgotten (a server restarted
// without persistence, a failover to a replica that had not received the
// last increments): a forgotten counter starts again from the clock, above
// every earlier token as long as the server's clock has moved forward past
// them — which it has unless the clock was stepped back, or the counter had
// run ahead of the clock by more than the outage lasted (it advances by
// one per acquisition, the floor by 1000 per millisecond: it would take
// more than one acquisition of one name per microsecond, sustained; on a
// RedLock 1000 per millisecond). On one node the floor in microseconds is
// almost always above the counter, so that the common case writes the
// counter once even when one name is taken several times a millisecond.
// On a RedLock, whole milliseconds let the nodes, asked at nearly the same
// moment, mostly agree on a token, which spares the extra round trip that
// raises their counters (see RedLock). The two floors never make a token
// go back: the token is always above the counter. The
// t, when given, is the server's TIME already read by the
// script. The counter is written by SET with GET (Redis 6.2 or later,
// every Valkey): the floor, and again counter + 1 in the rare case that it
// is larger, so that the common case is one command. The counter is
// stored as a decimal integer; the floor stays exact in Lua's
// doubles (below 2^53) until the year 2255. The counter expires a day
// after its last use (fenceIdleMs), later if it ran ahead of the floor.
const luaNextFence = `
local fenceMs = false
local function fenceTTL(c, f)
  local ahead = math.ceil((c - f) / 1000)
  if ahead < 0 then ahead = 0 end
  return ` + fenceIdleMs + ` + ahead
end
local function nextFence(key, t)
  t = t or redis.call('TIME')
  local f = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if fenceMs then f = f - f % 1000 end
  local c = tonumber(redis.call('SET', key, string.format('%.0f', f), 'PX', ` + fenceIdleMs + `, 'GET') or '0') or 0
  if c + 1 > f then
    local floor = f
    f = c + 1
    redis.call('SET', key, string.format('%.0f', f), 'PX', fenceTTL(f, floor))
  end
  return f
end
`

// fenceIdleMs is how long (ms) a fencing counter outlives the last
// acquisition of its lock: a day. The counter then expires, and the next
// token comes from the clock floor (see luaNextFence). A counter that ran
// ahead of the floor lives that much longer, so that at its expiry the
// floor has passed it: an expiry never makes a token go back (unless the
// server's clock is stepped back by more than the counter stayed idle).
const fenceIdleMs = "86400000"

// luaQueue defines the waiter queue of a lock: two sorted sets, KEYS[q]
// (each waiter scored by its arrival, server time in µs) and KEYS[d] (each
// waiter scored by its deadline, server time in ms). A waiter renews its
// deadline (now + lease) at every attempt; one past it is dead and
// evicted by the next script that looks. A member of q without a deadline
// in d (not written by this package) counts as dead too.
//
//	clock()              now (ms) and the arrival stamp (µs), from TIME
//	evict(q, d, now)     drops dead waiters, returns how many
//	head(q, d)           the first live waiter, or nil
//	enqueue(q, d, m, lease)  adds m at the end (keeping its place if queued)
//	                     and renews its deadline
//	dequeue(q, d, m)     removes m
//	wakeHead(q, d, ch, self)  publishes the first live waiter's id on ch,
//	                     or returns it if it starts with self (not "")
//	refuse(...)          an exclusive attempt's refusal: queues me (if
//	                     not nil); if the lock is free (free) but first is
//	                     h, wakes h when dead waiters were evicted (evicted)
//	                     and hints when h's place expires; else hints hint
const luaQueue = `
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end
local function evict(q, d, now)
  local dead = redis.call('ZRANGEBYSCORE', d, '-inf', now, 'LIMIT', 0, 100)
  if #dead > 0 then
    redis.call('ZREM', q, unpack(dead))
    redis.call('ZREM', d, unpack(dead))
  end
  return #dead
end
local function head(q, d)
  for _ = 1, 100 do
    local h = redis.call('ZRANGE', q, 0, 0)[1]
    if not h or redis.call('ZSCORE', d, h) then return h end
    redis.call('ZREM', q, h)
  end
  return nil
end
local function enqueue(q, d, m, lease)
  local now, stamp = clock()
  redis.call('ZADD', d, now + lease, m)
  redis.call('ZADD', q, 'NX', stamp, m)
  redis.call('PEXPIRE', q, lease)
  redis.call('PEXPIRE', d, lease)
end
local function dequeue(q, d, m)
  redis.call('ZREM', q, m)
  redis.call('ZREM', d, m)
end
local function wakeHead(q, d, ch, self)
  local h = head(q, d)
  if not h then return nil end
  if self ~= '' and string.sub(h, 1, #self) == self then return h end
  redis.call('PUBLISH', ch, h)
  return nil
end
local function refuse(q, d, me, lease, ch, now, free, evicted, h, hint)
  if me then enqueue(q, d, me, lease) end
  if free then
    if evicted > 0 and h then redis.call('PUBLISH', ch, h) end
    hint = 0
    if h then hint = tonumber(redis.call('ZSCORE', d, h)) - now end
  end
  if hint < 0 then hint = 0 end
  return -1 - hint
end
`

// luaAhead defines ahead(q, d, me, now, kinds), after luaQueue: it evicts
// the dead waiters and returns the deadline (server ms) of the first live
// waiter queued before me (before everyone, when me is nil or not queued)
// whose member starts with one of the letters of kinds, or nil. (ZRANK of
// a member not queued is false in Lua, not nil.)
const luaAhead = `
local function ahead(q, d, me, now, kinds)
  evict(q, d, now)
  local rank = nil
  if me then rank = redis.call('ZRANK', q, me) end
  local ms = {}
  if not rank then ms = redis.call('ZRANGE', q, 0, -1)
  elseif rank > 0 then ms = redis.call('ZRANGE', q, 0, rank - 1) end
  for _, m in ipairs(ms) do
    if string.find(kinds, string.sub(m, 1, 1), 1, true) then
      local dl = redis.call('ZSCORE', d, m)
      if dl then return tonumber(dl) end
    end
  end
  return nil
end
`

// Acquire scripts return the new fencing token (> 0) when they acquire, or
// -(1 + ms) when they do not, ms being a hint of how long the lock stays
// taken unless released (0 when unknown).
//
// Their first ARGV are the same: token, lease ms, waiter id ("" for a
// try, which never queues), fair ("1": only the queue's first waiter — or
// anyone when none waits — may take the lock; "0", RedLock: waiters queue
// only so that releases know someone waits), and the channel. A waiter
// that does not acquire queues (or renews its place); one that acquires
// leaves the queue. Every check comes before the first write, so a key of
// the wrong type fails the script before it changed anything.

// KEYS: lock, fence, queue, deadlines, holder records. ARGV: token, lease
// ms, waiter, fair, channel, holder record (see holders.go); a waiter "="
// is the token (a wait's first attempt), a channel "" is the lock's key
// and ":n" (see mutexArgs: shorter requests). (The
// uncontended path comes before the queue's functions are defined: it runs
// without making their closures.) A waiter's attempts record it under its
// id, which a release that grants it the lock makes the lock's value.
var acquireMutex = newScript(luaNextFence + luaStamp + `
local lock, q, d, waiter = KEYS[1], KEYS[3], KEYS[4], ARGV[3]
if waiter == '=' then waiter = ARGV[1] end
fenceMs = ARGV[4] == '0' -- a RedLock's (see luaNextFence)
local empty = redis.call('EXISTS', q) == 0
if empty then
  -- Free and nobody waits: the holder record goes into the lock's value
  -- (see luaOwner), one SET.
  local t = redis.call('TIME')
  local v = ARGV[1]
  if ARGV[6] ~= '' then v = stamp(ARGV[6], t, v) end
  if redis.call('SET', lock, v, 'NX', 'PX', ARGV[2]) then
    return nextFence(KEYS[2], t)
  end
end
` + luaHoldRest + luaOwner + luaQueue + `
local enqueue0 = enqueue
enqueue = function(q, d, m, lease)
  enqueue0(q, d, m, lease)
  hold(KEYS[5], m, ARGV[6], lease, false)
end
local function held()
  hold(KEYS[5], ARGV[1], ARGV[6], ARGV[2], false)
  pruneHolders(KEYS[5], redis.call('ZCARD', d), function(f) return f == ARGV[1] or redis.call('ZSCORE', d, f) end)
end
-- Granted by a release in the waiter's process (see releaseString), and
-- not yet taken there: the attempt takes the lock over under its token.
-- (Not on a waiter's first attempt, whose token is its id.)
if waiter ~= '' and waiter ~= ARGV[1] and owner(redis.call('GET', lock)) == waiter then
  redis.call('SET', lock, ARGV[1], 'PX', ARGV[2])
  held()
  return nextFence(KEYS[2])
end
local lease = tonumber(ARGV[2])
if empty then
  local pttl = redis.call('PTTL', lock)
  if waiter ~= '' then enqueue(q, d, waiter, lease) end
  if pttl < 0 then pttl = 0 end
  return -1 - pttl
end
if waiter ~= '' and redis.call('ZRANGE', q, 0, 0)[1] == waiter then
  -- First in the queue (a woken waiter): nothing else to look at.
  if redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) then
    dequeue(q, d, waiter)
    held()
    return nextFence(KEYS[2])
  end
end
local hint = redis.call('PTTL', lock)
if hint ~= -2 then
  -- Held: queue (the queue was read above, the deadlines are written
  -- first) and wait; dead waiters are evicted when the lock is free.
  if waiter ~= '' then enqueue(q, d, waiter, lease) end
  if hint < 0 then hint = 0 end
  return -1 - hint
end
local now = clock()
local evicted = evict(q, d, now)
local h = head(q, d)
local free = true
if ARGV[4] ~= '1' or not h or h == waiter then
  redis.call('SET', lock, ARGV[1], 'PX', ARGV[2])
  if waiter ~= '' and h then dequeue(q, d, waiter) end
  held()
  return nextFence(KEYS[2])
end
local me = nil
if waiter ~= '' then me = waiter end
local ch = ARGV[5]
if ch == '' then ch = lock .. ':n' end
return refuse(q, d, me, lease, ch, now, free, evicted, h, hint)
`)

// acquireMutexFree is acquireMutex's uncontended path alone, declaring
// only the keys it touches: it takes a mutex that is free while nobody
// waits, or answers notFree for acquireMutex to decide (a waiter must
// queue; a try may find only dead waiters ahead). A request half the size
// of acquireMutex's costs the server and the client less, in the
// throughput rows most. A try that finds the lock held with nobody queued
// is answered here, as acquireMutex would. KEYS: lock, fence, queue. ARGV:
// token, lease ms, holder record, waiter ("" for a try, "=" for a wait's
// first attempt, whose waiter id is the token).
var acquireMutexFree = newScript(luaNextFence + luaStamp + `
if redis.call('EXISTS', KEYS[3]) == 0 then
  local t = redis.call('TIME')
  local v = ARGV[1]
  if ARGV[3] ~= '' then v = stamp(ARGV[3], t, v) end
  if redis.call('SET', KEYS[1], v, 'NX', 'PX', ARGV[2]) then
    return nextFence(KEYS[2], t)
  end
  if ARGV[4] == '' then
    local pttl = redis.call('PTTL', KEYS[1])
    if pttl < 0 then pttl = 0 end
    return -1 - pttl
  end
end
return ` + notFree + `
`)

// notFree is the answer of acquireMutexFree and releaseMutexFree when the
// full script must decide: 0 is neither a fencing token nor a refusal,
// and releaseMutexFree otherwise answers only 1 (released).
const notFree = "0"

// releaseMutexFree is releaseString's uncontended path alone, declaring
// only the keys it touches: it deletes a mutex held by the token whose
// holder record is in the lock's value (taken free: no record in the
// hash) while nobody waits, and answers 1; else notFree, for releaseString
// to decide (wake or grant a waiter, delete a record, report a lease not
// owned). KEYS: lock, queue. ARGV: token.
var releaseMutexFree = newScript(luaOwner + `
local v = redis.call('GET', KEYS[1])
if owner(v) ~= ARGV[1] or #v == #ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then return ` + notFree + ` end
redis.call('DEL', KEYS[1])
return 1
`)

// KEYS: readers, writer, queue, deadlines, fence, holder records. ARGV:
// token, lease ms, waiter, fair, channel, holder record. Members of the
// queue are "r" or "w" and the waiter's id. A reader enters unless a
// writer holds the lock or a live writer queued before it (a try: any live
// writer queued).
var acquireRead = newScript(luaNextFence + luaQueue + luaAhead + luaHold + `
local rs, q, d = KEYS[1], KEYS[3], KEYS[4]
local lease = tonumber(ARGV[2])
local me = nil
if ARGV[3] ~= '' then me = 'r' .. ARGV[3] end
local now = clock()
local hint = redis.call('PTTL', KEYS[2])
local blocked = hint ~= -2
if not blocked and redis.call('EXISTS', q) == 1 then
  local dl = ahead(q, d, me, now, 'w')
  if dl then
    blocked = true
    hint = dl - now
  end
end
if not blocked then
  redis.call('ZREMRANGEBYSCORE', rs, '-inf', now)
  redis.call('ZADD', rs, now + lease, ARGV[1])
  if redis.call('PTTL', rs) < lease then redis.call('PEXPIRE', rs, lease) end
  if me then dequeue(q, d, me) end
  hold(KEYS[6], ARGV[1], ARGV[6], lease, false)
  pruneHolders(KEYS[6], redis.call('ZCARD', rs), function(f) return redis.call('ZSCORE', rs, f) end)
  return nextFence(KEYS[5])
end
if me then enqueue(q, d, me, lease) end
if hint < 0 then hint = 0 end
return -1 - hint
`)

// KEYS: readers, writer, queue, deadlines, fence, holder records. ARGV:
// token, lease ms, waiter, fair, channel, holder record. A writer enters
// when nobody holds the lock and it is the queue's first live waiter (a
// try: when nobody waits).
var acquireWrite = newScript(luaNextFence + luaQueue + luaHold + `
local rs, q, d = KEYS[1], KEYS[3], KEYS[4]
local lease = tonumber(ARGV[2])
local me = nil
if ARGV[3] ~= '' then me = 'w' .. ARGV[3] end
local now = clock()
redis.call('ZREMRANGEBYSCORE', rs, '-inf', now)
local hint = redis.call('PTTL', KEYS[2])
local free = false
if hint == -2 then
  local last = redis.call('ZRANGE', rs, -1, -1, 'WITHSCORES')
  if #last == 0 then free = true else hint = tonumber(last[2]) - now end
end
local h, evicted = nil, 0
if redis.call('EXISTS', q) == 1 then
  evicted = evict(q, d, now)
  h = head(q, d)
end
if free and (not h or h == me) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  if me and h then dequeue(q, d, me) end
  hold(KEYS[6], ARGV[1], ARGV[6], ARGV[2], true)
  return nextFence(KEYS[5])
end
return refuse(q, d, me, lease, ARGV[5], now, free, evicted, h, hint)
`)

// KEYS: holders, fence, queue, deadlines, holder records. ARGV: token,
// lease ms, waiter, fair, channel, limit, holder record. A waiter takes a
// ticket when there is room and it is the queue's first live waiter (a
// try: when nobody waits); one that leaves room behind it wakes the next.
var acquireSem = newScript(luaNextFence + luaQueue + luaHold + `
local hs, q, d, waiter = KEYS[1], KEYS[3], KEYS[4], ARGV[3]
local lease, limit = tonumber(ARGV[2]), tonumber(ARGV[6])
local now = clock()
redis.call('ZREMRANGEBYSCORE', hs, '-inf', now)
local h, evicted = nil, 0
if redis.call('EXISTS', q) == 1 then
  evicted = evict(q, d, now)
  h = head(q, d)
end
local room = redis.call('ZCARD', hs) < limit
if room and (ARGV[4] ~= '1' or not h or h == waiter) then
  redis.call('ZADD', hs, now + lease, ARGV[1])
  if redis.call('PTTL', hs) < lease then redis.call('PEXPIRE', hs, lease) end
  hold(KEYS[5], ARGV[1], ARGV[7], lease, false)
  pruneHolders(KEYS[5], redis.call('ZCARD', hs), function(f) return redis.call('ZSCORE', hs, f) end)
  if waiter ~= '' and h then
    dequeue(q, d, waiter)
    if redis.call('ZCARD', hs) < limit then wakeHead(q, d, ARGV[5], '') end
  end
  return nextFence(KEYS[2])
end
if waiter ~= '' then enqueue(q, d, waiter, lease) end
local hint = 0
if room then
  if evicted > 0 and h then redis.call('PUBLISH', ARGV[5], h) end
  if h then hint = tonumber(redis.call('ZSCORE', d, h)) - now end
else
  local first = redis.call('ZRANGE', hs, 0, 0, 'WITHSCORES')
  if #first > 0 then hint = tonumber(first[2]) - now end
end
if hint < 0 then hint = 0 end
return -1 - hint
`)

// Extension scripts return 1 when the lease is still owned and extended, 0
// when it is not owned.

// KEYS: lock, holder records (optional: kept alive with the lock when
// the record is there rather than in the lock's value). ARGV: token, lease
// ms.
var extendString = newScript(luaOwner + `
local v = redis.call('GET', KEYS[1])
if owner(v) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if KEYS[2] and #v == #ARGV[1] then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
  return 1
end
return 0
`)

// KEYS: sorted set, holder records (optional). ARGV: token, lease ms.
var extendMember = newScript(luaNow + `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
if tonumber(s) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
` + luaKeepTTL + `
if KEYS[2] and redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
return 1
`)

// Release scripts return 1 when the lease was owned until released, 0 when
// not. They announce the release on the lock's channel only when someone
// waits: the message is the id of the queue's first waiter. When that
// waiter's id starts with ARGV[3] (not ""), the releaser's own waiter
// prefix, they publish nothing and return the id instead (meaning owned):
// the releaser wakes it in its process. (Not evicting dead waiters first
// keeps a hand-off short; a dead first waiter is evicted by the next
// waiter's poll.) They take the same KEYS and ARGV.

// KEYS: lock, queue, deadlines, fence, holder records (optional: the
// release deletes the token's record, or the whole hash with the lock when
// nobody waits). ARGV: token, channel ("": the lock's key and ":n", a
// mutex's, see newLease), own waiter prefix, lease ms. A mutex's release whose first waiter is the
// releaser's own (ARGV[3] not "") grants it the lock: the lock's value
// becomes the waiter's id (its lease token), the waiter leaves the queue,
// and the script returns {id, fencing token}; the releaser hands the
// grant to the waiter in its process, which saves the waiter's attempt.
// A mutex's release whose first waiter is another process's (ARGV[3] not
// "") grants it the lock too, for what remains of its place in the queue
// (a lease after its last attempt, when that is still at least half a
// lease away: a dead waiter holds the lock no longer than it would hold
// the queue), and publishes its id and the fencing token, separated by a
// space: the waiter takes the grant from the message, valid from before
// its last attempt was sent. A lost message costs the waiter its poll,
// whose attempt takes the grant over.
// A waiter that stops waiting before it takes a grant gives the lock back
// (leaveQueue); one whose attempt finds itself granted takes the lock
// over under the attempt's token (acquireMutex): a waiter uses either
// the grant or its attempt, never both.
var releaseString = newScript(luaReleaseString + `
return releaseString(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
`)

// luaReleaseString defines releaseString(lock, q, d, fence, holders, token,
// ch, self, lease): releaseString's script for one lease, with its KEYS
// and ARGV as parameters (holders may be nil), so that releaseAll runs it
// for several. (The queue's functions are defined only past the
// uncontended path, which runs without making their closures.)
const luaReleaseString = luaOwner + `
local function releaseString(lock, q, d, fence, holders, token, ch, self, leaseMs)
  local v = redis.call('GET', lock)
  if owner(v) ~= token then
    if holders then redis.pcall('HDEL', holders, token) end
    return 0
  end
  if redis.call('EXISTS', q) == 0 then
    -- Nobody waits, and nobody else holds the lock (a writer excludes
    -- readers): the holder records are this lease's and dead ones.
    if holders then redis.call('DEL', lock, holders) else redis.call('DEL', lock) end
    return 1
  end
  if holders and #v == #token then redis.pcall('HDEL', holders, token) end
  if ch == '' then ch = lock .. ':n' end
` + luaNextFence + luaQueue + `
  local h = head(q, d)
  if h and self ~= '' then
    if string.sub(h, 1, #self) == self then
      redis.call('SET', lock, h, 'PX', leaseMs)
      dequeue(q, d, h)
      return {h, nextFence(fence)}
    end
    -- Another process's waiter: granted for what remains of its place
    -- (it renews it at every attempt), if that is at least half a lease.
    local now = clock()
    local left = tonumber(redis.call('ZSCORE', d, h)) - now
    if left * 2 >= tonumber(leaseMs) then
      redis.call('SET', lock, h, 'PX', left)
      dequeue(q, d, h)
      redis.call('PUBLISH', ch, h .. ' ' .. string.format('%.0f', nextFence(fence)))
      return 1
    end
  end
  redis.call('DEL', lock)
  if h then redis.call('PUBLISH', ch, h) end
  return 1
end
`

// KEYS: sorted set, queue, deadlines, fence, holder records (optional).
// ARGV: token, channel, own waiter prefix, lease ms.
var releaseMember = newScript(luaReleaseMember + `
return releaseMember(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
`)

// luaReleaseMember defines releaseMember(set, q, d, holders, token, ch,
// self): releaseMember's script for one lease (see luaReleaseString).
const luaReleaseMember = `
local function releaseMember(set, q, d, holders, token, ch, self)
` + luaQueue + `
  if holders then redis.pcall('HDEL', holders, token) end
  local now = clock()
  local s = redis.call('ZSCORE', set, token)
  if not s then return 0 end
  redis.call('ZREM', set, token)
  if tonumber(s) <= now then
    wakeHead(q, d, ch, '')
    return 0
  end
  return wakeHead(q, d, ch, self) or 1
end
`

// KEYS: the five release keys of each lease in turn (see releaseString).
// ARGV: each lease's "s" (a string: releaseString) or "m" (a member of a
// sorted set: releaseMember) and its four release arguments. It releases
// each lease as its own release script would and returns their answers
// in order; a lease whose release fails (a key of the wrong type) answers
// with its error, and the others are released all the same.
var releaseAll = newScript(luaReleaseString + luaReleaseMember + `
local out = {}
for i = 1, #ARGV / 5 do
  local k, a = (i - 1) * 5, (i - 1) * 5
  local ok, r
  if ARGV[a + 1] == 'm' then
    ok, r = pcall(releaseMember, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 5], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  else
    ok, r = pcall(releaseString, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
  end
  if not ok and type(r) ~= 'table' then r = {err = tostring(r)} end
  out[i] = r
end
return out
`)

// KEYS: queue, deadlines, and a mutex's lock. ARGV: member, channel, own
// waiter prefix. A waiter that stops waiting leaves the queue; if it was
// first, it wakes the next (as a release does: the id is returned when it
// is the caller's own). A mutex's waiter that a release granted the lock
// to (see releaseString) and that did not take it gives it back.
var leaveQueue = newScript(luaQueue + luaOwner + `
if KEYS[3] and owner(redis.call('GET', KEYS[3])) == ARGV[1] then
  redis.call('DEL', KEYS[3])
  return wakeHead(KEYS[1], KEYS[2], ARGV[2], ARGV[3]) or 1
end
local h = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if h == ARGV[1] then return wakeHead(KEYS[1], KEYS[2], ARGV[2], ARGV[3]) or 1 end
return 1
`)

// KEYS: lock, fence. ARGV: token, floor. RedLock's second phase: raise a
// node's fencing counter to the token the acquisition settled on, on a node
// where the acquisition holds the lock.
var raiseFence = newScript(luaNextFence + luaOwner + `
if owner(redis.call('GET', KEYS[1])) == ARGV[1] then
  local c = tonumber(redis.call('GET', KEYS[2]) or '0')
  local n = tonumber(ARGV[2])
  if c < n then
    local t = redis.call('TIME')
    local floor = tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000
    redis.call('SET', KEYS[2], ARGV[2], 'PX', fenceTTL(n, floor))
  end
  return 1
end
return 0
`)
