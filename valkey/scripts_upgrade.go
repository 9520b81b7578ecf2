package valkey

// Scripts of the upgradeable read lock (see upgrade.go).
//
// An upgradeable reader with token T is recorded in two keys of its RW
// lock, written and extended together:
//
//   - rw:u = T (string, PX lease): at most one upgradeable reader per name;
//   - before its upgrade, T is a member of the readers' set rw:r (scored by
//     its expiry, like every reader), so that writers, which wait for the
//     readers to leave, wait for it with no change to their scripts;
//     after its upgrade, rw:w = T instead: it is the writer.
//
// An upgrade waiting for the plain readers queues in the lock's waiter
// queue (rw:a, rw:d) as a writer ("w" and its waiter id) with score 0,
// ahead of every other waiter: the readers' and writers' scripts, which
// let a reader in only when no writer queued before it and a writer only
// when it is first, then make every newcomer wait (writer preference).
//
// Its holder record (see holders.go) is the field T of rw:h, as a plain
// reader's or a writer's: written by the acquire script, kept alive by the
// extension script, deleted by the release. An upgrade leaves it as it is
// (same token, same holder): describing lists T as a reader while it is a
// member of rw:r, as the writer once rw:w = T.

// KEYS: readers, writer, queue, deadlines, fence, upgradeable, holder
// records. ARGV: token, lease ms, waiter, fair, channel, holder record (as
// the other acquire scripts).
// Queue members of its waiters are "u" and the waiter's id. An
// upgradeable reader enters when no writer and no upgradeable reader
// holds the lock, and no live writer or upgradeable reader queued before
// it (a try: none is queued); plain readers queued before it do not stop
// it (they share the lock with it).
var acquireUpgradeable = newScript(luaNextFence + luaQueue + luaAhead + luaHold + `
local rs, w, q, d, u = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6]
local lease = tonumber(ARGV[2])
local me = nil
if ARGV[3] ~= '' then me = 'u' .. ARGV[3] end
local now = clock()
local hint = redis.call('PTTL', w)
if hint == -2 then hint = redis.call('PTTL', u) end
local blocked = hint ~= -2
if not blocked and redis.call('EXISTS', q) == 1 then
  local dl = ahead(q, d, me, now, 'wu')
  if dl then
    blocked = true
    hint = dl - now
  end
end
if not blocked then
  redis.call('ZREMRANGEBYSCORE', rs, '-inf', now)
  redis.call('ZADD', rs, now + lease, ARGV[1])
  if redis.call('PTTL', rs) < lease then redis.call('PEXPIRE', rs, lease) end
  redis.call('SET', u, ARGV[1], 'PX', lease)
  if me then dequeue(q, d, me) end
  hold(KEYS[7], ARGV[1], ARGV[6], lease, false)
  pruneHolders(KEYS[7], redis.call('ZCARD', rs), function(f) return redis.call('ZSCORE', rs, f) end)
  return nextFence(KEYS[5])
end
if me then enqueue(q, d, me, lease) end
if hint < 0 then hint = 0 end
return -1 - hint
`)

// KEYS: readers, writer, queue, deadlines, upgradeable. ARGV: token, lease
// ms, waiter ("" for a single attempt, which never queues), channel.
// Returns 1 when
// the lease is (now, or already) the writer, 0 when it does not hold the
// lock (lost; its queue entry, if any, is dropped), or -(1 + ms) while
// plain readers hold it, ms being when the last of them expires unless it
// is extended or released. A waiting upgrade queues first (score 0, see
// above) and renews its deadline at every attempt; the writer key takes
// the upgradeable key's expiry, so both expire together.
var upgradeScript = newScript(luaQueue + `
local rs, w, q, d, u = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tok, lease = ARGV[1], tonumber(ARGV[2])
local me = nil
if ARGV[3] ~= '' then me = 'w' .. ARGV[3] end
local now = clock()
local owned = redis.call('GET', u) == tok
local up = owned and redis.call('GET', w) == tok
if owned and not up then
  local s = redis.call('ZSCORE', rs, tok)
  owned = s and tonumber(s) > now
end
if not owned or up then
  if me and redis.call('ZSCORE', q, me) then
    local h = redis.call('ZRANGE', q, 0, 0)[1]
    dequeue(q, d, me)
    if h == me then wakeHead(q, d, ARGV[4], '') end
  end
  if up then return 1 end
  return 0
end
redis.call('ZREMRANGEBYSCORE', rs, '-inf', now)
if redis.call('ZCARD', rs) == 1 then
  local ttl = redis.call('PTTL', u)
  if ttl <= 0 then ttl = lease end
  redis.call('ZREM', rs, tok)
  redis.call('SET', w, tok, 'PX', ttl)
  if me then dequeue(q, d, me) end
  return 1
end
if me then
  redis.call('ZADD', d, now + lease, me)
  redis.call('ZADD', q, 0, me)
  if redis.call('PTTL', q) < lease then redis.call('PEXPIRE', q, lease) end
  if redis.call('PTTL', d) < lease then redis.call('PEXPIRE', d, lease) end
end
local last = redis.call('ZRANGE', rs, -1, -1, 'WITHSCORES')
local hint = tonumber(last[2]) - now
if hint < 0 then hint = 0 end
return -1 - hint
`)

