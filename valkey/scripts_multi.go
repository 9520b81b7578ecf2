package valkey

// Composite tries: one script takes a lock of every name given, or none
// (see multi.go). Each checks every name first, exactly as the single try
// of its kind does (a try fails while a live waiter is queued: it never
// jumps the queue), and writes only when all are free; then it takes each
// lock as the single try would, with its own token, holder record and
// fencing token. It returns the fencing tokens in the order of the names,
// or -i when the i-th name (from 1) is busy. The only writes before that
// answer are the single tries' own clean-ups: dead waiters evicted (and
// the next waiter woken when that frees the lock for it), expired readers
// or tickets dropped.
//
// KEYS: the keys of each name in turn (a stride of a lock's acquire keys:
// 5 for a mutex and a semaphore, 6 for an RW lock, the holder records
// last). ARGV: lease ms, holder record, limit (a semaphore; else ""), then
// each name's token and channel.

// luaMultiHead defines: the number of names n, and for the i-th name (from
// 1) tok(i), ch(i); and busyQueue(q, d, ch): whether a live waiter is
// queued (q, d), waking the first one when dead waiters were evicted.
const luaMultiHead = luaNextFence + luaQueue + luaHold + `
local lease, srec = tonumber(ARGV[1]), nil
if ARGV[2] ~= '' then srec = stamp(ARGV[2]) end
local function tok(i) return ARGV[2 + 2 * i] end
local function ch(i) return ARGV[3 + 2 * i] end
local n = (#ARGV - 3) / 2
local function busyQueue(q, d, c)
  if redis.call('EXISTS', q) == 0 then return false end
  local evicted = evict(q, d, (clock()))
  local h = head(q, d)
  if not h then return false end
  if evicted > 0 then redis.call('PUBLISH', c, h) end
  return true
end
`

// Mutexes. Per name: lock, fence, queue, deadlines, holder records.
var acquireMutexAll = newScript(luaMultiHead + `
for i = 1, n do
  local k = (i - 1) * 5
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then return -i end
  if busyQueue(KEYS[k + 3], KEYS[k + 4], ch(i)) then return -i end
end
local out = {}
for i = 1, n do
  local k = (i - 1) * 5
  redis.call('SET', KEYS[k + 1], tok(i), 'PX', ARGV[1])
  holdStamped(KEYS[k + 5], tok(i), srec, ARGV[1], true)
  out[i] = nextFence(KEYS[k + 2])
end
return out
`)

// Readers. Per name: readers, writer, queue, deadlines, fence, holder
// records. A name is busy while a writer holds it or a live writer waits.
var acquireReadAll = newScript(luaMultiHead + `
for i = 1, n do
  local k = (i - 1) * 6
  if redis.call('EXISTS', KEYS[k + 2]) == 1 then return -i end
  local q, d = KEYS[k + 3], KEYS[k + 4]
  if redis.call('EXISTS', q) == 1 then
    evict(q, d, (clock()))
    for _, m in ipairs(redis.call('ZRANGE', q, 0, -1)) do
      if string.sub(m, 1, 1) == 'w' and redis.call('ZSCORE', d, m) then return -i end
    end
  end
end
local out = {}
local now = clock()
for i = 1, n do
  local k = (i - 1) * 6
  local rs = KEYS[k + 1]
  redis.call('ZREMRANGEBYSCORE', rs, '-inf', now)
  redis.call('ZADD', rs, now + lease, tok(i))
  if redis.call('PTTL', rs) < lease then redis.call('PEXPIRE', rs, lease) end
  holdStamped(KEYS[k + 6], tok(i), srec, lease, false)
  pruneHolders(KEYS[k + 6], redis.call('ZCARD', rs), function(f) return redis.call('ZSCORE', rs, f) end)
  out[i] = nextFence(KEYS[k + 5])
end
return out
`)

// Writers. Per name: readers, writer, queue, deadlines, fence, holder
// records. A name is busy while anyone holds it or a live waiter waits.
var acquireWriteAll = newScript(luaMultiHead + `
for i = 1, n do
  local k = (i - 1) * 6
  local rs = KEYS[k + 1]
  redis.call('ZREMRANGEBYSCORE', rs, '-inf', (clock()))
  if redis.call('EXISTS', KEYS[k + 2]) == 1 or redis.call('ZCARD', rs) > 0 then return -i end
  if busyQueue(KEYS[k + 3], KEYS[k + 4], ch(i)) then return -i end
end
local out = {}
for i = 1, n do
  local k = (i - 1) * 6
  redis.call('SET', KEYS[k + 2], tok(i), 'PX', ARGV[1])
  holdStamped(KEYS[k + 6], tok(i), srec, ARGV[1], true)
  out[i] = nextFence(KEYS[k + 5])
end
return out
`)

// Semaphores, every one of limit ARGV[3]. Per name: holders, fence,
// queue, deadlines, holder records. A name is busy while it has no room
// or a live waiter waits.
var acquireSemAll = newScript(luaMultiHead + `
local limit = tonumber(ARGV[3])
for i = 1, n do
  local k = (i - 1) * 5
  local hs = KEYS[k + 1]
  redis.call('ZREMRANGEBYSCORE', hs, '-inf', (clock()))
  if redis.call('ZCARD', hs) >= limit then return -i end
  if busyQueue(KEYS[k + 3], KEYS[k + 4], ch(i)) then return -i end
end
local out = {}
local now = clock()
for i = 1, n do
  local k = (i - 1) * 5
  local hs = KEYS[k + 1]
  redis.call('ZADD', hs, now + lease, tok(i))
  if redis.call('PTTL', hs) < lease then redis.call('PEXPIRE', hs, lease) end
  holdStamped(KEYS[k + 5], tok(i), srec, lease, false)
  pruneHolders(KEYS[k + 5], redis.call('ZCARD', hs), function(f) return redis.call('ZSCORE', hs, f) end)
  out[i] = nextFence(KEYS[k + 2])
end
return out
`)
