package faults

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/valkey"
)

// TestLeaseMargin measures, for Valkey leases, the margin between the
// moment the holder is told its lease is lost (Lost closes) and the moment
// the server lets the key expire, when the holder's connection goes silent
// (a black hole: toxiproxy's timeout toxic). The key's expiry is read
// directly from the server (PTTL, not through the proxy) until it is gone.
// The margin must be positive in every trial.
func TestLeaseMargin(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	trials := 5
	if !testing.Short() && os.Getenv("DLOCK_FAULTS_SHORT") != "1" {
		trials = 40
	}
	tp := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	px := toxiproxy.NewProxy(tp, "margin", "127.0.0.1:0", addr)
	if err := px.Start(); err != nil {
		t.Fatal(err)
	}
	defer px.Stop()
	admin, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	const lease = 600 * time.Millisecond
	var margins []time.Duration
	for i := range trials {
		prefix := fmt.Sprintf("dlockfaults:margin:%d:%d:", time.Now().UnixNano(), i)
		c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{px.Listen}, DisableCache: true, ConnWriteTimeout: lease})
		if err != nil {
			t.Fatal(err)
		}
		b, err := valkey.New(c, valkey.WithKeyPrefix(prefix), valkey.WithLease(lease))
		if err != nil {
			t.Fatal(err)
		}
		lk, err := dlock.NewMutex(b).TryAcquire(context.Background(), "m")
		if err != nil {
			t.Fatal(err)
		}
		key := prefix + "{m}:m"
		time.Sleep(time.Duration(i%7) * 50 * time.Millisecond) // land anywhere in the extension cycle
		for _, s := range []string{"upstream", "downstream"} {
			if _, err := px.Toxics.AddToxicJson(strings.NewReader(`{"name":"bh_` + s + `","type":"timeout","stream":"` + s + `","attributes":{"timeout":0}}`)); err != nil {
				t.Fatal(err)
			}
		}
		// Poll the key's remaining time until it is gone; the last reading
		// gives the expiry on the test's monotonic clock.
		// stall is the longest the poll loop itself was kept from running
		// (beyond its 1ms sleep): on a starved machine the moment the test
		// sees Lost closed is late by up to that much, so a margin is only
		// judged beyond it.
		var expiry, told, last, stall int64
		for deadline := time.Now().Add(3 * lease); time.Now().Before(deadline); {
			t0 := Now()
			if last != 0 {
				stall = max(stall, t0-last-int64(time.Millisecond))
			}
			ms, err := admin.Do(context.Background(), admin.B().Pttl().Key(key).Build()).AsInt64()
			t1 := Now()
			if told == 0 && isClosed(lk.Lost()) {
				told = t1
			}
			if err != nil || ms < 0 {
				break
			}
			expiry = (t0+t1)/2 + ms*int64(time.Millisecond)
			last = Now()
			time.Sleep(time.Millisecond)
		}
		if told == 0 {
			select {
			case <-lk.Lost():
				told = Now()
			case <-time.After(2 * lease):
				t.Fatalf("trial %d: the holder was never told", i)
			}
		}
		m := time.Duration(expiry - told)
		margins = append(margins, m)
		switch {
		case m <= 0 && -m > time.Duration(stall):
			t.Errorf("trial %d: told %v after the server-side expiry (the test's own poll was stalled at most %v)", i, -m, time.Duration(stall))
		case m <= 0:
			t.Logf("trial %d: seen told %v after the expiry, within the test's own stall of %v: not judged", i, -m, time.Duration(stall))
		}
		px.Toxics.ResetToxics(context.Background())
		_ = lk.Release(context.Background())
		b.Close()
		c.Close()
	}
	sort.Slice(margins, func(i, j int) bool { return margins[i] < margins[j] })
	t.Logf("lease %v, %d trials: margin min %v, median %v, max %v", lease, len(margins),
		margins[0], margins[len(margins)/2], margins[len(margins)-1])
	results.mu.Lock()
	results.margin = &Margin{Backend: "valkey", Lease: lease, Trials: len(margins), Min: margins[0],
		Median: margins[len(margins)/2], Max: margins[len(margins)-1], Failed: t.Failed()}
	results.mu.Unlock()
	writeResults()
}
