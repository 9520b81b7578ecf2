package valkey_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	dlockvalkey "github.com/dlock-go/dlock/valkey"
)

// Example takes a mutex over a standalone server (or a cluster: pass its
// seeds).
func Example() {
	addr := os.Getenv("DLOCK_TEST_VALKEY_ADDR")
	if addr == "" {
		return // needs a server
	}
	client, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{addr}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	b, err := dlockvalkey.New(client, dlockvalkey.WithLease(10*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()

	mu := dlock.NewMutex(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // how long to wait
	defer cancel()
	err = mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
		// ctx is cancelled, cause dlock.ErrLockLost, if the lease is lost.
		return nil
	})
	fmt.Println(err)
}

// ExampleNewRedLock takes a lock held by a majority of independent nodes,
// with a fencing token for the storage it protects.
func ExampleNewRedLock() {
	var clients []valkey.Client
	// Three independent servers, e.g. "db1:6379,db2:6379,db3:6379".
	for _, addr := range strings.Split(os.Getenv("DLOCK_TEST_VALKEY_NODES"), ",") {
		c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{addr}})
		if err != nil {
			fmt.Println(err)
			return
		}
		defer c.Close()
		clients = append(clients, c)
	}
	r, err := dlockvalkey.NewRedLock(clients)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	lk, err := dlock.NewMutex(r).Acquire(context.Background(), "leader")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer lk.Release(context.Background())
	token, _ := lk.Token()
	fmt.Println("leader with fencing token", token)
}

// ExampleBackend_WLock uses the reader-writer lock: readers share, a
// writer waits for them and holds new readers off meanwhile.
func ExampleBackend_WLock() {
	var b *dlockvalkey.Backend // from dlockvalkey.New
	if b == nil {
		return
	}
	rw := dlock.NewRWMutex(b)
	_ = rw.Read().Do(context.Background(), "config", func(ctx context.Context) error { return nil })
	_ = rw.Write().Do(context.Background(), "config", func(ctx context.Context) error { return nil })
}
