package bench

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"
)

// valkeyDefaultsFloor ("floor-defaults") is the hand-written lock doing the
// server work of dlock's default guarantees on valkey, beyond the plain
// floor's SET NX PX and compare-and-delete, each in its cheapest form:
//
//   - a try does not jump waiters: the acquire script looks whether the
//     name's waiter queue exists (EXISTS) and fails if it does; the release
//     looks too (EXISTS), to wake the waiters (PUBLISH) only when some wait;
//   - a holder record with the server's time (for Describe and `dlock
//     status`): TIME, and the record goes into the lock's value after the
//     token (no key of its own), so the release's compare-and-delete
//     compares the token as a prefix;
//   - a fencing token that keeps increasing when the counter is lost (a
//     restart without persistence, a failover): max(counter + 1, the
//     server's time in µs), written with one SET ... GET (a second SET only
//     when the counter ran ahead of the clock), expiring after a day idle so
//     that names leave no keys behind.
//
// Acquire: one script, EXISTS + TIME + SET NX PX + SET GET. Release: one
// script, GET + DEL + EXISTS. It cannot wait (BenchmarkUncontended and
// BenchmarkThroughputKeys only).
type valkeyDefaultsFloor struct{ valkeyFloor }

const valkeyDefaultsLockScript = `
if redis.call('exists', KEYS[3]) == 1 then return 0 end
local t = redis.call('time')
local v = ARGV[1] .. '{"t":' .. t[1] .. string.format('%06d', tonumber(t[2])) .. '000,' .. ARGV[3]
if not redis.call('set', KEYS[1], v, 'NX', 'PX', ARGV[2]) then return 0 end
` + valkeyDefaultsFence

// valkeyDefaultsFence ends an acquire script of the defaults floors: it
// writes and returns the fencing token, from the server's time t.
const valkeyDefaultsFence = `
local f = tonumber(t[1]) * 1000000 + tonumber(t[2])
local c = tonumber(redis.call('set', KEYS[2], string.format('%.0f', f), 'PX', 86400000, 'GET') or '0') or 0
if c + 1 > f then
  local floor = f
  f = c + 1
  redis.call('set', KEYS[2], string.format('%.0f', f), 'PX', 86400000 + math.ceil((f - floor) / 1000))
end
return f`

const valkeyDefaultsUnlockScript = `
local v = redis.call('get', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '{' then return 0 end
redis.call('del', KEYS[1])
if redis.call('exists', KEYS[2]) == 1 then redis.call('publish', ARGV[2], 'free') end
return 1`

var (
	valkeyDefaultsLockSHA   = scriptSHA(valkeyDefaultsLockScript)
	valkeyDefaultsUnlockSHA = scriptSHA(valkeyDefaultsUnlockScript)
)

// valkeyDefaultsRecord is the holder record sent (the script puts the
// time first), as long as dlock's for a process without an owner text.
const valkeyDefaultsRecord = `"h":"bench-host","p":4411,"s":1796276692095541263}`

type valkeyDefaultsHeld struct {
	f          valkeyDefaultsFloor
	key, token string
}

// evalsha runs a script by EVALSHA, and by EVAL when the server does not
// know it yet.
func evalsha(ctx context.Context, c valkeygo.Client, sha, src string, keys []string, args ...string) (int64, error) {
	n, err := c.Do(ctx, c.B().Evalsha().Sha1(sha).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()).AsInt64()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		n, err = c.Do(ctx, c.B().Eval().Script(src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()).AsInt64()
	}
	return n, err
}

func (f valkeyDefaultsFloor) lock(ctx context.Context, name string) (held, error) {
	key := "bench-dfloor:" + name
	token := f.prefix + strconv.FormatUint(f.n.Add(1), 36)
	px := strconv.FormatInt(leaseTTL.Milliseconds(), 10)
	n, err := evalsha(ctx, f.c, valkeyDefaultsLockSHA, valkeyDefaultsLockScript,
		[]string{key, key + ":f", key + ":q"}, token, px, valkeyDefaultsRecord)
	switch {
	case err != nil:
		return nil, err
	case n == 0:
		return nil, errors.New("valkey defaults floor: held or waited for (it does not wait)")
	}
	return &valkeyDefaultsHeld{f, key, token}, nil
}

func (h *valkeyDefaultsHeld) Release(ctx context.Context) error {
	n, err := evalsha(ctx, h.f.c, valkeyDefaultsUnlockSHA, valkeyDefaultsUnlockScript,
		[]string{h.key, h.key + ":q"}, h.token, h.key+":n")
	if err == nil && n != 1 {
		err = errors.New("valkey defaults floor: lock not held at release")
	}
	return err
}

func openValkeyDefaultsFloor(tb testing.TB, dir string) locker {
	return valkeyDefaultsFloor{openValkeyFloor(tb, dir).(valkeyFloor)}
}

