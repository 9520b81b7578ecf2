package bench

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

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
