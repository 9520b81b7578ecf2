package valkey

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// TestServerCost is a measurement, not a test: it runs only with
// DLOCK_SERVER_COST=1. It sends a mutex's uncontended acquire and release
// scripts in pipelined batches of 64 distinct names (the shape of the
// bench row ThroughputKeys) and prints the server's CPU (INFO cpu) per
// lock for dlock's scripts and for bench's floor-defaults scripts (the
// same server commands written by hand), in alternating rounds:
//
//	DLOCK_SERVER_COST=1 go test -run TestServerCost -v ./valkey/
func TestServerCost(t *testing.T) {
	if os.Getenv("DLOCK_SERVER_COST") != "1" {
		t.Skip("a measurement: set DLOCK_SERVER_COST=1")
	}
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	c := testClient(t, addr)
	ctx := context.Background()
	be, err := New(c, WithKeyPrefix(testPrefix(t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	const batch, batches = 64, 400
	names := make([]string, batch)
	for i := range names {
		names[i] = "servercost-" + strconv.Itoa(i)
	}
	rec := selfRecord()
	type variant struct {
		name          string
		acquire, free func(i int, token string) call
	}
	reqs := make([]*request, batch)
	for i, n := range names {
		reqs[i], _ = be.mutex(n)
	}
	variants := []variant{
		{"dlock", func(i int, token string) call {
			r := reqs[i]
			args := []string{token, be.c.leaseMs, token, "1", r.ch, rec}
			mutexArgs(args, token, token) // as tryAs sends them
			return call{acquireMutex, r.keys, args}
		}, func(i int, token string) call {
			r := reqs[i]
			l := be.c.newLease(r, token)
			return call{releaseString, l.rkeys[:], l.rargs[:]}
		}},
		{"floor-defaults", func(i int, token string) call {
			k := "bench-dfloor:" + be.c.self + names[i]
			return call{floorLock, []string{k, k + ":f", k + ":q"}, []string{token, be.c.leaseMs, `"h":"bench-host","p":4411,"s":1796276692095541263}`}}
		}, func(i int, token string) call {
			k := "bench-dfloor:" + be.c.self + names[i]
			return call{floorUnlock, []string{k, k + ":q"}, []string{token, k + ":n"}}
		}},
		{"floor-padded", func(i int, token string) call {
			r := reqs[i]
			k := "bench-dfloor:" + be.c.self + names[i]
			return call{floorLock, []string{k, k + ":f", k + ":q", r.keys[3], r.keys[4]}, []string{token, be.c.leaseMs, `"h":"bench-host","p":4411,"s":1796276692095541263}`, token, "1", r.ch}}
		}, func(i int, token string) call {
			r := reqs[i]
			k := "bench-dfloor:" + be.c.self + names[i]
			return call{floorUnlock, []string{k, k + ":q", r.keys[3], r.keys[1], r.keys[4]}, []string{token, k + ":n", be.c.self, be.c.leaseMs}}
		}},
	}
	cpu := func() float64 {
		s, err := c.Do(ctx, c.B().Info().Section("cpu").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, l := range strings.Split(s, "\r\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
		return sum
	}
	for round := range 5 {
		var line []string
		for _, v := range variants {
			acq := make([]call, batch)
			rel := make([]call, batch)
			var ta, tr float64
			for range batches {
				for i := range batch {
					tok := be.c.newToken()
					acq[i], rel[i] = v.acquire(i, tok), v.free(i, tok)
				}
				t0 := cpu()
				for _, r := range execBatch(ctx, c, acq) {
					if n, err := r.AsInt64(); err != nil || n <= 0 {
						t.Fatalf("%s: acquire: %v %v", v.name, n, err)
					}
				}
				t1 := cpu()
				ta += t1 - t0
				for _, r := range execBatch(ctx, c, rel) {
					if n, err := r.AsInt64(); err != nil || n != 1 {
						t.Fatalf("%s: release: %v %v", v.name, n, err)
					}
				}
				tr += cpu() - t1
			}
			line = append(line, fmt.Sprintf("%s %.2f+%.2fµs", v.name, ta*1e6/(batch*batches), tr*1e6/(batch*batches)))
		}
		t.Logf("round %d: server CPU per lock: %s", round, strings.Join(line, ", "))
	}
}

var _ = valkeygo.IsValkeyNil

var floorLock = newScript(`
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
return f`)

var floorUnlock = newScript(`
local v = redis.call('get', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '{' then return 0 end
redis.call('del', KEYS[1])
if redis.call('exists', KEYS[2]) == 1 then redis.call('publish', ARGV[2], 'free') end
return 1`)
