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
func sentinelClient(t testing.TB, sentinels []string, opts ...func(*valkeygo.ClientOption)) valkeygo.Client {
	t.Helper()
	o := valkeygo.ClientOption{
		InitAddress:  sentinels,
		Sentinel:     valkeygo.SentinelOption{MasterSet: sentinelMaster},
		DisableCache: true,
	}
	for _, f := range opts {
		f(&o)
	}
	c, err := valkeygo.NewClient(o)
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
	// behind for a while after Close: see overClients.
	var clients []valkeygo.Client
	for range 3 {
		c := sentinelClient(t, sentinels)
		warmUp(t, c)
		clients = append(clients, c)
	}
	dlocktest.Run(t, overClients(clients))
}