// KEYS: upgradeable, queue, deadlines, readers, writer, holder records
// (unused). ARGV: token, channel. Undoes an upgrade that its caller could not learn of (its
// answer was lost): if the lease is the writer, it becomes the
// upgradeable reader again (a reader member expiring with the
// upgradeable key) and the waiters are woken. Returns 1 when it undid an
// upgrade, 0 otherwise.
var downgradeScript = newScript(luaQueue + `
local u, q, d, rs, w, tok = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1]
if redis.call('GET', u) ~= tok or redis.call('GET', w) ~= tok then return 0 end
local now = clock()
local ttl = redis.call('PTTL', u)
if ttl <= 0 then return 0 end
redis.call('DEL', w)
redis.call('ZADD', rs, now + ttl, tok)
if redis.call('PTTL', rs) < ttl then redis.call('PEXPIRE', rs, ttl) end
wakeHead(q, d, ARGV[2], '')
return 1
`)

// KEYS: upgradeable, queue, deadlines, readers, writer, holder records
// (upgradeLeaseKeys). ARGV: token, lease ms. Extends an upgradeable
// reader's keys: the upgradeable key and its reader member, or, once
// upgraded, its writer key; and keeps the holder records at least a lease
// ahead. Returns 1 when the lease still owns them, 0 when not.
var extendUpgradeable = newScript(luaNow + `
local u, rs, w, h, tok = KEYS[1], KEYS[4], KEYS[5], KEYS[6], ARGV[1]
local lease = tonumber(ARGV[2])
if redis.call('GET', u) ~= tok then return 0 end
if redis.call('GET', w) == tok then
  redis.call('PEXPIRE', w, lease)
  redis.call('PEXPIRE', u, lease)
  if redis.call('PTTL', h) < lease then redis.call('PEXPIRE', h, lease) end
  return 1
end
local s = redis.call('ZSCORE', rs, tok)
if not s then return 0 end
if tonumber(s) <= now then
  redis.call('ZREM', rs, tok)
  return 0
end
redis.call('ZADD', rs, now + lease, tok)
if redis.call('PTTL', rs) < lease then redis.call('PEXPIRE', rs, lease) end
redis.call('PEXPIRE', u, lease)
if redis.call('PTTL', h) < lease then redis.call('PEXPIRE', h, lease) end
return 1
`)

// KEYS: upgradeable, queue, deadlines, readers, writer, holder records.
// ARGV: token, channel, own waiter prefix (unused: RW waiters are woken
// by publishing), lease ms (unused). Releases an upgradeable reader,
// upgraded or not: it deletes whatever of it is left (the upgradeable
// key and the writer key if they hold its token, its reader member, its
// holder record) and wakes the waiters if any. Returns 1 when the lease
// still owned the lock, 0 when not.
var releaseUpgradeable = newScript(luaQueue + `
local u, q, d, rs, w, tok = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1]
redis.pcall('HDEL', KEYS[6], tok)
local now = clock()
local owned = redis.call('GET', u) == tok
if owned then redis.call('DEL', u) end
local wrote = false
if redis.call('GET', w) == tok then
  redis.call('DEL', w)
  wrote = true
end
local s = redis.call('ZSCORE', rs, tok)
if s then redis.call('ZREM', rs, tok) end
if not wrote and not (s and tonumber(s) > now) then owned = false end
wakeHead(q, d, ARGV[2], '')
if owned then return 1 end
return 0
`)
