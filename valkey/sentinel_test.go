package valkey

import (
	"testing"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// sentinelMaster is the master name of the Sentinel group that .ci/servers
// starts (DLOCK_TEST_VALKEY_SENTINEL lists its sentinels).
const sentinelMaster = "dlock"

// sentinelClient returns a client of the Sentinel group's primary, closed
// at the end of t.
func sentinelClient(t testing.TB, sentinels []string) valkeygo.Client {
	t.Helper()
	c, err := valkeygo.NewClient(valkeygo.ClientOption{
		InitAddress:  sentinels,
		Sentinel:     valkeygo.SentinelOption{MasterSet: sentinelMaster},
		DisableCache: true,
	})
	if err != nil {
		t.Fatalf("connecting to the sentinels %v of %q: %v", sentinels, sentinelMaster, err)
	}
	t.Cleanup(c.Close)
	return c
}

// The whole suite over a client that finds the primary through Sentinel.
func TestConformanceSentinel(t *testing.T) {
	sentinels := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_SENTINEL"))
	// Like the cluster client, a Sentinel client may leave goroutines
	// behind for a while after Close; the nodes take turns over clients
	// made up front, each still its own Backend.
	// They are used before the suite starts, so that their connections'
	// goroutines exist before the suite's leak checks look.
	var clients []valkeygo.Client
	for range 3 {
		c := sentinelClient(t, sentinels)
		warmUp(t, c)
		clients = append(clients, c)
	}
	next := 0
	dlocktest.Run(t, harness(func(t testing.TB, space string) any {
		c := clients[next%len(clients)]
		next++
		b, err := New(c, testOpts(space)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}))
}
