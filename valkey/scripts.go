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

// luaKeepTTL makes the sorted set KEYS[1] live at least lease ms.
const luaKeepTTL = `
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
`

// luaNextFence defines nextFence(key): it advances the fencing counter at
// key and returns the new token, max(counter + 1, floor), floor being the
// server's time (TIME) in whole milliseconds, times 1000. The floor keeps
// tokens increasing when the counter is forgotten (a server restarted
// without persistence, a failover to a replica that had not received the
// last increments): a forgotten counter starts again from the clock, above
// every earlier token as long as the server's clock has moved forward past
// them — which it has unless the clock was stepped back, or the counter had
// run ahead of the clock by more than the outage lasted (it advances by
// one per acquisition, the floor by 1000 per millisecond: it would take
// more than 1000 acquisitions of one name per millisecond, sustained).
// Whole milliseconds rather than microseconds let the nodes of a RedLock,
// asked at nearly the same moment, mostly agree on a token, which spares
// the extra round trip that raises their counters (see RedLock). The
// counter is stored as a decimal integer; the floor stays exact in Lua's
// doubles (below 2^53) until the year 2255.
const luaNextFence = `
local function nextFence(key)
  local t = redis.call('TIME')
  local f = tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000
  local c = tonumber(redis.call('GET', key) or '0') or 0
  if c + 1 > f then f = c + 1 end
  redis.call('SET', key, string.format('%.0f', f))
  return f
end
`

// Acquire scripts return the new fencing token (> 0) when they acquire, or
// -(1 + ms) when they do not, ms being a hint of how long the lock stays
// taken unless released (0 when unknown).

// KEYS: lock, fence. ARGV: token, lease ms.
var acquireMutex = newScript(luaNextFence + `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return nextFence(KEYS[2])
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then pttl = 0 end
return -1 - pttl
`)

// KEYS: readers, writer, waiting writers, fence. ARGV: token, lease ms.
var acquireRead = newScript(luaNextFence + luaNow + `
local wttl = redis.call('PTTL', KEYS[2])
if wttl ~= -2 then
  if wttl < 0 then wttl = 0 end
  return -1 - wttl
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #first > 0 then
  return -1 - (tonumber(first[2]) - now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
` + luaKeepTTL + `
return nextFence(KEYS[4])
`)

// KEYS: readers, writer, waiting writers, fence. ARGV: token, lease ms,
// waiter id ("" for none), waiter mark ms. A waiter that does not acquire
// marks itself waiting, which holds new readers off.
var acquireWrite = newScript(luaNextFence + luaNow + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local hint = redis.call('PTTL', KEYS[2])
if hint == -2 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
    if ARGV[3] ~= '' then redis.call('ZREM', KEYS[3], ARGV[3]) end
    return nextFence(KEYS[4])
  end
  hint = tonumber(last[2]) - now
end
if ARGV[3] ~= '' then
  local mark = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], now + mark, ARGV[3])
  if redis.call('PTTL', KEYS[3]) < mark then redis.call('PEXPIRE', KEYS[3], mark) end
end
if hint < 0 then hint = 0 end
return -1 - hint
`)

// KEYS: holders, fence. ARGV: token, lease ms, limit.
var acquireSem = newScript(luaNextFence + luaNow + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local hint = 0
  if #first > 0 then hint = tonumber(first[2]) - now end
  return -1 - hint
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
` + luaKeepTTL + `
return nextFence(KEYS[2])
`)

// Extension scripts return 1 when the lease is still owned and extended, 0
// when it is not owned.

// KEYS: lock. ARGV: token, lease ms.
var extendString = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// KEYS: sorted set. ARGV: token, lease ms.
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
return 1
`)

// Release scripts return 1 when the lease was owned until released, 0 when
// not; they announce the release on the lock's channel.

// KEYS: lock. ARGV: token, channel.
var releaseString = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
`)

// KEYS: sorted set. ARGV: token, channel.
var releaseMember = newScript(luaNow + `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], '')
if tonumber(s) <= now then return 0 end
return 1
`)

// KEYS: waiting writers. ARGV: waiter id, channel. A writer that stops
// waiting unmarks itself and wakes the readers it held off.
var unmarkWriter = newScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], '')
end
return 1
`)

// KEYS: lock, fence. ARGV: token, floor. RedLock's second phase: raise a
// node's fencing counter to the token the acquisition settled on, on a node
// where the acquisition holds the lock.
var raiseFence = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local c = tonumber(redis.call('GET', KEYS[2]) or '0')
  if c < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
  return 1
end
return 0
`)