// valkeyFairFloor ("floor-defaults-fair") is floor-defaults waiting as
// dlock does, in its cheapest correct form:
//
//   - the goroutines of one locker (a process) are served in arrival order
//     by a queue per name in front of the server (fifo), so at most one of
//     them works on the server for a name at a time, and a hand-off inside
//     the process costs no round trip to wait;
//   - across lockers, a waiter whose attempt fails queues on the server in
//     arrival order (a sorted set of arrival stamps beside one of
//     deadlines, as dlock's queue; a waiter's place expires a lease after
//     its last attempt, and the next script that looks evicts it), only the
//     first live waiter may take a free lock, and a waiter that stops
//     leaves the queue;
//   - the wait can be cancelled; a waiter on the server polls every
//     valkeyFloorPoll, as the plain floor does (no subscription).
//
// With nobody queued on the server (every benchmark but the hand-off,
// whose holder and waiter are two lockers), its server work per
// acquisition is exactly floor-defaults'.
type valkeyFairFloor struct {
	valkeyDefaultsFloor
	queues *sync.Map // name -> *fifo; never freed (the benchmarks use few names)
}

// KEYS: lock, fence, queue, deadlines. ARGV: token, lease ms, holder
// record, waiter id ("" for none). Returns the fencing token, or 0.
const valkeyFairLockScript = `
local lock, q, d, me = KEYS[1], KEYS[3], KEYS[4], ARGV[4]
local queued = redis.call('exists', q) == 1
local t = redis.call('time')
local function enqueue()
  if me == '' then return 0 end
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('zadd', d, now + tonumber(ARGV[2]), me)
  redis.call('zadd', q, 'NX', tonumber(t[1]) * 1000000 + tonumber(t[2]), me)
  redis.call('pexpire', q, ARGV[2])
  redis.call('pexpire', d, ARGV[2])
  return 0
end
if queued then
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local dead = redis.call('zrangebyscore', d, '-inf', now)
  if #dead > 0 then
    redis.call('zrem', q, unpack(dead))
    redis.call('zrem', d, unpack(dead))
  end
  local h = redis.call('zrange', q, 0, 0)[1]
  if h and h ~= me then return enqueue() end
end
local v = ARGV[1] .. '{"t":' .. t[1] .. string.format('%06d', tonumber(t[2])) .. '000,' .. ARGV[3]
if not redis.call('set', lock, v, 'NX', 'PX', ARGV[2]) then return enqueue() end
if queued and me ~= '' then
  redis.call('zrem', q, me)
  redis.call('zrem', d, me)
end
` + valkeyDefaultsFence

var valkeyFairLockSHA = scriptSHA(valkeyFairLockScript)

func (f valkeyFairFloor) lock(ctx context.Context, name string) (held, error) {
	q := fifoOf(f.queues, name)
	if err := q.enter(ctx); err != nil {
		return nil, err
	}
	h, err := f.take(ctx, name)
	if err != nil {
		q.leave()
		return nil, err
	}
	return &valkeyFairHeld{*h, q}, nil
}

// take makes attempts until one takes the lock, as the waiter whose id is
// the token: a failed attempt queues it (or renews its place).
func (f valkeyFairFloor) take(ctx context.Context, name string) (*valkeyDefaultsHeld, error) {
	key := "bench-dfloor:" + name
	keys := []string{key, key + ":f", key + ":q", key + ":d"}
	token := f.prefix + strconv.FormatUint(f.n.Add(1), 36)
	px := strconv.FormatInt(leaseTTL.Milliseconds(), 10)
	for {
		n, err := evalsha(ctx, f.c, valkeyFairLockSHA, valkeyFairLockScript, keys, token, px, valkeyDefaultsRecord, token)
		if err == nil && n != 0 {
			return &valkeyDefaultsHeld{f.valkeyDefaultsFloor, key, token}, nil
		}
		if err == nil {
			t := time.NewTimer(valkeyFloorPoll)
			select {
			case <-ctx.Done():
				t.Stop()
				err = ctx.Err()
			case <-t.C:
				continue
			}
		}
		// Leave the queue (bounded even when ctx is done); a failure
		// leaves a place that expires after the lease.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		for _, r := range f.c.DoMulti(lctx, f.c.B().Zrem().Key(keys[2]).Member(token).Build(), f.c.B().Zrem().Key(keys[3]).Member(token).Build()) {
			_ = r.Error()
		}
		cancel()
		return nil, err
	}
}

type valkeyFairHeld struct {
	valkeyDefaultsHeld
	q *fifo
}

func (h *valkeyFairHeld) Release(ctx context.Context) error {
	err := h.valkeyDefaultsHeld.Release(ctx)
	h.q.leave()
	return err
}

func openValkeyFairFloor(tb testing.TB, dir string) locker {
	return valkeyFairFloor{openValkeyDefaultsFloor(tb, dir).(valkeyDefaultsFloor), new(sync.Map)}
}
