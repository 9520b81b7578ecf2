//go:build linux && !dlock_portable

package fs_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/fs"
)

// A mutex over lock files: a second holder — here another Backend, as
// another process would have — finds the lock taken.
func Example() {
	dir, err := os.MkdirTemp("", "dlock-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	b, err := fs.New(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	other, err := fs.New(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer other.Close()

	ctx := context.Background()
	err = dlock.NewMutex(b).Do(ctx, "nightly-report", func(ctx context.Context) error {
		fmt.Println("building the report, alone")
		err := dlock.NewMutex(other).TryDo(ctx, "nightly-report", func(context.Context) error { return nil })
		fmt.Println("another holder gets in:", !errors.Is(err, dlock.ErrNotAcquired))
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// building the report, alone
	// another holder gets in: false
	// done: <nil>
}
